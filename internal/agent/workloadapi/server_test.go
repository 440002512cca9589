package workloadapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// t0 is when the test PKI issues everything; whole seconds, as X.509 keeps
// time.
var t0 = time.Now().Truncate(time.Second)

var (
	east  = spiffeid.RequireTrustDomainFromString("east.example")
	west  = spiffeid.RequireTrustDomainFromString("west.example")
	north = spiffeid.RequireTrustDomainFromString("north.example")
)

// domain is a test trust domain: a root, and an intermediate constrained to
// the domain that signs its SVIDs; and a JWT key.
type domain struct {
	td     spiffeid.TrustDomain
	root   *x509.Certificate
	ca     *pki.CA
	jwtKey crypto.Signer
	kid    string
}

func genKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newDomain(t *testing.T, td spiffeid.TrustDomain) *domain {
	t.Helper()
	rootKey, intKey := genKey(t), genKey(t)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: rootKey, Now: t0, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return t0 }
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{root}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: intKey.Public(), TrustDomain: td, TTL: 12 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: intKey, Chain: chain, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return &domain{td: td, root: root, ca: ca, jwtKey: genKey(t), kid: td.Name() + "-jwt"}
}

func (d *domain) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(d.td, []*x509.Certificate{d.root})
}

// svid issues an SVID for path in d, valid from t0 for ttl.
func (d *domain) svid(t *testing.T, path string, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	key := genKey(t)
	id := spiffeid.RequireFromPath(d.td, path)
	chain, err := d.ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// fakeSource is the agent core as the server sees it: entries that match
// selectors, bundles, and JWT-SVIDs made by signJWT.
type fakeSource struct {
	mu           sync.Mutex
	entries      []entry
	local        *x509bundle.Bundle
	federated    []*x509bundle.Bundle
	jwtLocal     *jwtbundle.Bundle
	jwtFederated []*jwtbundle.Bundle
	signJWT      func(id spiffeid.ID, audience []string) (*jwtsvid.SVID, error)
	changed      chan struct{}
}

type entry struct {
	selectors []string // all required
	id        workloadapi.Identity
}

func newSource(local *x509bundle.Bundle, federated ...*x509bundle.Bundle) *fakeSource {
	return &fakeSource{local: local, federated: federated, changed: make(chan struct{})}
}

func (f *fakeSource) X509SVIDs(sel []attest.Selector) []workloadapi.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	have := map[string]bool{}
	for _, s := range sel {
		have[s.String()] = true
	}
	var out []workloadapi.Identity
	for _, e := range f.entries {
		if !slices.ContainsFunc(e.selectors, func(s string) bool { return !have[s] }) {
			out = append(out, e.id)
		}
	}
	return out
}

func (f *fakeSource) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local, slices.Clone(f.federated)
}

// JWTSVIDs signs a JWT-SVID for each identity X509SVIDs would return.
func (f *fakeSource) JWTSVIDs(_ context.Context, sel []attest.Selector, id spiffeid.ID, audience []string) ([]*jwtsvid.SVID, error) {
	var out []*jwtsvid.SVID
	for _, ident := range f.X509SVIDs(sel) {
		if !id.IsZero() && ident.SVID.ID != id {
			continue
		}
		f.mu.Lock()
		sign := f.signJWT
		f.mu.Unlock()
		svid, err := sign(ident.SVID.ID, audience)
		if err != nil {
			return nil, err
		}
		out = append(out, svid)
	}
	return out, nil
}

