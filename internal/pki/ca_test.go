package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	oidKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidNameConstraints = asn1.ObjectIdentifier{2, 5, 29, 30}

	emptySubject = []byte{0x30, 0x00} // an empty RDNSequence

	workload = spiffeid.RequireFromPath(east, "/w")
)

// extension returns c's extension with the given OID.
func extension(t testing.TB, c *x509.Certificate, oid asn1.ObjectIdentifier) pkix.Extension {
	t.Helper()
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e
		}
	}
	t.Fatalf("certificate has no extension %v", oid)
	return pkix.Extension{}
}

// sigAlg is the signature algorithm crypto/x509 picks for each key type.
var sigAlg = map[pki.KeyType]x509.SignatureAlgorithm{
	pki.ECP256:  x509.ECDSAWithSHA256,
	pki.ECP384:  x509.ECDSAWithSHA384,
	pki.RSA2048: x509.SHA256WithRSA,
	pki.RSA3072: x509.SHA256WithRSA,
	pki.RSA4096: x509.SHA256WithRSA,
}

// leafKey is a key of type kt to certify under a P-256 test PKI, which
// holds P-256 slots 0 and 1: no CA there has this key.
func leafKey(t testing.TB, kt pki.KeyType) crypto.Signer {
	if kt == pki.ECP256 {
		return key(t, kt, 2)
	}
	return key(t, kt, 0)
}

func wantKeyUsage(t testing.TB, c *x509.Certificate, want x509.KeyUsage) {
	t.Helper()
	if c.KeyUsage != want {
		t.Errorf("key usage %b, want %b", c.KeyUsage, want)
	}
	if !extension(t, c, oidKeyUsage).Critical {
		t.Error("key usage extension is not critical")
	}
}

func wantSerial(t testing.TB, c *x509.Certificate) {
	t.Helper()
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %x is not positive and at most 128 bits", c.SerialNumber)
	}
}

func TestCreateRoot(t *testing.T) {
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			k := key(t, kt, 0)
			root, err := pki.CreateRoot(pki.RootRequest{Signer: k, Organization: "Acme", TrustDomain: east, TTL: 48 * time.Hour, Now: t0})
			if err != nil {
				t.Fatal(err)
			}
			if got := root.Subject.String(); got != "CN=Acme root CA,O=Acme" {
				t.Errorf("subject %q", got)
			}
			if !bytes.Equal(root.RawIssuer, root.RawSubject) {
				t.Error("issuer is not the subject")
			}
			if !root.NotBefore.Equal(t0.Add(-pki.Backdate)) || !root.NotAfter.Equal(t0.Add(48*time.Hour)) {
				t.Errorf("validity [%s, %s], want [t0-30s, t0+48h]", root.NotBefore, root.NotAfter)
			}
			if !root.BasicConstraintsValid || !root.IsCA || root.MaxPathLen != -1 {
				t.Errorf("basic constraints valid=%v CA=%v pathlen=%d; want a CA without path length", root.BasicConstraintsValid, root.IsCA, root.MaxPathLen)
			}
			wantKeyUsage(t, root, x509.KeyUsageCertSign|x509.KeyUsageCRLSign)
			if got := uris(root); got != "[spiffe://east.example]" {
				t.Errorf("URI SANs %s", got)
			}
			if len(root.PermittedURIDomains) > 0 {
				t.Errorf("root carries a name constraint %q", root.PermittedURIDomains)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(root.PublicKey) {
				t.Error("root does not carry the signer's public key")
			}
			if root.SignatureAlgorithm != sigAlg[kt] {
				t.Errorf("signature algorithm %s, want %s", root.SignatureAlgorithm, sigAlg[kt])
			}
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Errorf("self-signature: %v", err)
			}
			wantSerial(t, root)
			if vs := pki.CheckSigningCertificate(root); vs != nil {
				t.Errorf("violations: %v", vs)
			}
		})
	}
}

func TestCreateRootDefaults(t *testing.T) {
	before := time.Now()
	root, err := pki.CreateRoot(pki.RootRequest{Signer: key(t, pki.ECP256, 0)})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if got := root.Subject.String(); got != "CN=meshfed root CA,O=meshfed" {
		t.Errorf("subject %q", got)
	}
	if len(root.URIs) != 0 {
		t.Errorf("URI SANs %s without a trust domain", uris(root))
	}
	// Without Now, the root starts at the wall clock, backdated.
	nb := root.NotBefore.Add(pki.Backdate)
	if nb.Before(before.Truncate(time.Second)) || nb.After(after) {
		t.Errorf("NotBefore %s is not about now-30s", root.NotBefore)
	}
	if got := root.NotAfter.Sub(root.NotBefore); got != pki.DefaultRootTTL+pki.Backdate {
		t.Errorf("lifetime %s, want the default %s plus backdating", got, pki.DefaultRootTTL)
	}

	root, err = pki.CreateRoot(pki.RootRequest{Signer: key(t, pki.ECP256, 0), CommonName: "Mesh Root", Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if got := root.Subject.String(); got != "CN=Mesh Root,O=meshfed" {
		t.Errorf("subject %q", got)
	}
}

func TestCreateRootRefuses(t *testing.T) {
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     pki.RootRequest
		wantErr string
	}{
		{"no signer", pki.RootRequest{}, "pki: root: no signer"},
		{"negative TTL", pki.RootRequest{Signer: key(t, pki.ECP256, 0), TTL: -time.Hour}, "pki: root: negative TTL -1h0m0s"},
		{"weak key", pki.RootRequest{Signer: p224}, "pki: root: ECDSA curve P-224 is not accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := pki.CreateRoot(tt.req)
			wantErr(t, err, tt.wantErr)
			if root != nil {
				t.Error("returned a certificate with the error")
			}
		})
	}
}

