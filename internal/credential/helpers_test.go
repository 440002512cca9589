package credential_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/credential"
)

// t0 is "now" in every test; tokens and certificates are made around it and
// checked at times derived from it, never at the wall clock's.
var t0 = time.Date(2030, time.March, 4, 5, 6, 7, 0, time.UTC)

var (
	east = spiffeid.RequireTrustDomainFromString("east.example")
	west = spiffeid.RequireTrustDomainFromString("west.example")
)

const (
	k8sIssuer = "https://kubernetes.default.svc.cluster.local"
	audience  = "istio-ca"
)

// clock is a settable clock, safe for concurrent use.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Keys are generated once per test binary.
var (
	rsaKey   = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	rsaKey2  = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	ecKey    = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	ecKey2   = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	edKey    = sync.OnceValue(func() ed25519.PrivateKey { _, k := must2(ed25519.GenerateKey(rand.Reader)); return k })
	attacker = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, b
}

// pubJWK is the public JWK of a private key.
func pubJWK(key crypto.Signer, kid, alg string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: key.Public(), KeyID: kid, Algorithm: alg, Use: "sig"}
}

// jwksJSON is a JWK Set of keys.
func jwksJSON(t testing.TB, keys ...jose.JSONWebKey) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// standardJWKS holds the RSA key "rsa1", the P-256 key "ec1" and the Ed25519
// key "ed1" of the test issuer.
func standardJWKS(t testing.TB) []byte {
	return jwksJSON(t, pubJWK(rsaKey(), "rsa1", "RS256"), pubJWK(ecKey(), "ec1", "ES256"), pubJWK(edKey(), "ed1", "EdDSA"))
}

// writeJWKS writes a JWKS file and gives it modification time mod (file
// systems with a coarse clock would otherwise hide a rewrite).
func writeJWKS(t testing.TB, path string, data []byte, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

// claims are a valid projected service-account token's claims for
// default/reviews; tests change what they test.
func claims() map[string]any {
	return map[string]any{
		"iss": k8sIssuer,
		"sub": "system:serviceaccount:default:reviews",
		"aud": []string{audience},
		"exp": t0.Add(time.Hour).Unix(),
		"iat": t0.Add(-time.Minute).Unix(),
		"nbf": t0.Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "default",
			"serviceaccount": map[string]any{"name": "reviews", "uid": "8b7e6c2a-0000-4000-8000-000000000001"},
			"pod":            map[string]any{"name": "reviews-v1-abc", "uid": "8b7e6c2a-0000-4000-8000-000000000002"},
		},
	}
}

// sign signs claims with key and alg, naming kid in the header ("" for no
// kid).
func sign(t testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm, kid string, c map[string]any) string {
	t.Helper()
	return testjwt.Sign(t, alg, key, kid, "JWT", c)
}

// b64 is unpadded base64url.
func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// b64JSON is the unpadded base64url of v in JSON.
func b64JSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64(b)
}

// algNone is a hand-built unsigned token ("alg": "none").
func algNone(t testing.TB, c map[string]any) string {
	return b64JSON(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64JSON(t, c) + "."
}

// hmacWithPublicKey is the classic key-confusion token: HS256 keyed with the
// PEM of the issuer's RSA public key, which a verifier that lets the token
// choose the algorithm would use as the HMAC secret.
func hmacWithPublicKey(t testing.TB, c map[string]any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&rsaKey().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	input := b64JSON(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": "rsa1"}) + "." + b64JSON(t, c)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + b64(mac.Sum(nil))
}

// withPart replaces part i (0 header, 1 payload, 2 signature) of a compact
// JWS.
func withPart(tok string, i int, part string) string {
	parts := strings.Split(tok, ".")
	parts[i] = part
	return strings.Join(parts, ".")
}

// tamperSignature flips one bit in the middle of the signature.
func tamperSignature(t testing.TB, tok string) string {
	t.Helper()
	sig, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[2])
	if err != nil {
		t.Fatal(err)
	}
	sig[len(sig)/2] ^= 0x01
	return withPart(tok, 2, b64(sig))
}

// credError asserts that err is a *credential.Error of kind with message
// want, and returns it.
func credError(t testing.TB, err error, kind credential.Kind, want string) *credential.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %q", want)
	}
	ce, ok := errors.AsType[*credential.Error](err)
	if !ok {
		t.Fatalf("error %q is a %T, not a *credential.Error", err, err)
	}
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	if ce.Kind != kind {
		t.Errorf("error kind %q; want %q", ce.Kind, kind)
	}
	return ce
}

// tempPath is a path in a test's temporary directory.
func tempPath(t testing.TB, name string) string { return filepath.Join(t.TempDir(), name) }