func (f *fakeSource) JWTBundles() (*jwtbundle.Bundle, []*jwtbundle.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jwtLocal, slices.Clone(f.jwtFederated)
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// update changes the source under its lock and signals the change.
func (f *fakeSource) update(change func(f *fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
	close(f.changed)
	f.changed = make(chan struct{})
}

// The test process is the workload: these are its selectors.
var (
	myUID    = "unix:uid:" + strconv.Itoa(os.Geteuid())
	otherUID = "unix:uid:" + strconv.Itoa(os.Geteuid()+1)
)

func myPath(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return "unix:path:" + exe
}

// serve runs a server on a fresh socket until the test ends.
func serve(t *testing.T, cfg workloadapi.Config) string {
	t.Helper()
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(t.TempDir(), "run", "agent.sock")
	}
	startServer(t, cfg, nil)
	return cfg.SocketPath
}

// startServer runs a server on cfg.SocketPath until the test ends; before
// it runs, prepare (if set) may adjust it.
func startServer(t *testing.T, cfg workloadapi.Config, prepare func(*workloadapi.Server)) *workloadapi.Server {
	t.Helper()
	srv, err := workloadapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return srv
}

func newClient(t *testing.T, path string) *spiffewl.Client {
	t.Helper()
	c, err := spiffewl.New(t.Context(), spiffewl.WithAddr("unix://"+path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawClient talks to the socket without go-spiffe, so tests can leave the
// security header out and see the wire format.
func rawClient(t *testing.T, path string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func ids(svids []*x509svid.SVID) []string {
	var out []string
	for _, s := range svids {
		out = append(out, s.ID.String())
	}
	return out
}

func tds(set *x509bundle.Set) []string {
	var out []string
	for _, b := range set.Bundles() {
		out = append(out, b.TrustDomain().Name())
	}
	slices.Sort(out)
	return out
}

func sameChain(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code || st.Message() != msg {
		t.Fatalf("error = %v, want %s %q", err, code, msg)
	}
}

// world is the usual setup: east is the local domain; the workload (the
// test process, by uid) federates with west; an entry for another uid
// federates with north; a second entry needs the test binary's path too.
type world struct {
	east, west, north *domain
	src               *fakeSource
	workload, byPath  *x509svid.SVID
	other             *x509svid.SVID
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{east: newDomain(t, east), west: newDomain(t, west), north: newDomain(t, north)}
	w.workload = w.east.svid(t, "/ns/default/sa/reviews", time.Hour)
	w.byPath = w.east.svid(t, "/by-path", time.Hour)
	w.other = w.east.svid(t, "/other", time.Hour)
	w.src = newSource(w.east.bundle(), w.west.bundle(), w.north.bundle())
	w.src.jwtLocal = w.east.jwtBundle()
	w.src.jwtFederated = []*jwtbundle.Bundle{w.west.jwtBundle(), w.north.jwtBundle()}
	w.src.signJWT = func(id spiffeid.ID, aud []string) (*jwtsvid.SVID, error) {
		return w.east.jwtSVID(t, id, aud, time.Now().Add(5*time.Minute)), nil
	}
	w.src.entries = []entry{
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: w.workload, FederatesWith: []spiffeid.TrustDomain{west}}},
		{selectors: []string{otherUID}, id: workloadapi.Identity{SVID: w.other, FederatesWith: []spiffeid.TrustDomain{north}}},
		{selectors: []string{myUID, myPath(t)}, id: workloadapi.Identity{SVID: w.byPath}},
	}
	return w
}

func TestFetchX509Context(t *testing.T) {
	w := newWorld(t)
	c := newClient(t, serve(t, workloadapi.Config{Source: w.src}))

	x, err := c.FetchX509Context(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(x.SVIDs), []string{"spiffe://east.example/ns/default/sa/reviews", "spiffe://east.example/by-path"}; !slices.Equal(got, want) {
		t.Fatalf("SVIDs = %q, want %q", got, want)
	}
	for i, want := range []*x509svid.SVID{w.workload, w.byPath} {
		got := x.SVIDs[i]
		if len(got.Certificates) != 2 || !sameChain(got.Certificates, want.Certificates) {
			t.Errorf("SVID %s: chain differs from the one issued (leaf, intermediate)", got.ID)
		}
		if !got.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(want.PrivateKey.Public()) {
			t.Errorf("SVID %s: not its key", got.ID)
		}
	}
	if got, want := tds(x.Bundles), []string{"east.example", "west.example"}; !slices.Equal(got, want) {
		t.Fatalf("bundles for %q, want %q (north is another workload's federation)", got, want)
	}
	for _, d := range []*domain{w.east, w.west} {
		b, err := x.Bundles.GetX509BundleForTrustDomain(d.td)
		if err != nil {
			t.Fatal(err)
		}
		if !sameChain(b.X509Authorities(), []*x509.Certificate{d.root}) {
			t.Errorf("bundle of %s is not its root", d.td)
		}
	}

	// The default identity is the first.
	def, err := c.FetchX509SVID(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if def.ID != w.workload.ID {
		t.Errorf("default SVID = %s, want %s", def.ID, w.workload.ID)
	}
}

// The wire format, as the spec has it: the chain as concatenated DER, the
// key as PKCS#8, the SVID's own domain's bundle, and federated bundles keyed
// by trust domain ID.
func TestFetchX509SVIDWire(t *testing.T) {
	w := newWorld(t)
	rc := rawClient(t, serve(t, workloadapi.Config{Source: w.src}))
	stream, err := rc.FetchX509SVID(withHeader(t.Context()), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 2 {
		t.Fatalf("%d SVIDs, want 2", len(resp.Svids))
	}
	s := resp.Svids[0]
	if s.SpiffeId != "spiffe://east.example/ns/default/sa/reviews" {
		t.Errorf("spiffe_id = %q", s.SpiffeId)
	}
	if want := append(bytes.Clone(w.workload.Certificates[0].Raw), w.workload.Certificates[1].Raw...); !bytes.Equal(s.X509Svid, want) {
		t.Error("x509_svid is not leaf || intermediate DER")
	}
	if _, err := x509.ParsePKCS8PrivateKey(s.X509SvidKey); err != nil {
		t.Errorf("x509_svid_key: %v", err)
	}
	if !bytes.Equal(s.Bundle, w.east.root.Raw) {
		t.Error("bundle is not east's root DER")
	}
	if len(resp.FederatedBundles) != 1 || !bytes.Equal(resp.FederatedBundles["spiffe://west.example"], w.west.root.Raw) {
		t.Errorf("federated_bundles keys = %v, want exactly spiffe://west.example with west's root", keys(resp.FederatedBundles))
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestX509SourceAndBundles(t *testing.T) {
	w := newWorld(t)
	path := serve(t, workloadapi.Config{Source: w.src})

	src, err := spiffewl.NewX509Source(t.Context(), spiffewl.WithClientOptions(spiffewl.WithAddr("unix://"+path)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != w.workload.ID || !sameChain(svid.Certificates, w.workload.Certificates) {
		t.Errorf("X509Source SVID = %s, want %s with its chain", svid.ID, w.workload.ID)
	}
	if _, err := src.GetX509BundleForTrustDomain(west); err != nil {
		t.Errorf("west: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(north); err == nil {
		t.Error("north's bundle reached a workload that does not federate with it")
	}

	set, err := newClient(t, path).FetchX509Bundles(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tds(set), []string{"east.example", "west.example"}; !slices.Equal(got, want) {
		t.Fatalf("FetchX509Bundles: %q, want %q", got, want)
	}
}

// watcher collects what WatchX509Context delivers.
type watcher struct {
	updates chan *spiffewl.X509Context
}

func (w watcher) OnX509ContextUpdate(c *spiffewl.X509Context) { w.updates <- c }
func (watcher) OnX509ContextWatchError(error)                 {}

func watchContext(t *testing.T, path string) <-chan *spiffewl.X509Context {
	t.Helper()
	w := watcher{updates: make(chan *spiffewl.X509Context, 16)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		newClient(t, path).WatchX509Context(ctx, w)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w.updates
}

func next(t *testing.T, updates <-chan *spiffewl.X509Context) *spiffewl.X509Context {
	t.Helper()
	select {
	case u := <-updates:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update")
		return nil
	}
}

// A change of the source reaches an open stream; a change that does not
// alter this workload's response sends nothing.
func TestWatchX509ContextPush(t *testing.T) {
	w := newWorld(t)
	updates := watchContext(t, serve(t, workloadapi.Config{Source: w.src}))

	first := next(t, updates)
	if first.DefaultSVID().ID != w.workload.ID {
		t.Fatalf("first update: %s", first.DefaultSVID().ID)
	}

	// Another workload's SVID rotates: nothing for this one.
	w.src.update(func(f *fakeSource) {
		f.entries[1].id.SVID = w.east.svid(t, "/other", time.Hour)
	})
	// This workload's SVID rotates and it now federates with north too.
	rotated := w.east.svid(t, "/ns/default/sa/reviews", 2*time.Hour)
	w.src.update(func(f *fakeSource) {
		f.entries[0].id = workloadapi.Identity{SVID: rotated, FederatesWith: []spiffeid.TrustDomain{west, north}}
	})
	second := next(t, updates)
	if got := second.DefaultSVID(); !sameChain(got.Certificates, rotated.Certificates) {
		t.Fatalf("second update carries serial %s, want the rotated %s (an unchanged response was resent?)",
			got.Certificates[0].SerialNumber, rotated.Certificates[0].SerialNumber)
	}
	if got, want := tds(second.Bundles), []string{"east.example", "north.example", "west.example"}; !slices.Equal(got, want) {
		t.Fatalf("bundles %q, want %q", got, want)
	}

	// West rotates its root: the new bundle is pushed.
	newWest := newDomain(t, west)
	w.src.update(func(f *fakeSource) { f.federated[0] = newWest.bundle() })
	third := next(t, updates)
	b, err := third.Bundles.GetX509BundleForTrustDomain(west)
	if err != nil || !sameChain(b.X509Authorities(), []*x509.Certificate{newWest.root}) {
		t.Fatalf("west bundle after its rotation: %v", err)
	}
}

func TestExpiredSVIDsAreNotSent(t *testing.T) {
	d := newDomain(t, east)
	short := d.svid(t, "/short", time.Hour)
	long := d.svid(t, "/long", 2*time.Hour)
	src := newSource(d.bundle())
	src.entries = []entry{
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: short}},
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: long}},
	}
	for _, tc := range []struct {
		at   time.Duration
		want []string
	}{
		{at: 30 * time.Minute, want: []string{"spiffe://east.example/short", "spiffe://east.example/long"}},
		{at: time.Hour, want: []string{"spiffe://east.example/short", "spiffe://east.example/long"}}, // NotAfter itself is valid
		{at: time.Hour + time.Second, want: []string{"spiffe://east.example/long"}},
		{at: 3 * time.Hour},
	} {
		t.Run(tc.at.String(), func(t *testing.T) {
			now := t0.Add(tc.at)
			c := newClient(t, serve(t, workloadapi.Config{Source: src, Clock: func() time.Time { return now }}))
			x, err := c.FetchX509Context(t.Context())
			if tc.want == nil {
				wantStatus(t, err, codes.PermissionDenied, "no identity issued")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(x.SVIDs); !slices.Equal(got, tc.want) {
				t.Fatalf("SVIDs = %q, want %q", got, tc.want)
			}
		})
	}
}

// An SVID that expires while a stream is open is withdrawn from it. The
// clock runs from 300ms before the short SVID's expiry.
func TestExpiryWithdrawsFromOpenStream(t *testing.T) {
	d := newDomain(t, east)
	short := d.svid(t, "/short", time.Hour)
	long := d.svid(t, "/long", 2*time.Hour)
	src := newSource(d.bundle())
	src.entries = []entry{
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: short}},
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: long}},
	}
	start, base := time.Now(), short.Certificates[0].NotAfter.Add(-300*time.Millisecond)
	clock := func() time.Time { return base.Add(time.Since(start)) }
	updates := watchContext(t, serve(t, workloadapi.Config{Source: src, Clock: clock}))

	if got := ids(next(t, updates).SVIDs); !slices.Equal(got, []string{"spiffe://east.example/short", "spiffe://east.example/long"}) {
		t.Fatalf("first update: %q", got)
	}
	if got := ids(next(t, updates).SVIDs); !slices.Equal(got, []string{"spiffe://east.example/long"}) {
		t.Fatalf("after the short SVID expired: %q", got)
	}
}

func TestNoEntryIsPermissionDenied(t *testing.T) {
	w := newWorld(t)
	w.src.entries = w.src.entries[1:2] // only the other uid's
	var logs testsync.Buffer
	c := newClient(t, serve(t, workloadapi.Config{Source: w.src, Logger: slog.New(slog.NewTextHandler(&logs, nil))}))
	_, err := c.FetchX509Context(t.Context())
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	_, err = c.FetchX509Bundles(t.Context())
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	// The agent's log names the caller's selectors, once for the two calls.
	if n := strings.Count(logs.String(), "no identity issued"); n != 1 || !strings.Contains(logs.String(), myUID+",") || !strings.Contains(logs.String(), myPath(t)) {
		t.Errorf("%d lines for two refusals, want 1 with the caller's selectors (%s, %s):\n%s", n, myUID, myPath(t), logs.String())
	}
}

func TestNoBundleIsUnavailable(t *testing.T) {
	w := newWorld(t)
	w.src.local = nil
	c := newClient(t, serve(t, workloadapi.Config{Source: w.src}))
	_, err := c.FetchX509Context(t.Context())
	wantStatus(t, err, codes.Unavailable, "the agent has no trust bundle yet; retry")
}

type failingAttestor struct{ *attest.Attestor }

func (failingAttestor) AttestPeer(context.Context) ([]attest.Selector, error) {
	return nil, errors.New("attest: process 7 has exited")
}

func TestAttestationFailureIsUnauthenticated(t *testing.T) {
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	c := newClient(t, serve(t, workloadapi.Config{Source: w.src, Attestor: failingAttestor{a}}))
	_, err = c.FetchX509Context(t.Context())
	wantStatus(t, err, codes.Unauthenticated, "could not attest the caller: attest: process 7 has exited")
}

// Every method refuses a call without the security header, before it
// looks at the caller.
func TestSecurityHeader(t *testing.T) {
	w := newWorld(t)
	rc := rawClient(t, serve(t, workloadapi.Config{Source: w.src}))
	for name, ctx := range map[string]context.Context{
		"missing": t.Context(),
		"false":   metadata.AppendToOutgoingContext(t.Context(), "workload.spiffe.io", "false"),
		"twice":   metadata.AppendToOutgoingContext(t.Context(), "workload.spiffe.io", "true", "workload.spiffe.io", "true"),
	} {
		t.Run(name, func(t *testing.T) {
			s, err := rc.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			wantStatus(t, err, codes.InvalidArgument, "security header missing")
			b, err := rc.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			if err == nil {
				_, err = b.Recv()
			}
			wantStatus(t, err, codes.InvalidArgument, "security header missing")
			_, err = rc.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			wantStatus(t, err, codes.InvalidArgument, "security header missing")
			j, err := rc.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			if err == nil {
				_, err = j.Recv()
			}
			wantStatus(t, err, codes.InvalidArgument, "security header missing")
			_, err = rc.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
			wantStatus(t, err, codes.InvalidArgument, "security header missing")
		})
	}
}

func TestSocket(t *testing.T) {
	src := newSource(nil)

	t.Run("directory 0755, socket 0777, removed on exit", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "run", "meshfed")
		path := filepath.Join(dir, "agent.sock")
		srv, err := workloadapi.New(workloadapi.Config{SocketPath: path, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(dir)
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("directory: %v, %v; want 0755", st.Mode(), err)
		}
		st, err = os.Lstat(path)
		if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o777 {
			t.Errorf("socket: %v, %v; want a socket, 0777", st.Mode(), err)
		}

		// A second agent on the same path is refused while this one lives.
		_, err = workloadapi.New(workloadapi.Config{SocketPath: path, Source: src})
		if want := "workloadapi: " + path + " is in use by a running agent; stop it or choose another socket path"; err == nil || err.Error() != want {
			t.Errorf("second agent: %v, want %q", err, want)
		}

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})

	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "agent.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // a crashed agent's socket file
		srv, err := workloadapi.New(workloadapi.Config{SocketPath: path, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		srv.Close()
	})

	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "agent.sock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := workloadapi.New(workloadapi.Config{SocketPath: path, Source: src})
		if want := "workloadapi: " + path + " exists and is not a socket; remove it or choose another socket path"; err == nil || err.Error() != want {
			t.Fatalf("error = %v, want %q", err, want)
		}
	})

	t.Run("config", func(t *testing.T) {
		for _, tc := range []struct {
			cfg  workloadapi.Config
			want string
		}{
			{workloadapi.Config{Source: src}, "workloadapi: a socket path is required"},
			{workloadapi.Config{SocketPath: "x.sock"}, "workloadapi: a source of SVIDs is required"},
		} {
			if _, err := workloadapi.New(tc.cfg); err == nil || err.Error() != tc.want {
				t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
			}
		}
	})
}
