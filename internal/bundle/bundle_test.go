package bundle_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("east.example")

// fixtures are two CA certificates, a leaf and a JWT key, made once.
type fixtures struct {
	ca1, ca2, leaf *x509.Certificate
	jwtKey         crypto.PublicKey
}

var fx = sync.OnceValue(func() fixtures {
	gen := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(cn string, ca bool, serial int64) *x509.Certificate {
		k := gen()
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             now,
			NotAfter:              now.Add(time.Hour),
			BasicConstraintsValid: true,
			IsCA:                  ca,
			KeyUsage:              x509.KeyUsageDigitalSignature,
		}
		if ca {
			tmpl.KeyUsage = x509.KeyUsageCertSign
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		if err != nil {
			panic(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		return c
	}
	return fixtures{ca1: mk("ca one", true, 1), ca2: mk("ca two", true, 2), leaf: mk("leaf", false, 3), jwtKey: gen().Public()}
})

func wantErr(t testing.TB, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error; want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

func seq(n uint64) *uint64 { return &n }

// fullBundle has two X.509 authorities, a JWT authority, a sequence number
// and a refresh hint.
func fullBundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	f := fx()
	b, err := bundle.FromCertificates(td, []*x509.Certificate{f.ca1, f.ca2})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AddJWTAuthority("key-1", f.jwtKey); err != nil {
		t.Fatal(err)
	}
	bundle.Options{Sequence: seq(7), RefreshHint: 5 * time.Minute}.Apply(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	f := fx()
	b := fullBundle(t)

	t.Run("SPIFFE JSON", func(t *testing.T) {
		data, err := bundle.Marshal(b, bundle.FormatSPIFFE)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Keys []struct {
				Use string   `json:"use"`
				Kid string   `json:"kid"`
				X5c []string `json:"x5c"`
			} `json:"keys"`
			Sequence    *uint64 `json:"spiffe_sequence"`
			RefreshHint *int64  `json:"spiffe_refresh_hint"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Sequence == nil || *doc.Sequence != 7 || doc.RefreshHint == nil || *doc.RefreshHint != 300 {
			t.Errorf("spiffe_sequence %v, spiffe_refresh_hint %v; want 7 and 300", doc.Sequence, doc.RefreshHint)
		}
		var x509Keys, jwtKeys int
		for _, k := range doc.Keys {
			switch k.Use {
			case "x509-svid":
				x509Keys++
				if len(k.X5c) != 1 || k.Kid != "" {
					t.Errorf("x509-svid key with %d x5c and kid %q; want exactly one and none", len(k.X5c), k.Kid)
				}
			case "jwt-svid":
				jwtKeys++
				if k.Kid != "key-1" {
					t.Errorf("jwt-svid kid %q", k.Kid)
				}
			}
		}
		if x509Keys != 2 || jwtKeys != 1 {
			t.Errorf("%d x509-svid and %d jwt-svid keys, want 2 and 1", x509Keys, jwtKeys)
		}
		if !bytes.HasSuffix(data, []byte("}\n")) || !bytes.Contains(data, []byte("\n  \"keys\"")) {
			t.Errorf("not indented for people:\n%s", data)
		}

		got, err := bundle.Parse(td, data)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(b) {
			t.Error("bundle changed in a JSON round trip")
		}
		if n, ok := got.SequenceNumber(); !ok || n != 7 {
			t.Errorf("sequence %d, %v", n, ok)
		}
		if h, ok := got.RefreshHint(); !ok || h != 5*time.Minute {
			t.Errorf("refresh hint %s, %v", h, ok)
		}
		if k, ok := got.FindJWTAuthority("key-1"); !ok || !f.jwtKey.(*ecdsa.PublicKey).Equal(k) {
			t.Error("JWT authority lost")
		}
	})

	t.Run("PEM", func(t *testing.T) {
		data, err := bundle.Marshal(b, bundle.FormatPEM)
		if err != nil {
			t.Fatal(err)
		}
		got, err := bundle.Parse(td, data)
		if err != nil {
			t.Fatal(err)
		}
		// PEM holds only the X.509 authorities.
		if !got.HasX509Authority(f.ca1) || !got.HasX509Authority(f.ca2) || len(got.X509Authorities()) != 2 {
			t.Errorf("X.509 authorities lost in a PEM round trip")
		}
		if len(got.JWTAuthorities()) != 0 {
			t.Error("PEM carried JWT authorities")
		}
	})

	t.Run("JSON to PEM to JSON", func(t *testing.T) {
		b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{f.ca1, f.ca2})
		json1, err := bundle.Marshal(b, "")
		if err != nil {
			t.Fatal(err)
		}
		fromJSON, err := bundle.Parse(td, json1)
		if err != nil {
			t.Fatal(err)
		}
		pemData, err := bundle.Marshal(fromJSON, bundle.FormatPEM)
		if err != nil {
			t.Fatal(err)
		}
		fromPEM, err := bundle.Parse(td, pemData)
		if err != nil {
			t.Fatal(err)
		}
		json2, err := bundle.Marshal(fromPEM, bundle.FormatSPIFFE)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(json1, json2) {
			t.Errorf("JSON changed through PEM:\n%s\n%s", json1, json2)
		}
	})
}

func jsonBundle(t testing.TB, keys string, extra string) []byte {
	t.Helper()
	return []byte(`{"keys": [` + keys + `]` + extra + `}`)
}

// x509Key is a JWK entry for c as an x509-svid authority.
func x509Key(t testing.TB, c *x509.Certificate) string {
	t.Helper()
	k := c.PublicKey.(*ecdsa.PublicKey)
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	x, y := k.X.FillBytes(make([]byte, 32)), k.Y.FillBytes(make([]byte, 32))
	return fmt.Sprintf(`{"kty":"EC","crv":"P-256","x":%q,"y":%q,"use":"x509-svid","x5c":[%q]}`, b64(x), b64(y), base64.StdEncoding.EncodeToString(c.Raw))
}

// unknownKeyCA returns c with the OID of its key's algorithm replaced by one
// crypto/x509 does not know, which it parses as a nil key. (The signature no
// longer verifies; Parse does not check signatures.)
func unknownKeyCA(t testing.TB, c *x509.Certificate) *x509.Certificate {
	t.Helper()
	ecPublicKey := []byte{0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01} // 1.2.840.10045.2.1
	unknown := []byte{0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x7f}
	der := bytes.Replace(c.Raw, ecPublicKey, unknown, 1)
	out, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if out.PublicKey != nil {
		t.Fatalf("crypto/x509 parsed the unknown key as %T", out.PublicKey)
	}
	return out
}

func TestParse(t *testing.T) {
	f := fx()
	ca := x509Key(t, f.ca1)
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		data    []byte
		want    int // X.509 authorities
		wantErr string
	}{
		{"JSON", td, jsonBundle(t, ca, ""), 1, ""},
		{"JSON after white space", td, append([]byte("\n\t "), jsonBundle(t, ca, "")...), 1, ""},
		{"JSON with refresh hint and sequence", td, jsonBundle(t, ca, `, "spiffe_refresh_hint": 60, "spiffe_sequence": 3`), 1, ""},
		{"JSON with an unknown use (ignored)", td, jsonBundle(t, ca+`,{"kty":"oct","k":"AAAA","use":"other"}`, ""), 1, ""},
		{"PEM", td, pemfile.EncodeCertificates(f.ca1, f.ca2), 2, ""},
		{"no trust domain", spiffeid.TrustDomain{}, jsonBundle(t, ca, ""), 0, "bundle: a trust domain is required"},
		{"empty JSON key set", td, jsonBundle(t, "", ""), 0, `bundle: bundle for "east.example" holds no keys`},
		{"JSON without keys", td, []byte(`{}`), 0, "bundle: spiffebundle: no authorities found"},
		{"only unknown uses", td, jsonBundle(t, `{"kty":"oct","k":"AAAA","use":"other"}`, ""), 0, `bundle: bundle for "east.example" holds no keys`},
		{"leaf as JSON authority", td, jsonBundle(t, x509Key(t, f.leaf), ""), 0,
			"bundle: x509-svid authority 1 (CN=leaf) is not a CA certificate; a bundle holds roots, not leaves"},
		{"leaf as PEM authority", td, pemfile.EncodeCertificates(f.ca1, f.leaf), 0,
			"bundle: x509-svid authority 2 (CN=leaf) is not a CA certificate"},
		{"CA key of an algorithm crypto/x509 does not know", td, pemfile.EncodeCertificates(unknownKeyCA(t, f.ca1)), 0,
			"bundle: x509-svid authority 1 (CN=ca one) has a <nil> key, not an ECDSA, RSA or Ed25519 one"},
		{"negative refresh hint", td, jsonBundle(t, ca, `, "spiffe_refresh_hint": -1`), 0,
			"bundle: spiffe_refresh_hint -1 is out of range; give seconds from 0 to 9223372035"},
		{"refresh hint beyond time.Duration", td, jsonBundle(t, ca, `, "spiffe_refresh_hint": 9223372036`), 0,
			"bundle: spiffe_refresh_hint 9223372036 is out of range"},
		{"refresh hint wrapping to positive", td, jsonBundle(t, ca, `, "spiffe_refresh_hint": -18446744073`), 0,
			"bundle: spiffe_refresh_hint -18446744073 is out of range"},
		{"largest refresh hint", td, jsonBundle(t, ca, `, "spiffe_refresh_hint": 9223372035`), 1, ""},
		{"symmetric JWT key", td, jsonBundle(t, ca+`,{"kty":"oct","kid":"k1","k":"c2VjcmV0","use":"jwt-svid"}`, ""), 0,
			`bundle: jwt-svid authority "k1" is a []uint8, not an ECDSA, RSA or Ed25519 public key`},
		{"malformed JSON", td, []byte(`{"keys": [`), 0, "bundle: spiffebundle: unable to parse JWKS"},
		{"x509-svid without x5c", td, jsonBundle(t, `{"kty":"EC","crv":"P-256","x":"AA","y":"AA","use":"x509-svid"}`, ""), 0, "bundle: spiffebundle: unable to parse JWKS"},
		{"PEM without certificates", td, []byte("nothing\n"), 0, "bundle: pemfile: no PEM CERTIFICATE block found"},
		{"empty", td, nil, 0, "bundle: pemfile: no PEM CERTIFICATE block found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := bundle.Parse(tt.td, tt.data)
			wantErr(t, err, tt.wantErr)
			if err != nil {
				if b != nil {
					t.Error("returned a bundle with the error")
				}
				return
			}
			if b.TrustDomain() != tt.td || len(b.X509Authorities()) != tt.want {
				t.Errorf("bundle for %q with %d X.509 authorities, want %q and %d", b.TrustDomain(), len(b.X509Authorities()), tt.td, tt.want)
			}
		})
	}
}

// TestParseBound proves the documented bound: MaxBytes parses, one byte
// more is refused with pemfile.ErrTooLarge before any parsing.
func TestParseBound(t *testing.T) {
	valid := pemfile.EncodeCertificates(fx().ca1)
	atLimit := append(valid, bytes.Repeat([]byte("#"), bundle.MaxBytes-len(valid))...)
	if _, err := bundle.Parse(td, atLimit); err != nil {
		t.Fatalf("%d bytes (the limit): %v", len(atLimit), err)
	}
	_, err := bundle.Parse(td, append(atLimit, '#'))
	if !errors.Is(err, pemfile.ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	wantErr(t, err, "bundle: input exceeds size limit of 1048576 bytes")
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	data, err := bundle.Marshal(fullBundle(t), bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "bundle.json")
	big := filepath.Join(dir, "big.json")
	bad := filepath.Join(dir, "bad.json")
	for path, data := range map[string][]byte{good: data, big: bytes.Repeat([]byte(" "), bundle.MaxBytes+1), bad: []byte("{}")} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := bundle.Read(td, good); err != nil || !b.Equal(fullBundle(t)) {
		t.Fatalf("Read: %v", err)
	}
	_, err = bundle.Read(td, big)
	if !errors.Is(err, pemfile.ErrTooLarge) {
		t.Errorf("oversized file: %v, want ErrTooLarge", err)
	}
	_, err = bundle.Read(td, bad)
	wantErr(t, err, bad+": bundle: spiffebundle: no authorities found")
	_, err = bundle.Read(td, filepath.Join(dir, "missing.json"))
	wantErr(t, err, "bundle: pemfile: open ")
}

func TestFromCertificates(t *testing.T) {
	f := fx()
	_, err := bundle.FromCertificates(td, []*x509.Certificate{f.ca1, f.leaf})
	wantErr(t, err, "bundle: x509-svid authority 2 (CN=leaf) is not a CA certificate")
	_, err = bundle.FromCertificates(td, nil)
	wantErr(t, err, `bundle: bundle for "east.example" holds no keys`)
}

func TestOptions(t *testing.T) {
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{fx().ca1})
	bundle.Options{}.Apply(b)
	if _, ok := b.SequenceNumber(); ok {
		t.Error("zero Options set a sequence number")
	}
	if _, ok := b.RefreshHint(); ok {
		t.Error("zero Options set a refresh hint")
	}
	bundle.Options{Sequence: seq(0), RefreshHint: time.Hour}.Apply(b)
	if n, ok := b.SequenceNumber(); !ok || n != 0 {
		t.Errorf("sequence %d, %v; want 0 set", n, ok)
	}
	if h, ok := b.RefreshHint(); !ok || h != time.Hour {
		t.Errorf("refresh hint %s, %v", h, ok)
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		data string
		want bundle.Format
	}{
		{`{"keys":[]}`, bundle.FormatSPIFFE},
		{"\n  \t{", bundle.FormatSPIFFE},
		{"-----BEGIN CERTIFICATE-----", bundle.FormatPEM},
		{"text before a PEM block {", bundle.FormatPEM},
		{"[]", bundle.FormatPEM},
		{"", bundle.FormatPEM},
	}
	for _, tt := range tests {
		if got := bundle.Detect([]byte(tt.data)); got != tt.want {
			t.Errorf("Detect(%q) = %q, want %q", tt.data, got, tt.want)
		}
	}
}

func TestParseFormat(t *testing.T) {
	tests := []struct {
		in      string
		want    bundle.Format
		wantErr string
	}{
		{"spiffe", bundle.FormatSPIFFE, ""},
		{"json", bundle.FormatSPIFFE, ""},
		{"jwks", bundle.FormatSPIFFE, ""},
		{"pem", bundle.FormatPEM, ""},
		{"PEM", "", `bundle: unknown format "PEM"; use spiffe or pem`},
		{"", "", `bundle: unknown format ""`},
	}
	for _, tt := range tests {
		got, err := bundle.ParseFormat(tt.in)
		if got != tt.want {
			t.Errorf("ParseFormat(%q) = %q, want %q", tt.in, got, tt.want)
		}
		wantErr(t, err, tt.wantErr)
	}
	_, err := bundle.Marshal(fullBundle(t), "der")
	wantErr(t, err, `bundle: unknown format "der"`)
}

// A bundle always encodes to the same bytes (go-spiffe lists JWT keys in map
// order): X.509 authorities first in the bundle's order, then JWT keys by
// key ID. A bundle endpoint's ETag depends on it.
func TestMarshalIsStable(t *testing.T) {
	b := spiffebundle.New(td)
	b.AddX509Authority(fx().ca2)
	b.AddX509Authority(fx().ca1)
	for _, kid := range []string{"k3", "k1", "k2", "k5", "k4"} {
		if err := b.AddJWTAuthority(kid, fx().jwtKey); err != nil {
			t.Fatal(err)
		}
	}
	b.SetSequenceNumber(7)
	b.SetRefreshHint(5 * time.Minute)
	first, err := bundle.Marshal(b, bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, err := bundle.Marshal(b, bundle.FormatSPIFFE)
		if err != nil || !bytes.Equal(again, first) {
			t.Fatalf("two encodings of one bundle differ: %v", err)
		}
	}
	var doc struct {
		Keys []struct {
			Use string `json:"use"`
			Kid string `json:"kid"`
			X5c []string
		} `json:"keys"`
		Sequence uint64 `json:"spiffe_sequence"`
		Hint     int    `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(first, &doc); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, k := range doc.Keys {
		order = append(order, k.Use+":"+k.Kid)
	}
	if got := strings.Join(order, ","); got != "x509-svid:,x509-svid:,jwt-svid:k1,jwt-svid:k2,jwt-svid:k3,jwt-svid:k4,jwt-svid:k5" || doc.Sequence != 7 || doc.Hint != 300 {
		t.Errorf("keys %s, sequence %d, hint %d", got, doc.Sequence, doc.Hint)
	}
	back, err := bundle.Parse(td, first)
	if err != nil || !back.Equal(b) {
		t.Errorf("does not round-trip: %v", err)
	}
	if c := back.X509Authorities(); !c[0].Equal(fx().ca2) {
		t.Error("the X.509 authorities lost their order")
	}
}