func TestNewCA(t *testing.T) {
	p := newPKI(t, pki.ECP256)

	t.Run("root", func(t *testing.T) {
		ca := p.rootCA
		if ca.Certificate() != p.root || !slices.Equal(ca.Chain(), []*x509.Certificate{p.root}) || !slices.Equal(ca.Roots(), []*x509.Certificate{p.root}) {
			t.Errorf("certificate, chain or roots are not the root")
		}
		if td, ok := ca.TrustDomain(); ok || !td.IsZero() {
			t.Errorf("a root without a URI SAN is limited to %q", td)
		}
		if !ca.NotAfter().Equal(p.root.NotAfter) {
			t.Errorf("NotAfter %s, want the root's", ca.NotAfter())
		}
		if ca.Signer() != p.rootKey {
			t.Error("Signer() is not the caller's signer")
		}
	})
	t.Run("intermediate with its root at the end of the chain", func(t *testing.T) {
		ca := p.ca
		if ca.Certificate() != p.inter || !slices.Equal(ca.Chain(), []*x509.Certificate{p.inter}) || !slices.Equal(ca.Roots(), []*x509.Certificate{p.root}) {
			t.Errorf("chain %d certificates, roots %d", len(ca.Chain()), len(ca.Roots()))
		}
		if td, ok := ca.TrustDomain(); !ok || td != east {
			t.Errorf("TrustDomain() = %q, %v; want east.example", td, ok)
		}
		if !ca.NotAfter().Equal(p.inter.NotAfter) {
			t.Errorf("NotAfter %s, want the intermediate's", ca.NotAfter())
		}
		ca.Chain()[0] = nil
		if ca.Chain()[0] != p.inter {
			t.Error("Chain() exposes the CA's own slice")
		}
	})
	t.Run("intermediate with roots given apart", func(t *testing.T) {
		ca := mustCA(t, pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter}, Roots: []*x509.Certificate{p.root}, Clock: p.clock.Now})
		if !slices.Equal(ca.Chain(), []*x509.Certificate{p.inter}) || !slices.Equal(ca.Roots(), []*x509.Certificate{p.root}) {
			t.Errorf("chain %d certificates, roots %d", len(ca.Chain()), len(ca.Roots()))
		}
	})
	t.Run("root with a trust domain is limited to it", func(t *testing.T) {
		root, err := pki.CreateRoot(pki.RootRequest{Signer: p.rootKey, TrustDomain: west, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		ca := mustCA(t, pki.CAConfig{Signer: p.rootKey, Chain: []*x509.Certificate{root}, Clock: p.clock.Now})
		if td, ok := ca.TrustDomain(); !ok || td != west {
			t.Errorf("TrustDomain() = %q, %v; want west.example", td, ok)
		}
	})
}

func TestNewCARefuses(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	other := newPKI(t, pki.ECP384)
	svid, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: key(t, pki.ECP256, 2).Public()})
	if err != nil {
		t.Fatal(err)
	}
	interName := `"CN=east.example intermediate CA,O=meshfed"`
	subKey := key(t, pki.ECP256, 3)
	// Go's path validation lets an "east.example" constraint admit
	// x.east.example; meshfed does not.
	deepKey := key(t, pki.ECP256, 4)
	deep, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: deepKey.Public(), TrustDomain: east, MaxPathLen: 1, CommonName: "deep"})
	if err != nil {
		t.Fatal(err)
	}
	subdomainCA := craftCA(t, "x.east.example CA", spiffeid.RequireTrustDomainFromString("x.east.example"), nil, deep[0], deepKey, subKey.Public())
	if _, err := subdomainCA.Verify(x509.VerifyOptions{Roots: pool(p.root), Intermediates: pool(deep[0]), CurrentTime: t0}); err != nil {
		t.Fatalf("Go's own verifier refuses the subdomain CA, so this test proves nothing: %v", err)
	}
	// Go's path validation does not count the certificate it verifies
	// against the path lengths above it, so a CA under a path-length-0 CA
	// verifies; nothing it signs would.
	tooDeepCA := craftCA(t, "too deep", east, nil, p.inter, p.intKey, subKey.Public())
	if _, err := tooDeepCA.Verify(x509.VerifyOptions{Roots: pool(p.root), Intermediates: pool(p.inter), CurrentTime: t0}); err != nil {
		t.Fatalf("Go's own verifier refuses the CA, so this test proves nothing: %v", err)
	}

	tests := []struct {
		name    string
		cfg     pki.CAConfig
		now     time.Time
		wantErr string
	}{
		{"no signer", pki.CAConfig{Chain: []*x509.Certificate{p.root}}, t0, "pki: CA: no signer"},
		{"no certificate", pki.CAConfig{Signer: p.rootKey}, t0, "pki: CA: no certificate"},
		{"key does not match", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.root}}, t0, "pki: CA: the private key does not belong to the CA certificate"},
		{"not a CA", pki.CAConfig{Signer: key(t, pki.ECP256, 2), Chain: svid}, t0,
			"pki: CA certificate serial " + svid[0].SerialNumber.Text(16) + " does not conform: X509-SVID §4.1: signing certificate without CA=true in basic constraints; X509-SVID §4.3: signing certificate without keyCertSign; X509-SVID §3.2: signing certificate's SPIFFE ID spiffe://east.example/w has a path"},
		{"chain does not end in a root", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter}}, t0,
			"pki: CA: chain ends in " + interName + ", which is not a self-signed root; append the root or give the roots separately"},
		{"chain does not verify to the roots given", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter}, Roots: []*x509.Certificate{other.root}}, t0,
			"pki: CA: certificate does not verify to its root: x509: certificate signed by unknown authority"},
		{"chain ends in another root", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter, other.root}}, t0,
			"pki: CA: certificate does not verify to its root"},
		{"root expired", pki.CAConfig{Signer: p.rootKey, Chain: []*x509.Certificate{p.root}}, p.root.NotAfter.Add(time.Second),
			`pki: CA: "CN=meshfed root CA,O=meshfed" expired at ` + rfc3339(p.root.NotAfter) + "; rotate it"},
		{"intermediate expired", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter, p.root}}, p.inter.NotAfter.Add(time.Second),
			"pki: CA: " + interName + " expired at 2030-03-09T05:06:07Z; rotate it"},
		{"intermediate expired, roots given apart", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter}, Roots: []*x509.Certificate{p.root}}, p.inter.NotAfter.Add(time.Second),
			"pki: CA: " + interName + " expired at 2030-03-09T05:06:07Z; rotate it"},
		{"not yet valid", pki.CAConfig{Signer: p.intKey, Chain: []*x509.Certificate{p.inter, p.root}}, t0.Add(-time.Hour),
			"pki: CA: " + interName + " is not valid until 2030-03-04T05:05:37Z"},
		{"CA outside its issuer's name constraint (stricter than Go)", pki.CAConfig{Signer: subKey, Chain: []*x509.Certificate{subdomainCA, deep[0], p.root}}, t0,
			`pki: spiffe://x.east.example is outside the permitted URI subtree "east.example" of CA "CN=deep,O=meshfed" (RFC 5280 §4.2.1.10)`},
		{"CA below a path length 0 CA", pki.CAConfig{Signer: subKey, Chain: []*x509.Certificate{tooDeepCA, p.inter, p.root}}, t0,
			"pki: CA: " + interName + " has path length 0, which does not allow the 1 CA certificate(s) below it; nothing this CA signs would verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{tt.now}
			tt.cfg.Clock = c.Now
			ca, err := pki.NewCA(tt.cfg)
			wantErr(t, err, tt.wantErr)
			if ca != nil {
				t.Error("returned a CA with the error")
			}
		})
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestKeyTypes issues a whole chain with each key type: as the root's and
// the intermediate's key (signing the level below), and as an SVID's key.
func TestKeyTypes(t *testing.T) {
	for _, kt := range pki.KeyTypes() {
		t.Run(string(kt)+" CAs", func(t *testing.T) {
			p := newPKI(t, kt)
			if p.root.SignatureAlgorithm != sigAlg[kt] || p.inter.SignatureAlgorithm != sigAlg[kt] {
				t.Errorf("root signed with %s, intermediate with %s; want %s", p.root.SignatureAlgorithm, p.inter.SignatureAlgorithm, sigAlg[kt])
			}
			if !p.intKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(p.inter.PublicKey) {
				t.Error("intermediate does not carry its key")
			}
			svid, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: key(t, pki.ECP256, 2).Public()})
			if err != nil {
				t.Fatal(err)
			}
			if svid[0].SignatureAlgorithm != sigAlg[kt] {
				t.Errorf("SVID signed with %s, want %s", svid[0].SignatureAlgorithm, sigAlg[kt])
			}
			wantKeyUsage(t, svid[0], x509.KeyUsageDigitalSignature)
			id, chains, err := pki.VerifyX509SVID(svid, x509bundle.FromX509Authorities(east, []*x509.Certificate{p.root}), t0)
			if err != nil || id != workload || len(chains) != 1 || len(chains[0]) != 3 {
				t.Fatalf("VerifyX509SVID = %s, %d chains, %v", id, len(chains), err)
			}
		})
		t.Run(string(kt)+" SVID", func(t *testing.T) {
			p := newPKI(t, pki.ECP256)
			k := leafKey(t, kt)
			svid, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: k.Public()})
			if err != nil {
				t.Fatal(err)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(svid[0].PublicKey) {
				t.Error("SVID does not carry the workload's key")
			}
			want := x509.KeyUsageDigitalSignature
			if _, isRSA := k.Public().(*rsa.PublicKey); isRSA {
				want |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
			}
			wantKeyUsage(t, svid[0], want)
			if vs := pki.CheckX509SVID(svid[0]); vs != nil {
				t.Errorf("violations: %v", vs)
			}
		})
	}
}

