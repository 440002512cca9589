package controller

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
)

// root is a shared root in memory: its certificate and the signer of its
// key, which the controller uses but does not own.
type root struct {
	number int
	cert   *x509.Certificate
	signer crypto.Signer
	skid   string
}

// skid names a root the way members report it: its subject key ID in
// lower-case hex.
func skid(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }

// newRoot makes root number n from the template and writes its key to the
// data dir (0600, atomically). The subject names the VirtualMesh and the
// number, so that every root of the federation has a distinct subject, and
// each has a new key, so their subject key IDs differ.
func newRoot(dir, name string, n int, tmpl virtualmesh.GeneratedRoot, now time.Time) (*root, rootRecord, error) {
	key, err := pki.GenerateKey(tmpl.KeyType)
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: root %d: %w", n, err)
	}
	cert, err := pki.CreateRoot(pki.RootRequest{
		Signer:       key,
		Organization: tmpl.Organization,
		CommonName:   fmt.Sprintf("%s root CA %d", name, n),
		TTL:          tmpl.TTL,
		Now:          now,
	})
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: root %d: %w", n, err)
	}
	pemKey, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		return nil, rootRecord{}, err
	}
	file := rootKeyFile(n)
	if err := pemfile.WriteFile(filepath.Join(dir, file), pemKey, pemfile.ModeKey); err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: root %d: %w", n, err)
	}
	r := &root{number: n, cert: cert, signer: key, skid: skid(cert)}
	return r, rootRecord{Number: n, Cert: cert.Raw, KeyFile: file, State: RootActive}, nil
}

// rootFromFiles reads an operator's root as root number n. Its key stays
// where it is; the state names the file.
func rootFromFiles(f *virtualmesh.RootFiles, n int, now time.Time) (*root, rootRecord, error) {
	certs, err := pemfile.ReadCertificates(f.CertFile)
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: rootCertFile: %w", err)
	}
	keyFile, err := filepath.Abs(f.KeyFile)
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: rootKeyFile: %w", err)
	}
	rec := rootRecord{Number: n, Cert: certs[0].Raw, KeyFile: keyFile, State: RootActive}
	r, err := loadRoot("", rec, now)
	if err != nil {
		return nil, rootRecord{}, err
	}
	return r, rec, nil
}

// loadRoot reads a root's key and checks the pair: a self-signed CA
// certificate, unexpired, with a subject key ID (members name roots by it),
// that the key belongs to. A retiring root never signs again: only its
// certificate is read, and it may have expired.
func loadRoot(dir string, rec rootRecord, now time.Time) (*root, error) {
	cert, err := x509.ParseCertificate(rec.Cert)
	if err != nil {
		return nil, fmt.Errorf("federation controller: root %d in the state does not parse: %w", rec.Number, err)
	}
	if rec.State == RootRetiring {
		return &root{number: rec.Number, cert: cert, skid: skid(cert)}, nil
	}
	path := rec.KeyFile
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	key, err := pemfile.ReadPrivateKey(path)
	if err != nil {
		return nil, fmt.Errorf("federation controller: root %d: %w", rec.Number, err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("federation controller: root %d (%s) is not self-signed; a VirtualMesh root is a root CA: %w", rec.Number, cert.Subject, err)
	}
	if len(cert.SubjectKeyId) == 0 {
		return nil, fmt.Errorf("federation controller: root %d (%s) has no subject key ID; members name roots by it: reissue it with one (openssl: -addext subjectKeyIdentifier=hash)", rec.Number, cert.Subject)
	}
	// NewCA checks that the key belongs to the certificate, that it is a
	// CA and that it is valid now.
	if _, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: func() time.Time { return now }}); err != nil {
		return nil, fmt.Errorf("federation controller: root %d: %w", rec.Number, err)
	}
	return &root{number: rec.Number, cert: cert, signer: key, skid: skid(cert)}, nil
}

