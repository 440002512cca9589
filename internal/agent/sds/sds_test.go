package sds_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/sds"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// t0 is when the test PKI issues everything; whole seconds, as X.509 keeps
// time.
var t0 = time.Now().Truncate(time.Second)

var (
	east  = spiffeid.RequireTrustDomainFromString("east.example")
	west  = spiffeid.RequireTrustDomainFromString("west.example")
	north = spiffeid.RequireTrustDomainFromString("north.example")
)

// domain is a test trust domain: a root, and an intermediate constrained to
// the domain that signs its SVIDs.
type domain struct {
	td   spiffeid.TrustDomain
	root *x509.Certificate
	ca   *pki.CA
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
	return &domain{td: td, root: root, ca: ca}
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

// fakeSource is the agent core as the server sees it. Every read of SVIDs
// reports the source's generation (the number of updates) on reads, so a
// test can wait until the server has seen an update.
type fakeSource struct {
	mu        sync.Mutex
	entries   []entry
	local     *x509bundle.Bundle
	federated []*x509bundle.Bundle
	changed   chan struct{}
	gen       int
	reads     chan int
}

type entry struct {
	selectors []string // all required
	id        workloadapi.Identity
}

func newSource(local *x509bundle.Bundle, federated ...*x509bundle.Bundle) *fakeSource {
	return &fakeSource{local: local, federated: federated, changed: make(chan struct{}), reads: make(chan int, 1024)}
}

func (f *fakeSource) X509SVIDs(sel []attest.Selector) []workloadapi.Identity {
	f.mu.Lock()
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
	gen := f.gen
	f.mu.Unlock()
	select {
	case f.reads <- gen:
	default:
	}
	return out
}

func (f *fakeSource) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local, slices.Clone(f.federated)
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// update changes the source under its lock, signals the change and returns
// the new generation.
func (f *fakeSource) update(change func(f *fakeSource)) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
	f.gen++
	close(f.changed)
	f.changed = make(chan struct{})
	return f.gen
}

// waitRead returns once the server has read the source at generation gen
// or later: whatever it sends because of that read is then on its way.
func (f *fakeSource) waitRead(t *testing.T, gen int) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case g := <-f.reads:
			if g >= gen {
				return
			}
		case <-timeout:
			t.Fatalf("the server never read generation %d of the source", gen)
		}
	}
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

// syncBuffer is a log destination safe for the server's goroutines; each
// write signals written, so a test can wait for a line without sleeping.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.written <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

// waitFor returns once the log holds s.
func (b *syncBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for !strings.Contains(b.String(), s) {
		select {
		case <-b.written:
		case <-timeout:
			t.Fatalf("the log never said %q:\n%s", s, b.String())
		}
	}
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serve runs a server on a fresh socket until the test ends, logging at
// debug level; when the test ends, the log must hold no private key.
func serve(t *testing.T, cfg sds.Config) (string, *syncBuffer) {
	t.Helper()
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(t.TempDir(), "run", "sds.sock")
	}
	logs := &syncBuffer{written: make(chan struct{}, 1)}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := sds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		// "MIGHAgEA" starts the base64 of every PKCS#8 P-256 key.
		if l := logs.String(); strings.Contains(l, "PRIVATE KEY") || strings.Contains(l, "MIGHAgEA") {
			t.Errorf("a private key reached the log:\n%s", l)
		}
	})
	return cfg.SocketPath, logs
}

// client is an SDS client made from go-control-plane's generated stubs, as
// Envoy speaks to an SDS server on a unix socket.
func client(t *testing.T, path string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

// streamContext bounds a stream, so that a response that never comes fails
// the test instead of hanging it.
func streamContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var node = &corev3.Node{Id: "sidecar~10.0.0.1~reviews~default.svc.cluster.local", Cluster: "reviews"}

func request(names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: secretType, ResourceNames: names}
}

// reply is the client's answer to resp: an ACK, or a NACK if detail is set.
func reply(resp *discoveryv3.DiscoveryResponse, detail *rpcstatus.Status, names ...string) *discoveryv3.DiscoveryRequest {
	r := request(names...)
	r.ResponseNonce = resp.Nonce
	if detail == nil {
		r.VersionInfo = resp.VersionInfo
	}
	r.ErrorDetail = detail
	return r
}

