package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/api/agentv1"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/policy"
	"google.golang.org/protobuf/proto"
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

// TestPoliciesKeptAgainstRevisionZero: a Watch snapshot of policy revision
// 0 (a server that never had a policy: a new database, or one older than
// policy support) does not take away the policies an agent serves, and is
// logged once; a real removal, which moves the revision, does. An agent
// with none serves the empty set of revision 0.
func TestPoliciesKeptAgainstRevisionZero(t *testing.T) {
	var logs strings.Builder
	a, err := New(Config{ServerAddr: "127.0.0.1:1", DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	watch := func(rev int64, yaml ...string) *pb.WatchResponse {
		w := &pb.WatchResponse{PolicyRevision: rev}
		for i, y := range yaml {
			w.Policies = append(w.Policies, &pb.Policy{Kind: "PeerAuthentication", Namespace: "default", Name: fmt.Sprint("p", i), Yaml: []byte(y), Generation: 1})
		}
		return w
	}
	served := func(step string, rev int64, docs int) {
		t.Helper()
		got := a.Cache.Policies()
		if got == nil || got.GetRevision() != rev || len(got.GetPolicies()) != docs {
			t.Fatalf("%s: the agent serves %v; want revision %d with %d documents", step, got, rev, docs)
		}
		kept := &agentv1.PolicySnapshot{}
		data, err := os.ReadFile(filepath.Join(a.cfg.DataDir, policiesFile))
		if err == nil {
			err = proto.Unmarshal(data, kept)
		}
		if err != nil || kept.GetRevision() != rev || len(kept.GetPolicies()) != docs {
			t.Fatalf("%s: the data dir keeps revision %d with %d documents (%v); want %d with %d", step, kept.GetRevision(), len(kept.GetPolicies()), err, rev, docs)
		}
	}
	const warning = "the server reports it never had policies"

	a.applyPolicies(watch(0))
	served("a server without policies, to an agent without any", 0, 0)
	a.applyPolicies(watch(5, peerDoc))
	served("after an apply", 5, 1)
	for range 3 {
		a.applyPolicies(watch(0))
	}
	served("after three snapshots of revision 0", 5, 1)
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Fatalf("the revision-0 warning was logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "policy_revision=5 documents=1") {
		t.Fatalf("the warning does not say what was kept:\n%s", logs.String())
	}
	a.applyPolicies(watch(7))
	served("after the policies were deleted on the server", 7, 0)
	a.applyPolicies(watch(8, peerDoc, strings.Replace(peerDoc, "STRICT", "PERMISSIVE", 1)))
	a.applyPolicies(watch(0))
	served("revision 0 again", 8, 2)
	if n := strings.Count(logs.String(), warning); n != 2 {
		t.Fatalf("the revision-0 warning was logged %d times, want once per kept revision (2):\n%s", n, logs.String())
	}
}
