package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Violation is one rule of the SPIFFE X.509-SVID specification (or of RFC
// 5280 where the specification defers to it) that a certificate breaks.
type Violation struct {
	Rule    string // where the rule is written, e.g. "X509-SVID §4.3"
	Message string // what is wrong, in one line
}

func (v Violation) String() string { return v.Rule + ": " + v.Message }

// ViolationError is returned when a certificate breaks one or more rules.
type ViolationError struct {
	Subject    string // what was checked, e.g. "leaf spiffe://td/x"
	Violations []Violation
}

func (e *ViolationError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.String()
	}
	return fmt.Sprintf("pki: %s does not conform: %s", e.Subject, strings.Join(parts, "; "))
}

var (
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
)

func extension(c *x509.Certificate, oid asn1.ObjectIdentifier) (present, critical bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return true, e.Critical
		}
	}
	return false, false
}

// CheckX509SVID checks a leaf certificate against every rule the SPIFFE
// X.509-SVID specification states for leaf SVIDs and returns those it breaks
// (nil when it conforms). It does not check the signature chain.
func CheckX509SVID(c *x509.Certificate) []Violation {
	var vs []Violation
	add := func(rule, format string, args ...any) {
		vs = append(vs, Violation{Rule: rule, Message: fmt.Sprintf(format, args...)})
	}
	switch len(c.URIs) {
	case 0:
		add("X509-SVID §2", "no URI SAN; an SVID carries exactly one, its SPIFFE ID")
	case 1:
		id, err := spiffeid.FromURI(c.URIs[0])
		switch {
		case err != nil:
			add("X509-SVID §2", "URI SAN %q is not a SPIFFE ID: %v", c.URIs[0].String(), err)
		case id.Path() == "":
			add("X509-SVID §3.1", "SPIFFE ID %s has no path; a leaf SVID's ID must name a workload", id)
		}
	default:
		add("X509-SVID §2", "%d URI SANs; an SVID carries exactly one", len(c.URIs))
	}
	if len(c.RawSubject) == 0 || isEmptyName(c) {
		if present, critical := extension(c, oidSubjectAltName); present && !critical {
			add("X509-SVID §3.1", "subject is empty but the SAN extension is not critical (RFC 5280 §4.1.2.6)")
		}
	}
	if c.BasicConstraintsValid && c.IsCA {
		add("X509-SVID §4.1", "leaf has CA=true in basic constraints")
	}
	vs = append(vs, checkKeyUsage(c, false)...)
	if len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0 {
		var server, client bool
		for _, u := range c.ExtKeyUsage {
			server = server || u == x509.ExtKeyUsageServerAuth
			client = client || u == x509.ExtKeyUsageClientAuth
		}
		if !server || !client {
			add("X509-SVID §4.4", "extended key usage present without both serverAuth and clientAuth")
		}
	}
	return vs
}

// CheckSigningCertificate checks a CA certificate against the rules the
// X.509-SVID specification states for signing certificates.
func CheckSigningCertificate(c *x509.Certificate) []Violation {
	var vs []Violation
	add := func(rule, format string, args ...any) {
		vs = append(vs, Violation{Rule: rule, Message: fmt.Sprintf(format, args...)})
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		add("X509-SVID §4.1", "signing certificate without CA=true in basic constraints")
	}
	vs = append(vs, checkKeyUsage(c, true)...)
	switch len(c.URIs) {
	case 0:
	case 1:
		id, err := spiffeid.FromURI(c.URIs[0])
		switch {
		case err != nil:
			add("X509-SVID §3.2", "URI SAN %q is not a SPIFFE ID: %v", c.URIs[0].String(), err)
		case id.Path() != "":
			add("X509-SVID §3.2", "signing certificate's SPIFFE ID %s has a path", id)
		}
	default:
		add("X509-SVID §3.2", "%d URI SANs on a signing certificate; at most one", len(c.URIs))
	}
	return vs
}

func checkKeyUsage(c *x509.Certificate, ca bool) []Violation {
	var vs []Violation
	add := func(format string, args ...any) {
		vs = append(vs, Violation{Rule: "X509-SVID §4.3", Message: fmt.Sprintf(format, args...)})
	}
	present, critical := extension(c, oidKeyUsage)
	switch {
	case !present:
		add("key usage extension missing")
		return vs
	case !critical:
		add("key usage extension is not critical")
	}
	if ca {
		if c.KeyUsage&x509.KeyUsageCertSign == 0 {
			add("signing certificate without keyCertSign")
		}
		return vs
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		add("leaf without digitalSignature")
	}
	if c.KeyUsage&x509.KeyUsageCertSign != 0 {
		add("leaf with keyCertSign")
	}
	if c.KeyUsage&x509.KeyUsageCRLSign != 0 {
		add("leaf with cRLSign")
	}
	return vs
}

func isEmptyName(c *x509.Certificate) bool {
	// An empty RDNSequence encodes as 30 00.
	return len(c.RawSubject) == 2 && c.RawSubject[0] == 0x30 && c.RawSubject[1] == 0
}

// CheckURIConstraints checks u against the URI name constraints of every CA
// in issuers with the semantics of RFC 5280 §4.2.1.10: a constraint without a
// leading period names exactly one host, and one with a leading period names
// every host below that domain. Go's crypto/x509 lets "east.example" also
// admit "x.east.example"; OpenSSL does not, and neither does meshfed.
func CheckURIConstraints(u *url.URL, issuers []*x509.Certificate) error {
	host := strings.ToLower(u.Hostname())
	for _, ca := range issuers {
		if len(ca.PermittedURIDomains) > 0 {
			ok := false
			for _, c := range ca.PermittedURIDomains {
				if uriHostMatches(host, c) {
					ok = true
					break
				}
			}
			if !ok {
				return fmt.Errorf("pki: %s is outside the permitted URI subtree %q of CA %q (RFC 5280 §4.2.1.10)",
					u, strings.Join(ca.PermittedURIDomains, ","), caName(ca))
			}
		}
		for _, c := range ca.ExcludedURIDomains {
			if uriHostMatches(host, c) {
				return fmt.Errorf("pki: %s is inside the excluded URI subtree %q of CA %q (RFC 5280 §4.2.1.10)", u, c, caName(ca))
			}
		}
	}
	return nil
}

func uriHostMatches(host, constraint string) bool {
	constraint = strings.ToLower(constraint)
	if strings.HasPrefix(constraint, ".") {
		return len(host) > len(constraint) && strings.HasSuffix(host, constraint)
	}
	return host == constraint
}

func caName(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	return fmt.Sprintf("serial %x", c.SerialNumber)
}
