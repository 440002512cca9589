package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/testsync"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// TestNodeEvictedBannedAndCopiedSVID: a node whose key may have leaked is
// evicted with `meshfed node evict`. The real agent learns it at once (its
// Watch stream ends), keeps serving its workload the SVID still valid, and
// attests again, without a restart, once a new join token is written to its
// --join-token-file. A copy of the node SVID taken before the eviction is
// refused by the server from then on. `meshfed node ban` refuses the node
// and its attestation until `meshfed node evict` lifts it. Last, `meshfed
// entry update` changes the workload's entry in place, and a backup of the
// server restores it.
func TestNodeEvictedBannedAndCopiedSVID(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "east", "admin.sock")
	srv := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", sock)
	const node = "spiffe://east.example/node/host-1"
	newToken := func() string {
		return strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", node).stdout)
	}
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(newToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var entry struct {
		ID string `json:"id"`
	}
	created := meshfed(t, dir, "entry", "create", "--admin-socket", sock, "--parent-id", node,
		"--spiffe-id", "spiffe://east.example/ns/default/sa/reviews", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "-o", "json").stdout
	if err := json.Unmarshal([]byte(created), &entry); err != nil || entry.ID == "" {
		t.Fatalf("entry create -o json: %v\n%s", err, created)
	}
	wl := filepath.Join(dir, "agent", "workload.sock")
	agent := startAgent(t, dir, "--server", srv.listen, "--trust-bundle", "east/ca/ca.pem", "--join-token-file", tokenFile,
		"--data-dir", "agent", "--socket", wl)
	fetch := func(what string) {
		t.Helper()
		testsync.EventuallyWithin(t, 30*time.Second, what, func() bool {
			r := run(t, dir, meshfedBin, "svid", "fetch", "--socket", wl, "--timeout", "5s")
			return r.code == 0 && strings.Contains(r.stdout, "spiffe://east.example/ns/default/sa/reviews")
		})
	}
	fetch("the workload's SVID")
	// Exec probes: both daemons answer.
	if out := meshfed(t, dir, "agent", "healthcheck", "--socket", wl).stdout; !strings.HasPrefix(out, "agent is healthy: its Workload API at "+wl+" answers") {
		t.Errorf("agent healthcheck printed %q", out)
	}
	if out := meshfed(t, dir, "server", "healthcheck", "--admin-socket", sock).stdout; !strings.HasPrefix(out, "server for east.example is healthy: it answers and publishes 1 X.509 authorities") {
		t.Errorf("server healthcheck printed %q", out)
	}
	if r := run(t, dir, meshfedBin, "agent", "healthcheck", "--socket", filepath.Join(dir, "nothing.sock"), "--timeout", "2s"); r.code != 1 || !strings.Contains(r.stderr, "agent is not healthy") {
		t.Errorf("agent healthcheck of no socket: exit %d, %s", r.code, r.stderr)
	}
	// What a thief copies off the host.
	stolen, err := tls.LoadX509KeyPair(filepath.Join(dir, "agent", "node-svid.pem"), filepath.Join(dir, "agent", "node-svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	thief := nodeClient(t, dir, srv.listen, stolen)
	if _, err := thief.FetchBundles(context.Background(), &pb.FetchBundlesRequest{}); err != nil {
		t.Fatalf("the copied node SVID before the eviction: %v", err)
	}
	before := nodeList(t, dir, sock)

	if out := meshfed(t, dir, "node", "evict", "--admin-socket", sock, "--spiffe-id", node).stdout; out != "evicted node "+node+"\n" {
		t.Errorf("node evict printed %q", out)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the agent to learn of its eviction", func() bool {
		s := agent.logs.String()
		return strings.Contains(s, "the server refuses this node") && strings.Contains(s, "reason=NODE_NOT_ATTESTED") &&
			strings.Contains(s, "the agent has no join token it has not used: make one with 'meshfed token create --spiffe-id "+node+"' and write it to "+tokenFile)
	})
	fetch("the SVID still valid while the node is evicted")

	if err := os.WriteFile(tokenFile, []byte(newToken()), 0o600); err != nil {
		t.Fatal(err)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the agent to attest again with the new token", func() bool {
		return strings.Contains(agent.logs.String(), "attested again; the server accepts this node")
	})
	after := nodeList(t, dir, sock)
	if after["serial"] == before["serial"] || after["serial"] == "" {
		t.Errorf("node SVID serial %v after attesting again, %v before; want a new one", after["serial"], before["serial"])
	}
	_, err = thief.FetchBundles(context.Background(), &pb.FetchBundlesRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "is not the node's current one") {
		t.Errorf("the copied node SVID after the node attested again: %v; want PermissionDenied, not the node's current one", err)
	}
	fetch("the workload's SVID after the node attested again")

	// Banned: refused, and the agent's next token would be refused too.
	if out := meshfed(t, dir, "node", "ban", "--admin-socket", sock, "--spiffe-id", node).stdout; !strings.HasPrefix(out, "banned node "+node+" at ") {
		t.Errorf("node ban printed %q", out)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the agent to learn of its ban", func() bool {
		return strings.Contains(agent.logs.String(), "reason=NODE_BANNED")
	})
	if got := nodeList(t, dir, sock); got["banned_at"] == nil {
		t.Errorf("node list after the ban: %v", got)
	}
	if out := meshfed(t, dir, "node", "list", "--admin-socket", sock).stdout; !strings.Contains(out, "STATE") || !strings.Contains(out, "banned") {
		t.Errorf("node list table:\n%s", out)
	}
	meshfed(t, dir, "node", "evict", "--admin-socket", sock, "--spiffe-id", node)
	if err := os.WriteFile(tokenFile, []byte(newToken()), 0o600); err != nil {
		t.Fatal(err)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the agent to attest again after the ban was lifted", func() bool {
		return strings.Count(agent.logs.String(), "attested again; the server accepts this node") == 2
	})
	fetch("the workload's SVID after the ban was lifted")

	// A token that leaked before it was used is revoked by the id its
	// creation printed; 'token list' shows it until then.
	leaked := meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", node)
	tid := regexp.MustCompile(`join token (sha256:[0-9a-f]{8}) for `).FindStringSubmatch(leaked.stderr)
	if tid == nil {
		t.Fatalf("token create said on stderr: %q", leaked.stderr)
	}
	if out := meshfed(t, dir, "token", "list", "--admin-socket", sock).stdout; !strings.Contains(out, tid[1]+"  "+node) || strings.Contains(out, strings.TrimSpace(leaked.stdout)) {
		t.Errorf("token list:\n%s", out)
	}
	if out := meshfed(t, dir, "token", "revoke", "--admin-socket", sock, "--spiffe-id", node, "--token", tid[1]).stdout; out != "revoked 1 join token(s) of "+node+"\n" {
		t.Errorf("token revoke printed %q", out)
	}
	if out := meshfed(t, dir, "token", "list", "--admin-socket", sock).stdout; strings.Contains(out, tid[1]) {
		t.Errorf("token list after the revocation:\n%s", out)
	}
	if out := meshfed(t, dir, "node", "purge", "--admin-socket", sock, "--dry-run").stdout; out != "would purge 0 node(s)\n" {
		t.Errorf("node purge --dry-run of a live node printed %q", out)
	}
	r := run(t, dir, meshfedBin, "node", "evict", "--admin-socket", sock)
	if r.code != 2 || !strings.Contains(r.stderr, "--spiffe-id is required") {
		t.Errorf("node evict without --spiffe-id: exit %d, %s", r.code, r.stderr)
	}

	// The entry changes in place: the workload's next SVID carries the
	// DNS name, with no restart and the same entry ID.
	if out := meshfed(t, dir, "entry", "update", entry.ID, "--admin-socket", sock, "--dns", "reviews.east.example").stdout; !strings.Contains(out, entry.ID) || !strings.Contains(out, "reviews.east.example") {
		t.Errorf("entry update printed:\n%s", out)
	}
	testsync.EventuallyWithin(t, 30*time.Second, "the workload's SVID to carry the entry's new DNS name", func() bool {
		if r := run(t, dir, meshfedBin, "svid", "fetch", "--socket", wl, "--out", "certs", "--timeout", "5s"); r.code != 0 {
			return false
		}
		certs, err := pemfile.ReadCertificates(filepath.Join(dir, "certs", "svid.pem"))
		return err == nil && len(certs[0].DNSNames) == 1 && certs[0].DNSNames[0] == "reviews.east.example"
	})
	// A JWT-SVID of the workload, fetched and validated with the CLI.
	token := strings.TrimSpace(meshfed(t, dir, "svid", "jwt", "--socket", wl, "--audience", "ratings").stdout)
	if strings.Count(token, ".") != 2 {
		t.Fatalf("svid jwt printed %q, want a compact JWS alone", token)
	}
	if err := os.WriteFile(filepath.Join(dir, "token.jwt"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := meshfed(t, dir, "svid", "validate", "--socket", wl, "--audience", "ratings", "--token-file", "token.jwt").stdout; !strings.Contains(out, "SPIFFE ID:     spiffe://east.example/ns/default/sa/reviews\n") || !strings.Contains(out, "Audience:      ratings\n") {
		t.Errorf("svid validate printed:\n%s", out)
	}
	// The same token, offline, against the bundle the server publishes.
	if err := os.WriteFile(filepath.Join(dir, "east-bundle.json"), []byte(meshfed(t, dir, "bundle", "show", "--admin-socket", sock).stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := meshfed(t, dir, "inspect", "jwt", "token.jwt", "--bundle", "east-bundle.json", "--audience", "ratings").stdout; !strings.Contains(out, "SVID:               conforms to the JWT-SVID rules\n") ||
		!strings.Contains(out, "Verification: OK (JWT-SVID, against east-bundle.json)\n") || strings.Contains(out, token) {
		t.Errorf("inspect jwt printed:\n%s", out)
	}
	r = run(t, dir, meshfedBin, "inspect", "jwt", "token.jwt", "--bundle", "east-bundle.json", "--audience", "reviews")
	if r.code != 1 || !strings.Contains(r.stdout, "Verification: FAILED") {
		t.Errorf("inspect jwt for another audience: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = run(t, dir, meshfedBin, "svid", "validate", "--socket", wl, "--audience", "reviews", "--token-file", "token.jwt")
	if r.code != 1 || !strings.Contains(r.stderr, `the token does not validate for "reviews"`) || strings.Contains(r.stderr+r.stdout, token) {
		t.Errorf("svid validate for another audience: exit %d, %s", r.code, r.stderr)
	}
	r = run(t, dir, meshfedBin, "entry", "update", entry.ID, "--admin-socket", sock)
	if r.code != 2 || !strings.Contains(r.stderr, "nothing to change") {
		t.Errorf("entry update without a change: exit %d, %s", r.code, r.stderr)
	}
	agent.mustRun(t)

	// A backup taken while the server serves starts a server with the same
	// bundle and entries.
	if out := meshfed(t, dir, "server", "backup", "--admin-socket", sock, "--out", "east-backup").stdout; !strings.HasPrefix(out, "backup of ") || !strings.Contains(out, " files written to "+filepath.Join(dir, "east-backup")) {
		t.Errorf("server backup printed %q", out)
	}
	restored := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "east-backup", "--admin-socket", filepath.Join(dir, "restored.sock"))
	bundleOf := func(s string) string { return meshfed(t, dir, "bundle", "show", "--admin-socket", s).stdout }
	if a, b := bundleOf(sock), bundleOf(restored.sock); a != b {
		t.Errorf("the restored server's bundle differs:\n%s\n%s", a, b)
	}
	if out := meshfed(t, dir, "entry", "show", entry.ID, "--admin-socket", restored.sock).stdout; !strings.Contains(out, "spiffe://east.example/ns/default/sa/reviews") {
		t.Errorf("the restored server's entry:\n%s", out)
	}
}

// nodeClient dials a server's signing API presenting cert, verifying the
// server with east's root.
func nodeClient(t *testing.T, dir, addr string, cert tls.Certificate) pb.NodeClient {
	t.Helper()
	roots, err := pemfile.ReadCertificates(filepath.Join(dir, "east", "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewNodeClient(conn)
}

// nodeList is the one node of `meshfed node list -o json`.
func nodeList(t *testing.T, dir, sock string) map[string]any {
	t.Helper()
	var out struct {
		Nodes []map[string]any `json:"nodes"`
	}
	raw := meshfed(t, dir, "node", "list", "--admin-socket", sock, "-o", "json").stdout
	if err := json.Unmarshal([]byte(raw), &out); err != nil || len(out.Nodes) != 1 {
		t.Fatalf("node list -o json: %v\n%s", err, raw)
	}
	return out.Nodes[0]
}
