package credential_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/meshfed/meshfed/internal/credential"
)

// FuzzJWTVerify feeds arbitrary strings to JWTVerifier.Verify, configured
// with a JWKS file holding an RSA, a P-256 and an Ed25519 key. It must not
// panic; a success must grant an ID of the trust domain of the form
// /ns/<ns>/sa/<sa>; every failure must be a *credential.Error with the
// package prefix that does not repeat the token. Seeds: tokens signed in
// code (which verify), and in testdata/fuzz/FuzzJWTVerify/ hand-made attacks
// (alg none, HMAC, embedded jwk, crit, b64, JSON serialization, huge dates,
// nested claims).
func FuzzJWTVerify(f *testing.F) {
	v := newFileVerifier(f, standardJWKS(f), newClock())
	f.Add(sign(f, rsaKey(), jose.RS256, "rsa1", claims()))
	f.Add(sign(f, ecKey(), jose.ES256, "ec1", claims()))
	f.Add(sign(f, edKey(), jose.EdDSA, "ed1", claims()))
	f.Add(sign(f, rsaKey(), jose.RS256, "rsa1", with(func(c map[string]any) { delete(c, "kubernetes.io") })))
	f.Add(sign(f, rsaKey(), jose.RS256, "", claims()))
	f.Add(algNone(f, claims()))
	f.Add(hmacWithPublicKey(f, claims()))
	f.Add(embeddedJWK(f, claims()))
	f.Add(tamperSignature(f, sign(f, ecKey(), jose.ES256, "ec1", claims())))
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err != nil {
			ce, ok := errors.AsType[*credential.Error](err)
			if !ok {
				t.Fatalf("error %q is a %T, not a *credential.Error", err, err)
			}
			if !strings.HasPrefix(err.Error(), "credential: ") || ce.Kind != credential.KindKubernetesJWT || ce.Unavailable {
				t.Fatalf("error %q: kind %q, Unavailable %v", err, ce.Kind, ce.Unavailable)
			}
			// A message quotes at most 64 bytes of any one claim, and the
			// claims are decoded from inside the token, so a long token
			// can never appear in one.
			if len(token) >= 100 && strings.Contains(err.Error(), token) {
				t.Fatalf("error repeats the token: %s", err)
			}
			return
		}
		if !id.ID.MemberOf(east) || id.Kind != credential.KindKubernetesJWT || id.Expires.IsZero() {
			t.Fatalf("identity %+v", id)
		}
		segs := strings.Split(id.ID.Path(), "/")
		if len(segs) != 5 || segs[0] != "" || segs[1] != "ns" || segs[3] != "sa" || segs[2] == "" || segs[4] == "" {
			t.Fatalf("identity %s is not spiffe://east.example/ns/<ns>/sa/<sa>", id.ID)
		}
	})
}

// FuzzParseJWKS feeds arbitrary bytes to the JWKS parser used for files and
// URLs. It must not panic, must refuse anything over MaxJWKSBytes, and
// must keep at least one key when it accepts a set. Seeds in
// testdata/fuzz/FuzzParseJWKS/: a Kubernetes JWKS, a SPIFFE bundle, and
// sets with oct, private, small-RSA, off-curve and duplicate keys.
func FuzzParseJWKS(f *testing.F) {
	f.Add(standardJWKS(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := credential.ParseJWKS(data)
		if err != nil {
			return
		}
		if len(data) > credential.MaxJWKSBytes {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if n < 1 {
			t.Fatalf("accepted a set with %d keys", n)
		}
	})
}
