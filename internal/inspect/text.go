package inspect

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// ChainReport is what inspect says about one file of certificates.
type ChainReport struct {
	Source       string        `json:"source"`
	Certificates []Certificate `json:"certificates"`
	Verdict      *Verdict      `json:"verdict,omitempty"` // nil when not asked to verify
}

// ConnectReport is what inspect says about one TLS endpoint.
type ConnectReport struct {
	Connection
	Certificates []Certificate `json:"certificates"` // the chain as sent
	Verdict      Verdict       `json:"verdict"`
}

// textWriter writes aligned "label: value" lines and keeps the first error.
type textWriter struct {
	w   io.Writer
	err error
}

const labelWidth = 20 // "Client certificate:" and one space

func (t *textWriter) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

// field writes "  Label:   value", and further values on their own lines
// aligned under the first.
func (t *textWriter) field(indent, label string, values ...string) {
	if len(values) == 0 {
		return
	}
	pad := strings.Repeat(" ", len(indent)+labelWidth)
	t.printf("%s%-*s%s\n", indent, labelWidth, label+":", values[0])
	for _, v := range values[1:] {
		t.printf("%s%s\n", pad, v)
	}
}

// WriteText writes the report for people: every certificate in full, then
// the verdict if there is one.
func (r ChainReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	n := len(r.Certificates)
	t.printf("%s: %d %s\n", r.Source, n, plural(n, "certificate", "certificates"))
	for _, c := range r.Certificates {
		t.printf("\n")
		c.write(t, "  ")
	}
	if r.Verdict != nil {
		t.printf("\n")
		r.Verdict.write(t)
	}
	return t.err
}

// WriteText writes the certificate for people, one field a line.
func (c Certificate) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	c.write(t, "  ")
	return t.err
}

func (c Certificate) write(t *textWriter, in string) {
	t.printf("Certificate %d (%s)\n", c.Position, c.Role)
	t.field(in, "SPIFFE ID", orNone(c.SPIFFEID))
	t.field(in, "Trust domain", orNone(c.TrustDomain))
	t.field(in, "Subject", orEmpty(c.Subject))
	t.field(in, "Issuer", orEmpty(c.Issuer))
	t.field(in, "Serial", c.Serial)
	t.field(in, "DNS names", c.DNSNames...)
	t.field(in, "IP addresses", c.IPAddresses...)
	t.field(in, "Other URIs", c.URIs...)
	t.field(in, "Emails", c.Emails...)
	ca := "no"
	if c.CA {
		ca = "yes, no path length limit"
		if c.MaxPathLen != nil {
			ca = fmt.Sprintf("yes, path length %d", *c.MaxPathLen)
		}
	}
	t.field(in, "CA", ca)
	t.field(in, "Key usage", orNone(strings.Join(c.KeyUsage, ", ")))
	if len(c.ExtKeyUsage) > 0 {
		t.field(in, "Ext key usage", strings.Join(c.ExtKeyUsage, ", "))
	}
	if nc := c.NameConstraints; nc != nil {
		t.field(in, "Name constraints", nc.lines()...)
	}
	t.field(in, "Validity", fmt.Sprintf("%s to %s (%s)", stamp(c.NotBefore), stamp(c.NotAfter), c.Validity))
	t.field(in, "Public key", c.PublicKey)
	t.field(in, "Signature", c.SignatureAlgorithm)
	t.field(in, "SHA-256", c.SHA256)
	t.field(in, "SVID", c.SVID.lines()...)
}

func (nc NameConstraints) lines() []string {
	crit := "not critical"
	if nc.Critical {
		crit = "critical"
	}
	out := []string{crit}
	add := func(label string, names []string) {
		if len(names) > 0 {
			out = append(out, label+": "+strings.Join(names, ", "))
		}
	}
	add("permitted URI", nc.PermittedURI)
	add("excluded URI", nc.ExcludedURI)
	add("permitted DNS", nc.PermittedDNS)
	add("excluded DNS", nc.ExcludedDNS)
	add("permitted IP", nc.PermittedIP)
	add("excluded IP", nc.ExcludedIP)
	add("permitted email", nc.PermittedEmail)
	add("excluded email", nc.ExcludedEmail)
	return out
}

