package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func bigInt(n int64) *big.Int { return big.NewInt(n) }

func TestVerifyX509SVID(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	other := newPKI(t, pki.ECP384)
	pub := key(t, pki.ECP256, 2).Public()
	svid, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	eastBundle := x509bundle.FromX509Authorities(east, []*x509.Certificate{p.root})
	subdomain := spiffeid.RequireTrustDomainFromString("x.east.example")

	// Leaves crafted under the real intermediate, breaking one rule each.
	crafted := func(mutate func(*x509.Certificate)) []*x509.Certificate {
		tmpl := leafTemplate()
		mutate(tmpl)
		return []*x509.Certificate{craft(t, tmpl, p.inter, p.intKey, pub), p.inter}
	}
	nonCriticalKU := crafted(func(c *x509.Certificate) {
		c.KeyUsage = 0
		c.ExtraExtensions = []pkix.Extension{nonCriticalKeyUsage(t, 0x80, 1)}
	})
	serverOnly := crafted(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
	caLeaf := crafted(func(c *x509.Certificate) { c.IsCA = true })
	subdomainLeaf := crafted(func(c *x509.Certificate) { c.URIs = []*url.URL{spiffeid.RequireFromPath(subdomain, "/w").URL()} })

	// An intermediate constrained to ".example": every domain below it.
	dotKey := key(t, pki.ECP256, 3)
	dotCA := craftCA(t, "dot CA", spiffeid.TrustDomain{}, []string{".example"}, p.root, p.rootKey, dotKey.Public())
	underDot := func(id string) []*x509.Certificate {
		tmpl := leafTemplate()
		tmpl.URIs = []*url.URL{mustURL(id)}
		return []*x509.Certificate{craft(t, tmpl, dotCA, dotKey, pub), dotCA}
	}
	exampleTD := spiffeid.RequireTrustDomainFromString("example")

	tests := []struct {
		name      string
		chain     []*x509.Certificate
		bundles   x509bundle.Source
		now       time.Time
		wantID    spiffeid.ID
		wantChain []*x509.Certificate
		wantErr   string
	}{
		{name: "issued by pki", chain: svid, bundles: eastBundle, now: t0, wantID: workload, wantChain: []*x509.Certificate{svid[0], p.inter, p.root}},
		{name: "leaf without its intermediate", chain: svid[:1], bundles: eastBundle, now: t0,
			wantErr: "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"},
		{name: "bundle of another root", chain: svid, bundles: x509bundle.FromX509Authorities(east, []*x509.Certificate{other.root}), now: t0,
			wantErr: "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"},
		{name: "no bundle for the trust domain", chain: svid, bundles: x509bundle.FromX509Authorities(west, []*x509.Certificate{p.root}), now: t0,
			wantErr: `x509svid: could not get X509 bundle: x509bundle: no X.509 bundle found for trust domain: "east.example"`},
		{name: "expired", chain: svid, bundles: eastBundle, now: svid[0].NotAfter.Add(time.Second),
			wantErr: "x509svid: could not verify leaf certificate: x509: certificate has expired or is not yet valid"},
		{name: "zero time is the wall clock, before these certificates", chain: svid, bundles: eastBundle,
			wantErr: "x509: certificate has expired or is not yet valid"},
		{name: "empty chain", bundles: eastBundle, now: t0, wantErr: "x509svid: empty certificates chain"},
		{name: "CA leaf (go-spiffe refuses)", chain: caLeaf, bundles: eastBundle, now: t0,
			wantErr: "x509svid: leaf certificate with CA flag set to true"},
		{name: "key usage not critical (go-spiffe accepts, meshfed refuses)", chain: nonCriticalKU, bundles: eastBundle, now: t0,
			wantErr: "pki: X.509-SVID spiffe://east.example/w does not conform: X509-SVID §4.3: key usage extension is not critical"},
		{name: "serverAuth only (go-spiffe accepts, meshfed refuses)", chain: serverOnly, bundles: eastBundle, now: t0,
			wantErr: "pki: X.509-SVID spiffe://east.example/w does not conform: X509-SVID §4.4: extended key usage present without both serverAuth and clientAuth"},
		{name: "subdomain of the constraint (Go accepts, meshfed refuses)", chain: subdomainLeaf,
			bundles: x509bundle.NewSet(eastBundle, x509bundle.FromX509Authorities(subdomain, []*x509.Certificate{p.root})), now: t0,
			wantErr: `pki: spiffe://x.east.example/w is outside the permitted URI subtree "east.example" of CA "CN=east.example intermediate CA,O=meshfed" (RFC 5280 §4.2.1.10)`},
		{name: "leading-period constraint: a domain below it", chain: underDot("spiffe://east.example/w"), bundles: eastBundle, now: t0,
			wantID: workload},
		{name: "leading-period constraint: the domain itself", chain: underDot("spiffe://example/w"),
			bundles: x509bundle.FromX509Authorities(exampleTD, []*x509.Certificate{p.root}), now: t0,
			wantErr: "x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, chains, err := pki.VerifyX509SVID(tt.chain, tt.bundles, tt.now)
			wantErr(t, err, tt.wantErr)
			if err != nil {
				if chains != nil {
					t.Error("returned chains with the error")
				}
				return
			}
			if id != tt.wantID {
				t.Errorf("ID %s, want %s", id, tt.wantID)
			}
			if len(chains) != 1 {
				t.Fatalf("%d chains, want 1", len(chains))
			}
			if tt.wantChain != nil && !equalChains(chains[0], tt.wantChain) {
				t.Errorf("chain of %d, want %d", len(chains[0]), len(tt.wantChain))
			}
		})
	}

	t.Run("Go's verifier accepts the subdomain leaf", func(t *testing.T) {
		// This is what makes the subdomain case above a test of meshfed's
		// stricter-than-Go rule rather than of Go's.
		if _, err := subdomainLeaf[0].Verify(x509.VerifyOptions{Roots: pool(p.root), Intermediates: pool(p.inter), CurrentTime: t0}); err != nil {
			t.Fatalf("Go refuses it: %v", err)
		}
		wantErr(t, pki.CheckURIConstraints(subdomainLeaf[0].URIs[0], []*x509.Certificate{p.inter, p.root}),
			`pki: spiffe://x.east.example/w is outside the permitted URI subtree "east.example"`)
	})
	t.Run("violations are a ViolationError", func(t *testing.T) {
		_, _, err := pki.VerifyX509SVID(nonCriticalKU, eastBundle, t0)
		var ve *pki.ViolationError
		if !errors.As(err, &ve) || ve.Subject != "X.509-SVID spiffe://east.example/w" || len(ve.Violations) != 1 || ve.Violations[0].Rule != "X509-SVID §4.3" {
			t.Fatalf("got %#v", err)
		}
	})
}

func equalChains(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