func openStream(t *testing.T, c secretv3.SecretDiscoveryServiceClient) secretv3.SecretDiscoveryService_StreamSecretsClient {
	t.Helper()
	s, err := c.StreamSecrets(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func send[T any](t *testing.T, s interface{ Send(T) error }, req T) {
	t.Helper()
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
}

func recv[T any](t *testing.T, s interface{ Recv() (T, error) }) T {
	t.Helper()
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// secrets decodes the resources of a response by name, checking that each
// is a Secret named as listed, in order.
func secrets(t *testing.T, resources []*anypb.Any, wantNames ...string) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	var got []string
	for _, a := range resources {
		if a.TypeUrl != secretType {
			t.Fatalf("resource of type %q", a.TypeUrl)
		}
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s.Name)
		out[s.Name] = s
	}
	if !slices.Equal(got, wantNames) {
		t.Fatalf("resources %q, want %q", got, wantNames)
	}
	return out
}

func sameChain(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// wantCert checks that s is want as Envoy reads it: the PEM chain, leaf
// first, with want's SPIFFE ID, and its key as PKCS#8 PEM.
func wantCert(t *testing.T, s *tlsv3.Secret, want *x509svid.SVID) {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("%s: not a TLS certificate: %v", s.Name, s)
	}
	chain, err := pemfile.ParseCertificates(tc.GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatalf("%s: chain: %v", s.Name, err)
	}
	if !sameChain(chain, want.Certificates) {
		t.Fatalf("%s: chain of %d certificates differs from the one issued (leaf, intermediate)", s.Name, len(chain))
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil || id != want.ID {
		t.Fatalf("%s: SPIFFE ID %v (%v), want %s", s.Name, id, err, want.ID)
	}
	block, rest := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
	if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("%s: private key is not one PKCS#8 PEM block", s.Name)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("%s: private key: %v", s.Name, err)
	}
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(want.PrivateKey.Public()) {
		t.Fatalf("%s: the key is not the SVID's", s.Name)
	}
}

// wantTrustedCA checks that s is a validation context trusting exactly root.
func wantTrustedCA(t *testing.T, s *tlsv3.Secret, root *x509.Certificate) {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil || vc.CustomValidatorConfig != nil {
		t.Fatalf("%s: not a plain validation context: %v", s.Name, s)
	}
	got, err := pemfile.ParseCertificates(vc.GetTrustedCa().GetInlineBytes())
	if err != nil || !sameChain(got, []*x509.Certificate{root}) {
		t.Fatalf("%s: trusted_ca is not exactly the root (%v)", s.Name, err)
	}
}

// wantSPIFFEValidator checks that s configures Envoy's SPIFFE validator with
// exactly the domains given, in order, each with its own root only.
func wantSPIFFEValidator(t *testing.T, s *tlsv3.Secret, domains ...*domain) {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil || vc.TrustedCa != nil {
		t.Fatalf("%s: want a validation context without trusted_ca: %v", s.Name, s)
	}
	cv := vc.GetCustomValidatorConfig()
	if cv.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("%s: custom validator %q", s.Name, cv.GetName())
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatalf("%s: typed config: %v", s.Name, err)
	}
	var got, want []string
	for _, d := range domains {
		want = append(want, d.td.Name())
	}
	for _, td := range cfg.TrustDomains {
		got = append(got, td.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: trust domains %q, want %q", s.Name, got, want)
	}
	for i, td := range cfg.TrustDomains {
		roots, err := pemfile.ParseCertificates(td.GetTrustBundle().GetInlineBytes())
		if err != nil || !sameChain(roots, []*x509.Certificate{domains[i].root}) {
			t.Fatalf("%s: the bundle of %s is not exactly its root (%v)", s.Name, td.Name, err)
		}
	}
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
	w.src.entries = []entry{
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: w.workload, FederatesWith: []spiffeid.TrustDomain{west}}},
		{selectors: []string{otherUID}, id: workloadapi.Identity{SVID: w.other, FederatesWith: []spiffeid.TrustDomain{north}}},
		{selectors: []string{myUID, myPath(t)}, id: workloadapi.Identity{SVID: w.byPath}},
	}
	return w
}

