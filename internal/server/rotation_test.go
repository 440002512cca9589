package server

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	fedpb "github.com/meshfed/meshfed/internal/api/federationv1"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	istioca "istio.io/api/security/v1alpha1"
)

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// rotationAdminClient dials the federation Admin service on the server's
// admin socket.
func rotationAdminClient(t *testing.T, h *harness) fedpb.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+h.srv.set.adminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fedpb.NewAdminClient(conn)
}

func rootStates(st *fedpb.StatusResponse) string {
	var out []string
	for _, r := range st.GetRoots() {
		out = append(out, r.GetState())
	}
	return strings.Join(out, ",")
}

// A rotation of the self-signed root, driven by the command: the next root
// is published before it signs, activation waits for a refresh hint, and
// the old root leaves the bundle only when nothing signed under it is alive.
func TestRootRotationByCommand(t *testing.T) {
	// Behind the real clock, so that what the server signs at a later test
	// time is still valid for the TLS clients, which use the real one.
	clock := &testClock{now: time.Now().Add(-5 * time.Minute)}
	off := false
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, func(c *Config) {
		c.CA.AutoRotate = &off
		c.BundleEndpoint.RefreshHint = duration.Duration(time.Minute)
	})
	ctx := context.Background()
	fed := rotationAdminClient(t, h)
	oldRoot := h.srv.auth.CA().Certificate()

	// An SVID under the old root.
	client := istioca.NewIstioCertificateServiceClient(h.dial(t, nil))
	_, csrDER := newCSR(t, "spiffe://east.example/ns/default/sa/reviews")
	claims := saClaims("default", "reviews", "istio-ca", time.Now().Add(time.Hour))
	claims["iat"] = clock.Now().Add(-time.Minute).Unix()
	callCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+h.jwt(t, claims))
	if _, err := client.CreateCertificate(callCtx, &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(csrDER)), ValidityDuration: 3600}); err != nil {
		t.Fatal(err)
	}

	st, err := fed.Status(ctx, &fedpb.StatusRequest{})
	if err != nil || st.GetRotationPhase() != "stable" || rootStates(st) != "active" {
		t.Fatalf("before: %v, %v", st, err)
	}
	seq0 := st.GetGeneration()

	st, err = fed.RotateRoot(ctx, &fedpb.RotateRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetRotationPhase() != "publishing" || rootStates(st) != "active,published" || !strings.Contains(st.GetWaitingFor(), "refresh hint") || st.GetGeneration() <= seq0 {
		t.Fatalf("after starting: %v", st)
	}
	if n := len(h.srv.bundle.Load().X509Authorities()); n != 2 {
		t.Fatalf("published bundle has %d roots, want the old and the next", n)
	}
	if !h.srv.auth.CA().Certificate().Equal(oldRoot) {
		t.Fatal("the next root signs before activation")
	}
	// Not yet: a refresh hint has not passed.
	if st, err = fed.RotateRoot(ctx, &fedpb.RotateRootRequest{}); err != nil || st.GetRotationPhase() != "publishing" {
		t.Fatalf("advanced early: %v, %v", st, err)
	}

	clock.Advance(2*time.Minute + time.Second)
	st, err = fed.RotateRoot(ctx, &fedpb.RotateRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetRotationPhase() != "retiring" || rootStates(st) != "active,retiring" ||
		!strings.Contains(st.GetWaitingFor(), `1 live certificate may chain to the previous root "east.example root CA"`) {
		t.Fatalf("after activating: %v", st)
	}
	newRoot := h.srv.auth.CA().Certificate()
	if newRoot.Equal(oldRoot) || newRoot.Subject.CommonName != "east.example root CA 2" {
		t.Fatalf("signing with %q", newRoot.Subject.CommonName)
	}
	if svid, _ := h.srv.identity.GetX509SVID(); svid == nil || string(svid.Certificates[0].AuthorityKeyId) != string(newRoot.SubjectKeyId) {
		t.Error("the server's own SVID was not re-issued under the new root")
	}
	if n := len(h.srv.bundle.Load().X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d roots while retiring, want 2", n)
	}

	// After the last SVID under the old root expires, it is retired.
	clock.Advance(time.Hour)
	st, err = fed.RotateRoot(ctx, &fedpb.RotateRootRequest{})
	if err != nil || st.GetRotationPhase() != "stable" || rootStates(st) != "active" {
		t.Fatalf("after retiring: %v, %v", st, err)
	}
	roots := h.srv.bundle.Load().X509Authorities()
	if len(roots) != 1 || !roots[0].Equal(newRoot) {
		t.Fatalf("bundle after retiring has %d roots", len(roots))
	}
	if _, err := os.Stat(filepath.Join(h.srv.set.dataDir, "ca-previous")); !os.IsNotExist(err) {
		t.Errorf("the previous root's key is still on disk: %v", err)
	}
	// The node API's bundle is the same.
	b, err := h.admin(t).GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil || b.GetSequence() <= st.GetGeneration()-1 {
		t.Errorf("GetBundle: %v, %v", b, err)
	}
}

// With ca.auto_rotate, a rotation starts when the root has less than
// ca.rotate_before left and each phase advances when its condition holds.
func TestRootRotationAutomatic(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, func(c *Config) {
		c.CA.RootTTL = duration.Duration(100 * time.Hour)
		c.CA.RotateBefore = duration.Duration(10 * time.Hour)
		c.BundleEndpoint.RefreshHint = duration.Duration(time.Minute)
	})
	ctx := context.Background()
	first := h.srv.auth.CA().Certificate()
	for _, step := range []struct {
		at    time.Time
		phase string
	}{
		{first.NotAfter.Add(-10*time.Hour - time.Minute), "stable"},
		{first.NotAfter.Add(-10 * time.Hour), "publishing"},
		{first.NotAfter.Add(-10*time.Hour + 119*time.Second), "publishing"},
		{first.NotAfter.Add(-10*time.Hour + 121*time.Second), "retiring"},
		{first.NotAfter.Add(-10*time.Hour + 122*time.Second), "stable"}, // nothing was signed under the old root
	} {
		clock.Set(step.at)
		h.srv.tick(ctx)
		if got := h.srv.rotationPhase(); got != step.phase {
			t.Fatalf("at %s before the root's end: phase %s, want %s", first.NotAfter.Sub(step.at), got, step.phase)
		}
	}
	if c := h.srv.auth.CA().Certificate(); c.Equal(first) || c.Subject.CommonName != "east.example root CA 2" {
		t.Errorf("signing with %q after the rotation", c.Subject.CommonName)
	}
}

