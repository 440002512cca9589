package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
)

// KeyType names a key algorithm and size meshfed generates.
type KeyType string

// Key types. ECP256 is the default everywhere: it is what SPIRE and Envoy
// use, and it signs an order of magnitude faster than RSA.
const (
	ECP256  KeyType = "ec-p256"
	ECP384  KeyType = "ec-p384"
	RSA2048 KeyType = "rsa-2048"
	RSA3072 KeyType = "rsa-3072"
	RSA4096 KeyType = "rsa-4096"
)

// DefaultKeyType is used when no key type is asked for.
const DefaultKeyType = ECP256

// KeyTypes lists every key type meshfed generates, default first.
func KeyTypes() []KeyType { return []KeyType{ECP256, ECP384, RSA2048, RSA3072, RSA4096} }

// ParseKeyType accepts a key type name ("ec-p256", "rsa-4096"; "p256" and
// "rsa4096" are accepted too).
func ParseKeyType(s string) (KeyType, error) {
	norm := strings.ToLower(strings.TrimSpace(s))
	switch norm {
	case "ec-p256", "p256", "p-256", "ecdsa-p256", "ec":
		return ECP256, nil
	case "ec-p384", "p384", "p-384", "ecdsa-p384":
		return ECP384, nil
	case "rsa-2048", "rsa2048", "rsa":
		return RSA2048, nil
	case "rsa-3072", "rsa3072":
		return RSA3072, nil
	case "rsa-4096", "rsa4096":
		return RSA4096, nil
	}
	return "", fmt.Errorf("pki: unknown key type %q; use one of %s", s, keyTypeList())
}

// RSAKeyType returns the RSA key type of the given modulus size in bits
// (VirtualMesh's rsaKeySizeBytes field, despite its name, counts bits).
func RSAKeyType(bits int) (KeyType, error) {
	switch bits {
	case 2048:
		return RSA2048, nil
	case 3072:
		return RSA3072, nil
	case 4096:
		return RSA4096, nil
	}
	return "", fmt.Errorf("pki: unsupported RSA key size %d; use 2048, 3072 or 4096", bits)
}

func keyTypeList() string {
	var names []string
	for _, k := range KeyTypes() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

// GenerateKey makes a new private key of type kt.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("pki: unknown key type %q; use one of %s", kt, keyTypeList())
}

// Bounds on the public keys meshfed will certify.
const (
	minRSABits = 2048
	maxRSABits = 8192 // larger moduli make every verification a denial of service
)

// CheckPublicKey refuses keys meshfed will not certify: RSA below 2048 or
// above 8192 bits, curves other than P-256, P-384 and P-521, and algorithms
// other than ECDSA and RSA. Ed25519 is refused: no TLS 1.2 cipher suite the
// mesh allows can use it, so such a certificate would fail half the
// handshakes it is presented in.
func CheckPublicKey(pub crypto.PublicKey) error {
	if err := checkPublicKey(pub); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// checkPublicKey is CheckPublicKey without the package prefix, for callers
// that add their own ("pki: SVID: ...").
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not accepted; use P-256, P-384 or P-521", k.Curve.Params().Name)
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("RSA key of %d bits is not accepted; use %d to %d bits", bits, minRSABits, maxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		return errors.New("Ed25519 keys are not accepted: TLS 1.2 peers cannot use them; use ECDSA P-256")
	case nil:
		return errors.New("no public key")
	}
	return fmt.Errorf("public key type %T is not accepted; use ECDSA or RSA", pub)
}

// DescribeKey names a public key's algorithm and size, e.g. "ECDSA P-256".
func DescribeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// samePublicKey reports whether two public keys are equal.
func samePublicKey(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
