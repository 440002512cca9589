package policyclient_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/api/agentv1"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// fakeAgent is the agent's cache as the socket's server sees it: no SVIDs,
// and a policy snapshot the test sets.
type fakeAgent struct {
	mu      sync.Mutex
	snap    *agentv1.PolicySnapshot
	changed chan struct{}
}

func newFakeAgent() *fakeAgent { return &fakeAgent{changed: make(chan struct{})} }

func (*fakeAgent) X509SVIDs([]attest.Selector) []workloadapi.Identity { return nil }
func (*fakeAgent) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	return nil, nil
}
func (*fakeAgent) Changed() <-chan struct{} { return nil }
func (*fakeAgent) JWTSVIDs(context.Context, []attest.Selector, spiffeid.ID, []string) ([]*jwtsvid.SVID, error) {
	return nil, nil
}
func (*fakeAgent) JWTBundles() (*jwtbundle.Bundle, []*jwtbundle.Bundle) { return nil, nil }

func (f *fakeAgent) Policies() *agentv1.PolicySnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func (f *fakeAgent) PoliciesChanged() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeAgent) set(snap *agentv1.PolicySnapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = snap
	close(f.changed)
	f.changed = make(chan struct{})
}

// serve runs the agent's socket server on path until stop is called (or
// the test ends).
func serve(t *testing.T, path string, src *fakeAgent) (stop func()) {
	t.Helper()
	srv, err := workloadapi.New(workloadapi.Config{SocketPath: path, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func peer(ns, name, mode string, createdMs int64) *agentv1.Policy {
	return &agentv1.Policy{Kind: "PeerAuthentication", Namespace: ns, Name: name, CreatedAtMs: createdMs, Generation: 1, Yaml: []byte(
		"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\nspec:\n  mtls:\n    mode: " + mode + "\n")}
}

type update struct {
	docs []policy.Document
	rev  int64
}

// TestWatch: a proxy's Watch receives the agent's snapshot and each change,
// parsed, with the server's creation times deciding Istio's "oldest wins";
// a snapshot that does not parse is skipped; after the agent restarts the
// client reconnects, and the same set again is not handed over twice.
func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	src := newFakeAgent()
	stop := serve(t, path, src)
	c, err := policyclient.New(policyclient.Config{SocketPath: path, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan update)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- c.Watch(ctx, func(docs []policy.Document, rev int64) {
			select {
			case updates <- update{docs, rev}:
			case <-ctx.Done():
			}
		})
	}()
	next := func(what string) update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatalf("no snapshot %s within 10s", what)
			return update{}
		}
	}

	// Two namespace-wide policies: b-strict was created first on the
	// server, so it wins, although a-permissive sorts first by name.
	src.set(&agentv1.PolicySnapshot{Revision: 3, Policies: []*agentv1.Policy{
		peer("default", "a-permissive", "PERMISSIVE", 2000),
		peer("default", "b-strict", "STRICT", 1000),
	}})
	u := next("at first")
	if u.rev != 3 || len(u.docs) != 2 {
		t.Fatalf("first snapshot: revision %d, %d documents; want 3, 2", u.rev, len(u.docs))
	}
	if d := u.docs[1]; d.File != "server:default/b-strict" || d.Line != 1 || d.Kind != policy.KindPeerAuthentication || !d.Created.Equal(time.UnixMilli(1000)) {
		t.Errorf("document 2: %s:%d %s %s created %s", d.File, d.Line, d.Kind, d.Ref(), d.Created)
	}
	set, err := policy.NewSet(u.docs)
	if err != nil {
		t.Fatal(err)
	}
	if got := set.MTLS("default", nil, 8080); got.Mode != policy.ModeStrict || got.Policy != "default/b-strict" {
		t.Errorf("MTLS = %s by %s, want STRICT by default/b-strict (the oldest)", got.Mode, got.Policy)
	}

	// A snapshot that does not parse is never handed over.
	bad := peer("default", "c", "STRIKT", 3000)
	src.set(&agentv1.PolicySnapshot{Revision: 4, Policies: []*agentv1.Policy{bad}})
	src.set(&agentv1.PolicySnapshot{Revision: 5, Policies: []*agentv1.Policy{peer("default", "b-strict", "STRICT", 1000)}})
	if u := next("after the bad one"); u.rev != 5 || len(u.docs) != 1 {
		t.Fatalf("after a bad snapshot: revision %d, %d documents; want 5, 1", u.rev, len(u.docs))
	}

	// The agent restarts, with the same set: nothing new for the proxy
	// until the set changes.
	stop()
	serve(t, path, src)
	src.set(&agentv1.PolicySnapshot{Revision: 6})
	if u := next("after the agent restarted"); u.rev != 6 || len(u.docs) != 0 {
		t.Fatalf("after a restart: revision %d, %d documents; want 6, 0", u.rev, len(u.docs))
	}

	cancel()
	select {
	case err := <-watchDone:
		if err != nil {
			t.Errorf("Watch returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its context ended")
	}
}

// TestDocuments: what a snapshot must be to be handed over.
func TestDocuments(t *testing.T) {
	mismatch := peer("default", "x", "STRICT", 1)
	mismatch.Name = "y"
	tests := []struct {
		name string
		snap *agentv1.PolicySnapshot
		want string
	}{
		{"bad value", &agentv1.PolicySnapshot{Policies: []*agentv1.Policy{peer("foo", "p", "STRIKT", 1)}},
			`policy: server:foo/p:8: PeerAuthentication foo/p: spec.mtls.mode: unknown value "STRIKT"`},
		{"named otherwise", &agentv1.PolicySnapshot{Policies: []*agentv1.Policy{mismatch}},
			"policyclient: server:default/y: the document is not one PeerAuthentication named default/y"},
		{"twice", &agentv1.PolicySnapshot{Policies: []*agentv1.Policy{peer("foo", "p", "STRICT", 1), peer("foo", "p", "STRICT", 1)}},
			"policy: server:foo/p:1: PeerAuthentication foo/p is also defined at server:foo/p:1"},
	}
	for _, tt := range tests {
		_, err := policyclient.Documents(tt.snap)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
	}
	if docs, err := policyclient.Documents(&agentv1.PolicySnapshot{}); err != nil || len(docs) != 0 {
		t.Errorf("an empty snapshot: %v, %v; want no documents", docs, err)
	}
}

func TestNewRefuses(t *testing.T) {
	for _, tt := range []struct {
		cfg  policyclient.Config
		want string
	}{
		{policyclient.Config{}, "policyclient: the agent's socket path is required"},
		{policyclient.Config{SocketPath: "a.sock", MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "policyclient: maximum backoff 1ms is below the minimum 1s"},
	} {
		if _, err := policyclient.New(tt.cfg); err == nil || err.Error() != tt.want {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}
