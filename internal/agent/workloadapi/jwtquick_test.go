package workloadapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// quickKeys are the JWT authorities of the quick-validation tests: east's
// bundle holds all of them, west's another key under the same ID as one of
// east's.
type quickKeys struct {
	p256, p384, west *ecdsa.PrivateKey
	rsa              *rsa.PrivateKey
	set              *jwtbundle.Set
}

var quickEast, quickWest = spiffeid.RequireTrustDomainFromString("east.example"), spiffeid.RequireTrustDomainFromString("west.example")

func newQuickKeys(t testing.TB) *quickKeys {
	t.Helper()
	ec := func(c elliptic.Curve) *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k := &quickKeys{p256: ec(elliptic.P256()), p384: ec(elliptic.P384()), west: ec(elliptic.P256()), rsa: rk}
	east := jwtbundle.New(quickEast)
	for kid, pub := range map[string]crypto.PublicKey{"p256": &k.p256.PublicKey, "p384": &k.p384.PublicKey, "rsa": &k.rsa.PublicKey} {
		if err := east.AddJWTAuthority(kid, pub); err != nil {
			t.Fatal(err)
		}
	}
	west := jwtbundle.New(quickWest)
	if err := west.AddJWTAuthority("p256", &k.west.PublicKey); err != nil {
		t.Fatal(err)
	}
	k.set = jwtbundle.NewSet(east, west)
	return k
}

