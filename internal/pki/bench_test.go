package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
)

// The issuance benchmarks and their ceiling run in the same binary, so
// scripts/bench can compare them on the same machine in the same run; see
// docs/performance.md.

// benchKeyTypes are the key types issuance is measured for: the default and
// the RSA size Istio uses by default.
var benchKeyTypes = []pki.KeyType{pki.ECP256, pki.RSA2048}

// benchSetup is an intermediate CA of type kt under a root of type kt, and a
// parsed CSR for a workload key of the same type (slot 2, no CA's key).
func benchSetup(b *testing.B, kt pki.KeyType) (*testPKI, *x509.CertificateRequest) {
	b.Helper()
	p := newPKI(b, kt)
	return p, csr(b, key(b, kt, 2), nil)
}

// BenchmarkIssueSVIDFromCSR measures what the server does per request once
// the CSR is parsed: check the CSR's signature and key, sign the SVID, parse
// it back and re-verify it (chain and SVID rules).
func BenchmarkIssueSVIDFromCSR(b *testing.B) {
	for _, kt := range benchKeyTypes {
		b.Run(string(kt), func(b *testing.B) {
			p, req := benchSetup(b, kt)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.ca.SignX509SVIDFromCSR(req, pki.SVIDRequest{ID: workload}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCeiling measures the cryptography issuance cannot avoid, for the
// same keys and the same template:
//
//   - sign, verify: one raw signature and one raw verification over a SHA-256
//     digest (ecdsa.SignASN1/VerifyASN1, rsa.SignPKCS1v15/VerifyPKCS1v15);
//   - create-certificate: a bare x509.CreateCertificate, which signs and
//     then verifies its own signature;
//   - composed: the least an honest issuance does, one verification of the
//     CSR's signature, one bare CreateCertificate, and parsing the result to
//     verify its signature once against the issuer.
//
// Issuance from a CSR is compared with composed.
func BenchmarkCeiling(b *testing.B) {
	for _, kt := range benchKeyTypes {
		b.Run(string(kt), func(b *testing.B) {
			p, req := benchSetup(b, kt)
			digest := sha256.Sum256([]byte("a to-be-signed certificate"))
			tmpl := &x509.Certificate{
				SerialNumber:          new(big.Int).Lsh(big.NewInt(1), 127),
				URIs:                  []*url.URL{workload.URL()},
				NotBefore:             t0.Add(-pki.Backdate),
				NotAfter:              t0.Add(time.Hour),
				KeyUsage:              x509.KeyUsageDigitalSignature,
				ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
			}
			if kt == pki.RSA2048 {
				tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
			}
			sign, verify := rawSignVerify(b, p.intKey)

			b.Run("sign", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					sign(digest[:])
				}
			})
			b.Run("verify", func(b *testing.B) {
				sig := sign(digest[:])
				b.ReportAllocs()
				for b.Loop() {
					verify(digest[:], sig)
				}
			})
			b.Run("create-certificate", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter, req.PublicKey, p.intKey); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("composed", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := req.CheckSignature(); err != nil {
						b.Fatal(err)
					}
					der, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter, req.PublicKey, p.intKey)
					if err != nil {
						b.Fatal(err)
					}
					leaf, err := x509.ParseCertificate(der)
					if err != nil {
						b.Fatal(err)
					}
					if err := leaf.CheckSignatureFrom(p.inter); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// rawSignVerify returns raw signing and verification with k, failing the
// benchmark on any error.
func rawSignVerify(b *testing.B, k crypto.Signer) (sign func([]byte) []byte, verify func(digest, sig []byte)) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		return func(d []byte) []byte {
				sig, err := ecdsa.SignASN1(rand.Reader, k, d)
				if err != nil {
					b.Fatal(err)
				}
				return sig
			}, func(d, sig []byte) {
				if !ecdsa.VerifyASN1(&k.PublicKey, d, sig) {
					b.Fatal("ECDSA verification failed")
				}
			}
	case *rsa.PrivateKey:
		return func(d []byte) []byte {
				sig, err := rsa.SignPKCS1v15(nil, k, crypto.SHA256, d)
				if err != nil {
					b.Fatal(err)
				}
				return sig
			}, func(d, sig []byte) {
				if err := rsa.VerifyPKCS1v15(&k.PublicKey, crypto.SHA256, d, sig); err != nil {
					b.Fatal(err)
				}
			}
	}
	b.Fatalf("no raw signing for %T", k)
	return nil, nil
}