func TestSignIntermediate(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	chain, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: pub, TrustDomain: west, TTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != p.root {
		t.Fatalf("chain of %d, want the intermediate and the root", len(chain))
	}
	c := chain[0]
	if got := c.Subject.String(); got != "CN=west.example intermediate CA,O=meshfed" {
		t.Errorf("subject %q", got)
	}
	if got := uris(c); got != "[spiffe://west.example]" {
		t.Errorf("URI SANs %s", got)
	}
	if !extension(t, c, oidNameConstraints).Critical {
		t.Error("name constraints extension is not critical")
	}
	if !slices.Equal(c.PermittedURIDomains, []string{"west.example"}) {
		t.Errorf("permitted URI domains %q, want exactly west.example", c.PermittedURIDomains)
	}
	if n := len(c.PermittedDNSDomains) + len(c.ExcludedDNSDomains) + len(c.PermittedIPRanges) + len(c.ExcludedIPRanges) +
		len(c.PermittedEmailAddresses) + len(c.ExcludedEmailAddresses) + len(c.ExcludedURIDomains); n != 0 {
		t.Errorf("%d constraints besides the permitted URI domain", n)
	}
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA=%v pathlen=%d zero=%v; want a CA with path length 0", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	wantKeyUsage(t, c, x509.KeyUsageCertSign|x509.KeyUsageCRLSign)
	if !c.NotBefore.Equal(t0.Add(-pki.Backdate)) || !c.NotAfter.Equal(t0.Add(48*time.Hour)) {
		t.Errorf("validity [%s, %s], want [t0-30s, t0+48h]", c.NotBefore, c.NotAfter)
	}
	if err := c.CheckSignatureFrom(p.root); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	wantSerial(t, c)

	t.Run("path length", func(t *testing.T) {
		tests := []struct {
			in       int
			want     int
			wantZero bool
			wantErr  string
		}{
			{0, 0, true, ""},
			{1, 1, false, ""},
			{3, 3, false, ""},
			{-1, -1, false, ""}, // no limit: the field is left out
			{-2, 0, false, "pki: intermediate: path length -2; use -1 (unlimited), 0 or more"},
		}
		for _, tt := range tests {
			chain, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: pub, TrustDomain: east, MaxPathLen: tt.in})
			wantErr(t, err, tt.wantErr)
			if err == nil && (chain[0].MaxPathLen != tt.want || chain[0].MaxPathLenZero != tt.wantZero) {
				t.Errorf("MaxPathLen %d: got %d (zero %v), want %d (zero %v)", tt.in, chain[0].MaxPathLen, chain[0].MaxPathLenZero, tt.want, tt.wantZero)
			}
		}
	})

	t.Run("names", func(t *testing.T) {
		chain, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: pub, TrustDomain: east, Organization: "Acme", CommonName: "East CA"})
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].Subject.String(); got != "CN=East CA,O=Acme" {
			t.Errorf("subject %q", got)
		}
	})
}

