package credential_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/credential"
)

// newFileVerifier is a verifier for east.example trusting k8sIssuer with the
// JWKS jwks (from a file) and the audience "istio-ca".
func newFileVerifier(t testing.TB, jwks []byte, clk *clock) *credential.JWTVerifier {
	t.Helper()
	path := tempPath(t, "jwks.json")
	writeJWKS(t, path, jwks, t0)
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSFile: path, Audiences: []string{audience}}},
		Clock:       clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// with returns the standard claims changed by edit.
func with(edit func(c map[string]any)) map[string]any {
	c := claims()
	edit(c)
	return c
}

// embeddedJWK is an ES256 token signed by the attacker's key, carrying that
// key in a "jwk" header and naming the issuer's kid "ec1": a verifier that
// trusted the embedded key would accept it.
func embeddedJWK(t testing.TB, c map[string]any) string {
	t.Helper()
	k := attacker()
	jwk := jose.JSONWebKey{Key: &k.PublicKey}
	input := b64JSON(t, map[string]any{"alg": "ES256", "kid": "ec1", "jwk": jwk}) + "." + b64JSON(t, c)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64(sig)
}

func TestJWTVerify(t *testing.T) {
	reviews := spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	const (
		reviewsCaller = "iss=" + k8sIssuer + " sub=system:serviceaccount:default:reviews"
		algs          = "allowed: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA"
	)
	oneKey := func(t testing.TB) []byte { return jwksJSON(t, pubJWK(ecKey(), "ec1", "ES256")) }
	twoKeys := func(t testing.TB) []byte {
		return jwksJSON(t, pubJWK(ecKey(), "ec1", "ES256"), pubJWK(ecKey2(), "ec2", "ES256"))
	}
	noAlg := func(t testing.TB) []byte { return jwksJSON(t, pubJWK(rsaKey(), "rsa1", "")) }

	tests := []struct {
		name    string
		jwks    func(testing.TB) []byte // standardJWKS if nil
		token   func(t testing.TB) string
		id      spiffeid.ID // wanted on success
		caller  string
		expires time.Time // t0+1h if zero
		err     string    // wanted error; "" for success
	}{
		{
			name:   "valid RS256 with kubernetes.io claim",
			token:  func(t testing.TB) string { return sign(t, rsaKey(), jose.RS256, "rsa1", claims()) },
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name:   "valid ES256",
			token:  func(t testing.TB) string { return sign(t, ecKey(), jose.ES256, "ec1", claims()) },
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name:   "valid EdDSA",
			token:  func(t testing.TB) string { return sign(t, edKey(), jose.EdDSA, "ed1", claims()) },
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name:   "valid PS256 with a key that declares no alg",
			jwks:   noAlg,
			token:  func(t testing.TB) string { return sign(t, rsaKey(), jose.PS256, "rsa1", claims()) },
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name: "valid legacy token: sub only",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "kubernetes.io") }))
			},
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name: "valid: kubernetes.io claim without sub",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "sub") }))
			},
			id:     reviews,
			caller: "iss=" + k8sIssuer + " sub=",
		},
		{
			name: "valid: audience as a string, one of several",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["aud"] = audience }))
			},
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name: "valid: service account name longer than a label, with dots",
			token: func(t testing.TB) string {
				sa := strings.Repeat("a", 70) + ".b-c"
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					c["sub"] = "system:serviceaccount:default:" + sa
					c["kubernetes.io"].(map[string]any)["serviceaccount"] = map[string]any{"name": sa}
				}))
			},
			id:     spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/" + strings.Repeat("a", 70) + ".b-c"),
			caller: "iss=" + k8sIssuer + " sub=system:serviceaccount:default:" + strings.Repeat("a", 70) + ".b-c",
		},
		{
			name: "valid: expired within the leeway",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["exp"] = t0.Add(-30 * time.Second).Unix() }))
			},
			id:      reviews,
			caller:  reviewsCaller,
			expires: t0.Add(-30 * time.Second),
		},
		{
			name: "valid: issued in the future within the leeway",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					c["iat"] = t0.Add(30 * time.Second).Unix()
					c["nbf"] = t0.Add(30 * time.Second).Unix()
				}))
			},
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name:   "valid: no kid, the issuer has one key",
			jwks:   oneKey,
			token:  func(t testing.TB) string { return sign(t, ecKey(), jose.ES256, "", claims()) },
			id:     reviews,
			caller: reviewsCaller,
		},
		{
			name: "expired",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["exp"] = t0.Add(-31 * time.Second).Unix() }))
			},
			err: "credential: JWT expired at 2030-03-04T05:05:36Z",
		},
		{
			name: "no exp",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "exp") }))
			},
			err: "credential: JWT has no expiry (exp); tokens without one are refused",
		},
		{
			name: "not yet valid",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["nbf"] = t0.Add(31 * time.Second).Unix() }))
			},
			err: "credential: JWT is not valid before 2030-03-04T05:06:38Z",
		},
		{
			name: "issued in the future beyond the leeway",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					delete(c, "nbf")
					c["iat"] = t0.Add(5 * time.Minute).Unix()
				}))
			},
			err: "credential: JWT was issued at 2030-03-04T05:11:07Z, in the future",
		},
		{
			name: "wrong audience",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["aud"] = []string{"https://kubernetes.default.svc"} }))
			},
			err: `credential: JWT audience ["https://kubernetes.default.svc"] does not include "istio-ca"`,
		},
		{
			name: "no audience",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "aud") }))
			},
			err: `credential: JWT audience [] does not include "istio-ca"`,
		},
		{
			name: "wrong issuer",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["iss"] = "https://evil.example" }))
			},
			err: `credential: JWT issuer "https://evil.example" is not a configured issuer`,
		},
		{
			name: "no issuer",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "iss") }))
			},
			err: "credential: JWT has no issuer (iss)",
		},
		{
			name:  "unknown kid",
			token: func(t testing.TB) string { return sign(t, rsaKey2(), jose.RS256, "rsa2", claims()) },
			err:   `credential: no key "rsa2" from issuer "` + k8sIssuer + `"`,
		},
		{
			name:  "no kid, the issuer has two keys",
			jwks:  twoKeys,
			token: func(t testing.TB) string { return sign(t, ecKey(), jose.ES256, "", claims()) },
			err:   `credential: JWT has no key ID (kid) and issuer "` + k8sIssuer + `" has 2 keys; a kid is required to choose one`,
		},
		{
			name:  "alg none",
			token: func(t testing.TB) string { return algNone(t, claims()) },
			err:   `credential: JWT signed with alg "none"; ` + algs,
		},
		{
			name:  "HS256 keyed with the issuer's RSA public key",
			token: func(t testing.TB) string { return hmacWithPublicKey(t, claims()) },
			err:   `credential: JWT signed with alg "HS256"; ` + algs,
		},
		{
			name: "tampered payload",
			token: func(t testing.TB) string {
				tok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
				evil := with(func(c map[string]any) {
					c["sub"] = "system:serviceaccount:kube-system:admin"
					c["kubernetes.io"].(map[string]any)["namespace"] = "kube-system"
					c["kubernetes.io"].(map[string]any)["serviceaccount"] = map[string]any{"name": "admin"}
				})
				return withPart(tok, 1, b64JSON(t, evil))
			},
			err: `credential: JWT signature does not verify with key "rsa1" of issuer "` + k8sIssuer + `"`,
		},
		{
			name:  "tampered signature",
			token: func(t testing.TB) string { return tamperSignature(t, sign(t, ecKey(), jose.ES256, "ec1", claims())) },
			err:   `credential: JWT signature does not verify with key "ec1" of issuer "` + k8sIssuer + `"`,
		},
		{
			name:  "signed by another key under the issuer's kid",
			token: func(t testing.TB) string { return sign(t, attacker(), jose.ES256, "ec1", claims()) },
			err:   `credential: JWT signature does not verify with key "ec1" of issuer "` + k8sIssuer + `"`,
		},
		{
			name:  "embedded jwk header is not trusted",
			token: func(t testing.TB) string { return embeddedJWK(t, claims()) },
			err:   `credential: JWT signature does not verify with key "ec1" of issuer "` + k8sIssuer + `"`,
		},
		{
			name:  "alg other than the key's declared alg",
			token: func(t testing.TB) string { return sign(t, rsaKey(), jose.PS256, "rsa1", claims()) },
			err:   `credential: JWT alg "PS256" does not match key "rsa1" of issuer "` + k8sIssuer + `", which is for "RS256"`,
		},
		{
			name:  "alg the key cannot verify",
			jwks:  noAlg,
			token: func(t testing.TB) string { return sign(t, ecKey(), jose.ES256, "rsa1", claims()) },
			err:   `credential: JWT alg "ES256" cannot be verified with key "rsa1" of issuer "` + k8sIssuer + `" (RSA-2048)`,
		},
		{
			name: "kubernetes.io claim and sub disagree",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["sub"] = "system:serviceaccount:kube-system:reviews" }))
			},
			err: `credential: JWT sub "system:serviceaccount:kube-system:reviews" disagrees with its kubernetes.io claim (namespace "default", service account "reviews")`,
		},
		{
			name: "kubernetes.io claim and a sub that is no service account",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["sub"] = "alice" }))
			},
			err: `credential: JWT sub "alice" disagrees with its kubernetes.io claim (namespace "default", service account "reviews")`,
		},
		{
			name: "no service account at all",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					delete(c, "kubernetes.io")
					c["sub"] = "alice"
				}))
			},
			err: `credential: JWT names no Kubernetes service account: no kubernetes.io claim and sub "alice" is not system:serviceaccount:<namespace>:<name>`,
		},
		{
			name: "kubernetes.io claim without a service account",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					delete(c, "sub")
					delete(c["kubernetes.io"].(map[string]any), "serviceaccount")
				}))
			},
			err: "credential: JWT kubernetes.io claim names no service account",
		},
		{
			name: "invalid namespace",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					c["sub"] = "system:serviceaccount:Default:reviews"
					c["kubernetes.io"].(map[string]any)["namespace"] = "Default"
				}))
			},
			err: `credential: JWT namespace "Default" is not a valid Kubernetes namespace (a DNS-1123 label)`,
		},
		{
			name: "legacy sub with a path in the namespace",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					delete(c, "kubernetes.io")
					c["sub"] = "system:serviceaccount:../x:reviews"
				}))
			},
			err: `credential: JWT namespace "../x" is not a valid Kubernetes namespace (a DNS-1123 label)`,
		},
		{
			name: "legacy sub with a colon in the service account",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) {
					delete(c, "kubernetes.io")
					c["sub"] = "system:serviceaccount:default:a:b"
				}))
			},
			err: `credential: JWT service account "a:b" is not a valid Kubernetes name (a DNS-1123 subdomain)`,
		},
		{
			name:  "oversized token",
			token: func(testing.TB) string { return strings.Repeat("a", 16<<10+1) },
			err:   "credential: JWT is 16385 bytes; the limit is 16384",
		},
		{
			name:  "empty token",
			token: func(testing.TB) string { return "" },
			err:   "credential: no JWT presented",
		},
		{
			name:  "not a JWS",
			token: func(testing.TB) string { return "Bearer abc.def" },
			err:   "credential: JWT is malformed: not a JWS in compact form with a valid header",
		},
		{
			name: "claims are not an object",
			token: func(t testing.TB) string {
				return withPart(sign(t, rsaKey(), jose.RS256, "rsa1", claims()), 1, b64([]byte(`["a"]`)))
			},
			err: "credential: JWT claims are malformed: not a JSON object with valid registered claims",
		},
		{
			name: "exp is not a number",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["exp"] = "tomorrow" }))
			},
			err: "credential: JWT claims are malformed: not a JSON object with valid registered claims",
		},
		{
			// Well signed, but the claim a service account comes from is
			// not an object: said as malformed claims, not as a signature
			// that does not verify.
			name: "kubernetes.io is not an object",
			token: func(t testing.TB) string {
				return sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["kubernetes.io"] = "default/bench" }))
			},
			err: "credential: JWT claims are malformed: not a JSON object with valid registered claims",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jwks := standardJWKS(t)
			if tt.jwks != nil {
				jwks = tt.jwks(t)
			}
			v := newFileVerifier(t, jwks, newClock())
			token := tt.token(t)
			got, err := v.Verify(context.Background(), token)
			if tt.err != "" {
				ce := credError(t, err, credential.KindKubernetesJWT, tt.err)
				if ce.Unavailable {
					t.Error("refusal marked Unavailable")
				}
				if token != "" && strings.Contains(err.Error(), token) {
					t.Error("error contains the token")
				}
				if got != (credential.Identity{}) {
					t.Errorf("identity %+v returned with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.ID != tt.id || got.Kind != credential.KindKubernetesJWT || got.Caller != tt.caller {
				t.Errorf("identity %+v; want ID %s, kind %s, caller %q", got, tt.id, credential.KindKubernetesJWT, tt.caller)
			}
			want := tt.expires
			if want.IsZero() {
				want = t0.Add(time.Hour)
			}
			if !got.Expires.Equal(want) {
				t.Errorf("Expires %s; want %s", got.Expires, want)
			}
		})
	}
}

