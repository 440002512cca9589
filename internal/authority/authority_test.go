package authority

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	east = spiffeid.RequireTrustDomainFromString("east.example")
	west = spiffeid.RequireTrustDomainFromString("west.example")
	t0   = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func clockAt(t time.Time) pki.Clock { return func() time.Time { return t } }

// root makes a shared root CA at t0.
func root(t *testing.T) *pki.CA {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: clockAt(t0)})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// writeCACerts writes an intermediate of r for td into dir in Istio's layout.
func writeCACerts(t *testing.T, r *pki.CA, td spiffeid.TrustDomain, ttl time.Duration, dir string) *x509.Certificate {
	t.Helper()
	key, _ := pki.GenerateKey(pki.ECP256)
	chain, err := r.SignIntermediate(pki.IntermediateRequest{PublicKey: key.Public(), TrustDomain: td, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	files, err := cadir.IstioFiles(chain, r.Roots(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := cadir.Write(dir, true, files...); err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func TestSelfSignedRootIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Config{TrustDomain: east, DataDir: dir, Clock: clockAt(t0)})
	if err != nil {
		t.Fatal(err)
	}
	first := a.CA().Certificate()
	if len(first.URIs) != 1 || first.URIs[0].String() != "spiffe://east.example" || !first.IsCA {
		t.Errorf("generated root: URIs %v CA %v", first.URIs, first.IsCA)
	}
	st, err := os.Stat(filepath.Join(dir, "ca", "ca.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key: %v mode %v", err, st.Mode().Perm())
	}
	again, err := New(Config{TrustDomain: east, DataDir: dir, Clock: clockAt(t0.Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	if !again.CA().Certificate().Equal(first) {
		t.Error("a restart made a new root instead of loading the kept one")
	}
	if _, err := New(Config{TrustDomain: west, DataDir: dir, Clock: clockAt(t0)}); err == nil ||
		!strings.Contains(err.Error(), `is for trust domain "east.example", but this server serves "west.example"`) {
		t.Errorf("loading east's root as west: %v", err)
	}
}

func TestCACertsHotReload(t *testing.T) {
	r := root(t)
	dir := t.TempDir()
	firstCert := writeCACerts(t, r, east, 0, dir)
	var logs bytes.Buffer
	now := t0
	a, err := New(Config{TrustDomain: east, Mode: ModeCACerts, CACertsDir: dir, Clock: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	changed := a.Changed()
	if !a.CA().Certificate().Equal(firstCert) {
		t.Fatal("not the intermediate in the directory")
	}
	if ok, err := a.Reload(); ok || err != nil {
		t.Fatalf("Reload with nothing changed = %v, %v", ok, err)
	}

	// A valid replacement is taken, and watchers hear of it.
	second := writeCACerts(t, r, east, 0, dir)
	if ok, err := a.Reload(); !ok || err != nil {
		t.Fatalf("Reload of a valid replacement = %v, %v", ok, err)
	}
	if !a.CA().Certificate().Equal(second) {
		t.Error("the replacement is not in use")
	}
	select {
	case <-changed:
	default:
		t.Error("no change notification")
	}

	// Bad replacements are refused; the CA in use keeps signing.
	good := map[string][]byte{}
	for _, n := range []string{cadir.IstioCertFile, cadir.IstioKeyFile, cadir.IstioChainFile, cadir.IstioRootFile} {
		good[n], _ = os.ReadFile(filepath.Join(dir, n))
	}
	otherKey, _ := pki.GenerateKey(pki.ECP256)
	otherKeyPEM, _ := pemEncodeKey(otherKey)
	cases := []struct {
		name  string
		apply func()
		want  string
	}{
		{"malformed PEM", func() {
			os.WriteFile(filepath.Join(dir, cadir.IstioCertFile), bytes.Replace(good[cadir.IstioCertFile], []byte("MII"), []byte("M!I"), 1), 0o644)
		}, "malformed PEM"},
		{"key of another certificate", func() {
			os.WriteFile(filepath.Join(dir, cadir.IstioKeyFile), otherKeyPEM, 0o600)
		}, "the private key does not belong to the CA certificate"},
		{"another trust domain", func() { writeCACerts(t, r, west, 0, dir) }, `is for trust domain "west.example", but this server serves "east.example"`},
		{"expired", func() { writeCACerts(t, r, east, time.Second, dir); now = t0.Add(2 * time.Second) }, "expired at"},
		{"missing key", func() { os.Remove(filepath.Join(dir, cadir.IstioKeyFile)) }, "no such file or directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for n, data := range good {
				os.WriteFile(filepath.Join(dir, n), data, 0o600)
			}
			now = t0
			a.Reload() // back to the good set (unchanged content: no swap)
			logs.Reset()
			tc.apply()
			ok, err := a.Reload()
			if ok || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Reload = %v, %v; want refusal with %q", ok, err, tc.want)
			}
			if !a.CA().Certificate().Equal(second) {
				t.Error("a refused replacement changed the CA in use")
			}
			if !strings.Contains(logs.String(), "cacerts replacement refused; the CA in use keeps signing") {
				t.Errorf("no log line for the refusal: %s", logs.String())
			}
			if strings.Contains(logs.String(), "PRIVATE KEY") {
				t.Error("key material in the log")
			}
			now = t0
			// The CA in use still signs.
			k, _ := pki.GenerateKey(pki.ECP256)
			if _, err := a.CA().SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromPath(east, "/w"), PublicKey: k.Public()}); err != nil {
				t.Errorf("the CA in use stopped signing: %v", err)
			}
		})
	}

	// A fixed directory after a bad one is taken.
	third := writeCACerts(t, r, east, 0, dir)
	if ok, err := a.Reload(); !ok || err != nil || !a.CA().Certificate().Equal(third) {
		t.Fatalf("Reload after a fix = %v, %v", ok, err)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "a trust domain is required"},
		{Config{TrustDomain: east}, "self-signed mode needs a data directory"},
		{Config{TrustDomain: east, Mode: ModeCACerts}, "cacerts mode needs the cacerts directory"},
		{Config{TrustDomain: east, Mode: "vault"}, `unknown CA mode "vault"`},
		{Config{TrustDomain: east, Mode: ModeCACerts, CACertsDir: "/nonexistent"}, "no such file or directory"},
	}
	for _, tc := range cases {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func pemEncodeKey(k interface{ Public() crypto.PublicKey }) ([]byte, error) {
	return pemfile.EncodePrivateKey(k.(crypto.Signer))
}

// ModeVirtualMesh signs with the self-signed root until an intermediate of the
// shared root appears, then switches to it without a restart, and a restart
// keeps it.
func TestVirtualMeshMode(t *testing.T) {
	dataDir, vmDir := t.TempDir(), filepath.Join(t.TempDir(), "cacerts")
	cfg := Config{TrustDomain: east, Mode: ModeVirtualMesh, DataDir: dataDir, CACertsDir: vmDir, Clock: clockAt(t0)}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	selfSigned := a.CA().Roots()[0]
	if a.CA().Certificate() != selfSigned || a.FromCACerts() {
		t.Fatal("not signing with the self-signed root before joining")
	}
	if changed, err := a.Reload(); changed || err != nil {
		t.Fatalf("Reload before joining: %v, %v", changed, err)
	}
	shared := root(t)
	changes := a.Changed()
	inter := writeCACerts(t, shared, east, 24*time.Hour, vmDir)
	if changed, err := a.Reload(); !changed || err != nil {
		t.Fatalf("Reload after the intermediate arrived: %v, %v", changed, err)
	}
	<-changes
	if !a.CA().Certificate().Equal(inter) || !a.CA().Roots()[0].Equal(shared.Certificate()) || !a.FromCACerts() {
		t.Fatal("not signing with the VirtualMesh intermediate")
	}

	// A restart loads the intermediate, not the self-signed root.
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !b.CA().Certificate().Equal(inter) || !b.FromCACerts() {
		t.Fatal("restart did not load the VirtualMesh intermediate")
	}

	// An intermediate for another trust domain at start: the self-signed
	// root signs (the same one as before), and the error is logged.
	writeCACerts(t, shared, west, 24*time.Hour, vmDir)
	var logs bytes.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !c.CA().Certificate().Equal(selfSigned) || c.FromCACerts() {
		t.Fatal("a bad VirtualMesh intermediate was not replaced by the self-signed root")
	}
	if !strings.Contains(logs.String(), `is for trust domain \"west.example\"`) {
		t.Errorf("log: %s", logs.String())
	}
}
