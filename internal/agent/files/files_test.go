package files

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	east = spiffeid.RequireTrustDomainFromString("east.example")
	west = spiffeid.RequireTrustDomainFromString("west.example")
	t0   = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	uid  = attest.Selector{Type: "unix", Value: "uid:1000"}
)

// fakeSource serves one identity for uid 1000.
type fakeSource struct {
	mu      sync.Mutex
	ident   []workloadapi.Identity
	local   *x509bundle.Bundle
	fed     []*x509bundle.Bundle
	changed chan struct{}
}

func (f *fakeSource) X509SVIDs(sel []attest.Selector) []workloadapi.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range sel {
		if s == uid {
			return f.ident
		}
	}
	return nil
}

func (f *fakeSource) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local, f.fed
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeSource) set(ident []workloadapi.Identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ident = ident
	close(f.changed)
	f.changed = make(chan struct{})
}

func rootCA(t *testing.T, td spiffeid.TrustDomain) *pki.CA {
	t.Helper()
	key, _ := pki.GenerateKey(pki.ECP256)
	cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, TrustDomain: td, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func svid(t *testing.T, ca *pki.CA, path string) *x509svid.SVID {
	t.Helper()
	key, _ := pki.GenerateKey(pki.ECP256)
	id := spiffeid.RequireFromPath(east, path)
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain[:1], PrivateKey: key}
}

func TestWritesOnChangeAndRunsTheCommand(t *testing.T) {
	ca, westCA := rootCA(t, east), rootCA(t, west)
	src := &fakeSource{
		local:   x509bundle.FromX509Authorities(east, ca.Roots()),
		fed:     []*x509bundle.Bundle{x509bundle.FromX509Authorities(west, westCA.Roots())},
		changed: make(chan struct{}),
	}
	dir := filepath.Join(t.TempDir(), "certs")
	var logs bytes.Buffer
	now := t0
	w, err := New(Config{Dir: dir, Selectors: []attest.Selector{uid}, Source: src,
		Command: `echo "$MESHFED_SPIFFE_ID" >> ran.txt`, Clock: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if wrote, err := w.Write(context.Background()); wrote || err != nil {
		t.Fatalf("Write with no SVID = %v, %v", wrote, err)
	}
	first := svid(t, ca, "/ns/default/sa/reviews")
	src.set([]workloadapi.Identity{{SVID: first, FederatesWith: []spiffeid.TrustDomain{west}}})
	if wrote, err := w.Write(context.Background()); !wrote || err != nil {
		t.Fatalf("Write = %v, %v", wrote, err)
	}
	got, err := x509svid.Load(filepath.Join(dir, SVIDFile), filepath.Join(dir, KeyFile))
	if err != nil || got.ID != first.ID || !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatalf("svid.pem/svid_key.pem: %v", err)
	}
	st, _ := os.Stat(filepath.Join(dir, KeyFile))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %o", st.Mode().Perm())
	}
	roots, _ := pemfile.ReadCertificates(filepath.Join(dir, BundleFile))
	fed, _ := pemfile.ReadCertificates(filepath.Join(dir, "federated-west.example.pem"))
	if len(roots) != 1 || !roots[0].Equal(ca.Roots()[0]) || len(fed) != 1 || !fed[0].Equal(westCA.Roots()[0]) {
		t.Error("bundle.pem or federated-west.example.pem is wrong")
	}
	// Unchanged: no write, no command.
	if wrote, _ := w.Write(context.Background()); wrote {
		t.Error("rewrote unchanged files")
	}
	// A rotation is written and the command runs again.
	second := svid(t, ca, "/ns/default/sa/reviews")
	src.set([]workloadapi.Identity{{SVID: second}})
	if wrote, err := w.Write(context.Background()); !wrote || err != nil {
		t.Fatalf("Write after rotation = %v, %v", wrote, err)
	}
	ran, _ := os.ReadFile(filepath.Join(dir, "ran.txt"))
	if string(ran) != "spiffe://east.example/ns/default/sa/reviews\nspiffe://east.example/ns/default/sa/reviews\n" {
		t.Errorf("command runs: %q", ran)
	}
	if _, err := os.Stat(filepath.Join(dir, "federated-west.example.pem")); !os.IsNotExist(err) {
		t.Errorf("the bundle of a trust domain no longer federated with is still there: %v", err)
	}
	// An expired SVID is never written.
	now = second.Certificates[0].NotAfter.Add(time.Second)
	third := svid(t, ca, "/ns/default/sa/other")
	src.set([]workloadapi.Identity{{SVID: third}})
	if wrote, _ := w.Write(context.Background()); wrote {
		t.Error("wrote an expired SVID")
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("key material in the log")
	}
}

func TestRunFollowsChanges(t *testing.T) {
	ca := rootCA(t, east)
	src := &fakeSource{local: x509bundle.FromX509Authorities(east, ca.Roots()), changed: make(chan struct{})}
	dir := t.TempDir()
	w, err := New(Config{Dir: dir, Selectors: []attest.Selector{uid}, Source: src, Clock: func() time.Time { return t0 },
		Command: "touch written"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	src.set([]workloadapi.Identity{{SVID: svid(t, ca, "/w")}})
	deadline := time.After(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "written")); err == nil {
			break
		}
		select {
		case <-deadline:
			t.Fatal("the change was not written")
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	src := &fakeSource{changed: make(chan struct{})}
	if _, err := New(Config{Source: src, Selectors: []attest.Selector{uid}}); err == nil || !strings.Contains(err.Error(), "a directory and a source are required") {
		t.Errorf("no dir: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir(), Source: src}); err == nil || !strings.Contains(err.Error(), "give the selectors") {
		t.Errorf("no selectors: %v", err)
	}
}
