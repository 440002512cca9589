package inspect

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var jwtNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// unsigned builds a token from raw header and claims JSON and a dummy
// signature, for the cases no signer would produce.
func unsigned(header, claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(claims)) + "." + enc([]byte("sig"))
}

func TestDescribeJWT(t *testing.T) {
	key, _ := testjwt.NewKey(t)
	exp := jwtNow.Add(time.Hour)
	good := testjwt.Sign(t, jose.ES256, key, "k1", "JWT", map[string]any{
		"sub": "spiffe://east.example/ns/default/sa/reviews", "aud": []string{"ratings"}, "exp": exp.Unix(),
		"iat": jwtNow.Add(-time.Minute).Unix(), "jti": "abc", "iss": "meshfed", "team": "x", "env": "y",
	})
	got, err := DescribeJWT(good, jwtNow)
	if err != nil {
		t.Fatal(err)
	}
	iat := jwtNow.Add(-time.Minute)
	want := &JWT{Algorithm: "ES256", KeyID: "k1", Type: "JWT", Subject: "spiffe://east.example/ns/default/sa/reviews",
		SPIFFEID: "spiffe://east.example/ns/default/sa/reviews", TrustDomain: "east.example", Audience: []string{"ratings"},
		Issuer: "meshfed", Expires: &exp, IssuedAt: &iat, ID: "abc", OtherClaims: []string{"env", "team"},
		Validity: Valid, SVID: Conformance{Status: Conforms, Checked: "JWT-SVID"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DescribeJWT:\n got %+v\nwant %+v", got, want)
	}
	if got, _ := DescribeJWT(good, exp); got.Validity != Expired {
		t.Errorf("at exp: %s, want expired", got.Validity)
	}
	var text bytes.Buffer
	if err := (JWTReport{Source: "token.jwt", Token: got}).WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"token.jwt: a JWT, read without verifying it\n", "  SPIFFE ID:          spiffe://east.example/ns/default/sa/reviews\n",
		"  Other claims:       env, team\n", "  SVID:               conforms to the JWT-SVID rules\n"} {
		if !strings.Contains(text.String(), line) {
			t.Errorf("text lacks %q:\n%s", line, text.String())
		}
	}
	if strings.Contains(text.String(), good) || strings.Contains(text.String(), strings.Split(good, ".")[2]) {
		t.Error("the text shows the token or its signature")
	}

	// What breaks the JWT-SVID rules is named, rule by rule.
	for _, tt := range []struct {
		name, header, claims string
		want                 []Violation
		validity             Validity
	}{
		{"HMAC, a claim-less sub, no aud, no exp", `{"alg":"HS256","typ":"at+jwt"}`, `{"sub":"reviews"}`, []Violation{
			{"JWT-SVID §2.1", `alg "HS256" is not one of RS256, RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512`},
			{"JWT-SVID §2.3", "typ at+jwt is set and is neither JWT nor JOSE"},
			{"JWT-SVID §3.1", `sub "reviews" is not a SPIFFE ID`},
			{"JWT-SVID §3.2", "no aud claim with a value"},
			{"JWT-SVID §3.3", "no exp claim (a NumericDate)"},
		}, Valid},
		{"no alg, aud of the wrong type, exp a string", `{}`, `{"sub":"spiffe://east.example/x","aud":[1],"exp":"tomorrow"}`, []Violation{
			{"JWT-SVID §2.1", "no alg header"},
			{"JWT-SVID §3.2", "no aud claim with a value"},
			{"JWT-SVID §3.3", "no exp claim (a NumericDate)"},
		}, Valid},
		{"not yet valid, aud a string, exp fractional", `{"alg":"RS256","typ":"JOSE"}`, `{"sub":"spiffe://east.example/x","aud":"ratings","exp":1893456000.5,"nbf":1893452400}`, nil, NotYetValid},
	} {
		got, err := DescribeJWT(unsigned(tt.header, tt.claims), jwtNow)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !reflect.DeepEqual(got.SVID.Violations, tt.want) || got.Validity != tt.validity {
			t.Errorf("%s: violations %v, validity %s; want %v, %s", tt.name, got.SVID.Violations, got.Validity, tt.want, tt.validity)
		}
	}

	// Malformed tokens: an error that says what is wrong, never the token.
	for _, tt := range []struct{ name, token, want string }{
		{"two parts", "eyJhbGciOiJFUzI1NiJ9.e30", "inspect: the token has 2 dot-separated parts; a JWS in compact form has three (header.claims.signature)"},
		{"JWE", "a.b.c.d.e", "inspect: the token has five parts: an encrypted JWT (JWE), not a signed one; JWT-SVIDs are signed (JWS)"},
		{"unsigned", strings.Join(strings.Split(unsigned(`{"alg":"none"}`, `{}`), ".")[:2], ".") + ".", "inspect: the token has no signature (an unsecured JWT)"},
		{"header not base64url", "e30=.e30.c2ln", "inspect: the token's header: not base64url without padding: illegal base64 data at input byte 3"},
		{"claims an array", unsigned(`{"alg":"ES256"}`, `[1]`), "inspect: the token's claims: not a JSON object: json: cannot unmarshal array into Go value of type map[string]interface {}"},
		{"claims null", unsigned(`{"alg":"ES256"}`, `null`), "inspect: the token's claims: not a JSON object: null"},
		{"two objects", unsigned(`{"alg":"ES256"}{}`, `{}`), "inspect: the token's header: not a JSON object: data after it"},
		{"oversized", strings.Repeat("a", MaxJWTBytes+1), "inspect: the token is 16385 bytes, more than the 16384 a JWT here may be"},
	} {
		if _, err := DescribeJWT(tt.token, jwtNow); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestVerifyJWT(t *testing.T) {
	key, _ := testjwt.NewKey(t)
	other, _ := testjwt.NewKey(t)
	east := spiffeid.RequireTrustDomainFromString("east.example")
	b := spiffebundle.New(east)
	if err := b.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "east.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	trust, err := LoadJWTBundle(path, east)
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{"sub": "spiffe://east.example/ns/default/sa/reviews", "aud": []string{"ratings"}, "exp": time.Now().Add(time.Hour).Unix()}
	good := testjwt.Sign(t, jose.ES256, key, "k1", "JWT", claims)
	if v := VerifyJWT(good, trust, "ratings"); !v.OK() || v.SPIFFEID != "spiffe://east.example/ns/default/sa/reviews" || v.Method != "JWT-SVID" {
		t.Errorf("a good token: %+v", v)
	}
	for _, tt := range []struct{ name, token, audience, want string }{
		{"another audience", good, "reviews", `jwtsvid: expected audience in ["reviews"] (audience=["ratings"])`},
		{"a key the bundle lacks", testjwt.Sign(t, jose.ES256, other, "k1", "JWT", claims), "ratings", "jwtsvid: unable to get claims from token: go-jose/go-jose: error in cryptographic primitive"},
		{"an unknown kid", testjwt.Sign(t, jose.ES256, key, "k2", "JWT", claims), "ratings", `jwtsvid: no JWT authority "k2" found for trust domain "east.example"`},
	} {
		v := VerifyJWT(tt.token, trust, tt.audience)
		if v.OK() || v.Reason != tt.want || strings.Contains(v.Reason, tt.token) {
			t.Errorf("%s: %+v, want failed: %s", tt.name, v, tt.want)
		}
	}

	// A bundle with no JWT authorities cannot verify a token.
	xb := spiffebundle.New(east)
	xb.AddX509Authority(newTestPKI(t).root)
	raw, err := xb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	x509only := filepath.Join(t.TempDir(), "x509.json")
	if err := os.WriteFile(x509only, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadJWTBundle(x509only, east); err == nil || !strings.Contains(err.Error(), "the bundle holds no JWT authorities (use: jwt-svid keys), so it cannot verify a JWT-SVID") {
		t.Errorf("LoadJWTBundle(no JWT keys): %v", err)
	}
}

// FuzzDescribeJWT: any input is described or refused with an error that
// does not repeat it, and a description always marshals.
func FuzzDescribeJWT(f *testing.F) {
	f.Add(unsigned(`{"alg":"ES256","kid":"k1","typ":"JWT"}`, `{"sub":"spiffe://east.example/x","aud":["a"],"exp":1893456000}`))
	f.Add(unsigned(`{"alg":"none"}`, `{"aud":"a","exp":1e300,"nbf":-1}`))
	f.Add("a.b.c")
	f.Add("....")
	f.Fuzz(func(t *testing.T, token string) {
		j, err := DescribeJWT(token, jwtNow)
		if err != nil {
			if len(token) >= 16 && strings.Contains(err.Error(), token) {
				t.Fatalf("the error repeats the token: %v", err)
			}
			return
		}
		if _, err := json.Marshal(j); err != nil {
			t.Fatal(err)
		}
		if j.SVID.Status == Conforms && (j.SPIFFEID == "" || len(j.Audience) == 0 || j.Expires == nil) {
			t.Fatalf("conforms without sub, aud or exp: %+v", j)
		}
	})
}
