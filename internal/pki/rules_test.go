package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"slices"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
)

// sanExtension encodes a subjectAltName extension of URIs by hand, so a test
// can choose its criticality (crypto/x509 chooses it from the subject).
func sanExtension(t testing.TB, critical bool, uris ...string) pkix.Extension {
	t.Helper()
	var names []asn1.RawValue
	for _, u := range uris {
		names = append(names, asn1.RawValue{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(u)})
	}
	val, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: critical, Value: val}
}

// nonCriticalKeyUsage encodes a key usage extension without the critical
// flag crypto/x509 always sets. bits is the DER bit string: digitalSignature
// is bit 0 (0x80), keyCertSign bit 5 (0x04).
func nonCriticalKeyUsage(t testing.TB, b byte, bitLength int) pkix.Extension {
	t.Helper()
	val, err := asn1.Marshal(asn1.BitString{Bytes: []byte{b}, BitLength: bitLength})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidKeyUsage, Critical: false, Value: val}
}

// leafTemplate is a conforming X.509-SVID template for workload.
func leafTemplate() *x509.Certificate {
	return &x509.Certificate{
		URIs:                  []*url.URL{workload.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// TestGoSANCriticality pins the crypto/x509 behaviour the rules rely on:
// CreateCertificate marks the SAN extension critical exactly when the
// subject is empty, so a non-critical SAN under an empty subject can only
// be made by hand.
func TestGoSANCriticality(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	empty := craft(t, leafTemplate(), p.inter, p.intKey, pub)
	if !extension(t, empty, oidSubjectAltName).Critical {
		t.Error("crypto/x509 left the SAN non-critical under an empty subject")
	}
	named := leafTemplate()
	named.Subject = pkix.Name{CommonName: "w"}
	if extension(t, craft(t, named, p.inter, p.intKey, pub), oidSubjectAltName).Critical {
		t.Error("crypto/x509 marked the SAN critical under a non-empty subject")
	}
}

func TestCheckX509SVID(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	issued, err := p.ca.SignX509SVID(pki.SVIDRequest{ID: workload, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	const (
		s2  = "X509-SVID §2"
		s31 = "X509-SVID §3.1"
		s41 = "X509-SVID §4.1"
		s43 = "X509-SVID §4.3"
		s44 = "X509-SVID §4.4"
	)
	tests := []struct {
		name   string
		mutate func(*x509.Certificate)
		want   []pki.Violation
	}{
		{"conforming", func(c *x509.Certificate) {}, nil},
		{"conforming with a subject and a non-critical SAN", func(c *x509.Certificate) { c.Subject.CommonName = "w" }, nil},
		{"no basic constraints (cA defaults to false)", func(c *x509.Certificate) { c.BasicConstraintsValid = false }, nil},
		{"keyEncipherment and keyAgreement besides digitalSignature", func(c *x509.Certificate) {
			c.KeyUsage |= x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
		}, nil},
		{"no extended key usage (SHOULD, not MUST)", func(c *x509.Certificate) { c.ExtKeyUsage = nil }, nil},
		{"extended key usage with more purposes", func(c *x509.Certificate) {
			c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning)
		}, nil},
		{"DNS SANs besides the URI SAN", func(c *x509.Certificate) { c.DNSNames = []string{"w.east.example"} }, nil},

		{"two URI SANs", func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL("spiffe://east.example/v")) },
			[]pki.Violation{{s2, "2 URI SANs; an SVID carries exactly one"}}},
		{"no URI SAN, a DNS SAN", func(c *x509.Certificate) { c.URIs, c.DNSNames = nil, []string{"w.east.example"} },
			[]pki.Violation{{s2, "no URI SAN; an SVID carries exactly one, its SPIFFE ID"}}},
		{"no SAN at all", func(c *x509.Certificate) { c.URIs, c.Subject.CommonName = nil, "w" },
			[]pki.Violation{{s2, "no URI SAN; an SVID carries exactly one, its SPIFFE ID"}}},
		{"URI SAN is not a SPIFFE ID", func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("https://east.example/w")} },
			[]pki.Violation{{s2, `URI SAN "https://east.example/w" is not a SPIFFE ID: scheme is missing or invalid`}}},
		{"SPIFFE ID without a path", func(c *x509.Certificate) { c.URIs = []*url.URL{east.ID().URL()} },
			[]pki.Violation{{s31, "SPIFFE ID spiffe://east.example has no path; a leaf SVID's ID must name a workload"}}},
		{"empty subject, SAN not critical", func(c *x509.Certificate) {
			c.URIs = nil
			c.ExtraExtensions = []pkix.Extension{sanExtension(t, false, workload.String())}
		}, []pki.Violation{{s31, "subject is empty but the SAN extension is not critical (RFC 5280 §4.1.2.6)"}}},
		{"CA=true", func(c *x509.Certificate) { c.IsCA = true },
			[]pki.Violation{{s41, "leaf has CA=true in basic constraints"}}},
		{"key usage missing", func(c *x509.Certificate) { c.KeyUsage = 0 },
			[]pki.Violation{{s43, "key usage extension missing"}}},
		{"key usage not critical", func(c *x509.Certificate) {
			c.KeyUsage = 0
			c.ExtraExtensions = []pkix.Extension{nonCriticalKeyUsage(t, 0x80, 1)}
		}, []pki.Violation{{s43, "key usage extension is not critical"}}},
		{"no digitalSignature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment },
			[]pki.Violation{{s43, "leaf without digitalSignature"}}},
		{"keyCertSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign },
			[]pki.Violation{{s43, "leaf with keyCertSign"}}},
		{"cRLSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign },
			[]pki.Violation{{s43, "leaf with cRLSign"}}},
		{"serverAuth without clientAuth", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} },
			[]pki.Violation{{s44, "extended key usage present without both serverAuth and clientAuth"}}},
		{"clientAuth without serverAuth", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} },
			[]pki.Violation{{s44, "extended key usage present without both serverAuth and clientAuth"}}},
		{"only an unknown purpose", func(c *x509.Certificate) {
			c.ExtKeyUsage, c.UnknownExtKeyUsage = nil, []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 99999, 1}}
		}, []pki.Violation{{s44, "extended key usage present without both serverAuth and clientAuth"}}},
		{"everything wrong at once", func(c *x509.Certificate) {
			c.URIs = append(c.URIs, mustURL("spiffe://east.example/v"))
			c.IsCA = true
			c.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, []pki.Violation{
			{s2, "2 URI SANs; an SVID carries exactly one"},
			{s41, "leaf has CA=true in basic constraints"},
			{s43, "leaf without digitalSignature"},
			{s43, "leaf with keyCertSign"},
			{s43, "leaf with cRLSign"},
			{s44, "extended key usage present without both serverAuth and clientAuth"},
		}},
	}
	t.Run("issued by pki", func(t *testing.T) {
		if vs := pki.CheckX509SVID(issued[0]); vs != nil {
			t.Errorf("violations: %v", vs)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := leafTemplate()
			tt.mutate(tmpl)
			c := craft(t, tmpl, p.inter, p.intKey, pub)
			if got := pki.CheckX509SVID(c); !slices.Equal(got, tt.want) {
				t.Errorf("violations:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestCheckSigningCertificate(t *testing.T) {
	p := newPKI(t, pki.ECP256)
	pub := key(t, pki.ECP256, 2).Public()
	const (
		s32 = "X509-SVID §3.2"
		s41 = "X509-SVID §4.1"
		s43 = "X509-SVID §4.3"
	)
	tests := []struct {
		name   string
		mutate func(*x509.Certificate)
		want   []pki.Violation
	}{
		{"conforming", func(c *x509.Certificate) {}, nil},
		{"no SPIFFE ID (SHOULD, not MUST)", func(c *x509.Certificate) { c.URIs = nil }, nil},
		{"keyCertSign alone", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCertSign }, nil},
		{"CA=false", func(c *x509.Certificate) { c.IsCA = false },
			[]pki.Violation{{s41, "signing certificate without CA=true in basic constraints"}}},
		{"no basic constraints", func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = false, false },
			[]pki.Violation{{s41, "signing certificate without CA=true in basic constraints"}}},
		{"key usage missing", func(c *x509.Certificate) { c.KeyUsage = 0 },
			[]pki.Violation{{s43, "key usage extension missing"}}},
		{"key usage not critical", func(c *x509.Certificate) {
			c.KeyUsage = 0
			c.ExtraExtensions = []pkix.Extension{nonCriticalKeyUsage(t, 0x04, 6)}
		}, []pki.Violation{{s43, "key usage extension is not critical"}}},
		{"no keyCertSign", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature },
			[]pki.Violation{{s43, "signing certificate without keyCertSign"}}},
		{"SPIFFE ID with a path", func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("spiffe://east.example/ca")} },
			[]pki.Violation{{s32, "signing certificate's SPIFFE ID spiffe://east.example/ca has a path"}}},
		{"URI SAN is not a SPIFFE ID", func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("https://east.example")} },
			[]pki.Violation{{s32, `URI SAN "https://east.example" is not a SPIFFE ID: scheme is missing or invalid`}}},
		{"two URI SANs", func(c *x509.Certificate) { c.URIs = []*url.URL{east.ID().URL(), west.ID().URL()} },
			[]pki.Violation{{s32, "2 URI SANs on a signing certificate; at most one"}}},
	}
	t.Run("issued by pki", func(t *testing.T) {
		for _, c := range []*x509.Certificate{p.root, p.inter} {
			if vs := pki.CheckSigningCertificate(c); vs != nil {
				t.Errorf("%s: violations: %v", c.Subject, vs)
			}
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				Subject:               pkix.Name{CommonName: "CA"},
				URIs:                  []*url.URL{east.ID().URL()},
				KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
				BasicConstraintsValid: true,
				IsCA:                  true,
			}
			tt.mutate(tmpl)
			c := craft(t, tmpl, p.root, p.rootKey, pub)
			if got := pki.CheckSigningCertificate(c); !slices.Equal(got, tt.want) {
				t.Errorf("violations:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestCheckURIConstraints pins RFC 5280 §4.2.1.10 semantics for URI name
// constraints, which are stricter than crypto/x509's: a constraint without a
// leading period names one host, not that host and its subdomains.
func TestCheckURIConstraints(t *testing.T) {
	ca := func(cn string, permitted, excluded []string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, PermittedURIDomains: permitted, ExcludedURIDomains: excluded}
	}
	eastCA := ca("east", []string{"east.example"}, nil)
	dotCA := ca("dot", []string{".example"}, nil)
	tests := []struct {
		name    string
		uri     string
		issuers []*x509.Certificate
		wantErr string
	}{
		{"no issuers", "spiffe://any.example/w", nil, ""},
		{"no constraints", "spiffe://any.example/w", []*x509.Certificate{ca("plain", nil, nil)}, ""},
		{"the permitted host", "spiffe://east.example/w", []*x509.Certificate{eastCA}, ""},
		{"host case is ignored", "spiffe://EAST.example/w", []*x509.Certificate{ca("upper", []string{"East.Example"}, nil)}, ""},
		{"a subdomain of the permitted host (Go admits it)", "spiffe://x.east.example/w", []*x509.Certificate{eastCA},
			`pki: spiffe://x.east.example/w is outside the permitted URI subtree "east.example" of CA "CN=east" (RFC 5280 §4.2.1.10)`},
		{"another host", "spiffe://west.example/w", []*x509.Certificate{eastCA},
			`pki: spiffe://west.example/w is outside the permitted URI subtree "east.example" of CA "CN=east"`},
		{"a host that ends like the permitted one", "spiffe://beast.example/w", []*x509.Certificate{eastCA},
			`pki: spiffe://beast.example/w is outside the permitted URI subtree "east.example"`},
		{"one of several permitted", "spiffe://west.example/w", []*x509.Certificate{ca("two", []string{"east.example", "west.example"}, nil)}, ""},
		{"leading period: a subdomain", "spiffe://east.example/w", []*x509.Certificate{dotCA}, ""},
		{"leading period: a deeper subdomain", "spiffe://a.east.example/w", []*x509.Certificate{dotCA}, ""},
		{"leading period: not the domain itself", "spiffe://example/w", []*x509.Certificate{dotCA},
			`pki: spiffe://example/w is outside the permitted URI subtree ".example" of CA "CN=dot"`},
		{"leading period: not a lookalike", "spiffe://badexample/w", []*x509.Certificate{dotCA},
			`pki: spiffe://badexample/w is outside the permitted URI subtree ".example"`},
		{"excluded host", "spiffe://west.example/w", []*x509.Certificate{ca("ex", nil, []string{"west.example"})},
			`pki: spiffe://west.example/w is inside the excluded URI subtree "west.example" of CA "CN=ex" (RFC 5280 §4.2.1.10)`},
		{"excluded host does not cover a subdomain", "spiffe://x.west.example/w", []*x509.Certificate{ca("ex", nil, []string{"west.example"})}, ""},
		{"excluded subtree", "spiffe://x.west.example/w", []*x509.Certificate{ca("ex", []string{".example"}, []string{".west.example"})},
			`pki: spiffe://x.west.example/w is inside the excluded URI subtree ".west.example" of CA "CN=ex"`},
		{"every issuer applies", "spiffe://east.example/w", []*x509.Certificate{dotCA, ca("west", []string{"west.example"}, nil)},
			`pki: spiffe://east.example/w is outside the permitted URI subtree "west.example" of CA "CN=west"`},
		{"CA without a subject is named by serial", "spiffe://west.example/w", []*x509.Certificate{{SerialNumber: bigInt(0xabc), PermittedURIDomains: []string{"east.example"}}},
			`of CA "serial abc"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, pki.CheckURIConstraints(mustURL(tt.uri), tt.issuers), tt.wantErr)
		})
	}
}