// lines is the conformance as text: one line, or a heading and one line per
// broken rule.
func (c Conformance) lines() []string {
	switch c.Status {
	case NotAnSVID:
		return []string{fmt.Sprintf("not an SVID (%s)", c.Reason)}
	case Conforms:
		if c.Checked == "JWT-SVID" {
			return []string{"conforms to the JWT-SVID rules"}
		}
		return []string{fmt.Sprintf("conforms to the X.509-SVID rules for a %s", c.Checked)}
	}
	out := []string{fmt.Sprintf("does NOT conform to the X.509-SVID rules for a %s:", c.Checked)}
	if c.Checked == "JWT-SVID" {
		out[0] = "does NOT conform to the JWT-SVID rules:"
	}
	for _, v := range c.Violations {
		out = append(out, "  "+v.String())
	}
	return out
}

// summary is the conformance in one line.
func (c Conformance) summary() string {
	l := c.lines()
	if len(l) == 1 {
		return l[0]
	}
	parts := make([]string, len(c.Violations))
	for i, v := range c.Violations {
		parts[i] = v.String()
	}
	return strings.TrimSuffix(l[0], ":") + ": " + strings.Join(parts, "; ")
}

// WriteText writes the verdict for people.
func (v Verdict) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	v.write(t)
	return t.err
}

func (v Verdict) write(t *textWriter) {
	switch v.Status {
	case StatusNotVerified:
		t.printf("Verification: NOT VERIFIED\n")
		t.field("  ", "Reason", v.Reason)
		return
	case StatusOK:
		t.printf("Verification: OK (%s, against %s)\n", v.Method, v.Against)
	default:
		t.printf("Verification: FAILED (%s, against %s)\n", v.Method, v.Against)
	}
	if v.SPIFFEID != "" {
		t.field("  ", "SPIFFE ID", v.SPIFFEID)
		t.field("  ", "Trust domain", v.TrustDomain)
	}
	if v.ServerName != "" {
		t.field("  ", "Server name", v.ServerName)
	}
	t.field("  ", "Chain", v.Chain...)
	if v.Reason != "" {
		t.field("  ", "Reason", v.Reason)
	}
}

// WriteText writes the bundle for people: its fields, then each authority.
func (b Bundle) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("Bundle %s\n", b.Source)
	t.field("  ", "Trust domain", fmt.Sprintf("%s (%s)", b.TrustDomain, b.TrustDomainFrom))
	t.field("  ", "Format", string(b.Format))
	if b.Sequence != nil {
		t.field("  ", "Sequence", fmt.Sprint(*b.Sequence))
	}
	if b.RefreshHint != nil {
		t.field("  ", "Refresh hint", (time.Duration(*b.RefreshHint) * time.Second).String())
	}
	t.field("  ", "X.509 authorities", fmt.Sprint(len(b.X509Authorities)))
	jwt := []string{"(none)"}
	if len(b.JWTAuthorities) > 0 {
		jwt = nil
		for _, j := range b.JWTAuthorities {
			jwt = append(jwt, fmt.Sprintf("kid %s: %s", j.KeyID, j.Key))
		}
	}
	t.field("  ", "JWT authorities", jwt...)
	for _, c := range b.X509Authorities {
		t.printf("\n")
		c.write(t, "  ")
	}
	return t.err
}

// WriteText writes the connection the way openssl s_client -showcerts
// does, with each certificate's SPIFFE ID and trust domain, then the
// verdict.
func (r ConnectReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	sni := "no SNI"
	if r.ServerName != "" {
		sni = "SNI " + r.ServerName
	}
	t.printf("CONNECTED %s (%s)\n---\nCertificate chain\n", r.Address, sni)
	for _, c := range r.Certificates {
		t.printf("%2d s:%s\n", c.Position, orEmpty(c.Subject))
		t.printf("   i:%s\n", orEmpty(c.Issuer))
		if c.SPIFFEID != "" {
			t.printf("   SPIFFE ID: %s (trust domain %s)\n", c.SPIFFEID, c.TrustDomain)
		} else {
			t.printf("   SPIFFE ID: (none)\n")
		}
		t.printf("   a:%s; sigalg: %s\n", c.PublicKey, c.SignatureAlgorithm)
		t.printf("   v:NotBefore: %s; NotAfter: %s (%s)\n", stamp(c.NotBefore), stamp(c.NotAfter), c.Validity)
		t.printf("   svid: %s\n", c.SVID.summary())
	}
	t.printf("---\n")
	t.field("", "Protocol", r.Version)
	t.field("", "Cipher", r.CipherSuite)
	t.field("", "ALPN", orNone(r.ALPN))
	t.field("", "Session resumed", yesNo(r.Resumed))
	client := string(r.ClientCertificate)
	if r.ClientID != "" {
		client += " (" + r.ClientID + ")"
	}
	t.field("", "Client certificate", client)
	t.printf("---\n")
	r.Verdict.write(t)
	return t.err
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func orEmpty(s string) string {
	if s == "" {
		return "(empty)"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
