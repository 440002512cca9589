package pki_test

import (
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxFuzzDER bounds the fuzzed certificate. Certificates reach pki only after
// a bounded parse (pemfile.MaxChainBytes for a whole chain); a single real
// certificate, even RSA-8192 with many SANs, is under 8 KiB.
const maxFuzzDER = 64 << 10

// FuzzCheckX509SVID feeds arbitrary DER through x509.ParseCertificate into
// the SVID and signing-certificate rules and the URI constraint check. They
// must not panic, every violation must name its rule, and a certificate that
// passes CheckX509SVID must carry exactly one SPIFFE ID with a path. Seeds:
// certificates pki issues, crafted violations, and openssl output in
// testdata/fuzz/FuzzCheckX509SVID/.
func FuzzCheckX509SVID(f *testing.F) {
	p := newPKI(f, pki.ECP256)
	pub := key(f, pki.ECP256, 2).Public()
	svid, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub, DNSNames: []string{"w.east.example"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(svid[0].Raw)
	f.Add(p.inter.Raw)
	f.Add(p.root.Raw)
	for _, mutate := range []func(*x509.Certificate){
		func(c *x509.Certificate) { c.IsCA = true; c.KeyUsage |= x509.KeyUsageCertSign },
		func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL("spiffe://east.example/v")) },
		func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("https://east.example/w")} },
		func(c *x509.Certificate) {
			c.KeyUsage = 0
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		},
	} {
		tmpl := leafTemplate()
		mutate(tmpl)
		f.Add(craft(f, tmpl, p.inter, p.intKey, pub).Raw)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		if len(der) > maxFuzzDER {
			t.Skip()
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		vs := pki.CheckX509SVID(c)
		for _, v := range append(vs, pki.CheckSigningCertificate(c)...) {
			if v.Rule == "" || v.Message == "" {
				t.Fatalf("violation without rule or message: %q", v)
			}
		}
		if vs == nil {
			if len(c.URIs) != 1 {
				t.Fatalf("conforming SVID with URI SANs %s", uris(c))
			}
			if id, err := spiffeid.FromURI(c.URIs[0]); err != nil || id.Path() == "" {
				t.Fatalf("conforming SVID with ID %s: %v", c.URIs[0], err)
			}
		}
		for _, u := range c.URIs {
			_ = pki.CheckURIConstraints(u, []*x509.Certificate{c})
		}
	})
}
