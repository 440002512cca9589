package inspect

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"
)

// golden fills a text template: {serial N}, {sha N} and {from N}/{to N} name
// the serial, fingerprint and validity of certs[N], which are random or
// depend on the clock.
func golden(tmpl string, certs ...*x509.Certificate) string {
	var pairs []string
	for i, c := range certs {
		pairs = append(pairs,
			fmt.Sprintf("{serial %d}", i), fmt.Sprintf("%x", c.SerialNumber),
			fmt.Sprintf("{sha %d}", i), opensslFingerprint(c),
			fmt.Sprintf("{from %d}", i), c.NotBefore.UTC().Format(time.RFC3339),
			fmt.Sprintf("{to %d}", i), c.NotAfter.UTC().Format(time.RFC3339))
	}
	return strings.NewReplacer(pairs...).Replace(tmpl)
}

func TestChainReportText(t *testing.T) {
	p := newTestPKI(t)
	bad := svidTemplate("spiffe://east.example/ns/default/sa/batch")
	bad.KeyUsage = x509.KeyUsageKeyEncipherment
	badLeaf := p.craft(t, bad)
	trust := &Trust{Source: "east-bundle.json", TrustDomain: east, Roots: []*x509.Certificate{p.root}}

	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{
			name:  "SVID chain that verifies",
			chain: p.svid,
			want: `reviews.pem: 2 certificates

Certificate 0 (leaf)
  SPIFFE ID:          spiffe://east.example/ns/default/sa/reviews
  Trust domain:       east.example
  Subject:            (empty)
  Issuer:             CN=east.example intermediate CA,O=meshfed
  Serial:             {serial 0}
  CA:                 no
  Key usage:          digitalSignature
  Ext key usage:      serverAuth, clientAuth
  Validity:           {from 0} to {to 0} (valid)
  Public key:         ECDSA P-256
  Signature:          ECDSA-SHA256
  SHA-256:            {sha 0}
  SVID:               conforms to the X.509-SVID rules for a leaf

Certificate 1 (intermediate CA)
  SPIFFE ID:          spiffe://east.example
  Trust domain:       east.example
  Subject:            CN=east.example intermediate CA,O=meshfed
  Issuer:             CN=meshfed root CA,O=meshfed
  Serial:             {serial 1}
  CA:                 yes, path length 0
  Key usage:          keyCertSign, cRLSign
  Name constraints:   critical
                      permitted URI: east.example
  Validity:           {from 1} to {to 1} (valid)
  Public key:         ECDSA P-256
  Signature:          ECDSA-SHA256
  SHA-256:            {sha 1}
  SVID:               conforms to the X.509-SVID rules for a signing certificate

Verification: OK (X.509-SVID, against east-bundle.json)
  SPIFFE ID:          spiffe://east.example/ns/default/sa/reviews
  Trust domain:       east.example
  Chain:              spiffe://east.example/ns/default/sa/reviews
                      CN=east.example intermediate CA,O=meshfed
                      CN=meshfed root CA,O=meshfed
`,
		},
		{
			name:  "SVID that breaks a rule",
			chain: []*x509.Certificate{badLeaf},
			want: `reviews.pem: 1 certificate

Certificate 0 (leaf)
  SPIFFE ID:          spiffe://east.example/ns/default/sa/batch
  Trust domain:       east.example
  Subject:            (empty)
  Issuer:             CN=east.example intermediate CA,O=meshfed
  Serial:             2a
  CA:                 no
  Key usage:          keyEncipherment
  Ext key usage:      serverAuth, clientAuth
  Validity:           {from 0} to {to 0} (valid)
  Public key:         ECDSA P-256
  Signature:          ECDSA-SHA256
  SHA-256:            {sha 0}
  SVID:               does NOT conform to the X.509-SVID rules for a leaf:
                        X509-SVID §4.3: leaf without digitalSignature

Verification: FAILED (X.509-SVID, against east-bundle.json)
  SPIFFE ID:          spiffe://east.example/ns/default/sa/batch
  Trust domain:       east.example
  Reason:             x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Verify(tt.chain, trust, VerifyOptions{Now: t0})
			r := ChainReport{Source: "reviews.pem", Certificates: Describe(tt.chain, t0), Verdict: &v}
			var got strings.Builder
			if err := r.WriteText(&got); err != nil {
				t.Fatal(err)
			}
			if want := golden(tt.want, tt.chain...); got.String() != want {
				t.Errorf("text:\n%s\nwant:\n%s", got.String(), want)
			}
		})
	}
}

func TestConnectReportText(t *testing.T) {
	p := newTestPKI(t)
	r := ConnectReport{
		Connection: Connection{
			Address: "10.0.3.7:15443", ServerName: "reviews.east.example", Version: "TLS 1.3",
			CipherSuite: "TLS_AES_128_GCM_SHA256", ClientCertificate: ClientCertSent, ClientID: productID.String(),
		},
		Certificates: Describe(p.svid, t0),
		Verdict:      NotVerified(),
	}
	want := golden(`CONNECTED 10.0.3.7:15443 (SNI reviews.east.example)
---
Certificate chain
 0 s:(empty)
   i:CN=east.example intermediate CA,O=meshfed
   SPIFFE ID: spiffe://east.example/ns/default/sa/reviews (trust domain east.example)
   a:ECDSA P-256; sigalg: ECDSA-SHA256
   v:NotBefore: {from 0}; NotAfter: {to 0} (valid)
   svid: conforms to the X.509-SVID rules for a leaf
 1 s:CN=east.example intermediate CA,O=meshfed
   i:CN=meshfed root CA,O=meshfed
   SPIFFE ID: spiffe://east.example (trust domain east.example)
   a:ECDSA P-256; sigalg: ECDSA-SHA256
   v:NotBefore: {from 1}; NotAfter: {to 1} (valid)
   svid: conforms to the X.509-SVID rules for a signing certificate
---
Protocol:           TLS 1.3
Cipher:             TLS_AES_128_GCM_SHA256
ALPN:               (none)
Session resumed:    no
Client certificate: sent (spiffe://west.example/ns/shop/sa/product)
---
Verification: NOT VERIFIED
  Reason:             no bundle or root was given, so the identities above are only what the peer claims
`, p.svid...)
	var got strings.Builder
	if err := r.WriteText(&got); err != nil {
		t.Fatal(err)
	}
	if got.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", got.String(), want)
	}
}

func TestBundleText(t *testing.T) {
	p := newTestPKI(t)
	seq, hint := uint64(7), int64(300)
	b := Bundle{
		Source: "east-bundle.json", Format: "spiffe", TrustDomain: "east.example", TrustDomainFrom: TrustDomainGiven,
		Sequence: &seq, RefreshHint: &hint,
		X509Authorities: Describe(p.svid[1:], t0),
		JWTAuthorities:  []JWTAuthority{{KeyID: "k1", Key: "ECDSA P-256"}},
	}
	var got strings.Builder
	if err := b.WriteText(&got); err != nil {
		t.Fatal(err)
	}
	want := `Bundle east-bundle.json
  Trust domain:       east.example (given)
  Format:             spiffe
  Sequence:           7
  Refresh hint:       5m0s
  X.509 authorities:  1
  JWT authorities:    kid k1: ECDSA P-256

Certificate 0 (intermediate CA)
  SPIFFE ID:          spiffe://east.example
`
	if !strings.HasPrefix(got.String(), want) {
		t.Errorf("text:\n%s\nwant it to start:\n%s", got.String(), want)
	}
}
