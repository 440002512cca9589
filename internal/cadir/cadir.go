// Package cadir reads and writes a CA kept in a directory, in the two layouts
// operators meet:
//
//   - meshfed's: ca.pem (the CA certificate), ca.key (its key, 0600) and, for
//     an intermediate, chain.pem (the CA certificate, then the certificates
//     above it up to the root);
//   - Istio's plug-in CA ("cacerts"): ca-cert.pem, ca-key.pem, cert-chain.pem
//     (the CA certificate up to the root) and root-cert.pem.
//
// Writes are all-or-nothing (see pemfile.WriteFiles) and never replace an
// existing file unless asked to. Keys are written 0600 and never printed.
package cadir

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
)

// File names of the meshfed layout.
const (
	CertFile  = "ca.pem"
	KeyFile   = "ca.key"
	ChainFile = "chain.pem"
	CSRFile   = "ca.csr"
)

// File names of Istio's plug-in CA layout.
const (
	IstioCertFile  = "ca-cert.pem"
	IstioKeyFile   = "ca-key.pem"
	IstioChainFile = "cert-chain.pem"
	IstioRootFile  = "root-cert.pem"
)

// Layout says which layout a directory holds.
type Layout string

// Layouts.
const (
	LayoutMeshfed Layout = "meshfed"
	LayoutIstio   Layout = "istio"
)

// Material is a CA's certificates and key as read from a directory.
type Material struct {
	Layout Layout
	Chain  []*x509.Certificate // the CA certificate first, up to the root if known
	Roots  []*x509.Certificate // trust anchors; empty if Chain ends in a root
	Key    crypto.Signer
}

// Read loads the CA material in dir, in whichever layout it holds.
func Read(dir string) (*Material, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("cadir: %s is not a directory; --ca takes a directory holding %s and %s", dir, CertFile, KeyFile)
	}
	if _, ok := pemfile.Exists(dir, CertFile); ok {
		return readMeshfed(dir)
	}
	if _, ok := pemfile.Exists(dir, IstioCertFile); ok {
		return readIstio(dir)
	}
	return nil, fmt.Errorf("cadir: %s holds neither %s (meshfed layout) nor %s (Istio cacerts layout)", dir, CertFile, IstioCertFile)
}

func readMeshfed(dir string) (*Material, error) {
	certs, err := pemfile.ReadCertificates(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("cadir: %s holds %d certificates; want exactly the CA certificate (the rest belongs in %s)", filepath.Join(dir, CertFile), len(certs), ChainFile)
	}
	chain := certs
	if _, ok := pemfile.Exists(dir, ChainFile); ok {
		rest, err := pemfile.ReadCertificates(filepath.Join(dir, ChainFile))
		if err != nil {
			return nil, fmt.Errorf("cadir: %w", err)
		}
		if rest[0].Equal(certs[0]) {
			rest = rest[1:]
		}
		chain = append(chain, rest...)
	}
	key, err := pemfile.ReadPrivateKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	}
	return &Material{Layout: LayoutMeshfed, Chain: chain, Key: key}, nil
}

func readIstio(dir string) (*Material, error) {
	cert, err := pemfile.ReadCertificates(filepath.Join(dir, IstioCertFile))
	if err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	}
	chain := cert[:1]
	if _, ok := pemfile.Exists(dir, IstioChainFile); ok {
		rest, err := pemfile.ReadCertificates(filepath.Join(dir, IstioChainFile))
		if err != nil {
			return nil, fmt.Errorf("cadir: %w", err)
		}
		if rest[0].Equal(cert[0]) {
			rest = rest[1:]
		}
		chain = append(chain, rest...)
	}
	roots, err := pemfile.ReadCertificates(filepath.Join(dir, IstioRootFile))
	if err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	}
	key, err := pemfile.ReadPrivateKey(filepath.Join(dir, IstioKeyFile))
	if err != nil {
		return nil, fmt.Errorf("cadir: %w", err)
	}
	return &Material{Layout: LayoutIstio, Chain: chain, Roots: roots, Key: key}, nil
}

// Load reads dir and returns a CA ready to sign. The CA checks that the key
// matches the certificate and the chain verifies to its root.
func Load(dir string, clock pki.Clock) (*pki.CA, error) {
	m, err := Read(dir)
	if err != nil {
		return nil, err
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: m.Key, Chain: m.Chain, Roots: m.Roots, Clock: clock})
	if err != nil {
		return nil, fmt.Errorf("cadir: %s: %w", dir, err)
	}
	return ca, nil
}

// ErrExists is wrapped when a write would replace an existing file.
var ErrExists = errors.New("file exists")

// Files returns the meshfed-layout files for a CA: ca.pem, chain.pem (for an
// intermediate: the CA certificate up to the root) and, if key is not nil,
// ca.key.
func Files(chain []*x509.Certificate, key crypto.Signer) ([]pemfile.File, error) {
	files := []pemfile.File{{Name: CertFile, Data: pemfile.EncodeCertificates(chain[0]), Mode: pemfile.ModePublic}}
	if len(chain) > 1 {
		files = append(files, pemfile.File{Name: ChainFile, Data: pemfile.EncodeCertificates(chain...), Mode: pemfile.ModePublic})
	}
	if key != nil {
		k, err := pemfile.EncodePrivateKey(key)
		if err != nil {
			return nil, err
		}
		files = append(files, pemfile.File{Name: KeyFile, Data: k, Mode: pemfile.ModeKey})
	}
	return files, nil
}

// IstioFiles returns Istio's plug-in CA files for an intermediate: chain is
// the intermediate up to (not necessarily including) the root, roots the
// trust anchors.
func IstioFiles(chain, roots []*x509.Certificate, key crypto.Signer) ([]pemfile.File, error) {
	k, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	full := append([]*x509.Certificate(nil), chain...)
	if !chain[len(chain)-1].Equal(roots[0]) {
		full = append(full, roots[0])
	}
	return []pemfile.File{
		{Name: IstioCertFile, Data: pemfile.EncodeCertificates(chain[0]), Mode: pemfile.ModePublic},
		{Name: IstioKeyFile, Data: k, Mode: pemfile.ModeKey},
		{Name: IstioChainFile, Data: pemfile.EncodeCertificates(full...), Mode: pemfile.ModePublic},
		{Name: IstioRootFile, Data: pemfile.EncodeCertificates(roots...), Mode: pemfile.ModePublic},
	}, nil
}

// Write writes files into dir. Unless force is set it refuses, before
// writing anything, when any of them already exists.
func Write(dir string, force bool, files ...pemfile.File) error {
	if !force {
		names := make([]string, len(files))
		for i, f := range files {
			names[i] = f.Name
		}
		if n, ok := pemfile.Exists(dir, names...); ok {
			return fmt.Errorf("cadir: %s: %w; pass --force to replace it", filepath.Join(dir, n), ErrExists)
		}
	}
	if err := pemfile.WriteFiles(dir, files...); err != nil {
		return fmt.Errorf("cadir: %w", err)
	}
	return nil
}