func TestSignIntermediateTTL(t *testing.T) {
	c := &clock{t0}
	k := key(t, pki.ECP256, 0)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: k, Now: t0}) // 10 years
	if err != nil {
		t.Fatal(err)
	}
	ca := mustCA(t, pki.CAConfig{Signer: k, Chain: []*x509.Certificate{root}, Clock: c.Now})
	shortRoot, err := pki.CreateRoot(pki.RootRequest{Signer: k, Now: t0, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	shortCA := mustCA(t, pki.CAConfig{Signer: k, Chain: []*x509.Certificate{shortRoot}, Clock: c.Now})
	pub := key(t, pki.ECP256, 1).Public()
	tests := []struct {
		name         string
		ca           *pki.CA
		ttl          time.Duration
		wantNotAfter time.Time
		wantErr      string
	}{
		{"default", ca, 0, t0.Add(pki.DefaultIntermediateTTL), ""},
		{"asked for", ca, 72 * time.Hour, t0.Add(72 * time.Hour), ""},
		{"clipped to the root", shortCA, 0, shortRoot.NotAfter, ""},
		{"negative", ca, -time.Second, time.Time{}, `pki: intermediate for "east.example": negative TTL -1s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := tt.ca.SignIntermediate(pki.IntermediateRequest{PublicKey: pub, TrustDomain: east, TTL: tt.ttl})
			wantErr(t, err, tt.wantErr)
			if err == nil && !chain[0].NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("NotAfter %s, want %s", chain[0].NotAfter, tt.wantNotAfter)
			}
		})
	}
}

func TestSignIntermediateRefuses(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	eastRoot, err := pki.CreateRoot(pki.RootRequest{Signer: p.rootKey, TrustDomain: east, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	eastRootCA := mustCA(t, pki.CAConfig{Signer: p.rootKey, Chain: []*x509.Certificate{eastRoot}, Clock: p.clock.Now})
	tests := []struct {
		name    string
		ca      *pki.CA
		req     pki.IntermediateRequest
		wantErr string
	}{
		{"no trust domain", p.rootCA, pki.IntermediateRequest{PublicKey: pub}, "pki: intermediate: a trust domain is required"},
		{"no key", p.rootCA, pki.IntermediateRequest{TrustDomain: east}, "pki: intermediate: no public key"},
		{"weak key", p.rootCA, pki.IntermediateRequest{PublicKey: p224.Public(), TrustDomain: east}, "pki: intermediate: ECDSA curve P-224 is not accepted"},
		{"intermediate constrained to another trust domain", p.ca, pki.IntermediateRequest{PublicKey: pub, TrustDomain: west},
			`pki: intermediate: this CA is limited to trust domain "east.example" and cannot vouch for "west.example"`},
		{"root of another trust domain", eastRootCA, pki.IntermediateRequest{PublicKey: pub, TrustDomain: west},
			`pki: intermediate: this CA is limited to trust domain "east.example" and cannot vouch for "west.example"`},
		{"path length 0 allows no CA below", p.ca, pki.IntermediateRequest{PublicKey: pub, TrustDomain: east},
			`pki: intermediate: "CN=east.example intermediate CA,O=meshfed" has path length 0, so it allows no further CA below this one`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := tt.ca.SignIntermediate(tt.req)
			wantErr(t, err, tt.wantErr)
			if chain != nil {
				t.Error("returned a chain with the error")
			}
		})
	}
}

// TestSubIntermediate builds root → intermediate (path length 1) →
// intermediate → SVID and verifies the SVID against the root alone.
func TestSubIntermediate(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	k1, k2 := key(t, pki.ECP256, 2), key(t, pki.ECP256, 3)
	chain1, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: k1.Public(), TrustDomain: east, MaxPathLen: 1})
	if err != nil {
		t.Fatal(err)
	}
	ca1 := mustCA(t, pki.CAConfig{Signer: k1, Chain: chain1, Clock: p.clock.Now})
	chain2, err := ca1.SignIntermediate(pki.IntermediateRequest{PublicKey: k2.Public(), TrustDomain: east, CommonName: "east sub CA"})
	if err != nil {
		t.Fatal(err)
	}
	// An intermediate's chain stops below the root (only a root CA's chain
	// is the root itself), so the root is given apart.
	if len(chain2) != 2 || chain2[1] != chain1[0] {
		t.Fatalf("chain of %d, want sub and intermediate", len(chain2))
	}
	ca2 := mustCA(t, pki.CAConfig{Signer: k2, Chain: chain2, Roots: []*x509.Certificate{p.root}, Clock: p.clock.Now})
	if got := ca2.Chain(); len(got) != 2 || got[0] != chain2[0] || got[1] != chain1[0] {
		t.Fatalf("Chain() has %d certificates, want sub and intermediate", len(got))
	}
	svid, err := ca2.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: key(t, pki.ECP256, 4).Public()})
	if err != nil {
		t.Fatal(err)
	}
	if len(svid) != 3 {
		t.Fatalf("SVID chain of %d, want leaf, sub, intermediate", len(svid))
	}
	_, chains, err := pki.VerifyX509SVID(svid, x509bundle.FromX509Authorities(east, []*x509.Certificate{p.root}), t0)
	if err != nil || len(chains[0]) != 4 {
		t.Fatalf("VerifyX509SVID: %v", err)
	}
	// Every CA of the path names the same root.
	for i, ca := range []*pki.CA{p.rootCA, ca1, ca2} {
		if got := ca.RootKeyID(); len(got) == 0 || !bytes.Equal(got, p.root.SubjectKeyId) {
			t.Errorf("CA %d: RootKeyID %x, want the root's %x", i, got, p.root.SubjectKeyId)
		}
	}
	_, err = ca2.SignIntermediate(pki.IntermediateRequest{PublicKey: key(t, pki.ECP256, 4).Public(), TrustDomain: east})
	wantErr(t, err, `pki: intermediate: "CN=east sub CA,O=meshfed" has path length 0`)
}

func TestSignIntermediateFromCSR(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	k := key(t, pki.ECP256, 2)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	named := csr(t, k, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "evil root", Organization: []string{"Evil"}},
		DNSNames: []string{"evil.example"},
	})
	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		td      spiffeid.TrustDomain
		wantErr string
	}{
		{"CSR without names", csr(t, k, nil), east, ""},
		{"CSR names are ignored", named, east, ""},
		{"CSR asks for the trust domain", csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{east.ID().URL()}}), east, ""},
		{"CSR asks for another trust domain", csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{west.ID().URL()}}), east,
			"pki: CSR asks for spiffe://west.example, but the intermediate is for spiffe://east.example"},
		{"CSR asks for two URIs", csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{east.ID().URL(), east.ID().URL()}}), east,
			"pki: CSR asks for 2 URI SANs; an intermediate carries exactly one"},
		{"tampered signature", tamper(t, csr(t, k, nil)), east,
			"pki: CSR signature does not verify, so the requester has not proved it holds the key: x509: ECDSA verification failure"},
		{"weak key", csr(t, p224, nil), east, "pki: CSR: ECDSA curve P-224 is not accepted"},
		{"no CSR", nil, east, "pki: no CSR"},
		{"no trust domain", csr(t, k, nil), spiffeid.TrustDomain{}, "pki: intermediate: a trust domain is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := p.rootCA.SignIntermediateFromCSR(tt.csr, pki.IntermediateRequest{TrustDomain: tt.td, PublicKey: key(t, pki.ECP384, 0).Public()})
			wantErr(t, err, tt.wantErr)
			if err != nil {
				if chain != nil {
					t.Error("returned a chain with the error")
				}
				return
			}
			c := chain[0]
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
				t.Error("intermediate does not carry the CSR's key (req.PublicKey must be ignored)")
			}
			if got := c.Subject.String(); got != "CN=east.example intermediate CA,O=meshfed" {
				t.Errorf("subject %q came from the CSR", got)
			}
			if len(c.DNSNames) != 0 || uris(c) != "[spiffe://east.example]" || !slices.Equal(c.PermittedURIDomains, []string{"east.example"}) {
				t.Errorf("names DNS %q, URI %s, constraint %q", c.DNSNames, uris(c), c.PermittedURIDomains)
			}
		})
	}
}

func TestSignX509SVID(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	k := key(t, pki.ECP256, 2)
	chain, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != p.inter {
		t.Fatalf("chain of %d, want the leaf and the intermediate (no root)", len(chain))
	}
	c := chain[0]
	if got := uris(c); got != "[spiffe://east.example/w]" {
		t.Errorf("URI SANs %s", got)
	}
	if len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
		t.Errorf("other SANs: %q %q %q", c.DNSNames, c.IPAddresses, c.EmailAddresses)
	}
	if !bytes.Equal(c.RawSubject, emptySubject) {
		t.Errorf("subject %q, want empty", c.Subject)
	}
	if !extension(t, c, oidSubjectAltName).Critical {
		t.Error("SAN extension is not critical with an empty subject")
	}
	if !c.BasicConstraintsValid || c.IsCA {
		t.Errorf("basic constraints valid=%v CA=%v; want CA=false", c.BasicConstraintsValid, c.IsCA)
	}
	wantKeyUsage(t, c, x509.KeyUsageDigitalSignature)
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("extended key usage %v", c.ExtKeyUsage)
	}
	if !c.NotBefore.Equal(t0.Add(-pki.Backdate)) || !c.NotAfter.Equal(t0.Add(pki.DefaultSVIDTTL)) {
		t.Errorf("validity [%s, %s], want [t0-30s, t0+1h]", c.NotBefore, c.NotAfter)
	}
	if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
		t.Error("SVID does not carry the workload's key")
	}
	if !bytes.Equal(c.AuthorityKeyId, p.inter.SubjectKeyId) {
		t.Error("authority key ID is not the intermediate's subject key ID")
	}
	wantSerial(t, c)
	if vs := pki.CheckX509SVID(c); vs != nil {
		t.Errorf("violations: %v", vs)
	}

	t.Run("DNS SANs and a subject", func(t *testing.T) {
		chain, err := p.ca.SignX509SVID(pki.SVIDRequest{
			ID: workload, PublicKey: k.Public(),
			DNSNames: []string{"web.east.example", "*.web.east.example"},
			Subject:  pkix.Name{CommonName: "web"},
		})
		if err != nil {
			t.Fatal(err)
		}
		c := chain[0]
		if !slices.Equal(c.DNSNames, []string{"web.east.example", "*.web.east.example"}) || uris(c) != "[spiffe://east.example/w]" {
			t.Errorf("SANs DNS %q URI %s", c.DNSNames, uris(c))
		}
		if c.Subject.CommonName != "web" {
			t.Errorf("subject %q", c.Subject)
		}
	})
}

func TestSignX509SVIDRefuses(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     pki.SVIDRequest
		wantErr string
	}{
		{"no ID", pki.SVIDRequest{PublicKey: pub}, "pki: SVID: a SPIFFE ID is required"},
		{"ID without a path", pki.SVIDRequest{ID: east.ID(), PublicKey: pub},
			"pki: SVID: spiffe://east.example has no path; a workload's SPIFFE ID names the workload (X509-SVID §3.1)"},
		{"ID in another trust domain", pki.SVIDRequest{ID: spiffeid.RequireFromPath(west, "/w"), PublicKey: pub},
			`pki: SVID: spiffe://west.example/w is outside trust domain "east.example", the only one this CA may sign for`},
		{"no key", pki.SVIDRequest{ID: workload}, "pki: SVID: no public key"},
		{"weak key", pki.SVIDRequest{ID: workload, PublicKey: p224.Public()}, "pki: SVID: ECDSA curve P-224 is not accepted"},
		{"negative TTL", pki.SVIDRequest{ID: workload, PublicKey: pub, TTL: -time.Second}, "pki: SVID for spiffe://east.example/w: negative TTL -1s"},
		{"invalid DNS name", pki.SVIDRequest{ID: workload, PublicKey: pub, DNSNames: []string{"ok.example", "a..b"}},
			`pki: SVID: DNS name "a..b" has an empty label or one longer than 63 characters`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := p.ca.SignX509SVID(tt.req)
			wantErr(t, err, tt.wantErr)
			if chain != nil {
				t.Error("returned a chain with the error")
			}
		})
	}
}

// TestDNSNames covers the DNS SAN syntax check shared by SVIDs and leaves.
func TestDNSNames(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	tests := []struct {
		name    string
		wantErr string
	}{
		{"gw.east.example", ""},
		{"GW.East.Example", ""},
		{"*.gw.east.example", ""},
		{"localhost", ""},
		{"x-1.example", ""},
		{strings.Repeat("a", 63) + ".example", ""},
		{"", `DNS name "" is empty or longer than 253 characters`},
		{strings.Repeat("a.", 127) + "ab", "is empty or longer than 253 characters"},
		{strings.Repeat("a", 64) + ".example", "has an empty label or one longer than 63 characters"},
		{"a..b", `DNS name "a..b" has an empty label`},
		{".a.example", `DNS name ".a.example" has an empty label`},
		{"a.example.", `DNS name "a.example." has an empty label`},
		{"*.", `DNS name "*." has an empty label`},
		{"-a.example", `DNS name "-a.example" has a label that begins or ends with a hyphen`},
		{"a-.example", `DNS name "a-.example" has a label that begins or ends with a hyphen`},
		{"under_score.example", `DNS name "under_score.example" has invalid character '_'`},
		{"bad name.example", `DNS name "bad name.example" has invalid character ' '`},
		{"a.*.example", `DNS name "a.*.example" has invalid character '*'`},
		{"**.example", `DNS name "**.example" has invalid character '*'`},
		{"10.0.0.1", `"10.0.0.1" is an IP address, not a DNS name`},
		{"::1", `"::1" is an IP address, not a DNS name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.ca.SignLeaf(pki.LeafRequest{PublicKey: pub, DNSNames: []string{tt.name}})
			if tt.wantErr != "" {
				tt.wantErr = "pki: leaf: ... " + tt.wantErr
			}
			wantErr(t, err, tt.wantErr)
			_, err = p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub, DNSNames: []string{tt.name}})
			wantErr(t, err, strings.Replace(tt.wantErr, "pki: leaf: ", "pki: SVID: ", 1))
		})
	}
}

func TestLifetime(t *testing.T) {
	p := newPKI(t, pki.ECP256) // root until t0+10d, intermediate until t0+5d
	pub := key(t, pki.ECP256, 2).Public()
	// An intermediate that outlives its root: crafted, as pki clips it.
	longKey := key(t, pki.ECP256, 3)
	long := craft(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "long-lived east CA"},
		URIs:                  []*url.URL{east.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		PermittedURIDomains:   []string{"east.example"},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              p.root.NotAfter.Add(10 * 24 * time.Hour),
	}, p.root, p.rootKey, longKey.Public())
	longCA := mustCA(t, pki.CAConfig{Signer: longKey, Chain: []*x509.Certificate{long, p.root}, Clock: p.clock.Now})
	if !longCA.NotAfter().Equal(p.root.NotAfter) {
		t.Fatalf("CA NotAfter %s, want the root's %s", longCA.NotAfter(), p.root.NotAfter)
	}

	tests := []struct {
		name          string
		ca            *pki.CA
		now           time.Time
		ttl           time.Duration
		wantNotBefore time.Time
		wantNotAfter  time.Time
		wantErr       string
	}{
		{"default TTL", p.ca, t0, 0, t0.Add(-pki.Backdate), t0.Add(pki.DefaultSVIDTTL), ""},
		{"TTL asked for", p.ca, t0, 2 * time.Hour, t0.Add(-pki.Backdate), t0.Add(2 * time.Hour), ""},
		{"TTL clipped to the intermediate", p.ca, t0, 30 * 24 * time.Hour, t0.Add(-pki.Backdate), p.inter.NotAfter, ""},
		{"late in the intermediate's life", p.ca, p.inter.NotAfter.Add(-10 * time.Minute), 0, p.inter.NotAfter.Add(-10*time.Minute - pki.Backdate), p.inter.NotAfter, ""},
		{"TTL clipped to the root the intermediate outlives", longCA, t0, 30 * 24 * time.Hour, t0.Add(-pki.Backdate), p.root.NotAfter, ""},
		{"backdating stops at the CA's NotBefore", p.ca, t0.Add(-10 * time.Second), 0, p.inter.NotBefore, t0.Add(-10*time.Second + pki.DefaultSVIDTTL), ""},
		{"negative TTL", p.ca, t0, -time.Minute, time.Time{}, time.Time{}, "pki: SVID for spiffe://east.example/w: negative TTL -1m0s"},
		{"CA expired", p.ca, p.inter.NotAfter.Add(time.Second), 0, time.Time{}, time.Time{},
			"pki: SVID for spiffe://east.example/w: the issuing CA expired at 2030-03-09T05:06:07Z; rotate it"},
		{"CA expires this instant", p.ca, p.inter.NotAfter, 0, time.Time{}, time.Time{}, "the issuing CA expired at 2030-03-09T05:06:07Z"},
		{"root expired under a live intermediate", longCA, p.root.NotAfter.Add(time.Hour), 0, time.Time{}, time.Time{},
			"the issuing CA expired at " + rfc3339(p.root.NotAfter) + "; rotate it"},
		{"CA not yet valid", p.ca, t0.Add(-time.Hour), 0, time.Time{}, time.Time{},
			`pki: SVID for spiffe://east.example/w: the issuing CA "CN=east.example intermediate CA,O=meshfed" is not valid until 2030-03-04T05:05:37Z; check the clock`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.clock.now = tt.now
			defer func() { p.clock.now = t0 }()
			chain, err := tt.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub, TTL: tt.ttl})
			wantErr(t, err, tt.wantErr)
			if err != nil {
				return
			}
			if c := chain[0]; !c.NotBefore.Equal(tt.wantNotBefore) || !c.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("validity [%s, %s], want [%s, %s]", c.NotBefore, c.NotAfter, tt.wantNotBefore, tt.wantNotAfter)
			}
		})
	}
}