// nextRootFromFiles is the next root of a rotation when the VirtualMesh gives
// the root as files that now hold another root than those in use (the
// operator put the next root's files there, or pointed the VirtualMesh at
// them): that root, as number n. It returns nil, and no error, when there
// are no files or they still hold a root in use: a root is then generated.
// The new root must have a key of its own, since members name roots by
// their subject key ID, and must not be one a rotation retired.
func nextRootFromFiles(vm *virtualmesh.VirtualMesh, current []*x509.Certificate, retired []string, n int, now time.Time) (*root, rootRecord, error) {
	f := vm.Root.Files
	if f == nil {
		return nil, rootRecord{}, nil
	}
	certs, err := pemfile.ReadCertificates(f.CertFile)
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: the next root: rootCertFile: %w", err)
	}
	for _, c := range current {
		if c.Equal(certs[0]) {
			return nil, rootRecord{}, nil
		}
		if bytes.Equal(c.SubjectKeyId, certs[0].SubjectKeyId) {
			return nil, rootRecord{}, fmt.Errorf("federation controller: the next root in %s has the subject key ID %s of a root in use; the next root needs a key of its own", f.CertFile, skid(c))
		}
	}
	if id := skid(certs[0]); slices.Contains(retired, id) {
		return nil, rootRecord{}, fmt.Errorf("federation controller: the next root in %s is root %s, which a rotation retired; a retired root is not trusted again (intermediates signed under it would be): give a new root", f.CertFile, id)
	}
	r, rec, err := rootFromFiles(f, n, now)
	if err != nil {
		return nil, rootRecord{}, fmt.Errorf("federation controller: the next root: %w", err)
	}
	return r, rec, nil
}

// nextRootTemplate is what a rotation's new root is made like: the
// VirtualMesh's generated-root settings, or for a root given as files, the
// default key type with the same organization and lifetime as that root.
func nextRootTemplate(vm *virtualmesh.VirtualMesh, current *x509.Certificate) virtualmesh.GeneratedRoot {
	if g := vm.Root.Generated; g != nil {
		return *g
	}
	t := virtualmesh.GeneratedRoot{KeyType: pki.DefaultKeyType, TTL: current.NotAfter.Sub(current.NotBefore)}
	if len(current.Subject.Organization) > 0 {
		t.Organization = current.Subject.Organization[0]
	}
	return t
}

// removeRootKey deletes the key of a retired root the controller made; an
// operator's key file is left alone.
func removeRootKey(dir string, rec rootRecord) error {
	if filepath.IsAbs(rec.KeyFile) {
		return nil
	}
	if err := os.Remove(filepath.Join(dir, rec.KeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// servingNames are the DNS names and IP addresses of the serving
// certificate: the listen host, or for an unspecified host, localhost and
// the loopback addresses.
func servingNames(listen string) ([]string, []net.IP) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return nil, []net.IP{ip}
	}
	if host != "" && net.ParseIP(host) == nil {
		return []string{host}, nil
	}
	return []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
}

// issueServing signs a new serving certificate under ca, with a fresh key.
func (c *Controller) issueServing(ca *pki.CA, signing int) error {
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return err
	}
	chain, err := ca.SignX509SVID(pki.SVIDRequest{
		ID:          c.id,
		PublicKey:   key.Public(),
		TTL:         c.cfg.ServingTTL,
		DNSNames:    c.dnsNames,
		IPAddresses: c.ips,
	})
	if err != nil {
		return fmt.Errorf("federation controller: serving certificate: %w", err)
	}
	leaf := chain[0] // the root that follows is the member's to have
	c.serving.Store(&servingCert{
		tls:  &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		root: signing,
	})
	c.log.Info("serving certificate issued", "spiffe_id", c.id.String(), "serial", leaf.SerialNumber.Text(16),
		"root", skid(ca.Certificate()), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// servingCert is the certificate the TLS listener presents and the number
// of the root that signed it.
type servingCert struct {
	tls  *tls.Certificate
	root int
}

// servingDue reports whether the serving certificate should be re-issued:
// at half its lifetime, or when another root signs now.
func servingDue(s *servingCert, signing int, now time.Time) bool {
	if s == nil || s.root != signing {
		return true
	}
	leaf := s.tls.Leaf
	half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return !now.Before(half)
}
