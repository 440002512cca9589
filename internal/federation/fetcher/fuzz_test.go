package fetcher

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/bundle"
)

// FuzzParseBody runs parseBody, what Fetch does with the body a bundle
// endpoint sent, on arbitrary bytes. Input over bundle.MaxBytes must be
// refused as too large; every error must be short enough to log; an
// accepted bundle must be JSON, hold at least one X.509 authority and only
// CA certificates as such, and survive a round trip through its own
// encoding. Seeds: the f.Add calls, and real bundles and malformed variants
// in testdata/fuzz/FuzzParseBody/ (those of internal/bundle's FuzzParse, a
// JWT-only bundle, an unknown key use, an HTML error page and more).
func FuzzParseBody(f *testing.F) {
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kid":"k","kty":"oct","k":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}]}`))
	f.Add([]byte(`{"keys":[],"spiffe_refresh_hint":-1,"spiffe_sequence":18446744073709551615}`))
	f.Add(append([]byte(`{"keys":[{"use":"jwt-svid","kty":"EC","crv":"`), bytes.Repeat([]byte("P"), 4096)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseBody(west, data)
		if len(data) > bundle.MaxBytes && !errors.Is(err, errTooLarge) {
			t.Fatalf("%d bytes, over the bound: %v", len(data), err)
		}
		if err != nil {
			if b != nil {
				t.Fatal("a bundle was returned with an error")
			}
			if n := len(err.Error()); n > maxErrorBytes+len("... (truncated)") {
				t.Fatalf("error of %d bytes: %.100s...", n, err)
			}
			return
		}
		if !strings.HasPrefix(string(bytes.TrimSpace(data)), "{") {
			t.Fatal("accepted a body that is not a JSON object")
		}
		if b.TrustDomain() != west {
			t.Fatalf("bundle of %s, want west.example", b.TrustDomain())
		}
		if len(b.X509Authorities()) == 0 {
			t.Fatal("accepted a bundle without X.509 authorities")
		}
		for i, c := range b.X509Authorities() {
			if !c.IsCA {
				t.Fatalf("accepted authority %d, which is not a CA", i+1)
			}
		}
		encoded, err := bundle.Marshal(b, bundle.FormatSPIFFE)
		if err != nil {
			t.Fatalf("accepted a bundle it cannot marshal: %v", err)
		}
		again, err := parseBody(west, encoded)
		if err != nil {
			t.Fatalf("refused its own encoding: %v", err)
		}
		if !again.Equal(b) {
			t.Fatal("the bundle changed in a round trip")
		}
	})
}
