// Package pemfile reads and writes the PEM files meshfed exchanges with
// operators and other tools: certificate chains, private keys and CSRs.
//
// Every reader is bounded: a file or buffer larger than its documented limit
// is refused before it is parsed, and a PEM block that is present but does not
// decode is an error rather than silently skipped (encoding/pem treats a block
// with bad base64 as surrounding text). Every writer is atomic: data goes to a
// temporary file in the destination directory, is synced, given its final
// mode, and renamed into place, so a reader never sees a half-written file.
//
// This package never puts key material into an error message or a log line.
package pemfile

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
)

// Size bounds for untrusted input. They are far above any legitimate use and
// far below what could exhaust memory.
const (
	// MaxChainBytes bounds a certificate chain or CA bundle in PEM: 1 MiB
	// holds about 400 RSA-4096 certificates, more than any real bundle
	// (the whole Mozilla root store is about 220 KiB).
	MaxChainBytes = 1 << 20
	// MaxCertificates bounds the number of certificates in one chain or
	// bundle file. Path building cost grows with it.
	MaxCertificates = 256
	// MaxKeyBytes bounds a private key file: an RSA-8192 PKCS#8 key in PEM
	// is under 7 KiB.
	MaxKeyBytes = 64 << 10
	// MaxCSRBytes bounds a certificate signing request: a CSR carries one
	// public key, a name and a few extensions, well under 16 KiB even for
	// RSA-8192 with many SANs.
	MaxCSRBytes = 64 << 10
)

// PEM block types.
const (
	TypeCertificate = "CERTIFICATE"
	TypeCSR         = "CERTIFICATE REQUEST"
	typeCSRLegacy   = "NEW CERTIFICATE REQUEST"
	TypePrivateKey  = "PRIVATE KEY"
	typeECKey       = "EC PRIVATE KEY"
	typeRSAKey      = "RSA PRIVATE KEY"
)

// ErrTooLarge is wrapped by every error caused by input over its size bound.
var ErrTooLarge = errors.New("input exceeds size limit")

// ReadFile reads at most limit bytes from path, failing if the file is larger.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pemfile: %w", err)
	}
	defer f.Close()
	data, err := readAll(f, limit)
	if err != nil {
		return nil, fmt.Errorf("pemfile: %s: %w", path, err)
	}
	return data, nil
}

// ReadAll reads r to the end, failing once more than limit bytes arrive.
func ReadAll(r io.Reader, limit int64) ([]byte, error) {
	data, err := readAll(r, limit)
	if err != nil {
		return nil, fmt.Errorf("pemfile: %w", err)
	}
	return data, nil
}

func readAll(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w of %d bytes", ErrTooLarge, limit)
	}
	return data, nil
}

var pemBegin = []byte("-----BEGIN")

// blocks decodes every PEM block in data. Text around blocks is allowed (as
// openssl allows it), but a "-----BEGIN" that does not decode is an error.
func blocks(data []byte) ([]*pem.Block, error) {
	var out []*pem.Block
	rest := data
	for {
		b, after := pem.Decode(rest)
		if b == nil {
			break
		}
		// pem.Decode skips a malformed block when a good one follows, so
		// what it consumed must hold exactly one BEGIN line: the block's.
		if bytes.Count(rest[:len(rest)-len(after)], pemBegin) != 1 {
			break
		}
		out = append(out, b)
		rest = after
	}
	if bytes.Contains(rest, pemBegin) {
		return nil, fmt.Errorf("malformed PEM block after %d good block(s): bad base64, headers or END line", len(out))
	}
	return out, nil
}