// The certificate and both validation contexts, an ACK, then a rotation:
// pushed with a new version; another workload's rotation pushes nothing.
func TestStreamSecrets(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	s := openStream(t, client(t, path))

	send(t, s, request("default", "ROOTCA", "ALL"))
	first := recv(t, s)
	if first.TypeUrl != secretType || first.VersionInfo == "" || first.Nonce != "1" {
		t.Fatalf("type %q, version %q, nonce %q", first.TypeUrl, first.VersionInfo, first.Nonce)
	}
	got := secrets(t, first.Resources, "ALL", "ROOTCA", "default")
	wantCert(t, got["default"], w.workload)
	wantTrustedCA(t, got["ROOTCA"], w.east.root)
	// North is another workload's federation: not in this one's validator.
	wantSPIFFEValidator(t, got["ALL"], w.east, w.west)

	send(t, s, reply(first, nil, "default", "ROOTCA", "ALL"))
	gen := w.src.update(func(f *fakeSource) { f.entries[1].id.SVID = w.east.svid(t, "/other", time.Hour) })
	w.src.waitRead(t, gen)

	rotated := w.east.svid(t, "/ns/default/sa/reviews", 2*time.Hour)
	w.src.update(func(f *fakeSource) { f.entries[0].id.SVID = rotated })
	second := recv(t, s)
	if second.VersionInfo == first.VersionInfo || second.Nonce != "2" {
		t.Fatalf("push after rotation: version %q (was %q), nonce %q; an unchanged response was resent?", second.VersionInfo, first.VersionInfo, second.Nonce)
	}
	got2 := secrets(t, second.Resources, "ALL", "ROOTCA", "default")
	wantCert(t, got2["default"], rotated)
	for _, name := range []string{"ALL", "ROOTCA"} {
		if !proto.Equal(got[name], got2[name]) {
			t.Errorf("%s changed although the bundles did not", name)
		}
	}

	// West rotates its root: the validator is pushed with the new bundle.
	send(t, s, reply(second, nil, "default", "ROOTCA", "ALL"))
	newWest := newDomain(t, west)
	w.src.update(func(f *fakeSource) { f.federated[0] = newWest.bundle() })
	third := recv(t, s)
	wantSPIFFEValidator(t, secrets(t, third.Resources, "ALL", "ROOTCA", "default")["ALL"], w.east, newWest)
}

