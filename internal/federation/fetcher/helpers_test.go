package fetcher_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/bundleendpoint"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	east       = spiffeid.RequireTrustDomainFromString("east.example")
	west       = spiffeid.RequireTrustDomainFromString("west.example")
	westServer = spiffeid.RequireFromString("spiffe://west.example/meshfed/bundle-endpoint")
	loopback   = net.IPv4(127, 0, 0, 1)
)

// t0 is when every test's clock starts. The certificates are made at t0 and
// valid for a month, so tests move their clock by hours and days; the TLS
// clients check them against the injected clock, the servers do not check
// them at all.
var t0 = time.Now().UTC().Truncate(time.Second)

const caTTL = 30 * 24 * time.Hour

// testCA is a root CA of one trust domain that signs SVIDs and TLS leaves
// directly.
type testCA struct {
	td   spiffeid.TrustDomain
	root *x509.Certificate
	ca   *pki.CA
}

func newCA(t testing.TB, td spiffeid.TrustDomain, ttl time.Duration) *testCA {
	t.Helper()
	key := newKey(t)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: key, TrustDomain: td, CommonName: td.Name() + " test root", TTL: ttl, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{root}, Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{td: td, root: root, ca: ca}
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// bundle is the CA's trust domain's bundle: its root (and more authorities
// if given), one JWT key, and the given sequence and hint (unset if zero).
func (c *testCA) bundle(t testing.TB, seq uint64, hint time.Duration, more ...*x509.Certificate) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.FromX509Authorities(c.td, append([]*x509.Certificate{c.root}, more...))
	if err := b.AddJWTAuthority("jwt-1", newKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	if seq != 0 {
		b.SetSequenceNumber(seq)
	}
	if hint != 0 {
		b.SetRefreshHint(hint)
	}
	return b
}

func (c *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.root)
	return p
}

func (c *testCA) svid(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	chain, err := c.ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: caTTL})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// leaf is a TLS server certificate for 127.0.0.1.
func (c *testCA) leaf(t testing.TB) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := newKey(t)
	chain, err := c.ca.SignLeaf(pki.LeafRequest{PublicKey: key.Public(), IPAddresses: []net.IP{loopback}, TTL: caTTL})
	if err != nil {
		t.Fatal(err)
	}
	return chain, key
}

