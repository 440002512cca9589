package jwtkeys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
)

func pkix(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParse(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := []*pb.JWTAuthority{
		{KeyId: "b", PublicKey: pkix(t, &k2.PublicKey)},
		{KeyId: "a", PublicKey: pkix(t, &k1.PublicKey), ExpiresAt: 1900000000},
	}
	keys, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != "a" || !keys[0].ExpiresAt.Equal(time.Unix(1900000000, 0)) || keys[1].ID != "b" || !keys[1].ExpiresAt.IsZero() {
		t.Fatalf("parsed %+v", keys)
	}
	back, err := Parse(ToProto(keys))
	if err != nil || !Equal(keys, back) {
		t.Fatalf("round trip: %v, equal %v", err, Equal(keys, back))
	}
	if none, err := Parse(nil); err != nil || len(none) != 0 {
		t.Errorf("no keys: %v, %v", none, err)
	}

	many := make([]*pb.JWTAuthority, MaxKeys+1)
	for i := range many {
		many[i] = good[0]
	}
	for _, tc := range []struct {
		name string
		list []*pb.JWTAuthority
		want string
	}{
		{"too many", many, "9 JWT authorities; at most 8"},
		{"no key ID", []*pb.JWTAuthority{{PublicKey: good[0].PublicKey}}, "JWT authority key ID of 0 bytes; want 1 to 255"},
		{"long key ID", []*pb.JWTAuthority{{KeyId: strings.Repeat("k", 256), PublicKey: good[0].PublicKey}}, "JWT authority key ID of 256 bytes; want 1 to 255"},
		{"big key", []*pb.JWTAuthority{{KeyId: "a", PublicKey: make([]byte, MaxKeyBytes+1)}}, `JWT authority "a": public key of 2049 bytes; at most 2048`},
		{"garbage key", []*pb.JWTAuthority{{KeyId: "a", PublicKey: []byte{0x30, 0x01, 0x00}}}, `JWT authority "a": public key does not parse: `},
		{"weak key", []*pb.JWTAuthority{{KeyId: "a", PublicKey: pkix(t, &small.PublicKey)}}, `JWT authority "a": pki: RSA key of 1024 bits`},
		{"negative expiry", []*pb.JWTAuthority{{KeyId: "a", PublicKey: good[0].PublicKey, ExpiresAt: -1}}, `JWT authority "a": negative expires_at`},
		{"duplicate", []*pb.JWTAuthority{good[0], {KeyId: "b", PublicKey: good[1].PublicKey}}, `two JWT authorities with key ID "b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.list)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("Parse: %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add("kid", pkix(f, &k.PublicKey), int64(0))
	f.Add("", []byte{0x30}, int64(-5))
	f.Fuzz(func(t *testing.T, id string, der []byte, exp int64) {
		keys, err := Parse([]*pb.JWTAuthority{{KeyId: id, PublicKey: der, ExpiresAt: exp}})
		if err != nil {
			return
		}
		back, err := Parse(ToProto(keys))
		if err != nil || !Equal(keys, back) {
			t.Fatalf("a parsed key does not round-trip: %v", err)
		}
	})
}