// A NACK is logged and the rejected version is not sent again; the next
// response goes out only when the content changes.
func TestStreamNACK(t *testing.T) {
	w := newWorld(t)
	path, logs := serve(t, sds.Config{Source: w.src})
	s := openStream(t, client(t, path))

	send(t, s, request("default"))
	first := recv(t, s)
	send(t, s, reply(first, &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "Failed to load certificate chain from <inline>"}, "default"))
	// Requests on a stream are handled in order: had the NACK been answered
	// with the same version, that would arrive before this answer.
	send(t, s, reply(first, nil, "default", "ROOTCA"))
	second := recv(t, s)
	secrets(t, second.Resources, "ROOTCA", "default")
	if second.VersionInfo == first.VersionInfo || second.Nonce != "2" {
		t.Fatalf("after the NACK: version %q nonce %q; the rejected version %q was resent?", second.VersionInfo, second.Nonce, first.VersionInfo)
	}
	logs.waitFor(t, `message="Failed to load certificate chain from <inline>"`)

	// NACK that one too. Once the NACK is handled, a change that leaves
	// the response as it was sends nothing; a rotation sends a new version.
	send(t, s, reply(second, &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected again"}, "default", "ROOTCA"))
	logs.waitFor(t, `rejected_version=`+second.VersionInfo)
	gen := w.src.update(func(f *fakeSource) { f.entries[1].id.SVID = w.east.svid(t, "/other", time.Hour) })
	w.src.waitRead(t, gen)
	rotated := w.east.svid(t, "/ns/default/sa/reviews", 2*time.Hour)
	w.src.update(func(f *fakeSource) { f.entries[0].id.SVID = rotated })
	third := recv(t, s)
	if third.Nonce != "3" {
		t.Fatalf("nonce %q, want 3: the rejected version was resent?", third.Nonce)
	}
	wantCert(t, secrets(t, third.Resources, "ROOTCA", "default")["default"], rotated)
	if !strings.Contains(logs.String(), `message="rejected again"`) {
		t.Errorf("the second NACK was not logged with its message:\n%s", logs.String())
	}
}

// A reply carrying an older nonce is stale: its subscription is ignored.
func TestStreamStaleNonce(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	s := openStream(t, client(t, path))

	send(t, s, request("default"))
	first := recv(t, s)
	send(t, s, reply(first, nil, "default", "ROOTCA"))
	second := recv(t, s)
	send(t, s, reply(first, nil, "default", "ALL")) // stale: ignored
	send(t, s, reply(second, nil, "default", "spiffe://west.example"))
	third := recv(t, s)
	secrets(t, third.Resources, "default", "spiffe://west.example")
}

func TestFetchSecrets(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	c := client(t, path)

	t.Run("names", func(t *testing.T) {
		resp, err := c.FetchSecrets(t.Context(), request("default", "ROOTCA", "spiffe://west.example", "spiffe://east.example",
			"spiffe://east.example/by-path",
			"spiffe://north.example",      // the other workload's federation
			"spiffe://east.example/other", // the other workload's SVID
			"nonsense", "spiffe://East.example"))
		if err != nil {
			t.Fatal(err)
		}
		got := secrets(t, resp.Resources, "ROOTCA", "default", "spiffe://east.example", "spiffe://east.example/by-path", "spiffe://west.example")
		wantCert(t, got["default"], w.workload)
		wantCert(t, got["spiffe://east.example/by-path"], w.byPath)
		wantTrustedCA(t, got["ROOTCA"], w.east.root)
		wantTrustedCA(t, got["spiffe://east.example"], w.east.root)
		wantTrustedCA(t, got["spiffe://west.example"], w.west.root)
		if resp.Nonce != "" || resp.VersionInfo == "" {
			t.Errorf("nonce %q, version %q", resp.Nonce, resp.VersionInfo)
		}
		again, err := c.FetchSecrets(t.Context(), request("default", "ROOTCA", "spiffe://west.example", "spiffe://east.example", "spiffe://east.example/by-path"))
		if err != nil || again.VersionInfo != resp.VersionInfo {
			t.Errorf("the same resources got version %q (%v), then %q", resp.VersionInfo, err, again.VersionInfo)
		}
	})

	wildcard := []string{"spiffe://east.example", "spiffe://east.example/by-path", "spiffe://east.example/ns/default/sa/reviews", "spiffe://west.example"}
	for name, req := range map[string]*discoveryv3.DiscoveryRequest{"no names": request(), "*": request("*")} {
		t.Run("wildcard "+name, func(t *testing.T) {
			resp, err := c.FetchSecrets(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			got := secrets(t, resp.Resources, wildcard...)
			wantCert(t, got["spiffe://east.example/ns/default/sa/reviews"], w.workload)
		})
	}

	t.Run("wrong type", func(t *testing.T) {
		req := request("default")
		req.TypeUrl = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
		_, err := c.FetchSecrets(t.Context(), req)
		wantStatus(t, err, codes.InvalidArgument, `type_url "type.googleapis.com/envoy.config.cluster.v3.Cluster" is not served here; the Secret Discovery Service serves only `+secretType)
	})

	t.Run("no entry", func(t *testing.T) {
		src := newSource(w.east.bundle())
		src.entries = w.src.entries[1:2] // only the other uid's
		path, _ := serve(t, sds.Config{Source: src})
		_, err := client(t, path).FetchSecrets(t.Context(), request("default", "ROOTCA"))
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	})

	t.Run("renamed aliases", func(t *testing.T) {
		path, _ := serve(t, sds.Config{Source: w.src, SVIDName: "svid", BundleName: "bundle", AllBundlesName: "federated"})
		resp, err := client(t, path).FetchSecrets(t.Context(), request("svid", "bundle", "federated", "default", "ROOTCA", "ALL"))
		if err != nil {
			t.Fatal(err)
		}
		got := secrets(t, resp.Resources, "bundle", "federated", "svid")
		wantCert(t, got["svid"], w.workload)
		wantSPIFFEValidator(t, got["federated"], w.east, w.west)
	})
}

// A workload matching no entry is sent an empty response and stays
// connected; its secrets are pushed when an entry appears.
func TestStreamBeforeRegistration(t *testing.T) {
	w := newWorld(t)
	entries := w.src.entries
	w.src.entries = entries[1:2]
	path, _ := serve(t, sds.Config{Source: w.src})
	s := openStream(t, client(t, path))

	send(t, s, request("default", "ROOTCA"))
	first := recv(t, s)
	secrets(t, first.Resources)
	send(t, s, reply(first, nil, "default", "ROOTCA"))

	w.src.update(func(f *fakeSource) { f.entries = entries })
	second := recv(t, s)
	wantCert(t, secrets(t, second.Resources, "ROOTCA", "default")["default"], w.workload)
}

func TestDeltaSecrets(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	c := client(t, path)
	s, err := c.DeltaSecrets(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	deltaSecrets := func(resp *discoveryv3.DeltaDiscoveryResponse, wantNames ...string) map[string]*tlsv3.Secret {
		t.Helper()
		if resp.TypeUrl != secretType {
			t.Fatalf("type %q", resp.TypeUrl)
		}
		var anys []*anypb.Any
		for _, r := range resp.Resources {
			if r.Version == "" || r.Version == versions[r.Name] {
				t.Fatalf("%s sent with version %q, which the client had", r.Name, r.Version)
			}
			versions[r.Name] = r.Version
			anys = append(anys, r.Resource)
		}
		return secrets(t, anys, wantNames...)
	}

	send(t, s, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: secretType, ResourceNamesSubscribe: []string{"default", "ALL"}})
	first := recv(t, s)
	got := deltaSecrets(first, "ALL", "default")
	wantCert(t, got["default"], w.workload)
	wantSPIFFEValidator(t, got["ALL"], w.east, w.west)

	// Rotation: only the certificate is sent.
	send(t, s, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResponseNonce: first.Nonce})
	rotated := w.east.svid(t, "/ns/default/sa/reviews", 2*time.Hour)
	w.src.update(func(f *fakeSource) { f.entries[0].id.SVID = rotated })
	second := recv(t, s)
	wantCert(t, deltaSecrets(second, "default")["default"], rotated)
	if len(second.RemovedResources) != 0 {
		t.Fatalf("removed %q", second.RemovedResources)
	}

	// Subscribe to ROOTCA, unsubscribe from ALL: only ROOTCA is sent.
	send(t, s, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResponseNonce: second.Nonce,
		ResourceNamesSubscribe: []string{"ROOTCA"}, ResourceNamesUnsubscribe: []string{"ALL"}})
	third := recv(t, s)
	wantTrustedCA(t, deltaSecrets(third, "ROOTCA")["ROOTCA"], w.east.root)

	// The workload's entry is deleted: what it holds is removed.
	send(t, s, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResponseNonce: third.Nonce})
	w.src.update(func(f *fakeSource) { f.entries = f.entries[1:2] })
	fourth := recv(t, s)
	deltaSecrets(fourth)
	if !slices.Equal(fourth.RemovedResources, []string{"ROOTCA", "default"}) {
		t.Fatalf("removed %q, want ROOTCA and default", fourth.RemovedResources)
	}
	if fourth.Nonce != "4" {
		t.Fatalf("nonce %q, want 4", fourth.Nonce)
	}
}

