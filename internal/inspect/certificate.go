package inspect

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Certificate describes one certificate of a chain or bundle.
type Certificate struct {
	Position           int              `json:"position"` // 0 is the first in the file (the leaf of a chain)
	Role               Role             `json:"role"`
	Subject            string           `json:"subject"`
	Issuer             string           `json:"issuer"`
	Serial             string           `json:"serial"` // hex
	SPIFFEID           string           `json:"spiffe_id,omitempty"`
	TrustDomain        string           `json:"trust_domain,omitempty"`
	DNSNames           []string         `json:"dns_names,omitempty"`
	IPAddresses        []string         `json:"ip_addresses,omitempty"`
	URIs               []string         `json:"uris,omitempty"` // URI SANs other than the SPIFFE ID
	Emails             []string         `json:"emails,omitempty"`
	CA                 bool             `json:"ca"`
	MaxPathLen         *int             `json:"max_path_len,omitempty"` // set only for a CA with a limit
	KeyUsage           []string         `json:"key_usage,omitempty"`
	ExtKeyUsage        []string         `json:"ext_key_usage,omitempty"`
	NameConstraints    *NameConstraints `json:"name_constraints,omitempty"`
	NotBefore          time.Time        `json:"not_before"`
	NotAfter           time.Time        `json:"not_after"`
	Validity           Validity         `json:"validity"` // at the time the description was made
	PublicKey          string           `json:"public_key"`
	SignatureAlgorithm string           `json:"signature_algorithm"`
	SHA256             string           `json:"sha256_fingerprint"`
	SVID               Conformance      `json:"svid"`
}

// Role is what a certificate is for, judged from its own contents.
type Role string

// Roles.
const (
	RoleLeaf         Role = "leaf"
	RoleIntermediate Role = "intermediate CA"
	RoleRoot         Role = "root CA" // a self-signed CA
)

// Validity is a certificate's validity at a given instant.
type Validity string

// Validity states.
const (
	Valid       Validity = "valid"
	Expired     Validity = "expired"
	NotYetValid Validity = "not yet valid"
)

// NameConstraints are a CA's RFC 5280 name constraints: which names the
// certificates below it may carry.
type NameConstraints struct {
	Critical       bool     `json:"critical"`
	PermittedURI   []string `json:"permitted_uri,omitempty"`
	ExcludedURI    []string `json:"excluded_uri,omitempty"`
	PermittedDNS   []string `json:"permitted_dns,omitempty"`
	ExcludedDNS    []string `json:"excluded_dns,omitempty"`
	PermittedIP    []string `json:"permitted_ip,omitempty"`
	ExcludedIP     []string `json:"excluded_ip,omitempty"`
	PermittedEmail []string `json:"permitted_email,omitempty"`
	ExcludedEmail  []string `json:"excluded_email,omitempty"`
}

// Conformance says whether a certificate conforms to the X.509-SVID
// specification: a leaf to the rules for leaf SVIDs, a CA to the rules for
// signing certificates.
type Conformance struct {
	Status     ConformanceStatus `json:"status"`
	Checked    string            `json:"checked,omitempty"` // whose rules: "leaf" or "signing certificate"
	Reason     string            `json:"reason,omitempty"`  // why a certificate is not an SVID at all
	Violations []Violation       `json:"violations,omitempty"`
}

// ConformanceStatus is the outcome of the X.509-SVID check.
type ConformanceStatus string

// Conformance outcomes.
const (
	Conforms       ConformanceStatus = "conforms"
	DoesNotConform ConformanceStatus = "does not conform"
	NotAnSVID      ConformanceStatus = "not an SVID"
)

// Violation is one rule a certificate breaks.
type Violation struct {
	Rule    string `json:"rule"` // e.g. "X509-SVID §4.3"
	Message string `json:"message"`
}

func (v Violation) String() string { return v.Rule + ": " + v.Message }

// Describe describes every certificate of chain, in order, judging validity
// at now.
func Describe(chain []*x509.Certificate, now time.Time) []Certificate {
	out := make([]Certificate, len(chain))
	for i, c := range chain {
		out[i] = DescribeCertificate(c, i, now)
	}
	return out
}

// DescribeCertificate describes c, found at position pos of its file,
// judging validity at now.
func DescribeCertificate(c *x509.Certificate, pos int, now time.Time) Certificate {
	d := Certificate{
		Position:           pos,
		Role:               role(c),
		Subject:            c.Subject.String(),
		Issuer:             c.Issuer.String(),
		Serial:             fmt.Sprintf("%x", c.SerialNumber),
		DNSNames:           c.DNSNames,
		Emails:             c.EmailAddresses,
		CA:                 c.BasicConstraintsValid && c.IsCA,
		KeyUsage:           keyUsageNames(c.KeyUsage),
		ExtKeyUsage:        extKeyUsageNames(c),
		NameConstraints:    nameConstraints(c),
		NotBefore:          c.NotBefore.UTC(),
		NotAfter:           c.NotAfter.UTC(),
		Validity:           validityAt(c, now),
		PublicKey:          pki.DescribeKey(c.PublicKey),
		SignatureAlgorithm: c.SignatureAlgorithm.String(),
		SHA256:             fingerprint(c),
	}
	for _, ip := range c.IPAddresses {
		d.IPAddresses = append(d.IPAddresses, ip.String())
	}
	id, err := spiffeIDOf(c)
	if err == nil {
		d.SPIFFEID = id.String()
		d.TrustDomain = id.TrustDomain().Name()
	}
	for _, u := range c.URIs {
		if s := u.String(); s != d.SPIFFEID {
			d.URIs = append(d.URIs, s)
		}
	}
	if d.CA && c.MaxPathLen >= 0 { // a parsed certificate has -1 when no limit is set
		n := c.MaxPathLen
		d.MaxPathLen = &n
	}
	d.SVID = conformance(c, d.CA)
	return d
}

