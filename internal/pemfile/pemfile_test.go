package pemfile_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// fixtures are real keys, certificates and a CSR made once per test binary.
type fixtures struct {
	ecKey  *ecdsa.PrivateKey
	rsaKey *rsa.PrivateKey
	edKey  ed25519.PrivateKey
	root   *x509.Certificate // self-signed CA
	leaf   *x509.Certificate // signed by root
	csr    *x509.CertificateRequest
}

var fx = sync.OnceValue(func() fixtures {
	var f fixtures
	var err error
	if f.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if f.rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if _, f.edKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             now,
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, f.ecKey.Public(), f.ecKey)
	if err != nil {
		panic(err)
	}
	if f.root, err = x509.ParseCertificate(der); err != nil {
		panic(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		URIs:         []*url.URL{{Scheme: "spiffe", Host: "east.example", Path: "/w"}},
		NotBefore:    now,
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err = x509.CreateCertificate(rand.Reader, leafTmpl, f.root, f.rsaKey.Public(), f.ecKey)
	if err != nil {
		panic(err)
	}
	if f.leaf, err = x509.ParseCertificate(der); err != nil {
		panic(err)
	}
	der, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "workload"},
	}, f.ecKey)
	if err != nil {
		panic(err)
	}
	if f.csr, err = x509.ParseCertificateRequest(der); err != nil {
		panic(err)
	}
	return f
})

func pemBlock(typ string, der []byte, headers ...string) []byte {
	b := &pem.Block{Type: typ, Bytes: der, Headers: map[string]string{}}
	for i := 0; i+1 < len(headers); i += 2 {
		b.Headers[headers[i]] = headers[i+1]
	}
	return pem.EncodeToMemory(b)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// badBlock is a block whose body is not base64; encoding/pem treats it as
// text, and pemfile must not.
func badBlock(typ string) []byte {
	return []byte("-----BEGIN " + typ + "-----\n!!! not base64 !!!\n-----END " + typ + "-----\n")
}

func pkcs8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sec1(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// wantErr fails unless err is nil when want is "", or contains want.
func wantErr(t testing.TB, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error; want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

func TestParseCertificates(t *testing.T) {
	f := fx()
	root := pemBlock("CERTIFICATE", f.root.Raw)
	leaf := pemBlock("CERTIFICATE", f.leaf.Raw)
	crlf := bytes.ReplaceAll(leaf, []byte("\n"), []byte("\r\n"))
	tests := []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr string
	}{
		{"one certificate", root, []*x509.Certificate{f.root}, ""},
		{"chain, leaf first", cat(leaf, root), []*x509.Certificate{f.leaf, f.root}, ""},
		{"text around blocks, as openssl x509 -text writes", cat([]byte("Certificate:\n    Data:\n        Version: 3\n"), leaf, []byte("# root follows\n"), root, []byte("trailer\n")), []*x509.Certificate{f.leaf, f.root}, ""},
		{"CRLF line endings", crlf, []*x509.Certificate{f.leaf}, ""},
		{"empty", nil, nil, "pemfile: no PEM CERTIFICATE block found"},
		{"text only", []byte("hello\n"), nil, "pemfile: no PEM CERTIFICATE block found"},
		{"bad base64", badBlock("CERTIFICATE"), nil, "pemfile: certificates: malformed PEM block after 0 good block(s)"},
		{"bad block before a good one", cat(badBlock("CERTIFICATE"), leaf), nil, "pemfile: certificates: malformed PEM block after 0 good block(s)"},
		{"bad block after a good one", cat(leaf, badBlock("CERTIFICATE")), nil, "pemfile: certificates: malformed PEM block after 1 good block(s)"},
		{"bad block between good ones", cat(leaf, badBlock("CERTIFICATE"), root), nil, "pemfile: certificates: malformed PEM block after 1 good block(s)"},
		{"BEGIN without END", cat(leaf, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n")), nil, "malformed PEM block after 1 good block(s)"},
		{"END of another type", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END PRIVATE KEY-----\n"), nil, "malformed PEM block after 0 good block(s)"},
		{"key block", pemBlock("PRIVATE KEY", pkcs8(t, f.ecKey)), nil, `pemfile: block 1 is "PRIVATE KEY", want "CERTIFICATE"`},
		{"CSR after a certificate", cat(leaf, pemBlock("CERTIFICATE REQUEST", f.csr.Raw)), nil, `pemfile: block 2 is "CERTIFICATE REQUEST", want "CERTIFICATE"`},
		{"not DER", pemBlock("CERTIFICATE", []byte("not a certificate")), nil, "pemfile: certificate 1: x509: malformed certificate"},
		{"second not DER", cat(leaf, pemBlock("CERTIFICATE", []byte{0x30, 0x00})), nil, "pemfile: certificate 2: x509:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pemfile.ParseCertificates(tt.data)
			wantErr(t, err, tt.wantErr)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d certificates, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("certificate %d is %s, want %s", i+1, got[i].Subject, tt.want[i].Subject)
				}
			}
		})
	}
}

// TestParseBounds proves each documented size bound: input of exactly the
// bound parses, one byte more is refused with ErrTooLarge before parsing.
func TestParseBounds(t *testing.T) {
	f := fx()
	tests := []struct {
		name  string
		limit int
		valid []byte
		parse func([]byte) error
	}{
		{"certificates", pemfile.MaxChainBytes, pemBlock("CERTIFICATE", f.root.Raw), func(b []byte) error {
			_, err := pemfile.ParseCertificates(b)
			return err
		}},
		{"private key", pemfile.MaxKeyBytes, pemBlock("PRIVATE KEY", pkcs8(t, f.ecKey)), func(b []byte) error {
			_, err := pemfile.ParsePrivateKey(b)
			return err
		}},
		{"CSR", pemfile.MaxCSRBytes, pemBlock("CERTIFICATE REQUEST", f.csr.Raw), func(b []byte) error {
			_, err := pemfile.ParseCSR(b)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			atLimit := cat(tt.valid, bytes.Repeat([]byte("#"), tt.limit-len(tt.valid)))
			if err := tt.parse(atLimit); err != nil {
				t.Fatalf("%d bytes (the limit): %v", len(atLimit), err)
			}
			err := tt.parse(append(atLimit, '#'))
			if !errors.Is(err, pemfile.ErrTooLarge) {
				t.Fatalf("%d bytes: got %v, want ErrTooLarge", len(atLimit)+1, err)
			}
			wantErr(t, err, fmt.Sprintf("input exceeds size limit of %d bytes", tt.limit))
		})
	}
}

func TestParseCertificatesCountBound(t *testing.T) {
	one := pemBlock("CERTIFICATE", fx().root.Raw)
	certs, err := pemfile.ParseCertificates(bytes.Repeat(one, pemfile.MaxCertificates))
	if err != nil || len(certs) != pemfile.MaxCertificates {
		t.Fatalf("%d certificates: got %d, %v", pemfile.MaxCertificates, len(certs), err)
	}
	_, err = pemfile.ParseCertificates(bytes.Repeat(one, pemfile.MaxCertificates+1))
	if !errors.Is(err, pemfile.ErrTooLarge) {
		t.Fatalf("%d certificates: got %v, want ErrTooLarge", pemfile.MaxCertificates+1, err)
	}
	wantErr(t, err, "pemfile: certificates: input exceeds size limit of 256 certificates")
}

func TestParsePrivateKey(t *testing.T) {
	f := fx()
	ecPEM := pemBlock("PRIVATE KEY", pkcs8(t, f.ecKey))
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		want    crypto.PublicKey
		wantErr string
	}{
		{"PKCS#8 ECDSA", ecPEM, f.ecKey.Public(), ""},
		{"PKCS#8 RSA", pemBlock("PRIVATE KEY", pkcs8(t, f.rsaKey)), f.rsaKey.Public(), ""},
		{"PKCS#8 Ed25519", pemBlock("PRIVATE KEY", pkcs8(t, f.edKey)), f.edKey.Public(), ""},
		{"SEC 1", pemBlock("EC PRIVATE KEY", sec1(t, f.ecKey)), f.ecKey.Public(), ""},
		{"SEC 1 after EC PARAMETERS, as openssl ecparam -genkey writes", cat(pemBlock("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}), pemBlock("EC PRIVATE KEY", sec1(t, f.ecKey))), f.ecKey.Public(), ""},
		{"PKCS#1", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(f.rsaKey)), f.rsaKey.Public(), ""},
		{"text around the key", cat([]byte("key for test\n"), ecPEM, []byte("end\n")), f.ecKey.Public(), ""},
		{"PKCS#8 encrypted", pemBlock("ENCRYPTED PRIVATE KEY", []byte{0x30, 0x00}), nil, "pemfile: encrypted private keys are not supported; decrypt it first"},
		{"legacy OpenSSL encryption", pemBlock("RSA PRIVATE KEY", []byte{0x30, 0x00}, "Proc-Type", "4,ENCRYPTED", "DEK-Info", "AES-128-CBC,00112233445566778899AABBCCDDEEFF"), nil, "pemfile: encrypted private keys are not supported; decrypt it first"},
		{"two keys", cat(ecPEM, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(f.rsaKey))), nil, "pemfile: found 2 private keys, want exactly one"},
		{"certificate", pemBlock("CERTIFICATE", f.root.Raw), nil, `pemfile: private key file holds a "CERTIFICATE" block`},
		{"key and certificate", cat(ecPEM, pemBlock("CERTIFICATE", f.root.Raw)), nil, `pemfile: private key file holds a "CERTIFICATE" block`},
		{"no block", []byte("nothing here\n"), nil, "pemfile: no PEM private key block found"},
		{"bad base64", badBlock("PRIVATE KEY"), nil, "pemfile: private key: malformed PEM block after 0 good block(s)"},
		{"bad block before a good key", cat(badBlock("PRIVATE KEY"), ecPEM), nil, "pemfile: private key: malformed PEM block after 0 good block(s)"},
		{"X25519 is not a signing key", pemBlock("PRIVATE KEY", pkcs8(t, x25519)), nil, "pemfile: unsupported private key type *ecdh.PrivateKey"},
		{"SEC 1 under the PKCS#1 type", pemBlock("RSA PRIVATE KEY", sec1(t, f.ecKey)), nil, "pemfile: RSA PRIVATE KEY block does not parse: x509: failed to parse private key (use ParseECPrivateKey instead"},
		{"PKCS#1 under the SEC 1 type", pemBlock("EC PRIVATE KEY", x509.MarshalPKCS1PrivateKey(f.rsaKey)), nil, "pemfile: EC PRIVATE KEY block does not parse: x509: failed to parse private key (use ParsePKCS1PrivateKey instead"},
		{"PKCS#8 garbage", pemBlock("PRIVATE KEY", []byte("garbage")), nil, "pemfile: PRIVATE KEY block does not parse: asn1: structure error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := pemfile.ParsePrivateKey(tt.data)
			wantErr(t, err, tt.wantErr)
			if err != nil {
				// The error may describe the structure, never the key.
				if b, _ := pem.Decode(tt.data); b != nil && len(b.Bytes) >= 16 {
					for _, secret := range []string{hex.EncodeToString(b.Bytes[len(b.Bytes)-16:]), base64.StdEncoding.EncodeToString(b.Bytes[len(b.Bytes)-12:])} {
						if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(secret)) {
							t.Fatalf("error %q contains key bytes", err)
						}
					}
				}
				return
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.want) {
				t.Fatalf("parsed a key whose public half is not the one encoded")
			}
		})
	}
}

func TestParseCSR(t *testing.T) {
	f := fx()
	csr := pemBlock("CERTIFICATE REQUEST", f.csr.Raw)
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"CSR", csr, ""},
		{"legacy NEW CERTIFICATE REQUEST header", pemBlock("NEW CERTIFICATE REQUEST", f.csr.Raw), ""},
		{"text around the CSR", cat([]byte("Certificate Request:\n"), csr, []byte("\n")), ""},
		{"two CSRs", cat(csr, csr), `pemfile: found 2 PEM blocks, want exactly one "CERTIFICATE REQUEST"`},
		{"no block", []byte("nothing\n"), `pemfile: found 0 PEM blocks, want exactly one "CERTIFICATE REQUEST"`},
		{"certificate", pemBlock("CERTIFICATE", f.root.Raw), `pemfile: block is "CERTIFICATE", want "CERTIFICATE REQUEST"`},
		{"bad base64", badBlock("CERTIFICATE REQUEST"), "pemfile: CSR: malformed PEM block after 0 good block(s)"},
		{"bad block before a good CSR", cat(badBlock("CERTIFICATE REQUEST"), csr), "pemfile: CSR: malformed PEM block after 0 good block(s)"},
		{"not DER", pemBlock("CERTIFICATE REQUEST", []byte("garbage")), "pemfile: CSR: asn1: structure error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pemfile.ParseCSR(tt.data)
			wantErr(t, err, tt.wantErr)
			if err == nil && !bytes.Equal(got.Raw, f.csr.Raw) {
				t.Fatal("parsed CSR differs from the one encoded")
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	f := fx()
	certs, err := pemfile.ParseCertificates(pemfile.EncodeCertificates(f.leaf, f.root))
	if err != nil || len(certs) != 2 || !certs[0].Equal(f.leaf) || !certs[1].Equal(f.root) {
		t.Fatalf("certificates: got %d, %v", len(certs), err)
	}
	csr, err := pemfile.ParseCSR(pemfile.EncodeCSR(f.csr.Raw))
	if err != nil || !bytes.Equal(csr.Raw, f.csr.Raw) {
		t.Fatalf("CSR: %v", err)
	}
	for _, key := range []crypto.Signer{f.ecKey, f.rsaKey, f.edKey} {
		t.Run(fmt.Sprintf("%T", key), func(t *testing.T) {
			data, err := pemfile.EncodePrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----\n")) {
				t.Fatalf("not a PKCS#8 PEM block:\n%s", data)
			}
			got, err := pemfile.ParsePrivateKey(data)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Fatal("round trip changed the key")
			}
		})
	}
}

