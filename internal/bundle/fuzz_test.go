package bundle_test

import (
	"errors"
	"testing"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParse runs bundle.Parse, the parser of bundles fetched from other trust
// domains, on arbitrary bytes. Input over MaxBytes must be refused with
// ErrTooLarge; an accepted bundle must hold keys, only CA certificates as
// X.509 authorities, a refresh hint that is not negative, and survive a round
// trip through both encodings. Seeds: the f.Add calls, and real bundles and
// malformed variants in testdata/fuzz/FuzzParse/.
func FuzzParse(f *testing.F) {
	full, err := bundle.Marshal(fullBundle(f), bundle.FormatSPIFFE)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add(pemfile.EncodeCertificates(fx().ca1, fx().ca2))
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kid":"k","kty":"oct","k":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[], "spiffe_refresh_hint": -1, "spiffe_sequence": 18446744073709551615}`))
	td := spiffeid.RequireTrustDomainFromString("east.example")
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := bundle.Parse(td, data)
		if len(data) > bundle.MaxBytes && !errors.Is(err, pemfile.ErrTooLarge) {
			t.Fatalf("%d bytes over the bound: %v", len(data), err)
		}
		if err != nil {
			if b != nil {
				t.Fatal("bundle returned with an error")
			}
			return
		}
		if b.Empty() {
			t.Fatal("accepted an empty bundle")
		}
		for i, c := range b.X509Authorities() {
			if !c.IsCA {
				t.Fatalf("accepted authority %d that is not a CA", i+1)
			}
		}
		if h, ok := b.RefreshHint(); ok && h < 0 {
			t.Fatalf("accepted refresh hint %s", h)
		}
		encoded, err := bundle.Marshal(b, bundle.FormatSPIFFE)
		if err != nil {
			t.Fatalf("accepted a bundle it cannot marshal: %v", err)
		}
		again, err := bundle.Parse(td, encoded)
		if err != nil {
			t.Fatalf("refused its own encoding: %v\n%s", err, encoded)
		}
		if !again.Equal(b) {
			t.Fatalf("bundle changed in a JSON round trip:\n%s", encoded)
		}
		if len(b.X509Authorities()) > 0 {
			encoded, err := bundle.Marshal(b, bundle.FormatPEM)
			if err != nil {
				t.Fatal(err)
			}
			fromPEM, err := bundle.Parse(td, encoded)
			if err != nil || !fromPEM.X509Bundle().Equal(b.X509Bundle()) {
				t.Fatalf("X.509 authorities changed in a PEM round trip: %v", err)
			}
		}
	})
}