// TestSerials checks the serials' layout: the signing time in milliseconds
// (the CA's clock) in the top 48 of 128 bits, then 80 random bits. So serials
// are unique within a millisecond, and a later one is larger, as a number
// and as the hex text the audit log indexes.
func TestSerials(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	defer func() { p.clock.now = t0 }()
	pub := key(t, pki.ECP256, 2).Public()
	const n = 200
	sign := func() *big.Int {
		t.Helper()
		chain, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		wantSerial(t, chain[0])
		return chain[0].SerialNumber
	}
	random := new(big.Int).Lsh(big.NewInt(1), 80)
	seen := map[string]bool{}
	maxBits := 0
	var last *big.Int
	for range n {
		s := sign()
		if seen[s.String()] {
			t.Fatalf("serial %x issued twice", s)
		}
		seen[s.String()] = true
		if got, want := new(big.Int).Rsh(s, 80).Int64(), t0.UnixMilli(); got != want {
			t.Fatalf("serial %x starts with %d; want the signing time %d (ms)", s, got, want)
		}
		maxBits = max(maxBits, new(big.Int).Mod(s, random).BitLen())
		last = s
	}
	// 200 random 80-bit parts all below 2^72 would happen with probability
	// 2^-1600: the random part is 80 bits wide.
	if maxBits <= 72 {
		t.Errorf("longest random part of %d serials has %d bits; want about 80", n, maxBits)
	}
	p.clock.now = t0.Add(time.Millisecond)
	next := sign()
	if next.Cmp(last) <= 0 || fmt.Sprintf("%x", next) <= fmt.Sprintf("%x", last) {
		t.Errorf("serial %x signed 1 ms later is not above %x", next, last)
	}
}