func TestReadFiles(t *testing.T) {
	f := fx()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	chain := write("chain.pem", pemfile.EncodeCertificates(f.leaf, f.root))
	keyPEM, _ := pemfile.EncodePrivateKey(f.ecKey)
	key := write("key.pem", keyPEM)
	csr := write("csr.pem", pemfile.EncodeCSR(f.csr.Raw))
	big := write("big.pem", bytes.Repeat([]byte("#"), pemfile.MaxChainBytes+1))
	bad := write("bad.pem", []byte("nothing"))
	missing := filepath.Join(dir, "missing.pem")

	if certs, err := pemfile.ReadCertificates(chain); err != nil || len(certs) != 2 {
		t.Errorf("ReadCertificates: %d, %v", len(certs), err)
	}
	if k, err := pemfile.ReadPrivateKey(key); err != nil || !f.ecKey.PublicKey.Equal(k.Public()) {
		t.Errorf("ReadPrivateKey: %v", err)
	}
	if c, err := pemfile.ReadCSR(csr); err != nil || !bytes.Equal(c.Raw, f.csr.Raw) {
		t.Errorf("ReadCSR: %v", err)
	}

	errTests := []struct {
		name   string
		read   func(string) error
		path   string
		want   string
		wantIs error
	}{
		{"certificates too large", func(p string) error { _, err := pemfile.ReadCertificates(p); return err }, big, big + ": input exceeds size limit of 1048576 bytes", pemfile.ErrTooLarge},
		{"key too large", func(p string) error { _, err := pemfile.ReadPrivateKey(p); return err }, big, big + ": input exceeds size limit of 65536 bytes", pemfile.ErrTooLarge},
		{"CSR too large", func(p string) error { _, err := pemfile.ReadCSR(p); return err }, big, big + ": input exceeds size limit of 65536 bytes", pemfile.ErrTooLarge},
		{"certificates missing", func(p string) error { _, err := pemfile.ReadCertificates(p); return err }, missing, "missing.pem", fs.ErrNotExist},
		{"key missing", func(p string) error { _, err := pemfile.ReadPrivateKey(p); return err }, missing, "missing.pem", fs.ErrNotExist},
		{"CSR missing", func(p string) error { _, err := pemfile.ReadCSR(p); return err }, missing, "missing.pem", fs.ErrNotExist},
		{"certificates bad content names the file", func(p string) error { _, err := pemfile.ReadCertificates(p); return err }, bad, bad + ": pemfile: no PEM CERTIFICATE block found", nil},
		{"key bad content names the file", func(p string) error { _, err := pemfile.ReadPrivateKey(p); return err }, bad, bad + ": pemfile: no PEM private key block found", nil},
		{"CSR bad content names the file", func(p string) error { _, err := pemfile.ReadCSR(p); return err }, bad, bad + ": pemfile: found 0 PEM blocks", nil},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.read(tt.path)
			wantErr(t, err, tt.want)
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("error %v is not %v", err, tt.wantIs)
			}
		})
	}
}

func TestReadAll(t *testing.T) {
	data, err := pemfile.ReadAll(strings.NewReader("12345"), 5)
	if err != nil || string(data) != "12345" {
		t.Fatalf("at the limit: %q, %v", data, err)
	}
	_, err = pemfile.ReadAll(strings.NewReader("123456"), 5)
	if !errors.Is(err, pemfile.ErrTooLarge) {
		t.Fatalf("over the limit: %v, want ErrTooLarge", err)
	}
	wantErr(t, err, "pemfile: input exceeds size limit of 5 bytes")
}