func (c *testCA) tlsCert(t testing.TB) tls.Certificate {
	t.Helper()
	chain, key := c.leaf(t)
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// caWithTTL is a self-signed CA certificate valid from t0 - pki.Backdate
// to t0 + ttl: a bundle authority whose expiry a test chooses.
func caWithTTL(t testing.TB, td spiffeid.TrustDomain, ttl time.Duration) *x509.Certificate {
	t.Helper()
	root, err := pki.CreateRoot(pki.RootRequest{Signer: newKey(t), TrustDomain: td, TTL: ttl, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// marshal is the SPIFFE JSON of b, as a bundle endpoint serves it.
func marshal(t testing.TB, b *spiffebundle.Bundle) []byte {
	t.Helper()
	data, err := bundle.Marshal(b, bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// webServer is an https_web bundle endpoint for 127.0.0.1 whose certificate
// ca signs, answering with h.
func webServer(t testing.TB, ca *testCA, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.tlsCert(t)}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes the tests make fail
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// serve answers every request with status and body.
func serve(status int, body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	})
}

// source is a bundleendpoint.BundleSource whose bundle a test changes, and
// its Config.Changes.
type source struct {
	mu      sync.Mutex
	b       *spiffebundle.Bundle
	changed chan struct{} // closed at the next set
	armed   bool          // Changes was called: a request is about to wait
	// waiting gets a value when a request that will wait has read the
	// bundle: the endpoint calls Changes, then reads, then waits if the
	// bundle is the one the request names.
	waiting chan struct{}
}

func newSource(b *spiffebundle.Bundle) *source {
	return &source{b: b, changed: make(chan struct{}), waiting: make(chan struct{}, 64)}
}

func (s *source) set(b *spiffebundle.Bundle) {
	s.mu.Lock()
	s.b = b
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *source) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = true
	return s.changed
}

func (s *source) GetBundleForTrustDomain(spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.armed {
		s.armed = false
		select {
		case s.waiting <- struct{}{}:
		default:
		}
	}
	return s.b, nil
}

// svidSource presents one fixed SVID.
type svidSource struct{ svid *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// endpoint is a running meshfed bundle endpoint, which holds long polls.
type endpoint struct {
	srv    *bundleendpoint.Server
	bundle *source
}

func (e *endpoint) url() string { return "https://" + e.srv.Addr().String() + "/" }

// spiffeEndpoint runs the meshfed bundle endpoint of td, profile
// https_spiffe, presenting svid and serving b.
func spiffeEndpoint(t testing.TB, td spiffeid.TrustDomain, svid *x509svid.SVID, b *spiffebundle.Bundle) *endpoint {
	t.Helper()
	return startEndpoint(t, bundleendpoint.Config{
		TrustDomain: td,
		Profile:     bundleendpoint.ProfileSPIFFE,
		SVIDSource:  svidSource{svid},
	}, b)
}

// webEndpoint runs the meshfed bundle endpoint of td, profile https_web,
// presenting a certificate for 127.0.0.1 that ca signs and serving b.
func webEndpoint(t testing.TB, td spiffeid.TrustDomain, ca *testCA, b *spiffebundle.Bundle) *endpoint {
	t.Helper()
	dir := t.TempDir()
	chain, key := ca.leaf(t)
	keyPEM, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pemfile.EncodeCertificates(chain...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return startEndpoint(t, bundleendpoint.Config{
		TrustDomain: td,
		Profile:     bundleendpoint.ProfileWeb,
		CertFile:    certFile,
		KeyFile:     keyFile,
		Clock:       func() time.Time { return t0 },
	}, b)
}

func startEndpoint(t testing.TB, cfg bundleendpoint.Config, b *spiffebundle.Bundle) *endpoint {
	t.Helper()
	src := newSource(b)
	cfg.Addr = "127.0.0.1:0"
	cfg.Bundles = src
	cfg.Changes = src.changes
	srv, err := bundleendpoint.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bundle endpoint: %v", err)
		}
	})
	return &endpoint{srv: srv, bundle: src}
}

// requests is how many requests the endpoint answered with its bundle or
// with 304 Not Modified.
func (e *endpoint) requests() uint64 {
	n := e.srv.Requests()
	return n[http.StatusOK] + n[http.StatusNotModified]
}

// memStore is a Store in memory that counts writes, and writes of one
// trust domain that overlapped.
type memStore struct {
	mu       sync.Mutex
	bundles  map[spiffeid.TrustDomain]*spiffebundle.Bundle
	writes   int
	readErr  error
	writing  map[spiffeid.TrustDomain]int
	overlaps int
}

func newStore(bs ...*spiffebundle.Bundle) *memStore {
	s := &memStore{bundles: make(map[spiffeid.TrustDomain]*spiffebundle.Bundle), writing: make(map[spiffeid.TrustDomain]int)}
	for _, b := range bs {
		s.bundles[b.TrustDomain()] = b
	}
	return s
}

func (s *memStore) FederatedBundle(_ context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readErr != nil {
		return nil, s.readErr
	}
	return s.bundles[td], nil
}

func (s *memStore) SetFederatedBundle(_ context.Context, b *spiffebundle.Bundle) error {
	td := b.TrustDomain()
	s.mu.Lock()
	if s.writing[td] > 0 {
		s.overlaps++
	}
	s.writing[td]++
	s.mu.Unlock()
	runtime.Gosched() // give a second write of td the chance to overlap
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writing[td]--
	s.bundles[td] = b
	s.writes++
	return nil
}

// overlapCount is how many writes began while another write of the same
// trust domain was under way.
func (s *memStore) overlapCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overlaps
}

func (s *memStore) get(td spiffeid.TrustDomain) *spiffebundle.Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundles[td]
}

func (s *memStore) writeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

func (s *memStore) failReads(err error) {
	s.mu.Lock()
	s.readErr = err
	s.mu.Unlock()
}

var errStore = errors.New("store: database is locked")

// clock is a settable clock.
type clock struct{ now atomic.Pointer[time.Time] }

func newClock() *clock {
	c := &clock{}
	c.set(t0)
	return c
}

func (c *clock) Now() time.Time          { return *c.now.Load() }
func (c *clock) set(t time.Time)         { c.now.Store(&t) }
func (c *clock) advance(d time.Duration) { c.set(c.Now().Add(d)) }

// logs records log lines at Info and above as "LEVEL message key=value ...".
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) logger() *slog.Logger { return slog.New(logHandler{l}) }

// take returns the lines logged since the last take.
func (l *logs) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

type logHandler struct{ l *logs }

func (h logHandler) Enabled(_ context.Context, level slog.Level) bool { return level >= slog.LevelInfo }
func (h logHandler) WithAttrs([]slog.Attr) slog.Handler               { return h }
func (h logHandler) WithGroup(string) slog.Handler                    { return h }
func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%s", a.Key, a.Value)
		return true
	})
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	h.l.lines = append(h.l.lines, b.String())
	return nil
}

// errText is err's text, or "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }
