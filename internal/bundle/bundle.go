// Package bundle reads and writes SPIFFE trust bundles: the JSON JWK Set of
// the SPIFFE Trust Domain and Bundle specification (x509-svid and jwt-svid
// keys, spiffe_sequence, spiffe_refresh_hint) and the PEM list of CA
// certificates most tools use. go-spiffe's spiffebundle does the encoding;
// this package bounds the input and refuses bundles that would verify
// nothing or the wrong thing.
package bundle

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxBytes bounds a bundle document, JSON or PEM. A bundle with 100 RSA-4096
// CA certificates is about 250 KiB in JSON; 1 MiB leaves room for rotation
// overlap without letting a peer's bundle endpoint exhaust memory.
const MaxBytes = 1 << 20

// Format is a bundle encoding.
type Format string

// Bundle formats.
const (
	FormatSPIFFE Format = "spiffe" // JWK Set JSON
	FormatPEM    Format = "pem"    // concatenated CA certificates
)

// ParseFormat accepts "spiffe" (also "json", "jwks") or "pem".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "spiffe", "json", "jwks":
		return FormatSPIFFE, nil
	case "pem":
		return FormatPEM, nil
	}
	return "", fmt.Errorf("bundle: unknown format %q; use spiffe or pem", s)
}

// Detect guesses the format of data: JSON starts with '{'.
func Detect(data []byte) Format {
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		return FormatSPIFFE
	}
	return FormatPEM
}

// Parse reads a bundle for td in either format (detected). Every X.509
// authority must be a CA certificate with an ECDSA, RSA or Ed25519 key, every
// JWT authority such a key, and spiffe_refresh_hint between 0 and about 292
// years.
func Parse(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("bundle: %w of %d bytes", pemfile.ErrTooLarge, MaxBytes)
	}
	if td.IsZero() {
		return nil, fmt.Errorf("bundle: a trust domain is required")
	}
	var b *spiffebundle.Bundle
	switch Detect(data) {
	case FormatSPIFFE:
		if err := checkRefreshHint(data); err != nil {
			return nil, err
		}
		var err error
		b, err = spiffebundle.Parse(td, data)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
	default:
		certs, err := pemfile.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		b = spiffebundle.FromX509Authorities(td, certs)
	}
	if err := check(b); err != nil {
		return nil, err
	}
	return b, nil
}

// Read reads a bundle file for td.
func Read(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	data, err := pemfile.ReadFile(path, MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	b, err := Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// FromCertificates makes a bundle for td from CA certificates.
func FromCertificates(td spiffeid.TrustDomain, certs []*x509.Certificate) (*spiffebundle.Bundle, error) {
	b := spiffebundle.FromX509Authorities(td, certs)
	if err := check(b); err != nil {
		return nil, err
	}
	return b, nil
}

// maxRefreshHintSeconds bounds spiffe_refresh_hint. spiffebundle converts
// the seconds to a time.Duration without checking for overflow, and rounds
// up when it marshals them again; any hint above this would wrap around to
// a nonsense (even negative) interval. It is still about 292 years.
const maxRefreshHintSeconds = (math.MaxInt64 - int64(time.Second-1)) / int64(time.Second)

// checkRefreshHint refuses a spiffe_refresh_hint that is negative or too
// large to be a time.Duration, before spiffebundle converts it unchecked.
func checkRefreshHint(data []byte) error {
	var doc struct {
		RefreshHint *int64 `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		// spiffebundle.Parse reports what is wrong with the document.
		return nil
	}
	if h := doc.RefreshHint; h != nil && (*h < 0 || *h > maxRefreshHintSeconds) {
		return fmt.Errorf("bundle: spiffe_refresh_hint %d is out of range; give seconds from 0 to %d", *h, maxRefreshHintSeconds)
	}
	return nil
}

func check(b *spiffebundle.Bundle) error {
	if b.Empty() {
		return fmt.Errorf("bundle: bundle for %q holds no keys", b.TrustDomain())
	}
	for i, c := range b.X509Authorities() {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("bundle: x509-svid authority %d (%s) is not a CA certificate; a bundle holds roots, not leaves", i+1, name(c))
		}
		if !isSigningKey(c.PublicKey) {
			// crypto/x509 parses a key of an unknown algorithm as nil: such a
			// CA verifies nothing, and cannot be written as a JWK either.
			return fmt.Errorf("bundle: x509-svid authority %d (%s) has a %T key, not an ECDSA, RSA or Ed25519 one", i+1, name(c), c.PublicKey)
		}
	}
	for _, kind := range []struct {
		use  string
		keys map[string]crypto.PublicKey
	}{{"jwt-svid", b.JWTAuthorities()}, {"wit-svid", b.WITAuthorities()}} {
		for kid, key := range kind.keys {
			if !isSigningKey(key) {
				// A symmetric ("oct") key is a shared secret, not an
				// authority another trust domain can publish.
				return fmt.Errorf("bundle: %s authority %q is a %T, not an ECDSA, RSA or Ed25519 public key", kind.use, kid, key)
			}
		}
	}
	if hint, ok := b.RefreshHint(); ok && hint < 0 {
		return fmt.Errorf("bundle: negative spiffe_refresh_hint %s", hint)
	}
	return nil
}

// Marshal encodes b in the given format. SPIFFE JSON is indented for people.
func Marshal(b *spiffebundle.Bundle, f Format) ([]byte, error) {
	switch f {
	case FormatPEM:
		return pemfile.EncodeCertificates(b.X509Authorities()...), nil
	case FormatSPIFFE, "":
		raw, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		if raw, err = stableKeys(raw); err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		var out bytes.Buffer
		if err := json.Indent(&out, raw, "", "  "); err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		out.WriteByte('\n')
		return out.Bytes(), nil
	}
	return nil, fmt.Errorf("bundle: unknown format %q", f)
}

// stableKeys orders the keys of a SPIFFE bundle document so that one bundle
// always encodes to the same bytes: go-spiffe keeps JWT authorities in a map
// and lists them in random order. X.509 authorities keep their order (the
// bundle's) and come first; JWT authorities follow, by key ID. A bundle
// endpoint's ETag relies on it.
func stableKeys(raw []byte) ([]byte, error) {
	var doc struct {
		Keys        []json.RawMessage `json:"keys"`
		Sequence    json.RawMessage   `json:"spiffe_sequence,omitempty"`
		RefreshHint json.RawMessage   `json:"spiffe_refresh_hint,omitempty"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	type sortKey struct {
		Use string `json:"use"`
		Kid string `json:"kid"`
	}
	keys := make([]sortKey, len(doc.Keys))
	for i, k := range doc.Keys {
		if err := json.Unmarshal(k, &keys[i]); err != nil {
			return nil, err
		}
	}
	idx := make([]int, len(doc.Keys))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ka, kb := keys[idx[a]], keys[idx[b]]
		if (ka.Use == "x509-svid") != (kb.Use == "x509-svid") {
			return ka.Use == "x509-svid"
		}
		return ka.Use != "x509-svid" && ka.Kid < kb.Kid
	})
	sorted := make([]json.RawMessage, len(idx))
	for i, j := range idx {
		sorted[i] = doc.Keys[j]
	}
	doc.Keys = sorted
	return json.Marshal(doc)
}

// Options set the bundle-level fields of the SPIFFE format.
type Options struct {
	Sequence    *uint64       // spiffe_sequence; left unset if nil
	RefreshHint time.Duration // spiffe_refresh_hint; left unset if zero
}

// Apply sets the SPIFFE bundle fields on b.
func (o Options) Apply(b *spiffebundle.Bundle) {
	if o.Sequence != nil {
		b.SetSequenceNumber(*o.Sequence)
	}
	if o.RefreshHint > 0 {
		b.SetRefreshHint(o.RefreshHint)
	}
}

func isSigningKey(k crypto.PublicKey) bool {
	switch k.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		return true
	}
	return false
}

func name(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	return fmt.Sprintf("serial %x", c.SerialNumber)
}
