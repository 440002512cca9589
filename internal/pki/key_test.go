package pki_test

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
)

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		kt   pki.KeyType
		want string
	}{
		{pki.ECP256, "ECDSA P-256"},
		{pki.ECP384, "ECDSA P-384"},
		{pki.RSA2048, "RSA 2048"},
		{pki.RSA3072, "RSA 3072"},
		{pki.RSA4096, "RSA 4096"},
	}
	if got := pki.KeyTypes(); len(got) != len(tests) || got[0] != pki.DefaultKeyType {
		t.Fatalf("KeyTypes() = %v; want %d types, %s first", got, len(tests), pki.DefaultKeyType)
	}
	for i, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			if pki.KeyTypes()[i] != tt.kt {
				t.Errorf("KeyTypes()[%d] = %s, want %s", i, pki.KeyTypes()[i], tt.kt)
			}
			k := key(t, tt.kt, 0)
			if got := pki.DescribeKey(k.Public()); got != tt.want {
				t.Errorf("DescribeKey = %q, want %q", got, tt.want)
			}
			if err := pki.CheckPublicKey(k.Public()); err != nil {
				t.Errorf("CheckPublicKey refuses a key meshfed generates: %v", err)
			}
		})
	}
	t.Run("default", func(t *testing.T) {
		k, err := pki.GenerateKey("")
		if err != nil || pki.DescribeKey(k.Public()) != "ECDSA P-256" {
			t.Fatalf("GenerateKey(\"\") = %s, %v; want ECDSA P-256", pki.DescribeKey(k.Public()), err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		_, err := pki.GenerateKey("dsa-1024")
		wantErr(t, err, `pki: unknown key type "dsa-1024"; use one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096`)
	})
}

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    pki.KeyType
		wantErr string
	}{
		{"ec-p256", pki.ECP256, ""},
		{" P256 ", pki.ECP256, ""},
		{"ec", pki.ECP256, ""},
		{"P-384", pki.ECP384, ""},
		{"rsa", pki.RSA2048, ""},
		{"RSA3072", pki.RSA3072, ""},
		{"rsa-4096", pki.RSA4096, ""},
		{"ed25519", "", `pki: unknown key type "ed25519"; use one of ec-p256,`},
		{"", "", `pki: unknown key type ""`},
	}
	for _, tt := range tests {
		got, err := pki.ParseKeyType(tt.in)
		if got != tt.want {
			t.Errorf("ParseKeyType(%q) = %q, want %q", tt.in, got, tt.want)
		}
		wantErr(t, err, tt.wantErr)
	}
}

func TestRSAKeyType(t *testing.T) {
	for bits, want := range map[int]pki.KeyType{2048: pki.RSA2048, 3072: pki.RSA3072, 4096: pki.RSA4096} {
		if got, err := pki.RSAKeyType(bits); got != want || err != nil {
			t.Errorf("RSAKeyType(%d) = %q, %v; want %q", bits, got, err, want)
		}
	}
	_, err := pki.RSAKeyType(1024)
	wantErr(t, err, "pki: unsupported RSA key size 1024; use 2048, 3072 or 4096")
}

func TestCheckPublicKey(t *testing.T) {
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Sizes only matter to CheckPublicKey, so moduli are made, not generated.
	modulus := func(bits int) *rsa.PublicKey {
		n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
		return &rsa.PublicKey{N: n.Add(n, big.NewInt(1)), E: 65537}
	}
	tests := []struct {
		name    string
		pub     crypto.PublicKey
		wantErr string
	}{
		{"P-256", key(t, pki.ECP256, 0).Public(), ""},
		{"P-384", key(t, pki.ECP384, 0).Public(), ""},
		{"P-521", p521.Public(), ""},
		{"P-224", p224.Public(), "pki: ECDSA curve P-224 is not accepted; use P-256, P-384 or P-521"},
		{"RSA 2048", key(t, pki.RSA2048, 0).Public(), ""},
		{"RSA 2047 bits", modulus(2047), "pki: RSA key of 2047 bits is not accepted; use 2048 to 8192 bits"},
		{"RSA 1024", modulus(1024), "pki: RSA key of 1024 bits is not accepted; use 2048 to 8192 bits"},
		{"RSA 8192", modulus(8192), ""},
		{"RSA 8193 bits", modulus(8193), "pki: RSA key of 8193 bits is not accepted; use 2048 to 8192 bits"},
		{"Ed25519", edPub, "pki: Ed25519 keys are not accepted: TLS 1.2 peers cannot use them; use ECDSA P-256"},
		{"X25519", x25519.PublicKey(), "pki: public key type *ecdh.PublicKey is not accepted; use ECDSA or RSA"},
		{"nil", nil, "pki: no public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, pki.CheckPublicKey(tt.pub), tt.wantErr)
		})
	}
	if got := pki.DescribeKey(edPub); got != "Ed25519" {
		t.Errorf("DescribeKey(Ed25519) = %q", got)
	}
	if got := pki.DescribeKey(x25519.PublicKey()); got != "*ecdh.PublicKey" {
		t.Errorf("DescribeKey(X25519) = %q", got)
	}
}
