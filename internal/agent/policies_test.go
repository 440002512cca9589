package agent

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/policy"
)

const peerDoc = `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`

// TestPoliciesReachProxies: policy applied to the server reaches a proxy
// watching the agent's socket with a real gRPC client (policyclient), with
// every change after it; the agent keeps the last set in its data dir and
// serves it after a restart while the server is down.
func TestPoliciesReachProxies(t *testing.T) {
	ts, a, clock, dataDir := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "workload.sock")
	wl, err := workloadapi.New(workloadapi.Config{SocketPath: sock, Source: a.Cache})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- wl.Run(ctx) }()
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()

	type update struct {
		docs []policy.Document
		rev  int64
	}
	updates := make(chan update)
	go policyclient.Watch(ctx, sock, func(docs []policy.Document, rev int64) {
		select {
		case updates <- update{docs, rev}:
		case <-ctx.Done():
		}
	})
	next := func(what string) update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatalf("no policy snapshot %s within 10s", what)
			return update{}
		}
	}
	mode := func(u update) policy.Mode {
		t.Helper()
		set, err := policy.NewSet(u.docs)
		if err != nil {
			t.Fatal(err)
		}
		return set.MTLS("default", nil, 9080).Mode
	}
	apply := func(doc string) int64 {
		t.Helper()
		resp, err := ts.admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{{Name: "p.yaml", Data: []byte(doc)}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetPolicyRevision()
	}

	// The server has no policies yet: the proxy learns that, revision 0.
	if u := next("at first"); u.rev != 0 || len(u.docs) != 0 {
		t.Fatalf("first snapshot: revision %d, %d documents; want 0, none", u.rev, len(u.docs))
	}
	rev := apply(peerDoc)
	u := next("after apply")
	if u.rev != rev || len(u.docs) != 1 || u.docs[0].File != "server:default/default" || mode(u) != policy.ModeStrict {
		t.Fatalf("after apply: revision %d (want %d), %d documents", u.rev, rev, len(u.docs))
	}
	list, err := ts.admin.ListPolicies(ctx, &pb.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	created := time.UnixMilli(list.GetPolicies()[0].GetCreatedAtMs())
	if !u.docs[0].Created.Equal(created) {
		t.Errorf("document created %s, want the server's %s", u.docs[0].Created, created)
	}

	rev = apply(strings.Replace(peerDoc, "STRICT", "PERMISSIVE", 1))
	if u := next("after update"); u.rev != rev || mode(u) != policy.ModePermissive || !u.docs[0].Created.Equal(created) {
		t.Fatalf("after update: revision %d (want %d), mode %s, created %s", u.rev, rev, mode(u), u.docs[0].Created)
	}
	del, err := ts.admin.DeletePolicy(ctx, &pb.DeletePolicyRequest{Kind: "PeerAuthentication", Namespace: "default", Name: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if u := next("after delete"); u.rev != del.GetPolicyRevision() || len(u.docs) != 0 || mode(u) != policy.ModePermissive {
		t.Fatalf("after delete: revision %d (want %d), %d documents", u.rev, del.GetPolicyRevision(), len(u.docs))
	}
	rev = apply(peerDoc)
	if u := next("after apply again"); u.rev != rev || mode(u) != policy.ModeStrict {
		t.Fatalf("after apply again: revision %d (want %d), mode %s", u.rev, rev, mode(u))
	}

	// A change of entries moves the Watch stream but not the policies: the
	// server sends them as unchanged, and the agent keeps what it has.
	entry, err := ts.admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{ParentId: nodeID,
		SpiffeId: "spiffe://east.example/ns/default/sa/details", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1002"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.After(10 * time.Second); ; {
		changed := a.Cache.Changed()
		if _, ok := a.Cache.entrySPIFFEID(entry.GetId()); ok {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("the new entry did not reach the agent within 10s")
		}
	}
	if kept := a.Cache.Policies(); kept.GetRevision() != rev || len(kept.GetPolicies()) != 1 {
		t.Fatalf("after an entry change the agent serves policy revision %d with %d documents; want %d with 1", kept.GetRevision(), len(kept.GetPolicies()), rev)
	}

	// The server goes away and the agent restarts: it serves the last set.
	ts.stop()
	again, err := New(Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: dataDir, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	kept := again.Cache.Policies()
	if kept.GetRevision() != rev || len(kept.GetPolicies()) != 1 || string(kept.GetPolicies()[0].GetYaml()) != peerDoc ||
		kept.GetPolicies()[0].GetGeneration() != 1 {
		t.Errorf("after a restart the agent serves revision %d (want %d): %v", kept.GetRevision(), rev, kept.GetPolicies())
	}
}
