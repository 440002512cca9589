package server

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"google.golang.org/grpc/codes"
)

// TestBackup: a backup taken while the server serves is a data directory
// from which another server starts with the same root, JWT key, entries
// and nodes; keys stay 0600; a backup never writes over anything.
func TestBackup(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx := context.Background()
	attestNodeCert(t, h, hostID)
	entry, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: hostID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "backup")
	resp, err := admin.Backup(ctx, &pb.BackupRequest{OutDir: out})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ca/ca.pem", "ca/ca.key", "jwt/jwt.key", "meshfed.db"} {
		if !slices.Contains(resp.GetFiles(), want) {
			t.Errorf("backup files %v lack %s", resp.GetFiles(), want)
		}
	}
	if slices.Contains(resp.GetFiles(), "admin.sock") || resp.GetDatabaseNote() != "" {
		t.Errorf("backup files %v, note %q", resp.GetFiles(), resp.GetDatabaseNote())
	}
	for _, key := range []string{"ca/ca.key", "jwt/jwt.key", "meshfed.db"} {
		if fi, err := os.Stat(filepath.Join(out, key)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s in the backup: %v, %v; want mode 0600", key, fi, err)
		}
	}
	if leftovers, _ := filepath.Glob(out + ".partial-*"); len(leftovers) != 0 {
		t.Errorf("left behind: %v", leftovers)
	}

	_, err = admin.Backup(ctx, &pb.BackupRequest{OutDir: out})
	wantStatus(t, err, codes.AlreadyExists, "already exists; a backup goes into a new directory")
	_, err = admin.Backup(ctx, &pb.BackupRequest{OutDir: "relative"})
	wantStatus(t, err, codes.InvalidArgument, "give an absolute path")
	_, err = admin.Backup(ctx, &pb.BackupRequest{OutDir: filepath.Join(h.srv.set.dataDir, "bk")})
	wantStatus(t, err, codes.InvalidArgument, "is inside the data directory")

	// Restored: another server on the backup.
	restored := start(t, func(c *Config) { c.DataDir = out })
	if got, want := restored.srv.auth.CA().RootKeyID(), h.srv.auth.CA().RootKeyID(); string(got) != string(want) {
		t.Errorf("restored root %x, want %x", got, want)
	}
	b1, err := admin.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b2, err := restored.admin(t).GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if string(b1.GetSpiffeBundle()) != string(b2.GetSpiffeBundle()) {
		t.Errorf("restored bundle differs:\n%s\n%s", b1.GetSpiffeBundle(), b2.GetSpiffeBundle())
	}
	if got, err := restored.admin(t).GetEntry(ctx, &pb.GetEntryRequest{Id: entry.GetId()}); err != nil || got.GetSpiffeId() != entry.GetSpiffeId() {
		t.Errorf("restored entry: %v, %v", got, err)
	}
	if nodes, err := restored.admin(t).ListNodes(ctx, &pb.ListNodesRequest{}); err != nil || len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetSpiffeId() != hostID {
		t.Errorf("restored nodes: %v, %v", nodes, err)
	}
}
