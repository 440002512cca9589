package inspect

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// t0 is the instant the test PKI is made at. It is the real time, truncated,
// because the TLS stacks in the connect tests (Go's server, openssl) judge
// validity by the clock; everything inspect itself judges gets t0 injected.
var t0 = time.Now().UTC().Truncate(time.Second)

var (
	east       = spiffeid.RequireTrustDomainFromString("east.example")
	west       = spiffeid.RequireTrustDomainFromString("west.example")
	reviewsID  = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	productID  = spiffeid.RequireFromString("spiffe://west.example/ns/shop/sa/product")
	eastCAName = "CN=east.example intermediate CA,O=meshfed"
	westCAName = "CN=west.example intermediate CA,O=meshfed"
	rootName   = "CN=meshfed root CA,O=meshfed"
)

// testPKI is a shared root with a name-constrained intermediate per trust
// domain, an SVID under each, a plain TLS leaf, and an unrelated root.
type testPKI struct {
	root        *x509.Certificate
	eastCA      *pki.CA
	westCA      *pki.CA
	svid        []*x509.Certificate // reviews in east: leaf, east intermediate
	svidKey     crypto.Signer
	westSVID    []*x509.Certificate // product in west: leaf, west intermediate
	westSVIDKey crypto.Signer
	tlsLeaf     []*x509.Certificate // DNS localhost, IP 127.0.0.1: leaf, root
	tlsLeafKey  crypto.Signer
	otherRoot   *x509.Certificate // a root that signed none of the above
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	clock := func() time.Time { return t0 }
	p := &testPKI{}
	rootKey := mustKey(t)
	var err error
	if p.root, err = pki.CreateRoot(pki.RootRequest{Signer: rootKey, Now: t0}); err != nil {
		t.Fatal(err)
	}
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{p.root}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	intermediate := func(td spiffeid.TrustDomain) *pki.CA {
		key := mustKey(t)
		chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: key.Public(), TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: chain, Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	p.eastCA, p.westCA = intermediate(east), intermediate(west)
	svid := func(ca *pki.CA, id spiffeid.ID) ([]*x509.Certificate, crypto.Signer) {
		key := mustKey(t)
		chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return chain, key
	}
	p.svid, p.svidKey = svid(p.eastCA, reviewsID)
	p.westSVID, p.westSVIDKey = svid(p.westCA, productID)
	p.tlsLeafKey = mustKey(t)
	if p.tlsLeaf, err = rootCA.SignLeaf(pki.LeafRequest{
		PublicKey:   p.tlsLeafKey.Public(),
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}); err != nil {
		t.Fatal(err)
	}
	if p.otherRoot, err = pki.CreateRoot(pki.RootRequest{Signer: mustKey(t), CommonName: "other root CA", Now: t0}); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// craft signs a leaf from tmpl with the east intermediate, bypassing pki's
// checks, to make certificates that break the rules on purpose.
func (p *testPKI) craft(t *testing.T, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	return craftBy(t, p.eastCA, tmpl)
}

// craftBy signs a leaf from tmpl with ca, bypassing pki's checks.
func craftBy(t *testing.T, ca *pki.CA, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(42)
	tmpl.NotBefore = t0.Add(-time.Minute)
	tmpl.NotAfter = t0.Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), mustKey(t).Public(), ca.Signer())
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// svidTemplate is what pki signs for an SVID, for craft to break.
func svidTemplate(uris ...string) *x509.Certificate {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			panic(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	return tmpl
}

// writeFile writes data to name in a temporary directory and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeCerts(t *testing.T, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	return writeFile(t, dir, name, pemfile.EncodeCertificates(certs...))
}

func writeKey(t *testing.T, dir, name string, key crypto.Signer) string {
	t.Helper()
	data, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name, data)
}