// A reconnecting client is not resent what it has.
func TestDeltaInitialVersions(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	c := client(t, path)

	s1, err := c.DeltaSecrets(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	send(t, s1, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: secretType, ResourceNamesSubscribe: []string{"default"}})
	first := recv(t, s1)
	if len(first.Resources) != 1 {
		t.Fatalf("%d resources", len(first.Resources))
	}

	s2, err := c.DeltaSecrets(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	send(t, s2, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: secretType,
		ResourceNamesSubscribe:  []string{"default", "ROOTCA", "spiffe://north.example"},
		InitialResourceVersions: map[string]string{"default": first.Resources[0].Version, "spiffe://north.example": "7"}})
	resp := recv(t, s2)
	var got []string
	for _, r := range resp.Resources {
		got = append(got, r.Name)
	}
	if !slices.Equal(got, []string{"ROOTCA"}) || !slices.Equal(resp.RemovedResources, []string{"spiffe://north.example"}) {
		t.Fatalf("resources %q removed %q; want ROOTCA only (default is current), north's bundle removed (the workload does not federate with north)", got, resp.RemovedResources)
	}
}

// An expired SVID is never served: "default" moves to the next valid one.
func TestExpiredSVIDs(t *testing.T) {
	d := newDomain(t, east)
	short := d.svid(t, "/short", time.Hour)
	long := d.svid(t, "/long", 2*time.Hour)
	newSrc := func() *fakeSource {
		src := newSource(d.bundle())
		src.entries = []entry{
			{selectors: []string{myUID}, id: workloadapi.Identity{SVID: short}},
			{selectors: []string{myUID}, id: workloadapi.Identity{SVID: long}},
		}
		return src
	}

	t.Run("fetch", func(t *testing.T) {
		for _, tc := range []struct {
			at          time.Duration
			names       []string
			wantDefault *x509svid.SVID
		}{
			{at: 30 * time.Minute, names: []string{"default", "spiffe://east.example/short"}, wantDefault: short},
			{at: time.Hour, names: []string{"default", "spiffe://east.example/short"}, wantDefault: short}, // NotAfter itself is valid
			{at: time.Hour + time.Second, names: []string{"default"}, wantDefault: long},
			{at: 3 * time.Hour},
		} {
			t.Run(tc.at.String(), func(t *testing.T) {
				now := t0.Add(tc.at)
				path, _ := serve(t, sds.Config{Source: newSrc(), Clock: func() time.Time { return now }})
				resp, err := client(t, path).FetchSecrets(t.Context(), request("default", "spiffe://east.example/short"))
				if tc.wantDefault == nil {
					wantStatus(t, err, codes.PermissionDenied, "no identity issued")
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				wantCert(t, secrets(t, resp.Resources, tc.names...)["default"], tc.wantDefault)
			})
		}
	})

	t.Run("stream", func(t *testing.T) {
		var now atomic.Pointer[time.Time]
		at := t0.Add(30 * time.Minute)
		now.Store(&at)
		src := newSrc()
		path, _ := serve(t, sds.Config{Source: src, Clock: func() time.Time { return *now.Load() }})
		s := openStream(t, client(t, path))
		send(t, s, request("default", "spiffe://east.example/short"))
		first := recv(t, s)
		wantCert(t, secrets(t, first.Resources, "default", "spiffe://east.example/short")["default"], short)
		send(t, s, reply(first, nil, "default", "spiffe://east.example/short"))

		later := short.Certificates[0].NotAfter.Add(time.Second)
		now.Store(&later)
		src.update(func(*fakeSource) {}) // wake the stream
		second := recv(t, s)
		wantCert(t, secrets(t, second.Resources, "default")["default"], long)
	})

	// No change of the source: the stream wakes at the expiry by itself.
	// The clock runs from 300ms before the short SVID's expiry.
	t.Run("delta at expiry", func(t *testing.T) {
		start, base := time.Now(), short.Certificates[0].NotAfter.Add(-300*time.Millisecond)
		clock := func() time.Time { return base.Add(time.Since(start)) }
		path, _ := serve(t, sds.Config{Source: newSrc(), Clock: clock})
		s, err := client(t, path).DeltaSecrets(streamContext(t))
		if err != nil {
			t.Fatal(err)
		}
		send(t, s, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: secretType, ResourceNamesSubscribe: []string{"default", "spiffe://east.example/short"}})
		first := recv(t, s)
		if len(first.Resources) != 2 {
			t.Fatalf("%d resources, want 2", len(first.Resources))
		}
		send(t, s, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResponseNonce: first.Nonce})
		second := recv(t, s)
		if !slices.Equal(second.RemovedResources, []string{"spiffe://east.example/short"}) || len(second.Resources) != 1 {
			t.Fatalf("at expiry: %d resources, removed %q; want default replaced, the short SVID removed", len(second.Resources), second.RemovedResources)
		}
		sec := &tlsv3.Secret{}
		if err := second.Resources[0].Resource.UnmarshalTo(sec); err != nil {
			t.Fatal(err)
		}
		wantCert(t, sec, long)
	})
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
	path, _ := serve(t, sds.Config{Source: w.src, Attestor: failingAttestor{a}})
	c := client(t, path)
	const msg = "could not attest the caller: attest: process 7 has exited"

	_, err = c.FetchSecrets(t.Context(), request("default"))
	wantStatus(t, err, codes.Unauthenticated, msg)

	// The server ends the stream as it opens, so Send may already see
	// io.EOF; the status is Recv's, as gRPC documents.
	s := openStream(t, c)
	_ = s.Send(request("default"))
	_, err = s.Recv()
	wantStatus(t, err, codes.Unauthenticated, msg)

	d, err := c.DeltaSecrets(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = d.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResourceNamesSubscribe: []string{"default"}})
	_, err = d.Recv()
	wantStatus(t, err, codes.Unauthenticated, msg)
}

