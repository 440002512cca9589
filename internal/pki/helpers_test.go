package pki_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// t0 is "now" in every test: certificates are made and checked at times
// derived from it, never from the wall clock.
var t0 = time.Date(2030, time.March, 4, 5, 6, 7, 0, time.UTC)

var (
	east = spiffeid.RequireTrustDomainFromString("east.example")
	west = spiffeid.RequireTrustDomainFromString("west.example")
)

// keys caches generated keys for the test binary: RSA-4096 generation takes
// up to seconds and no test needs a fresh key. Slots give distinct keys of
// one type (a CA and the key it certifies must differ).
var keys sync.Map // keySlot -> func() crypto.Signer

type keySlot struct {
	kt   pki.KeyType
	slot int
}

func key(t testing.TB, kt pki.KeyType, slot int) crypto.Signer {
	t.Helper()
	gen, _ := keys.LoadOrStore(keySlot{kt, slot}, sync.OnceValues(func() (crypto.Signer, error) {
		return pki.GenerateKey(kt)
	}))
	k, err := gen.(func() (crypto.Signer, error))()
	if err != nil {
		t.Fatalf("generate %s key: %v", kt, err)
	}
	return k
}

// clock is a settable clock for CAConfig.Clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// testPKI is a root CA and an intermediate CA for east.example under it,
// both made by pki at t0.
type testPKI struct {
	clock    *clock
	rootKey  crypto.Signer
	root     *x509.Certificate
	rootCA   *pki.CA
	intKey   crypto.Signer
	inter    *x509.Certificate
	ca       *pki.CA // the intermediate
	leafKeys []crypto.Signer
}

// newPKI makes a root (key slot 0) and an intermediate (slot 1) of type kt.
func newPKI(t testing.TB, kt pki.KeyType) *testPKI {
	t.Helper()
	p := &testPKI{clock: &clock{t0}, rootKey: key(t, kt, 0), intKey: key(t, kt, 1)}
	var err error
	p.root, err = pki.CreateRoot(pki.RootRequest{Signer: p.rootKey, Now: t0, TTL: 10 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p.rootCA = mustCA(t, pki.CAConfig{Signer: p.rootKey, Chain: []*x509.Certificate{p.root}, Clock: p.clock.Now})
	chain, err := p.rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: p.intKey.Public(), TrustDomain: east, TTL: 5 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p.inter = chain[0]
	p.ca = mustCA(t, pki.CAConfig{Signer: p.intKey, Chain: chain, Clock: p.clock.Now})
	return p
}

func mustCA(t testing.TB, cfg pki.CAConfig) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// craft signs tmpl with parentKey directly through x509.CreateCertificate,
// bypassing every pki rule, to make certificates pki would never issue.
// Serial and validity default to a random serial and [t0-1m, t0+1h].
func craft(t testing.TB, tmpl, parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = t0.Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = t0.Add(time.Hour)
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatalf("craft: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("craft: parse: %v", err)
	}
	return c
}

// craftCA crafts a CA certificate for td (zero for none) under parent with
// the given URI name constraints.
func craftCA(t testing.TB, cn string, td spiffeid.TrustDomain, permitted []string, parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:                     pkix.Name{CommonName: cn},
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		PermittedURIDomains:         permitted,
		PermittedDNSDomainsCritical: len(permitted) > 0,
	}
	if !td.IsZero() {
		tmpl.URIs = []*url.URL{td.ID().URL()}
	}
	return craft(t, tmpl, parent, parentKey, pub)
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// wantErr fails unless err is nil when want is "", or contains every part
// of want (parts separated by " ... ").
func wantErr(t testing.TB, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error; want one containing %q", want)
	case want != "":
		for _, part := range strings.Split(want, " ... ") {
			if !strings.Contains(err.Error(), part) {
				t.Fatalf("error %q does not contain %q", err, part)
			}
		}
	}
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func uris(c *x509.Certificate) string {
	var s []string
	for _, u := range c.URIs {
		s = append(s, u.String())
	}
	return fmt.Sprint(s)
}

// csr makes a CSR signed by key, with the names in tmpl.
func csr(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tamper returns r with the last byte of its signature flipped.
func tamper(t testing.TB, r *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	raw := append([]byte(nil), r.Raw...)
	raw[len(raw)-1] ^= 0x01
	out, err := x509.ParseCertificateRequest(raw)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