// A short-lived server SVID (NotBefore backdated for clock skew) is due at
// half the life it had when issued, not at once, which re-issued it at every
// maintenance tick.
func TestServerSVIDRenewsAtHalfItsLifeFromIssuance(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, func(c *Config) {
		c.SVID.NodeTTL = duration.Duration(20 * time.Second)
		c.SVID.DefaultTTL = duration.Duration(10 * time.Second)
	})
	issued := clock.Now()
	first, _ := h.srv.identity.GetX509SVID()
	for _, tc := range []struct {
		after time.Duration
		due   bool
	}{{0, false}, {9 * time.Second, false}, {10 * time.Second, true}} {
		if got := h.srv.identity.due(issued.Add(tc.after)); got != tc.due {
			t.Errorf("%s after issuance: due %v, want %v", tc.after, got, tc.due)
		}
	}
	clock.Advance(5 * time.Second)
	h.srv.tick(context.Background())
	if now, _ := h.srv.identity.GetX509SVID(); now != first {
		t.Error("re-issued before half its life")
	}
}

// In cacerts mode the operator rotates the root: root-cert.pem lists the old
// and the new root while certificates under the old one live, then only
// the new one; the server publishes what it lists, and the old root leaves
// the bundle once it is no longer listed.
func TestCACertsRootLeavesWithRootCertPEM(t *testing.T) {
	now := time.Now()
	mkRoot := func(cn string) *pki.CA {
		key, _ := pki.GenerateKey(pki.ECP256)
		cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, CommonName: cn, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	oldRoot, newRoot := mkRoot("corp root 1"), mkRoot("corp root 2")
	dir := filepath.Join(t.TempDir(), "cacerts")
	write := func(signer *pki.CA, roots ...*x509.Certificate) {
		key, _ := pki.GenerateKey(pki.ECP256)
		chain, err := signer.SignIntermediate(pki.IntermediateRequest{PublicKey: key.Public(), TrustDomain: east, TTL: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		files, err := cadir.IstioFiles(chain, roots, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := cadir.Write(dir, true, files...); err != nil {
			t.Fatal(err)
		}
	}
	write(oldRoot, oldRoot.Certificate())
	h := start(t, func(c *Config) { c.CA.Mode = "cacerts"; c.CA.CACertsDir = dir })
	ctx := context.Background()
	step := func(signer *pki.CA, roots ...*x509.Certificate) []string {
		t.Helper()
		write(signer, roots...)
		if _, err := h.srv.auth.Reload(); err != nil {
			t.Fatal(err)
		}
		if err := h.srv.publishAuthorities(ctx); err != nil {
			t.Fatal(err)
		}
		if err := h.srv.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range h.srv.bundle.Load().X509Authorities() {
			names = append(names, r.Subject.CommonName)
		}
		return names
	}
	if got := strings.Join(step(newRoot, newRoot.Certificate(), oldRoot.Certificate()), ","); got != "corp root 1,corp root 2" {
		t.Fatalf("both roots listed: bundle %s", got)
	}
	if got := strings.Join(step(newRoot, newRoot.Certificate()), ","); got != "corp root 2" {
		t.Fatalf("the old root no longer listed: bundle %s", got)
	}
}