// ParseCertificates parses one or more PEM CERTIFICATE blocks. Any other block
// type is an error, as is finding none.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(data) > MaxChainBytes {
		return nil, fmt.Errorf("pemfile: certificates: %w of %d bytes", ErrTooLarge, MaxChainBytes)
	}
	bs, err := blocks(data)
	if err != nil {
		return nil, fmt.Errorf("pemfile: certificates: %w", err)
	}
	if len(bs) == 0 {
		return nil, errors.New("pemfile: no PEM CERTIFICATE block found")
	}
	if len(bs) > MaxCertificates {
		return nil, fmt.Errorf("pemfile: certificates: %w of %d certificates", ErrTooLarge, MaxCertificates)
	}
	certs := make([]*x509.Certificate, 0, len(bs))
	for i, b := range bs {
		if b.Type != TypeCertificate {
			return nil, fmt.Errorf("pemfile: block %d is %q, want %q", i+1, b.Type, TypeCertificate)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pemfile: certificate %d: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// ReadCertificates reads and parses a PEM certificate file.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := ReadFile(path, MaxChainBytes)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ParsePrivateKey parses exactly one PEM private key: PKCS#8 ("PRIVATE KEY"),
// SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"). Encrypted keys are
// refused. The returned signer is ECDSA, RSA or Ed25519.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	if len(data) > MaxKeyBytes {
		return nil, fmt.Errorf("pemfile: private key: %w of %d bytes", ErrTooLarge, MaxKeyBytes)
	}
	bs, err := blocks(data)
	if err != nil {
		return nil, fmt.Errorf("pemfile: private key: %w", err)
	}
	var keys []*pem.Block
	for _, b := range bs {
		switch b.Type {
		case TypePrivateKey, typeECKey, typeRSAKey:
			keys = append(keys, b)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("pemfile: encrypted private keys are not supported; decrypt it first (openssl pkey -in KEY -out PLAIN)")
		case "EC PARAMETERS":
			// openssl ecparam -genkey writes these before the key.
		default:
			return nil, fmt.Errorf("pemfile: private key file holds a %q block", b.Type)
		}
	}
	switch len(keys) {
	case 0:
		return nil, errors.New("pemfile: no PEM private key block found")
	case 1:
	default:
		return nil, fmt.Errorf("pemfile: found %d private keys, want exactly one", len(keys))
	}
	b := keys[0]
	if _, encrypted := b.Headers["DEK-Info"]; encrypted {
		return nil, errors.New("pemfile: encrypted private keys are not supported; decrypt it first (openssl pkey -in KEY -out PLAIN)")
	}
	var key any
	switch b.Type {
	case TypePrivateKey:
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case typeECKey:
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case typeRSAKey:
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	}
	if err != nil {
		// The underlying error never carries key bytes, only structure.
		return nil, fmt.Errorf("pemfile: %s block does not parse: %w", b.Type, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("pemfile: unsupported private key type %T", key)
	}
}

// ReadPrivateKey reads and parses a PEM private key file.
func ReadPrivateKey(path string) (crypto.Signer, error) {
	data, err := ReadFile(path, MaxKeyBytes)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ParseCSR parses exactly one PEM certificate request. It does not check the
// request's signature; the CA does that before it signs.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRBytes {
		return nil, fmt.Errorf("pemfile: CSR: %w of %d bytes", ErrTooLarge, MaxCSRBytes)
	}
	bs, err := blocks(data)
	if err != nil {
		return nil, fmt.Errorf("pemfile: CSR: %w", err)
	}
	if len(bs) != 1 {
		return nil, fmt.Errorf("pemfile: found %d PEM blocks, want exactly one %q", len(bs), TypeCSR)
	}
	if bs[0].Type != TypeCSR && bs[0].Type != typeCSRLegacy {
		return nil, fmt.Errorf("pemfile: block is %q, want %q", bs[0].Type, TypeCSR)
	}
	csr, err := x509.ParseCertificateRequest(bs[0].Bytes)
	if err != nil {
		return nil, fmt.Errorf("pemfile: CSR: %w", err)
	}
	return csr, nil
}

// ReadCSR reads and parses a PEM CSR file.
func ReadCSR(path string) (*x509.CertificateRequest, error) {
	data, err := ReadFile(path, MaxCSRBytes)
	if err != nil {
		return nil, err
	}
	csr, err := ParseCSR(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return csr, nil
}

// EncodeCertificates returns certs as concatenated PEM CERTIFICATE blocks.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: TypeCertificate, Bytes: c.Raw})
	}
	return buf.Bytes()
}

// EncodeCSR returns a DER certificate request as a PEM block.
func EncodeCSR(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: TypeCSR, Bytes: der})
}

// EncodePrivateKey returns key as a PKCS#8 "PRIVATE KEY" PEM block, the form
// openssl, Istio, SPIRE and Envoy all read.
func EncodePrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pemfile: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: TypePrivateKey, Bytes: der}), nil
}