// spiffeIDOf returns the certificate's SPIFFE ID: its only URI SAN, if that
// is a SPIFFE ID (the rule go-spiffe's x509svid.IDFromCert applies).
func spiffeIDOf(c *x509.Certificate) (spiffeid.ID, error) {
	switch len(c.URIs) {
	case 0:
		return spiffeid.ID{}, fmt.Errorf("no URI SAN")
	case 1:
		return spiffeid.FromURI(c.URIs[0])
	}
	return spiffeid.ID{}, fmt.Errorf("%d URI SANs; an SVID carries exactly one", len(c.URIs))
}

// hasSPIFFEURI reports whether any URI SAN claims the spiffe scheme, so that
// a broken SVID is judged as one rather than as a plain certificate.
func hasSPIFFEURI(c *x509.Certificate) bool {
	for _, u := range c.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			return true
		}
	}
	return false
}

func conformance(c *x509.Certificate, ca bool) Conformance {
	var conf Conformance
	var vs []pki.Violation
	switch {
	case ca:
		conf.Checked = "signing certificate"
		vs = pki.CheckSigningCertificate(c)
	case !hasSPIFFEURI(c):
		// A plain TLS leaf: listing every SVID rule it was never meant to
		// follow would bury the one fact that matters.
		conf.Status = NotAnSVID
		conf.Reason = "no URI SAN"
		if len(c.URIs) > 0 {
			conf.Reason = "no spiffe:// URI SAN"
		}
		return conf
	default:
		conf.Checked = "leaf"
		vs = pki.CheckX509SVID(c)
	}
	conf.Status = Conforms
	if len(vs) > 0 {
		conf.Status = DoesNotConform
		for _, v := range vs {
			conf.Violations = append(conf.Violations, Violation{Rule: v.Rule, Message: v.Message})
		}
	}
	return conf
}

func role(c *x509.Certificate) Role {
	if !c.BasicConstraintsValid || !c.IsCA {
		return RoleLeaf
	}
	if isSelfSigned(c) {
		return RoleRoot
	}
	return RoleIntermediate
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func validityAt(c *x509.Certificate, now time.Time) Validity {
	switch {
	case now.Before(c.NotBefore):
		return NotYetValid
	case now.After(c.NotAfter):
		return Expired
	}
	return Valid
}

// fingerprint is the SHA-256 of the DER certificate in openssl's notation.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// keyUsageNames lists key usage bits by their RFC 5280 names, in bit order.
func keyUsageNames(ku x509.KeyUsage) []string {
	names := []string{
		"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
		"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly",
	}
	var out []string
	for i, n := range names {
		if ku&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

var extKeyUsageName = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:                            "any",
	x509.ExtKeyUsageServerAuth:                     "serverAuth",
	x509.ExtKeyUsageClientAuth:                     "clientAuth",
	x509.ExtKeyUsageCodeSigning:                    "codeSigning",
	x509.ExtKeyUsageEmailProtection:                "emailProtection",
	x509.ExtKeyUsageIPSECEndSystem:                 "ipsecEndSystem",
	x509.ExtKeyUsageIPSECTunnel:                    "ipsecTunnel",
	x509.ExtKeyUsageIPSECUser:                      "ipsecUser",
	x509.ExtKeyUsageTimeStamping:                   "timeStamping",
	x509.ExtKeyUsageOCSPSigning:                    "OCSPSigning",
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     "msSGC",
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      "nsSGC",
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: "msCodeCom",
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     "msKernelCode",
}

func extKeyUsageNames(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := extKeyUsageName[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("unknown(%d)", u))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return out
}

var oidNameConstraints = asn1.ObjectIdentifier{2, 5, 29, 30}

func nameConstraints(c *x509.Certificate) *NameConstraints {
	var present, critical bool
	for _, e := range c.Extensions {
		if e.Id.Equal(oidNameConstraints) {
			present, critical = true, e.Critical
		}
	}
	if !present {
		return nil
	}
	nc := &NameConstraints{
		Critical:       critical,
		PermittedURI:   c.PermittedURIDomains,
		ExcludedURI:    c.ExcludedURIDomains,
		PermittedDNS:   c.PermittedDNSDomains,
		ExcludedDNS:    c.ExcludedDNSDomains,
		PermittedEmail: c.PermittedEmailAddresses,
		ExcludedEmail:  c.ExcludedEmailAddresses,
	}
	for _, n := range c.PermittedIPRanges {
		nc.PermittedIP = append(nc.PermittedIP, n.String())
	}
	for _, n := range c.ExcludedIPRanges {
		nc.ExcludedIP = append(nc.ExcludedIP, n.String())
	}
	return nc
}

// certName names a certificate in one line: its subject, or if that is
// empty (as in most SVIDs) its SPIFFE ID, or its serial.
func certName(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	if id, err := spiffeIDOf(c); err == nil {
		return id.String()
	}
	return fmt.Sprintf("serial %x", c.SerialNumber)
}
