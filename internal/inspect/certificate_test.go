package inspect

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
)

func TestDescribeCertificate(t *testing.T) {
	p := newTestPKI(t)
	inter := p.svid[1]
	year := pki.DefaultIntermediateTTL
	zero := 0
	noDigitalSignature := svidTemplate("spiffe://east.example/ns/default/sa/batch")
	noDigitalSignature.KeyUsage = x509.KeyUsageKeyEncipherment
	twoURIs := svidTemplate("spiffe://east.example/a", "spiffe://east.example/b")
	webURI := svidTemplate("https://reviews.east.example/")

	svidLeaf := Certificate{
		Role:               RoleLeaf,
		Issuer:             eastCAName,
		SPIFFEID:           reviewsID.String(),
		TrustDomain:        "east.example",
		KeyUsage:           []string{"digitalSignature"},
		ExtKeyUsage:        []string{"serverAuth", "clientAuth"},
		NotBefore:          t0.Add(-pki.Backdate),
		NotAfter:           t0.Add(pki.DefaultSVIDTTL),
		Validity:           Valid,
		PublicKey:          "ECDSA P-256",
		SignatureAlgorithm: "ECDSA-SHA256",
		SVID:               Conformance{Status: Conforms, Checked: "leaf"},
	}
	crafted := Certificate{
		Role:               RoleLeaf,
		Issuer:             eastCAName,
		ExtKeyUsage:        []string{"serverAuth", "clientAuth"},
		NotBefore:          t0.Add(-time.Minute),
		NotAfter:           t0.Add(time.Hour),
		Validity:           Valid,
		PublicKey:          "ECDSA P-256",
		SignatureAlgorithm: "ECDSA-SHA256",
	}
	with := func(base Certificate, change func(*Certificate)) Certificate {
		change(&base)
		return base
	}

	tests := []struct {
		name string
		cert *x509.Certificate
		pos  int
		now  time.Time
		want Certificate
	}{
		{
			name: "SVID",
			cert: p.svid[0],
			now:  t0,
			want: svidLeaf,
		},
		{
			name: "SVID expired",
			cert: p.svid[0],
			now:  t0.Add(2 * time.Hour),
			want: with(svidLeaf, func(c *Certificate) { c.Validity = Expired }),
		},
		{
			name: "SVID not yet valid",
			cert: p.svid[0],
			now:  t0.Add(-time.Hour),
			want: with(svidLeaf, func(c *Certificate) { c.Validity = NotYetValid }),
		},
		{
			name: "name-constrained intermediate",
			cert: inter,
			pos:  1,
			now:  t0,
			want: Certificate{
				Position:           1,
				Role:               RoleIntermediate,
				Subject:            eastCAName,
				Issuer:             rootName,
				SPIFFEID:           "spiffe://east.example",
				TrustDomain:        "east.example",
				CA:                 true,
				MaxPathLen:         &zero,
				KeyUsage:           []string{"keyCertSign", "cRLSign"},
				NameConstraints:    &NameConstraints{Critical: true, PermittedURI: []string{"east.example"}},
				NotBefore:          t0.Add(-pki.Backdate),
				NotAfter:           t0.Add(year),
				Validity:           Valid,
				PublicKey:          "ECDSA P-256",
				SignatureAlgorithm: "ECDSA-SHA256",
				SVID:               Conformance{Status: Conforms, Checked: "signing certificate"},
			},
		},
		{
			name: "root",
			cert: p.root,
			pos:  2,
			now:  t0,
			want: Certificate{
				Position:           2,
				Role:               RoleRoot,
				Subject:            rootName,
				Issuer:             rootName,
				CA:                 true,
				KeyUsage:           []string{"keyCertSign", "cRLSign"},
				NotBefore:          t0.Add(-pki.Backdate),
				NotAfter:           t0.Add(pki.DefaultRootTTL),
				Validity:           Valid,
				PublicKey:          "ECDSA P-256",
				SignatureAlgorithm: "ECDSA-SHA256",
				SVID:               Conformance{Status: Conforms, Checked: "signing certificate"},
			},
		},
		{
			name: "plain TLS leaf is not an SVID",
			cert: p.tlsLeaf[0],
			now:  t0,
			want: Certificate{
				Role:               RoleLeaf,
				Subject:            "CN=localhost",
				Issuer:             rootName,
				DNSNames:           []string{"localhost"},
				IPAddresses:        []string{"127.0.0.1"},
				KeyUsage:           []string{"digitalSignature"},
				ExtKeyUsage:        []string{"serverAuth", "clientAuth"},
				NotBefore:          t0.Add(-pki.Backdate),
				NotAfter:           t0.Add(pki.DefaultLeafTTL),
				Validity:           Valid,
				PublicKey:          "ECDSA P-256",
				SignatureAlgorithm: "ECDSA-SHA256",
				SVID:               Conformance{Status: NotAnSVID, Reason: "no URI SAN"},
			},
		},
		{
			name: "SVID without digitalSignature",
			cert: p.craft(t, noDigitalSignature),
			now:  t0,
			want: with(crafted, func(c *Certificate) {
				c.SPIFFEID = "spiffe://east.example/ns/default/sa/batch"
				c.TrustDomain = "east.example"
				c.KeyUsage = []string{"keyEncipherment"}
				c.SVID = Conformance{Status: DoesNotConform, Checked: "leaf", Violations: []Violation{
					{Rule: "X509-SVID §4.3", Message: "leaf without digitalSignature"},
				}}
			}),
		},
		{
			name: "two URI SANs",
			cert: p.craft(t, twoURIs),
			now:  t0,
			want: with(crafted, func(c *Certificate) {
				c.URIs = []string{"spiffe://east.example/a", "spiffe://east.example/b"}
				c.KeyUsage = []string{"digitalSignature"}
				c.SVID = Conformance{Status: DoesNotConform, Checked: "leaf", Violations: []Violation{
					{Rule: "X509-SVID §2", Message: "2 URI SANs; an SVID carries exactly one"},
				}}
			}),
		},
		{
			name: "URI SAN that is not spiffe",
			cert: p.craft(t, webURI),
			now:  t0,
			want: with(crafted, func(c *Certificate) {
				c.URIs = []string{"https://reviews.east.example/"}
				c.KeyUsage = []string{"digitalSignature"}
				c.SVID = Conformance{Status: NotAnSVID, Reason: "no spiffe:// URI SAN"}
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			want.Serial = fmt.Sprintf("%x", tt.cert.SerialNumber)
			want.SHA256 = opensslFingerprint(tt.cert)
			got := DescribeCertificate(tt.cert, tt.pos, tt.now)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("DescribeCertificate:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// opensslFingerprint is what openssl x509 -fingerprint -sha256 prints.
func opensslFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

func TestDescribeChainPositions(t *testing.T) {
	p := newTestPKI(t)
	got := Describe(append(p.svid, p.root), t0)
	var roles []string
	for i, c := range got {
		if c.Position != i {
			t.Errorf("certificate %d has position %d", i, c.Position)
		}
		roles = append(roles, string(c.Role))
	}
	if want := "leaf,intermediate CA,root CA"; strings.Join(roles, ",") != want {
		t.Errorf("roles = %s, want %s", strings.Join(roles, ","), want)
	}
}
