package proxy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// XFCCHeader is the name of the header the inbound side sets for the app.
const XFCCHeader = "X-Forwarded-Client-Cert"

// Bounds on an XFCC header read from a request. A header can be appended to
// by every proxy on the path, so the bounds are generous, but finite: Envoy's
// default limit on all request headers together is 60 KiB.
const (
	maxXFCCLen      = 64 << 10
	maxXFCCElements = 64
	maxXFCCPairs    = 256 // per element, DNS SANs included
)

// XFCCElement is the certificate information one proxy added to an XFCC
// header (Envoy's keys, in Envoy's order). Cert and Chain are kept as they
// appear, URL-encoded PEM.
type XFCCElement struct {
	By      string   // the URI SAN of the proxy's own certificate
	Hash    string   // hex SHA-256 of the client certificate's DER
	Cert    string   // URL-encoded PEM of the client certificate
	Chain   string   // URL-encoded PEM of the client chain
	Subject string   // the client certificate's subject, RFC 2253
	URI     string   // the client certificate's URI SAN
	DNS     []string // the client certificate's DNS SANs
	// HasSubject records that a Subject key was present, even if empty
	// (Envoy always sends Subject="" for Istio's subject-less SVIDs).
	HasSubject bool
}

// XFCC returns the XFCC element the inbound side of the proxy puts in front of
// the app, in the form Istio's sidecar sends: By is this proxy's own SPIFFE
// ID, Hash the SHA-256 of the peer's leaf certificate, Subject its subject in
// RFC 2253 form (always present, quoted, "" for an SVID without one), URI its
// SPIFFE ID, and one DNS pair per DNS SAN. For example:
//
//	By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=4a5b…;Subject="";URI=spiffe://cluster.local/ns/foo/sa/sleep
func XFCC(by spiffeid.ID, peer *x509.Certificate) string {
	sum := sha256.Sum256(peer.Raw)
	e := XFCCElement{
		By:         by.String(),
		Hash:       hex.EncodeToString(sum[:]),
		Subject:    peer.Subject.String(),
		HasSubject: true,
		DNS:        peer.DNSNames,
	}
	if len(peer.URIs) > 0 {
		e.URI = peer.URIs[0].String()
	}
	return e.String()
}

// String formats the element with Envoy's rules: pairs joined by ";", a value
// holding ",", ";", "=", a double quote or a backslash is double-quoted,
// with a double quote inside written \" and a backslash \\, and Subject is
// always quoted. Envoy documents only the \" escape; escaping the backslash
// too keeps a value that ends in one unambiguous, and ParseXFCC reads both.
func (e XFCCElement) String() string {
	var b strings.Builder
	add := func(key, value string, alwaysQuote bool) {
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(quoteXFCC(value, alwaysQuote))
	}
	if e.By != "" {
		add("By", e.By, false)
	}
	if e.Hash != "" {
		add("Hash", e.Hash, false)
	}
	if e.Cert != "" {
		add("Cert", e.Cert, false)
	}
	if e.Chain != "" {
		add("Chain", e.Chain, false)
	}
	if e.HasSubject || e.Subject != "" {
		add("Subject", e.Subject, true)
	}
	if e.URI != "" {
		add("URI", e.URI, false)
	}
	for _, d := range e.DNS {
		add("DNS", d, false)
	}
	return b.String()
}

func quoteXFCC(v string, always bool) string {
	if !always && !strings.ContainsAny(v, ",;=\"\\") {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

// ParseXFCC parses an X-Forwarded-Client-Cert header value into its elements,
// first proxy first. Keys are case-insensitive; a quoted value may hold ",",
// ";" and "=", and \" and \\ in it stand for " and \ (a backslash before
// any other byte is kept, as Envoy writes RFC 2253 subjects unescaped).
// Unknown keys, a repeated key other than DNS and an element without any
// pair are errors. The header is bounded to 64 KiB, 64 elements and 256
// pairs per element.
func ParseXFCC(header string) ([]XFCCElement, error) {
	if len(header) > maxXFCCLen {
		return nil, fmt.Errorf("proxy: XFCC: header of %d bytes is over the %d-byte limit", len(header), maxXFCCLen)
	}
	var out []XFCCElement
	p := xfccParser{s: header}
	for {
		if len(out) == maxXFCCElements {
			return nil, fmt.Errorf("proxy: XFCC: more than %d elements", maxXFCCElements)
		}
		e, err := p.element()
		if err != nil {
			return nil, fmt.Errorf("proxy: XFCC: element %d: %w", len(out)+1, err)
		}
		out = append(out, e)
		if p.done() {
			return out, nil
		}
		p.i++ // the ',' element() stopped at
	}
}

type xfccParser struct {
	s string
	i int
}

func (p *xfccParser) done() bool { return p.i >= len(p.s) }

// element parses key=value pairs up to the next top-level ',' or the end.
func (p *xfccParser) element() (XFCCElement, error) {
	var e XFCCElement
	seen := map[string]bool{}
	for pairs := 0; ; pairs++ {
		if pairs == maxXFCCPairs {
			return e, fmt.Errorf("more than %d key-value pairs", maxXFCCPairs)
		}
		key, value, err := p.pair()
		if err != nil {
			return e, err
		}
		k := strings.ToLower(key)
		if seen[k] && k != "dns" {
			return e, fmt.Errorf("key %q repeated", key)
		}
		seen[k] = true
		switch k {
		case "by":
			e.By = value
		case "hash":
			e.Hash = value
		case "cert":
			e.Cert = value
		case "chain":
			e.Chain = value
		case "subject":
			e.Subject, e.HasSubject = value, true
		case "uri":
			e.URI = value
		case "dns":
			e.DNS = append(e.DNS, value)
		default:
			return e, fmt.Errorf("unknown key %q", key)
		}
		if p.done() || p.s[p.i] == ',' {
			return e, nil
		}
		p.i++ // ';'
	}
}

// pair parses key=value and stops at the ';' or ',' after it, or the end.
func (p *xfccParser) pair() (key, value string, err error) {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != '=' {
		switch p.s[p.i] {
		case ';', ',', '"':
			return "", "", fmt.Errorf("at byte %d: want key=value", p.i)
		}
		p.i++
	}
	key = strings.TrimSpace(p.s[start:p.i])
	if p.done() || key == "" {
		return "", "", fmt.Errorf("at byte %d: want key=value", start)
	}
	p.i++ // '='
	if p.i < len(p.s) && p.s[p.i] == '"' {
		value, err = p.quoted()
		if err != nil {
			return "", "", err
		}
	} else {
		vs := p.i
		for p.i < len(p.s) && p.s[p.i] != ';' && p.s[p.i] != ',' {
			if c := p.s[p.i]; c == '=' || c == '"' {
				return "", "", fmt.Errorf("at byte %d: %q in an unquoted value of %s", p.i, c, key)
			}
			p.i++
		}
		value = p.s[vs:p.i]
	}
	if !p.done() && p.s[p.i] != ';' && p.s[p.i] != ',' {
		return "", "", fmt.Errorf("at byte %d: want ';' or ',' after the value of %s", p.i, key)
	}
	return key, value, nil
}

// quoted parses a double-quoted value starting at p.i.
func (p *xfccParser) quoted() (string, error) {
	open := p.i
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\' && p.i+1 < len(p.s) && (p.s[p.i+1] == '"' || p.s[p.i+1] == '\\'):
			b.WriteByte(p.s[p.i+1])
			p.i += 2
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return "", errors.New("unterminated quoted value starting at byte " + fmt.Sprint(open))
}
