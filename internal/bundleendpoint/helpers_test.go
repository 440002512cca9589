package bundleendpoint_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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

// Certificates are made with the wall clock: curl and Go's TLS clients check
// them against the real time.

var (
	east       = spiffeid.RequireTrustDomainFromString("east.example")
	endpointID = spiffeid.RequireFromString("spiffe://east.example/meshfed/bundle-endpoint")
	loopback   = net.IPv4(127, 0, 0, 1)
)

// testPKI is a root CA for east.example that signs SVIDs and TLS leaves
// directly.
type testPKI struct {
	root *x509.Certificate
	ca   *pki.CA
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	key := newKey(t, pki.ECP256)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: key, TrustDomain: east, CommonName: "east test root", TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{root}})
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{root: root, ca: ca}
}

func newKey(t testing.TB, kt pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// bundle is east.example's bundle as the store would hold it: the root, a
// JWT key, a sequence number and a refresh hint.
func (p *testPKI) bundle(t testing.TB, seq uint64) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.FromX509Authorities(east, []*x509.Certificate{p.root})
	if err := b.AddJWTAuthority("jwt-key-1", newKey(t, pki.ECP256).Public()); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(5 * time.Minute)
	return b
}

func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	return pool
}

func (p *testPKI) svid(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newKey(t, pki.ECP256)
	chain, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// leaf issues a TLS server certificate for 127.0.0.1 with a key of type kt.
func (p *testPKI) leaf(t testing.TB, kt pki.KeyType) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := newKey(t, kt)
	chain, err := p.ca.SignLeaf(pki.LeafRequest{PublicKey: key.Public(), IPAddresses: []net.IP{loopback}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return chain, key
}

// writePair writes a chain and key as cert.pem and key.pem in dir (atomic
// renames) and returns their paths.
func writePair(t testing.TB, dir string, chain []*x509.Certificate, key crypto.Signer) (certFile, keyFile string) {
	t.Helper()
	keyPEM, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := pemfile.WriteFile(certFile, pemfile.EncodeCertificates(chain...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pemfile.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// marshal is the exact body the endpoint serves for b.
func marshal(t testing.TB, b *spiffebundle.Bundle) []byte {
	t.Helper()
	data, err := bundle.Marshal(b, bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// bundleSource is a BundleSource whose answer a test changes, counting calls.
type bundleSource struct {
	mu     sync.Mutex
	bundle *spiffebundle.Bundle
	err    error
	calls  int
	// entered, if set, receives once per call, and the call then waits for
	// release: a request held in flight.
	entered chan struct{}
	release chan struct{}
}

func (s *bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.mu.Lock()
	s.calls++
	b, err, entered, release := s.bundle, s.err, s.entered, s.release
	s.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
		<-release
	}
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("no bundle for %q", td)
	}
	return b, nil
}

func (s *bundleSource) set(b *spiffebundle.Bundle, err error) {
	s.mu.Lock()
	s.bundle, s.err = b, err
	s.mu.Unlock()
}

func (s *bundleSource) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// svidSource is an x509svid.Source whose SVID a test rotates.
type svidSource struct {
	svid atomic.Pointer[x509svid.SVID]
	err  atomic.Pointer[error]
}

func newSVIDSource(s *x509svid.SVID) *svidSource {
	src := &svidSource{}
	src.svid.Store(s)
	return src
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) {
	if err := s.err.Load(); err != nil {
		return nil, *err
	}
	return s.svid.Load(), nil
}

func (s *svidSource) fail(err error) { s.err.Store(&err) }
func (s *svidSource) recover()       { s.err.Store(nil) }

// clock is a settable clock.
type clock struct{ now atomic.Pointer[time.Time] }

func newClock() *clock {
	c := &clock{}
	c.set(time.Now())
	return c
}

func (c *clock) Now() time.Time          { return *c.now.Load() }
func (c *clock) set(t time.Time)         { c.now.Store(&t) }
func (c *clock) advance(d time.Duration) { c.set(c.Now().Add(d)) }

// logs records log lines at Info and above as "LEVEL message key=value ...".
type logs struct {
	mu      sync.Mutex
	lines   []string
	serving []string // "bundle endpoint serving" lines
}

func (l *logs) logger() *slog.Logger { return slog.New(logHandler{l}) }

// since returns the lines logged after the first n.
func (l *logs) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[n:]...)
}

func (l *logs) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
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
	if r.Message == "bundle endpoint serving" {
		// Run logs it from its own goroutine, at a moment a test does not
		// control, so it is kept apart; TestRunStopsOnCancel checks it.
		h.l.serving = append(h.l.serving, b.String())
		return nil
	}
	h.l.lines = append(h.l.lines, b.String())
	return nil
}

// start makes a server on 127.0.0.1:0 (unless cfg says otherwise), runs it,
// and stops it when the test ends, failing the test if Run returns an error.
func start(t testing.TB, cfg bundleendpoint.Config) *bundleendpoint.Server {
	t.Helper()
	if cfg.Listener == nil && cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = east
	}
	s, err := bundleendpoint.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

func url(s *bundleendpoint.Server, path string) string {
	return "https://" + s.Addr().String() + path
}

// handshake connects with conf and returns the server's certificate chain.
func handshake(t testing.TB, s *bundleendpoint.Server, conf *tls.Config) ([]*x509.Certificate, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", s.Addr().String(), conf)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// servedLeaf connects without verifying (the tests that use it check which
// certificate is presented, not whether it is trusted) and returns the
// server's certificate.
func servedLeaf(t testing.TB, s *bundleendpoint.Server) *x509.Certificate {
	t.Helper()
	chain, err := handshake(t, s, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

var errStore = errors.New("store: database is locked")
