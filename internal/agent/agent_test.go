package agent

import (
	"context"
	"crypto/x509"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// fakeClock is the agent's clock; the server keeps the real one.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

type testServer struct {
	srv    *server.Server
	admin  pb.AdminClient
	bundle string // PEM file of the trust domain's root
	stop   func()
}

func startServer(t *testing.T, dir string) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{
		TrustDomain: "east.example", DataDir: filepath.Join(dir, "server"),
		Listen: "127.0.0.1:0", BundleListen: "127.0.0.1:0", MetricsListen: "off",
		AdminSocket: filepath.Join(dir, "admin.sock"),
	}, server.Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	conn, err := grpc.NewClient("unix://"+srv.Addrs().AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testServer{srv: srv, admin: pb.NewAdminClient(conn), bundle: filepath.Join(dir, "server", "ca", "ca.pem"), stop: stop}
}

const nodeID = "spiffe://east.example/node/host-1"

// setup starts a server, makes a token and an entry, and an attested agent.
func setup(t *testing.T) (*testServer, *Agent, *fakeClock, string) {
	t.Helper()
	dir := t.TempDir()
	ts := startServer(t, dir)
	ctx := context.Background()
	tok, err := ts.admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: nodeID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}, FederatesWith: []string{"west.example"},
	}}); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Now()}
	a, err := New(Config{ServerAddr: ts.srv.Addrs().Listen.String(), TrustBundle: ts.bundle, JoinToken: tok.GetToken(),
		DataDir: filepath.Join(dir, "agent"), Clock: clock.Now, MaxBackoff: 8 * time.Second,
		Rand: func() float64 { return 0.5 }}) // a retry waits 3/4 of its backoff
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return ts, a, clock, filepath.Join(dir, "agent")
}

// pull applies one snapshot of the Watch stream.
func pull(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := a.client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(snap); err != nil {
		t.Fatal(err)
	}
}

func TestAttestPersistAndServeEntries(t *testing.T) {
	ts, a, clock, dataDir := setup(t)
	if a.NodeID().String() != nodeID {
		t.Fatalf("node ID %s", a.NodeID())
	}
	st, err := os.Stat(filepath.Join(dataDir, nodeKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("node key: %v, mode %v", err, st.Mode().Perm())
	}
	pull(t, a)
	if got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}}); len(got) != 0 {
		t.Fatal("an SVID before any was signed")
	}
	a.Sync(context.Background())
	got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:1000"}})
	if len(got) != 1 || got[0].SVID.ID.String() != "spiffe://east.example/ns/default/sa/reviews" {
		t.Fatalf("SVIDs for uid 1000: %+v", got)
	}
	if len(got[0].FederatesWith) != 1 || got[0].FederatesWith[0].Name() != "west.example" {
		t.Errorf("federates with %v", got[0].FederatesWith)
	}
	if other := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1001"}}); len(other) != 0 {
		t.Errorf("uid 1001 got %d SVIDs", len(other))
	}
	first := got[0].SVID.Certificates[0]

	// Before half life nothing is renewed; after it, a new key and SVID.
	clock.Set(first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 35 / 100))
	a.Sync(context.Background())
	if now := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}})[0].SVID.Certificates[0]; !now.Equal(first) {
		t.Fatal("renewed before half life")
	}
	clock.Set(first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 61 / 100))
	a.Sync(context.Background())
	second := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}})[0].SVID
	if second.Certificates[0].Equal(first) || second.Certificates[0].PublicKey == first.PublicKey {
		t.Fatal("not renewed after half life")
	}

	// The server goes away: the agent keeps serving until expiry, retrying
	// with exponential backoff, and then serves nothing rather than an
	// expired SVID.
	ts.stop()
	leaf := second.Certificates[0]
	// Past half of the life it had when it arrived (renewAt counts from
	// then, not from the backdated NotBefore).
	received := clock.Now()
	at := received.Add(leaf.NotAfter.Sub(received) * 61 / 100)
	clock.Set(at)
	var waits []time.Duration
	for range 5 {
		next := a.Cache.nextDue()
		if !next.After(clock.Now()) {
			a.Sync(context.Background())
			next = a.Cache.nextDue()
		}
		waits = append(waits, next.Sub(clock.Now()))
		clock.Set(next)
		a.Sync(context.Background())
	}
	// 1 s, 2 s, 4 s, 8 s, 8 s (MaxBackoff), each spread to between half and
	// all of itself: 3/4 with the test's Rand.
	want := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second, 6 * time.Second, 6 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("backoff %v, want %v", waits, want)
		}
	}
	if got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}}); len(got) != 1 || !got[0].SVID.Certificates[0].Equal(leaf) {
		t.Fatal("stopped serving the still-valid SVID while the server is down")
	}
	clock.Set(leaf.NotAfter.Add(time.Second))
	if got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}}); len(got) != 0 {
		t.Fatal("served an expired SVID")
	}

	// The metrics tell the same story: two good signings, six failed tries,
	// no SVID held now.
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`meshfed_agent_renewals_total{kind="workload",result="ok"} 2`,
		`meshfed_agent_renewals_total{kind="workload",result="error"} 6`,
		"meshfed_agent_svids 0",
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	rec = httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 {
		t.Errorf("/readyz %d: %s", rec.Code, rec.Body.String())
	}
}

func TestRestartUsesThePersistedNodeSVID(t *testing.T) {
	ts, a, _, dataDir := setup(t)
	a.Close()
	again, err := New(Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Start(context.Background()); err != nil {
		t.Fatalf("restart without a join token: %v", err)
	}
	if again.NodeID().String() != nodeID {
		t.Fatalf("node ID after restart %s", again.NodeID())
	}
	pull(t, again)
	again.Sync(context.Background())
	if got := again.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}}); len(got) != 1 {
		t.Fatal("no workload SVID after a restart")
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir)
	otherKey, _ := pki.GenerateKey(pki.ECP256)
	otherRoot, _ := pki.CreateRoot(pki.RootRequest{Signer: otherKey})
	otherBundle := filepath.Join(dir, "other.pem")
	os.WriteFile(otherBundle, pemfile.EncodeCertificates(otherRoot), 0o644)
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: filepath.Join(dir, "a0"), TrustBundle: otherBundle, JoinToken: strings.Repeat("A", 43)},
			"the server's SVID does not verify with the trust bundle"},
		{Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: filepath.Join(dir, "a1")}, "--trust-bundle is required on first start"},
		{Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: filepath.Join(dir, "a2"), TrustBundle: ts.bundle}, "no valid node SVID and no --join-token"},
		{Config{ServerAddr: ts.srv.Addrs().Listen.String(), DataDir: filepath.Join(dir, "a3"), TrustBundle: ts.bundle, JoinToken: strings.Repeat("A", 43)}, "attestation refused"},
	}
	for _, tc := range cases {
		a, err := New(tc.cfg)
		if err == nil {
			err = a.Start(context.Background())
			a.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// A federated bundle marked all_workloads (another member of this domain's
// VirtualMesh) reaches every workload; any other only those whose entries
// federate with its trust domain.
func TestMeshWideFederatedBundles(t *testing.T) {
	_, a, _, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := a.client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	roots := snap.GetBundle().GetSpiffeBundle()
	snap.Federated = append(snap.Federated,
		&pb.Bundle{TrustDomain: "west.example", SpiffeBundle: roots},
		&pb.Bundle{TrustDomain: "mesh.example", SpiffeBundle: roots, AllWorkloads: true},
		&pb.Bundle{TrustDomain: "other.example", SpiffeBundle: roots})
	if err := a.Apply(snap); err != nil {
		t.Fatal(err)
	}
	a.Sync(context.Background())
	got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}})
	if len(got) != 1 {
		t.Fatalf("%d SVIDs", len(got))
	}
	var names []string
	for _, td := range got[0].FederatesWith {
		names = append(names, td.Name())
	}
	if want := []string{"mesh.example", "west.example"}; !slices.Equal(names, want) {
		t.Errorf("federates with %v, want %v", names, want)
	}
}

// A short-lived SVID whose NotBefore the CA backdated for clock skew is
// renewed at half the life it has left when it arrives, not at once (which
// would renew it again and again).
func TestRenewAtShortLivedBackdated(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &x509.Certificate{NotBefore: now.Add(-30 * time.Second), NotAfter: now.Add(20 * time.Second)}
	for _, tc := range []struct {
		frac float64
		want time.Time
	}{
		{0, now.Add(10 * time.Second)},
		{0.1, now.Add(12 * time.Second)},
		{-0.1, now.Add(8 * time.Second)},
	} {
		if got := renewAt(c, now, tc.frac); !got.Equal(tc.want) {
			t.Errorf("renewAt(frac %v) = %s after arrival, want %s", tc.frac, got.Sub(now), tc.want.Sub(now))
		}
	}
	// Received before its NotBefore (a clock behind the CA's): counted from
	// NotBefore.
	if got := renewAt(c, now.Add(-time.Minute), 0); !got.Equal(now.Add(-5 * time.Second)) {
		t.Errorf("received early: %s", got)
	}
}

// When the server says it signs under another root, the SVIDs under the old
// one are renewed within rootSwitchSpread rather than at half their life;
// the same root moves nothing.
func TestRenewOnSigningRootChange(t *testing.T) {
	_, a, clock, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := a.client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.GetSigningRootKeyId()) == 0 {
		t.Fatal("the server sent no signing root")
	}
	if err := a.Apply(snap); err != nil {
		t.Fatal(err)
	}
	a.Sync(context.Background())
	first := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}})[0].SVID.Certificates[0]
	halfLife := a.Cache.nextDue()
	if err := a.Apply(snap); err != nil { // the same root again
		t.Fatal(err)
	}
	if got := a.Cache.nextDue(); !got.Equal(halfLife) {
		t.Fatalf("the same signing root moved the renewal from %s to %s", halfLife, got)
	}
	snap.SigningRootKeyId = []byte{1, 2, 3}
	if err := a.Apply(snap); err != nil {
		t.Fatal(err)
	}
	due := a.Cache.nextDue()
	if due.Before(clock.Now()) || !due.Before(clock.Now().Add(rootSwitchSpread)) {
		t.Fatalf("renewal at %s after the switch, want within %s", due.Sub(clock.Now()), rootSwitchSpread)
	}
	a.mu.Lock()
	nodeNext := a.nodeNext
	a.mu.Unlock()
	if !nodeNext.Before(clock.Now().Add(rootSwitchSpread)) {
		t.Errorf("node SVID renewal at %s after the switch", nodeNext.Sub(clock.Now()))
	}
	clock.Set(due)
	a.Sync(context.Background())
	if now := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:1000"}})[0].SVID.Certificates[0]; now.Equal(first) {
		t.Error("not renewed after the signing root changed")
	}
}

// TestSpread: a retry waits between half and all of its backoff.
func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{
		{0, 4 * time.Second},
		{0.5, 6 * time.Second},
		{0.999, 7996 * time.Millisecond},
	} {
		a := &Agent{cfg: Config{Rand: func() float64 { return tc.r }}}
		if got := a.spread(8 * time.Second); got != tc.want {
			t.Errorf("Rand %v: spread(8s) = %s, want %s", tc.r, got, tc.want)
		}
	}
}