// raw makes a token of the given header and payload, signed ES256 with
// east's P-256 key: the signature is right for whatever the parts say.
func (k *quickKeys) raw(t testing.TB, header, payload []byte) string {
	t.Helper()
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k.p256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

const quickAud = "spiffe://east.example/reports"

func quickClaims(sub string, aud any, exp time.Time) map[string]any {
	return map[string]any{"sub": sub, "aud": aud, "exp": exp.Unix(), "iat": time.Now().Unix()}
}

// checkAgainstJWTSVID fails if quickValidate accepted token and
// jwtsvid.ParseAndValidate does not, or gives another SPIFFE ID or other
// claims, and returns whether quickValidate accepted it.
func checkAgainstJWTSVID(t testing.TB, set *jwtbundle.Set, token, aud string) bool {
	t.Helper()
	got, ok := quickValidate(token, set, aud, time.Now())
	if !ok {
		return false
	}
	want, err := jwtsvid.ParseAndValidate(token, set, []string{aud})
	if err != nil {
		t.Fatalf("quickValidate accepted a token jwtsvid refuses (%v): %q", err, token)
	}
	if got.id != want.ID {
		t.Fatalf("quickValidate: %s, jwtsvid: %s", got.id, want.ID)
	}
	if !reflect.DeepEqual(got.all, want.Claims) {
		t.Fatalf("quickValidate's claims %#v, jwtsvid's %#v", got.all, want.Claims)
	}
	if b, _ := set.Get(got.id.TrustDomain()); b == nil || !samePublicKey(b.JWTAuthorities()[got.kid], got.key) {
		t.Fatalf("quickValidate's key is not the bundle's %q", got.kid)
	}
	return true
}

// TestQuickValidate: the tokens agents and SPIRE issue are validated in
// one pass, as jwtsvid validates them; everything else (other forms, and
// every refusal) is left to jwtsvid.
func TestQuickValidate(t *testing.T) {
	k := newQuickKeys(t)
	id := "spiffe://east.example/ns/default/sa/reviews"
	hour := time.Now().Add(time.Hour)
	good := testjwt.Sign(t, jose.ES256, k.p256, "p256", "JWT", quickClaims(id, []string{quickAud}, hour))
	tamper := func(tok string, part int, edit func(string) string) string {
		parts := strings.Split(tok, ".")
		parts[part] = edit(parts[part])
		return strings.Join(parts, ".")
	}
	// The last character of a P-256 signature's 86 carries 2 bits that
	// decode to nothing: "A" and "B" decode alike, and only the former is
	// canonical.
	nonCanonical := tamper(good, 2, func(s string) string {
		b := []byte(s)
		if b[len(b)-1] == 'A' {
			b[len(b)-1] = 'B'
		} else {
			b[len(b)-1]++
		}
		return string(b)
	})
	header := func(h map[string]any, claims map[string]any) string {
		hb, _ := json.Marshal(h)
		cb, _ := json.Marshal(claims)
		return k.raw(t, hb, cb)
	}
	es256 := map[string]any{"alg": "ES256", "kid": "p256"}

	cases := []struct {
		name  string
		token string
		aud   string
		quick bool // quickValidate accepts it
		valid bool // jwtsvid accepts it
	}{
		{"ES256, typ JWT", good, quickAud, true, true},
		{"ES256, no typ", testjwt.Sign(t, jose.ES256, k.p256, "p256", "", quickClaims(id, quickAud, hour)), quickAud, true, true},
		{"ES256, typ JOSE", testjwt.Sign(t, jose.ES256, k.p256, "p256", "JOSE", quickClaims(id, []string{"a", quickAud}, hour)), quickAud, true, true},
		{"ES384", testjwt.Sign(t, jose.ES384, k.p384, "p384", "JWT", quickClaims(id, quickAud, hour)), quickAud, true, true},
		{"RS256", testjwt.Sign(t, jose.RS256, k.rsa, "rsa", "JWT", quickClaims(id, quickAud, hour)), quickAud, true, true},
		{"private claims", testjwt.Sign(t, jose.ES256, k.p256, "p256", "JWT", map[string]any{
			"sub": id, "aud": quickAud, "exp": hour.Unix(), "jti": "j-1", "iss": "east",
			"n": 1.5, "list": []any{"x", 2.0, nil, true}, "obj": map[string]any{"k": "v"}, "big": 1e300,
		}), quickAud, true, true},
		{"west's key", testjwt.Sign(t, jose.ES256, k.west, "p256", "JWT", quickClaims("spiffe://west.example/w", quickAud, hour)), quickAud, true, true},

		// Valid, but of a form left to jwtsvid.
		{"PS256", testjwt.Sign(t, jose.PS256, k.rsa, "rsa", "JWT", quickClaims(id, quickAud, hour)), quickAud, false, true},
		{"another header", header(map[string]any{"alg": "ES256", "kid": "p256", "cty": "x"}, quickClaims(id, quickAud, hour)), quickAud, false, true},
		{"null claim", header(es256, map[string]any{"sub": id, "aud": quickAud, "exp": hour.Unix(), "nbf": nil}), quickAud, false, true},
		{"a key like a registered claim", header(es256, map[string]any{"sub": id, "aud": quickAud, "exp": hour.Unix(), "EXP": 1}), quickAud, false, true},

		// Refused.
		{"a claim twice", k.raw(t, []byte(`{"alg":"ES256","kid":"p256"}`), []byte(`{"sub":"`+id+`","aud":"`+quickAud+`","exp":`+jsonInt(hour.Unix())+`,"sub":"spiffe://east.example/admin"}`)), quickAud, false, false},
		{"a nested key twice", k.raw(t, []byte(`{"alg":"ES256","kid":"p256"}`), []byte(`{"sub":"`+id+`","aud":"`+quickAud+`","exp":`+jsonInt(hour.Unix())+`,"o":[{"a":1,"a":2}]}`)), quickAud, false, false},
		{"a header field twice", k.raw(t, []byte(`{"alg":"ES256","kid":"p256","kid":"p256"}`), []byte(`{"sub":"`+id+`","aud":"`+quickAud+`","exp":`+jsonInt(hour.Unix())+`}`)), quickAud, false, false},
		{"wrong audience", good, "spiffe://east.example/other", false, false},
		{"expired", testjwt.Sign(t, jose.ES256, k.p256, "p256", "JWT", quickClaims(id, quickAud, time.Now().Add(-time.Hour))), quickAud, false, false},
		{"not yet valid", header(es256, map[string]any{"sub": id, "aud": quickAud, "exp": hour.Unix(), "nbf": hour.Add(-time.Minute).Unix()}), quickAud, false, false},
		{"no exp", header(es256, map[string]any{"sub": id, "aud": quickAud}), quickAud, false, false},
		{"exp a string", header(es256, map[string]any{"sub": id, "aud": quickAud, "exp": "2100000000"}), quickAud, false, false},
		{"exp past go-jose's bound", header(es256, map[string]any{"sub": id, "aud": quickAud, "exp": 1e19}), quickAud, false, false},
		{"sub not a SPIFFE ID", header(es256, quickClaims("reviews", quickAud, hour)), quickAud, false, false},
		{"aud of a number", header(es256, map[string]any{"sub": id, "aud": []any{quickAud, 1}, "exp": hour.Unix()}), quickAud, false, false},
		{"unknown kid", testjwt.Sign(t, jose.ES256, k.p256, "other", "JWT", quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"empty kid", header(map[string]any{"alg": "ES256", "kid": ""}, quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"no bundle for the trust domain", testjwt.Sign(t, jose.ES256, k.p256, "p256", "JWT", quickClaims("spiffe://north.example/n", quickAud, hour)), quickAud, false, false},
		{"signed by another domain's key", testjwt.Sign(t, jose.ES256, k.west, "p256", "JWT", quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"key of another curve", testjwt.Sign(t, jose.ES384, k.p384, "p256", "JWT", quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"typ other", header(map[string]any{"alg": "ES256", "kid": "p256", "typ": "at+jwt"}, quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"alg none", tamper(header(map[string]any{"alg": "none", "kid": "p256"}, quickClaims(id, quickAud, hour)), 2, func(string) string { return "" }), quickAud, false, false},
		{"HS256", header(map[string]any{"alg": "HS256", "kid": "p256"}, quickClaims(id, quickAud, hour)), quickAud, false, false},
		{"tampered payload", tamper(good, 1, func(string) string {
			b, _ := json.Marshal(quickClaims("spiffe://east.example/admin", quickAud, hour))
			return base64.RawURLEncoding.EncodeToString(b)
		}), quickAud, false, false},
		{"signature cut short", tamper(good, 2, func(s string) string { return s[:80] }), quickAud, false, false},
		{"non-canonical base64", nonCanonical, quickAud, false, true},
		{"line break", tamper(good, 1, func(s string) string { return s[:10] + "\n" + s[10:] }), quickAud, false, true},
		{"four parts", good + ".x", quickAud, false, false},
		{"payload not an object", k.raw(t, []byte(`{"alg":"ES256","kid":"p256"}`), []byte(`["sub"]`)), quickAud, false, false},
		{"not JSON", k.raw(t, []byte(`{"alg":"ES256","kid":"p256"}`), []byte(`{"sub":`)), quickAud, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			quick := checkAgainstJWTSVID(t, k.set, tc.token, tc.aud)
			_, err := jwtsvid.ParseAndValidate(tc.token, k.set, []string{tc.aud})
			if quick != tc.quick || (err == nil) != tc.valid {
				t.Fatalf("quickValidate %v, jwtsvid %v; want %v, valid %v", quick, err, tc.quick, tc.valid)
			}
		})
	}
}

// FuzzQuickValidate: whatever header and claims a token has (signed, so
// that the signature is no obstacle) or whatever is done to its text,
// quickValidate accepts it only if jwtsvid.ParseAndValidate does, with the
// same SPIFFE ID and claims.
func FuzzQuickValidate(f *testing.F) {
	k := newQuickKeys(f)
	exp := time.Now().Add(24 * time.Hour).Unix()
	claims := func(extra string) string {
		return `{"sub":"spiffe://east.example/w","aud":["` + quickAud + `"],"exp":` + jsonInt(exp) + extra + `}`
	}
	for _, seed := range []struct{ header, payload, edit string }{
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(""), ""},
		{`{"alg":"ES256","kid":"p256"}`, claims(`,"iat":1,"nbf":1,"jti":"x","iss":"y"`), ""},
		{`{"alg":"ES256","kid":"p256","alg":"RS256"}`, claims(""), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"sub":"spiffe://east.example/other"`), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"Sub":"spiffe://east.example/other"`), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"ſub":"spiffe://east.example/other"`), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"x":"\ud800"`), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"exp":1.9e9`), ""},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(`,"aud":"` + quickAud + `"`), "truncate"},
		{`{"alg":"ES256","kid":"p256","typ":"JWT"}`, claims(""), "flip"},
	} {
		f.Add(seed.header, seed.payload, seed.edit)
	}
	f.Fuzz(func(t *testing.T, header, payload, edit string) {
		if len(header)+len(payload) > 4<<10 {
			return
		}
		token := k.raw(t, []byte(header), []byte(payload))
		switch {
		case edit == "truncate":
			token = token[:len(token)-1]
		case edit == "flip":
			b := []byte(token)
			b[len(b)/2] ^= 1
			token = string(b)
		case edit != "":
			token += edit
		}
		checkAgainstJWTSVID(t, k.set, token, quickAud)
	})
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// BenchmarkQuickValidate: a new ES256 JWT-SVID validated by quickValidate
// and by jwtsvid.ParseAndValidate (what ValidateJWTSVID did before), beside
// the ceiling: the token's ECDSA verification alone, which both must do.
//
//	go test -run '^$' -bench BenchmarkQuickValidate -benchmem ./internal/agent/workloadapi/
func BenchmarkQuickValidate(b *testing.B) {
	k := newQuickKeys(b)
	tokens := make([]string, 256)
	for i := range tokens {
		c := quickClaims("spiffe://east.example/ns/default/sa/reviews", []string{quickAud}, time.Now().Add(time.Hour))
		c["jti"] = jsonInt(int64(i))
		tokens[i] = testjwt.Sign(b, jose.ES256, k.p256, "p256", "JWT", c)
	}
	b.Run("quick", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := quickValidate(tokens[i%len(tokens)], k.set, quickAud, time.Now()); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("jwtsvid", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := jwtsvid.ParseAndValidate(tokens[i%len(tokens)], k.set, []string{quickAud}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ceiling-ecdsa-verify", func(b *testing.B) {
		input, sig := make([]string, len(tokens)), make([][]byte, len(tokens))
		for i, tok := range tokens {
			cut := strings.LastIndexByte(tok, '.')
			input[i] = tok[:cut]
			sig[i], _ = base64.RawURLEncoding.DecodeString(tok[cut+1:])
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			j := i % len(tokens)
			digest := sha256.Sum256([]byte(input[j]))
			r, s := new(big.Int).SetBytes(sig[j][:32]), new(big.Int).SetBytes(sig[j][32:])
			if !ecdsa.Verify(&k.p256.PublicKey, digest[:], r, s) {
				b.Fatal("refused")
			}
		}
	})
}