func TestSignX509SVIDFromCSR(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	k := key(t, pki.ECP256, 2)
	rsaKey := leafKey(t, pki.RSA2048)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	admin := spiffeid.RequireFromPath(east, "/admin")
	tests := []struct {
		name     string
		key      crypto.Signer // the key the CSR must carry
		csr      *x509.CertificateRequest
		dnsNames []string // the caller's, not the CSR's
		wantDNS  []string
		wantKU   x509.KeyUsage
		wantErr  string
	}{
		{name: "CSR without names", key: k, csr: csr(t, k, nil), wantKU: x509.KeyUsageDigitalSignature},
		{name: "CSR names are never copied", key: k, csr: csr(t, k, &x509.CertificateRequest{
			Subject:        pkix.Name{CommonName: "admin", Organization: []string{"root"}},
			DNSNames:       []string{"evil.example"},
			IPAddresses:    []net.IP{net.IPv4(10, 0, 0, 1)},
			EmailAddresses: []string{"admin@evil.example"},
		}), wantKU: x509.KeyUsageDigitalSignature},
		{name: "DNS names come from the caller", key: k, csr: csr(t, k, &x509.CertificateRequest{DNSNames: []string{"evil.example"}}),
			dnsNames: []string{"w.east.example"}, wantDNS: []string{"w.east.example"}, wantKU: x509.KeyUsageDigitalSignature},
		{name: "CSR asks for the verified ID", key: k, csr: csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}), wantKU: x509.KeyUsageDigitalSignature},
		{name: "RSA CSR", key: rsaKey, csr: csr(t, rsaKey, nil), wantKU: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{name: "CSR asks for another ID", csr: csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{admin.URL()}}),
			wantErr: "pki: CSR asks for spiffe://east.example/admin, but the verified identity is spiffe://east.example/w"},
		{name: "CSR asks for two IDs", csr: csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{workload.URL(), admin.URL()}}),
			wantErr: "pki: CSR asks for 2 URI SANs; an SVID has exactly one"},
		{name: "CSR asks for the ID twice", csr: csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{workload.URL(), workload.URL()}}),
			wantErr: "pki: CSR asks for 2 URI SANs; an SVID has exactly one"},
		{name: "tampered ECDSA signature", csr: tamper(t, csr(t, k, nil)),
			wantErr: "pki: CSR signature does not verify, so the requester has not proved it holds the key: x509: ECDSA verification failure"},
		{name: "tampered RSA signature", csr: tamper(t, csr(t, rsaKey, nil)),
			wantErr: "pki: CSR signature does not verify, so the requester has not proved it holds the key: crypto/rsa: verification error"},
		{name: "RSA-1024", csr: csr(t, rsa1024, nil), wantErr: "pki: CSR: RSA key of 1024 bits is not accepted; use 2048 to 8192 bits"},
		{name: "P-224", csr: csr(t, p224, nil), wantErr: "pki: CSR: ECDSA curve P-224 is not accepted"},
		{name: "no CSR", wantErr: "pki: no CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := p.ca.SignX509SVIDFromCSR(tt.csr, pki.SVIDRequest{ID: workload, DNSNames: tt.dnsNames})
			wantErr(t, err, tt.wantErr)
			if err != nil {
				if chain != nil {
					t.Error("returned a chain with the error")
				}
				return
			}
			c := chain[0]
			if uris(c) != "[spiffe://east.example/w]" {
				t.Errorf("URI SANs %s, want the caller's ID", uris(c))
			}
			if !tt.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
				t.Error("SVID does not carry the CSR's key")
			}
			if !bytes.Equal(c.RawSubject, emptySubject) || !slices.Equal(c.DNSNames, tt.wantDNS) || len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
				t.Errorf("subject %q, DNS %q, IPs %q, emails %q: names came from the CSR", c.Subject, c.DNSNames, c.IPAddresses, c.EmailAddresses)
			}
			wantKeyUsage(t, c, tt.wantKU)
		})
	}
	t.Run("CheckCSRIdentity alone", func(t *testing.T) {
		wantErr(t, pki.CheckCSRIdentity(csr(t, k, nil), workload), "")
		wantErr(t, pki.CheckCSRIdentity(csr(t, k, &x509.CertificateRequest{URIs: []*url.URL{mustURL("https://east.example/w")}}), workload),
			"pki: CSR asks for https://east.example/w, but the verified identity is spiffe://east.example/w")
	})
}

