package demo

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// staticSource is a workload's view of its agent, made in code.
type staticSource struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

func (s staticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s staticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// testCA is a root for td (shared when td is zero), optionally with an
// intermediate for inter under it.
func testCA(t *testing.T, td spiffeid.TrustDomain, cn string) *pki.CA {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, CommonName: cn, TrustDomain: td, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func intermediate(t *testing.T, root *pki.CA, td spiffeid.TrustDomain) *pki.CA {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := root.SignIntermediate(pki.IntermediateRequest{TrustDomain: td, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: append(chain, root.Roots()...), Clock: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func workload(t *testing.T, ca *pki.CA, id spiffeid.ID, bundles ...*x509bundle.Bundle) staticSource {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(chain); n > 1 && chain[n-1].Equal(ca.Roots()[0]) {
		chain = chain[:n-1]
	}
	return staticSource{svid: &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, bundles: x509bundle.NewSet(bundles...)}
}

func TestDescribeChainNamesEachCertificate(t *testing.T) {
	shared := testCA(t, spiffeid.TrustDomain{}, "virtual-mesh root CA 1")
	eastCA := intermediate(t, shared, east)
	reviews := workload(t, eastCA, reviewsIn(east), x509bundle.FromX509Authorities(east, shared.Roots()))
	_, chain, err := chainOf(reviews)
	if err != nil {
		t.Fatal(err)
	}
	got := describeChain(chain)
	sharedName, eastName := shared.Certificate().Subject.String(), eastCA.Certificate().Subject.String()
	want := []string{
		" 0 s:spiffe://east.example/ns/default/sa/reviews  [trust domain east.example]",
		"   i:" + eastName,
		" 1 s:" + eastName + "  [CA of trust domain east.example only]",
		"   i:" + sharedName,
		" 2 s:" + sharedName + "  [root, no trust domain: shared]",
		"   i:" + sharedName,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("describeChain:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	own := testCA(t, east, "east.example root CA")
	if got, want := certName(own.Certificate()), own.Certificate().Subject.String()+"  [root of trust domain east.example]"; got != want {
		t.Errorf("certName(east's root) = %q, want %q", got, want)
	}
}

func TestSourcePrincipal(t *testing.T) {
	if got := sourcePrincipal(reviewsIn(east)); got != "east.example/ns/default/sa/reviews" {
		t.Errorf("sourcePrincipal = %q", got)
	}
}

// TestRatingsAppAndClient runs the built-in app and its client over
// loopback: without the other domain's bundle the call fails with the
// verifier's reason; with it the call succeeds and each side names the root
// it verified the other with.
func TestRatingsAppAndClient(t *testing.T) {
	eastRoot, westRoot := testCA(t, east, "east.example root CA"), testCA(t, west, "west.example root CA")
	eastBundle := x509bundle.FromX509Authorities(east, eastRoot.Roots())
	westBundle := x509bundle.FromX509Authorities(west, westRoot.Roots())
	var mu sync.Mutex
	var log bytes.Buffer
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&log, format+"\n", args...)
	}

	ratingsAlone := workload(t, westRoot, ratingsIn(west), westBundle)
	app, err := startRatings("ratings (west.example)", ratingsAlone, reviewsIn(east), say)
	if err != nil {
		t.Fatal(err)
	}
	defer app.close()
	reviewsAlone := workload(t, eastRoot, reviewsIn(east), eastBundle)
	_, err = newClient(reviewsAlone, ratingsIn(west)).get(context.Background(), app.addr())
	if err == nil || err.Error() != `x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "west.example"` {
		t.Fatalf("call without west's bundle: %v", err)
	}
	app.close()

	ratings := workload(t, westRoot, ratingsIn(west), westBundle, eastBundle)
	app, err = startRatings("ratings (west.example)", ratings, reviewsIn(east), say)
	if err != nil {
		t.Fatal(err)
	}
	defer app.close()
	reviews := workload(t, eastRoot, reviewsIn(east), eastBundle, westBundle)
	res, err := newClient(reviews, ratingsIn(west)).get(context.Background(), app.addr())
	if err != nil {
		t.Fatalf("call with both bundles: %v", err)
	}
	if res.status != 200 || res.body != ratingsBody || !res.root.Equal(westRoot.Certificate()) {
		t.Errorf("response %d %q, root %v", res.status, res.body, res.root.Subject)
	}
	req := app.lastRequest()
	if req.principal != "east.example/ns/default/sa/reviews" || req.bundleOf != east || !req.root.Equal(eastRoot.Certificate()) {
		t.Errorf("ratings saw %+v", req)
	}
	if !strings.Contains(log.String(), "east.example/ns/default/sa/reviews") {
		t.Errorf("ratings did not log the principal: %s", log.String())
	}

	// Another client of east is refused by ratings' authorizer.
	other := workload(t, eastRoot, spiffeid.RequireFromPath(east, "/ns/default/sa/other"), eastBundle, westBundle)
	if _, err := newClient(other, ratingsIn(west)).get(context.Background(), app.addr()); err == nil {
		t.Error("ratings served a client it does not allow")
	}
}

func TestPrefixWriterWritesWholeLines(t *testing.T) {
	var out bytes.Buffer
	var mu sync.Mutex
	w := &prefixWriter{prefix: "[east.example server] ", w: &out, mu: &mu}
	w.Write([]byte("one\ntw"))
	w.Write([]byte("o\n"))
	if got := out.String(); got != "[east.example server] one\n[east.example server] two\n" {
		t.Errorf("got %q", got)
	}
}

func TestRunRequiresOutBinaryAndDir(t *testing.T) {
	if err := Run(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "Out, Binary and Dir are required") {
		t.Fatalf("Run(Config{}) = %v", err)
	}
}

// TestRunFailsOnAProcessThatDoesNotStart: a binary that is not meshfed
// fails step 1, named, and leaves nothing running.
func TestRunFailsOnAProcessThatDoesNotStart(t *testing.T) {
	var out bytes.Buffer
	err := Run(context.Background(), Config{Out: &out, Binary: "/bin/false", Dir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "demo: step 1 (") {
		t.Fatalf("Run with /bin/false = %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "FAIL: step 1") || !strings.Contains(out.String(), "stopped 2 meshfed processes") {
		t.Errorf("story:\n%s", out.String())
	}
}
