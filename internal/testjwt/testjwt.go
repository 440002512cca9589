// Package testjwt signs JWTs for tests, as issuers (meshfed's server,
// SPIRE, Kubernetes) sign them with go-jose.
package testjwt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Sign returns claims (a map or a struct such as jwt.Claims) signed with
// key and alg in compact form. The protected header names kid and typ,
// each left out when "".
func Sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid, typ string, claims any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// NewKey returns a new ECDSA P-256 key, as meshfed's server signs JWT-SVIDs
// with, and its public key in PKIX DER, as bundles and reports carry it.
func NewKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}