func TestSignLeaf(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	k := key(t, pki.ECP256, 2)
	rsaKey := leafKey(t, pki.RSA2048)
	tests := []struct {
		name    string
		req     pki.LeafRequest
		wantCN  string
		wantKU  x509.KeyUsage
		verify  string // a name the leaf must verify for
		wantErr string
	}{
		{name: "DNS names and IPs", req: pki.LeafRequest{PublicKey: k.Public(), DNSNames: []string{"gw.east.example", "*.gw.east.example"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1), net.IPv6loopback}},
			wantCN: "gw.east.example", wantKU: x509.KeyUsageDigitalSignature, verify: "a.gw.east.example"},
		{name: "IP only", req: pki.LeafRequest{PublicKey: k.Public(), IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}},
			wantKU: x509.KeyUsageDigitalSignature, verify: "10.0.0.1"},
		{name: "common name given", req: pki.LeafRequest{PublicKey: k.Public(), CommonName: "east gateway", DNSNames: []string{"gw.east.example"}},
			wantCN: "east gateway", wantKU: x509.KeyUsageDigitalSignature, verify: "gw.east.example"},
		{name: "RSA key", req: pki.LeafRequest{PublicKey: rsaKey.Public(), DNSNames: []string{"gw.east.example"}},
			wantCN: "gw.east.example", wantKU: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, verify: "gw.east.example"},
		{name: "no names", req: pki.LeafRequest{PublicKey: k.Public()}, wantErr: "pki: leaf: give at least one DNS name or IP address"},
		{name: "invalid DNS name", req: pki.LeafRequest{PublicKey: k.Public(), DNSNames: []string{"gw..example"}}, wantErr: `pki: leaf: DNS name "gw..example" has an empty label`},
		{name: "no key", req: pki.LeafRequest{DNSNames: []string{"gw.east.example"}}, wantErr: "pki: leaf: no public key"},
		{name: "negative TTL", req: pki.LeafRequest{PublicKey: k.Public(), DNSNames: []string{"gw.east.example"}, TTL: -time.Hour}, wantErr: "pki: leaf: negative TTL -1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := p.ca.SignLeaf(tt.req)
			wantErr(t, err, tt.wantErr)
			if err != nil {
				return
			}
			c := chain[0]
			if len(chain) != 2 || chain[1] != p.inter {
				t.Errorf("chain of %d, want leaf and intermediate", len(chain))
			}
			if c.Subject.CommonName != tt.wantCN || !slices.Equal(c.DNSNames, tt.req.DNSNames) || len(c.URIs) != 0 {
				t.Errorf("CN %q DNS %q URIs %s", c.Subject.CommonName, c.DNSNames, uris(c))
			}
			if len(c.IPAddresses) != len(tt.req.IPAddresses) {
				t.Errorf("IPs %q, want %q", c.IPAddresses, tt.req.IPAddresses)
			}
			for i := range c.IPAddresses {
				if !c.IPAddresses[i].Equal(tt.req.IPAddresses[i]) {
					t.Errorf("IP %d is %s, want %s", i, c.IPAddresses[i], tt.req.IPAddresses[i])
				}
			}
			if c.IsCA || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("CA=%v EKU %v", c.IsCA, c.ExtKeyUsage)
			}
			wantKeyUsage(t, c, tt.wantKU)
			// The default TTL (90 days) is clipped to the intermediate.
			if !c.NotAfter.Equal(p.inter.NotAfter) {
				t.Errorf("NotAfter %s, want the intermediate's %s", c.NotAfter, p.inter.NotAfter)
			}
			if _, err := c.Verify(x509.VerifyOptions{DNSName: tt.verify, Roots: pool(p.root), Intermediates: pool(p.inter), CurrentTime: t0}); err != nil {
				t.Errorf("does not verify for %s: %v", tt.verify, err)
			}
		})
	}
	t.Run("default TTL", func(t *testing.T) {
		chain, err := p.rootCA.SignLeaf(pki.LeafRequest{PublicKey: k.Public(), DNSNames: []string{"gw.east.example"}, TTL: 0})
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter; !got.Equal(p.root.NotAfter) {
			// The root lives 10 days, less than the 90-day default.
			t.Errorf("NotAfter %s, want the root's %s", got, p.root.NotAfter)
		}
		root, err := pki.CreateRoot(pki.RootRequest{Signer: p.rootKey, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		ca := mustCA(t, pki.CAConfig{Signer: p.rootKey, Chain: []*x509.Certificate{root}, Clock: p.clock.Now})
		chain, err = ca.SignLeaf(pki.LeafRequest{PublicKey: k.Public(), DNSNames: []string{"gw.east.example"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter; !got.Equal(t0.Add(pki.DefaultLeafTTL)) {
			t.Errorf("NotAfter %s, want t0 + %s", got, pki.DefaultLeafTTL)
		}
	})
}

// opaqueSigner hides the key type behind crypto.Signer, as a KMS or HSM
// does, and counts signatures.
type opaqueSigner struct {
	key   crypto.Signer
	signs atomic.Int32
	lie   crypto.Signer // if set, signs with this key instead
}

func (s *opaqueSigner) Public() crypto.PublicKey { return s.key.Public() }

func (s *opaqueSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.signs.Add(1)
	if s.lie != nil {
		return s.lie.Sign(r, digest, opts)
	}
	return s.key.Sign(r, digest, opts)
}

// TestSignerNotOwned proves the CA signs only through the crypto.Signer it
// is given, once per certificate, and returns nothing when the signer
// misbehaves.
func TestSignerNotOwned(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	signer := &opaqueSigner{key: p.intKey}
	ca := mustCA(t, pki.CAConfig{Signer: signer, Chain: []*x509.Certificate{p.inter, p.root}, Clock: p.clock.Now})
	if ca.Signer() != signer {
		t.Fatal("Signer() is not the caller's signer")
	}
	if _, err := ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: key(t, pki.ECP256, 2).Public()}); err != nil {
		t.Fatal(err)
	}
	if n := signer.signs.Load(); n != 1 {
		t.Errorf("%d signatures for one SVID, want 1", n)
	}

	signer.lie = key(t, pki.ECP256, 3)
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: key(t, pki.ECP256, 2).Public()})
	wantErr(t, err, "pki: SVID for spiffe://east.example/w: x509: signature returned by signer is invalid")
	if chain != nil {
		t.Error("returned a chain signed by the wrong key")
	}
}