func TestRequestBounds(t *testing.T) {
	w := newWorld(t)
	path, _ := serve(t, sds.Config{Source: w.src})
	c := client(t, path)

	t.Run("wrong type on a stream", func(t *testing.T) {
		s := openStream(t, c)
		req := request("default")
		req.TypeUrl = "type.googleapis.com/envoy.config.listener.v3.Listener"
		send(t, s, req)
		_, err := s.Recv()
		wantStatus(t, err, codes.InvalidArgument, `type_url "type.googleapis.com/envoy.config.listener.v3.Listener" is not served here; the Secret Discovery Service serves only `+secretType)
	})

	t.Run("too many names", func(t *testing.T) {
		names := make([]string, 4097)
		for i := range names {
			names[i] = "n" + strconv.Itoa(i)
		}
		s := openStream(t, c)
		send(t, s, request(names...))
		_, err := s.Recv()
		wantStatus(t, err, codes.InvalidArgument, "4097 resource names requested; at most 4096 are served on one stream")
	})

	t.Run("oversized request", func(t *testing.T) {
		_, err := c.FetchSecrets(t.Context(), request(strings.Repeat("x", 1<<20)))
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("error = %v, want ResourceExhausted", err)
		}
	})
}

func TestSocket(t *testing.T) {
	src := newSource(nil)

	t.Run("directory 0755, socket 0777, removed on exit", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "run", "meshfed")
		path := filepath.Join(dir, "sds.sock")
		srv, err := sds.New(sds.Config{SocketPath: path, Source: src})
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

		_, err = sds.New(sds.Config{SocketPath: path, Source: src})
		if want := "sds: " + path + " is in use by a running agent; stop it or choose another socket path"; err == nil || err.Error() != want {
			t.Errorf("second server: %v, want %q", err, want)
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
		path := filepath.Join(t.TempDir(), "sds.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // a crashed agent's socket file
		srv, err := sds.New(sds.Config{SocketPath: path, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		srv.Close()
	})

	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sds.sock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := sds.New(sds.Config{SocketPath: path, Source: src})
		if want := "sds: " + path + " exists and is not a socket; remove it or choose another socket path"; err == nil || err.Error() != want {
			t.Fatalf("error = %v, want %q", err, want)
		}
	})

	t.Run("config", func(t *testing.T) {
		for _, tc := range []struct {
			cfg  sds.Config
			want string
		}{
			{sds.Config{Source: src}, "sds: a socket path is required"},
			{sds.Config{SocketPath: "x.sock"}, "sds: a source of SVIDs is required"},
			{sds.Config{SocketPath: "x.sock", Source: src, BundleName: "default"}, `sds: the SVID, bundle and all-bundles resource names must differ (got "default", "default", "ALL")`},
			{sds.Config{SocketPath: "x.sock", Source: src, AllBundlesName: "*"}, `sds: resource name "*" is reserved (the wildcard, or a SPIFFE ID); choose another`},
			{sds.Config{SocketPath: "x.sock", Source: src, SVIDName: "spiffe://east.example"}, `sds: resource name "spiffe://east.example" is reserved (the wildcard, or a SPIFFE ID); choose another`},
		} {
			if _, err := sds.New(tc.cfg); err == nil || err.Error() != tc.want {
				t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
			}
		}
	})
}

// TestGate: the agent's admission gate bounds SDS streams as it bounds the
// Workload API's, on the same count of the caller's uid.
func TestGate(t *testing.T) {
	w := newWorld(t)
	gate, err := admit.New(admit.Config{Limits: admit.Limits{CallsPerUID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := attest.New(attest.Config{Admit: gate.Conn})
	if err != nil {
		t.Fatal(err)
	}
	path, _ := serve(t, sds.Config{Source: w.src, Attestor: a, Gate: gate})
	c := client(t, path)
	s := openStream(t, c)
	send(t, s, request("default"))
	recv(t, s)

	_, err = c.FetchSecrets(t.Context(), request("ROOTCA"))
	wantStatus(t, err, codes.ResourceExhausted, fmt.Sprintf("admit: uid %d holds as many calls to this agent as limits.max_calls_per_uid allows (1); a process of that user may be leaking them (close streams and connections when done)", os.Geteuid()))
	if conns, calls, _, _ := gate.Usage(0); conns != 1 || calls != 1 {
		t.Fatalf("usage: %d connections, %d calls; want 1 and 1", conns, calls)
	}
}
