package store_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/store"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/meshfed/meshfed/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Run(m) }

// t0 is the tests' "now": whole milliseconds, as the store keeps time.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	td       = spiffeid.RequireTrustDomainFromString("east.example")
	west     = spiffeid.RequireTrustDomainFromString("west.example")
	north    = spiffeid.RequireTrustDomainFromString("north.example")
	node1    = spiffeid.RequireFromString("spiffe://east.example/spire/agent/join_token/node1")
	node2    = spiffeid.RequireFromString("spiffe://east.example/spire/agent/join_token/node2")
	web      = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/web")
	db       = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/db")
	uid1000  = store.Selector{Type: "unix", Value: "uid:1000"}
	gid50    = store.Selector{Type: "unix", Value: "gid:50"}
	k8sNSdef = store.Selector{Type: "k8s", Value: "ns:default"}
)

// fakeClock is the clock tests inject; it moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testDB is one fresh database of one back end, and a Store open on it.
type testDB struct {
	backend string
	cfg     store.Config
	clock   *fakeClock
	s       *store.Store
}

// open opens another Store on the same database (a restart, or a second
// server); it is closed when the test ends.
func (d *testDB) open(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), d.cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", d.backend, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newTestDB makes a fresh database of backend ("sqlite" or "postgres")
// without opening it.
func newTestDB(t *testing.T, backend string) *testDB {
	t.Helper()
	d := &testDB{backend: backend, clock: &fakeClock{now: t0}}
	switch backend {
	case "sqlite":
		d.cfg.DataDir = filepath.Join(t.TempDir(), "data")
	case "postgres":
		d.cfg.DSN = testpg.Start(t)
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	d.cfg.Clock = d.clock.Now
	return d
}

var backends = []string{"sqlite", "postgres"}

// forEachBackend runs fn once per back end, each time on a fresh database
// with a Store open on it.
func forEachBackend(t *testing.T, fn func(t *testing.T, d *testDB)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			d := newTestDB(t, b)
			d.s = d.open(t)
			fn(t, d)
		})
	}
}

// mustRevision returns the store's revision.
func mustRevision(t *testing.T, s *store.Store) int64 {
	t.Helper()
	rev, err := s.Revision(context.Background())
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return rev
}

// checkErr fails t unless err's text is exactly want ("" for no error).
func checkErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	got := ""
	if err != nil {
		got = err.Error()
	}
	if got != want {
		t.Errorf("%s: error\n got: %q\nwant: %q", what, got, want)
	}
}

// tokenHash is the SHA-256 of a join token, as the server stores it.
func tokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// caDER makes a self-signed CA certificate (isCA false: a leaf) expiring at
// notAfter.
func caDER(t *testing.T, name string, notAfter time.Time, isCA bool) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              notAfter,
		IsCA:                  isCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// publicKeyDER makes a PKIX-encoded P-256 public key.
func publicKeyDER(t *testing.T) []byte {
	t.Helper()
	_, der := testjwt.NewKey(t)
	return der
}