// TestJWTLeeway checks a configured leeway replaces the default.
func TestJWTLeeway(t *testing.T) {
	path := tempPath(t, "jwks.json")
	writeJWKS(t, path, standardJWKS(t), t0)
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSFile: path, Audiences: []string{"a", audience}}},
		Clock:       newClock().Now,
		Leeway:      time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["exp"] = t0.Add(-2 * time.Second).Unix() }))
	_, err = v.Verify(context.Background(), tok)
	credError(t, err, credential.KindKubernetesJWT, "credential: JWT expired at 2030-03-04T05:06:05Z")

	tok = sign(t, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { c["aud"] = []string{"b", "c"} }))
	_, err = v.Verify(context.Background(), tok)
	credError(t, err, credential.KindKubernetesJWT, `credential: JWT audience ["b", "c"] does not include any of ["a", "istio-ca"]`)
}

// TestJWTMaxTokenBytes checks a configured bound replaces the default.
func TestJWTMaxTokenBytes(t *testing.T) {
	path := tempPath(t, "jwks.json")
	writeJWKS(t, path, standardJWKS(t), t0)
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain:   east,
		Issuers:       []credential.Issuer{{Issuer: k8sIssuer, JWKSFile: path, Audiences: []string{audience}}},
		Clock:         newClock().Now,
		MaxTokenBytes: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, ecKey(), jose.ES256, "ec1", claims())
	_, err = v.Verify(context.Background(), tok)
	credError(t, err, credential.KindKubernetesJWT, "credential: JWT is "+strconv.Itoa(len(tok))+" bytes; the limit is 100")
}