// TestReverify proves that what a CA signs is verified before it is
// returned, with rules no template check catches: meshfed's strict URI name
// constraints, and Go's path validation itself.
func TestReverify(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	caKey := key(t, pki.ECP256, 3)
	tests := []struct {
		name      string
		permitted []string
		id        string
		wantErr   string
	}{
		{"two permitted domains: one of them", []string{"east.example", "west.example"}, "spiffe://west.example/w", ""},
		{"two permitted domains: a subdomain Go admits", []string{"east.example", "west.example"}, "spiffe://x.east.example/w",
			`pki: spiffe://x.east.example/w is outside the permitted URI subtree "east.example,west.example" of CA "CN=multi CA" (RFC 5280 §4.2.1.10)`},
		{"leading period: a subdomain", []string{".example"}, "spiffe://east.example/w", ""},
		{"leading period: the domain itself", []string{".example"}, "spiffe://example/w",
			"pki: SVID for spiffe://example/w: what was signed does not verify: x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			multi := craftCA(t, "multi CA", spiffeid.TrustDomain{}, tt.permitted, p.root, p.rootKey, caKey.Public())
			ca := mustCA(t, pki.CAConfig{Signer: caKey, Chain: []*x509.Certificate{multi, p.root}, Clock: p.clock.Now})
			if td, ok := ca.TrustDomain(); ok {
				t.Fatalf("CA limited to %q; the test needs one that is not", td)
			}
			chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromString(tt.id), PublicKey: pub})
			wantErr(t, err, tt.wantErr)
			if err != nil && chain != nil {
				t.Error("returned a chain with the error")
			}
		})
	}
}

func TestViolationError(t *testing.T) {
	err := error(&pki.ViolationError{Subject: "leaf x", Violations: []pki.Violation{
		{Rule: "X509-SVID §2", Message: "one"},
		{Rule: "X509-SVID §4.1", Message: "two"},
	}})
	if got := err.Error(); got != "pki: leaf x does not conform: X509-SVID §2: one; X509-SVID §4.1: two" {
		t.Errorf("Error() = %q", got)
	}
	var ve *pki.ViolationError
	if !errors.As(fmtWrap(err), &ve) || len(ve.Violations) != 2 {
		t.Error("ViolationError does not survive wrapping")
	}
}

func fmtWrap(err error) error { return errors.Join(errors.New("outer"), err) }
