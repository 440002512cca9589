package pemfile_test

import (
	"bytes"
	"crypto"
	"errors"
	"testing"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// The fuzz targets below run every parser of untrusted PEM input on
// arbitrary bytes. Beyond "no panic", each checks that input over the
// parser's documented bound is refused with ErrTooLarge, and that whatever
// it accepts is non-empty and survives a round trip through the matching
// encoder. Seeds: the f.Add calls, and real openssl 3.0 output plus
// malformed variants in testdata/fuzz/<target>/: a root, a name-constrained
// intermediate and an SVID (req -x509, x509 -req), keys from genpkey,
// ecparam -genkey, genrsa -traditional, pkcs8 -topk8 -v2 and ec -aes128, and
// CSRs from req -new. The keys are test keys made for these files only.

func FuzzParseCertificates(f *testing.F) {
	fx := fx()
	f.Add(pemfile.EncodeCertificates(fx.leaf, fx.root))
	f.Add(cat([]byte("subject=CN = test root\n"), pemBlock("CERTIFICATE", fx.root.Raw)))
	f.Add(badBlock("CERTIFICATE"))
	f.Add(cat(badBlock("CERTIFICATE"), pemBlock("CERTIFICATE", fx.root.Raw)))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pemfile.ParseCertificates(data)
		if len(data) > pemfile.MaxChainBytes && !errors.Is(err, pemfile.ErrTooLarge) {
			t.Fatalf("%d bytes over the bound: %v", len(data), err)
		}
		if err != nil {
			if certs != nil {
				t.Fatal("certificates returned with an error")
			}
			return
		}
		if len(certs) == 0 || len(certs) > pemfile.MaxCertificates {
			t.Fatalf("accepted %d certificates", len(certs))
		}
		again, err := pemfile.ParseCertificates(pemfile.EncodeCertificates(certs...))
		if err != nil || len(again) != len(certs) {
			t.Fatalf("re-encoded chain of %d: %d, %v", len(certs), len(again), err)
		}
		for i := range certs {
			if !again[i].Equal(certs[i]) {
				t.Fatalf("certificate %d changed in a round trip", i+1)
			}
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	fx := fx()
	f.Add(pemBlock("PRIVATE KEY", pkcs8(f, fx.ecKey)))
	f.Add(pemBlock("EC PRIVATE KEY", sec1(f, fx.ecKey)))
	f.Add(pemBlock("PRIVATE KEY", pkcs8(f, fx.edKey)))
	f.Add(pemBlock("ENCRYPTED PRIVATE KEY", []byte{0x30, 0x00}))
	f.Add(badBlock("PRIVATE KEY"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := pemfile.ParsePrivateKey(data)
		if len(data) > pemfile.MaxKeyBytes && !errors.Is(err, pemfile.ErrTooLarge) {
			t.Fatalf("%d bytes over the bound: %v", len(data), err)
		}
		if err != nil {
			if key != nil {
				t.Fatal("key returned with an error")
			}
			return
		}
		pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
		if !ok {
			t.Fatalf("accepted a %T whose public key cannot be compared", key)
		}
		encoded, err := pemfile.EncodePrivateKey(key)
		if err != nil {
			t.Fatalf("accepted a key it cannot encode: %v", err)
		}
		again, err := pemfile.ParsePrivateKey(encoded)
		if err != nil || !pub.Equal(again.Public()) {
			t.Fatalf("key changed in a round trip: %v", err)
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	fx := fx()
	f.Add(pemBlock("CERTIFICATE REQUEST", fx.csr.Raw))
	f.Add(pemBlock("NEW CERTIFICATE REQUEST", fx.csr.Raw))
	f.Add(badBlock("CERTIFICATE REQUEST"))
	f.Add(pemBlock("CERTIFICATE REQUEST", []byte{0x30, 0x03, 0x02, 0x01, 0x00}))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := pemfile.ParseCSR(data)
		if len(data) > pemfile.MaxCSRBytes && !errors.Is(err, pemfile.ErrTooLarge) {
			t.Fatalf("%d bytes over the bound: %v", len(data), err)
		}
		if err != nil {
			if csr != nil {
				t.Fatal("CSR returned with an error")
			}
			return
		}
		if len(csr.Raw) == 0 {
			t.Fatal("accepted an empty CSR")
		}
		again, err := pemfile.ParseCSR(pemfile.EncodeCSR(csr.Raw))
		if err != nil || !bytes.Equal(again.Raw, csr.Raw) {
			t.Fatalf("CSR changed in a round trip: %v", err)
		}
	})
}
