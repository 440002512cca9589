package cadir

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testCA writes a root and an east.example intermediate in both layouts.
func testCA(t *testing.T) (root, meshfedDir, istioDir string) {
	t.Helper()
	base := t.TempDir()
	rootKey, _ := pki.GenerateKey(pki.ECP256)
	rootCert, err := pki.CreateRoot(pki.RootRequest{Signer: rootKey})
	if err != nil {
		t.Fatal(err)
	}
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{rootCert}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(pki.ECP256)
	chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: key.Public(), TrustDomain: spiffeid.RequireTrustDomainFromString("east.example")})
	if err != nil {
		t.Fatal(err)
	}
	root = filepath.Join(base, "root")
	files, _ := Files([]*x509.Certificate{rootCert}, rootKey)
	if err := Write(root, false, files...); err != nil {
		t.Fatal(err)
	}
	meshfedDir = filepath.Join(base, "east")
	files, _ = Files(chain, key) // SignIntermediate by a root returns intermediate, root
	if err := Write(meshfedDir, false, files...); err != nil {
		t.Fatal(err)
	}
	istioDir = filepath.Join(base, "cacerts")
	files, _ = IstioFiles(chain, []*x509.Certificate{rootCert}, key)
	if err := Write(istioDir, false, files...); err != nil {
		t.Fatal(err)
	}
	return root, meshfedDir, istioDir
}

func TestLoadBothLayouts(t *testing.T) {
	root, east, istio := testCA(t)
	cases := []struct {
		dir    string
		layout Layout
		td     string
		chain  int
	}{
		{root, LayoutMeshfed, "", 1},
		{east, LayoutMeshfed, "east.example", 1},
		{istio, LayoutIstio, "east.example", 1},
	}
	for _, tc := range cases {
		m, err := Read(tc.dir)
		if err != nil {
			t.Fatalf("Read(%s): %v", tc.dir, err)
		}
		if m.Layout != tc.layout {
			t.Errorf("%s: layout %s, want %s", tc.dir, m.Layout, tc.layout)
		}
		ca, err := Load(tc.dir, nil)
		if err != nil {
			t.Fatalf("Load(%s): %v", tc.dir, err)
		}
		td, _ := ca.TrustDomain()
		if td.Name() != tc.td || len(ca.Chain()) != tc.chain || len(ca.Roots()) != 1 {
			t.Errorf("%s: trust domain %q chain %d roots %d", tc.dir, td.Name(), len(ca.Chain()), len(ca.Roots()))
		}
	}
}

func TestReadErrorsNameTheFile(t *testing.T) {
	_, east, _ := testCA(t)
	empty := t.TempDir()
	notDir := filepath.Join(empty, "file")
	os.WriteFile(notDir, []byte("x"), 0o644)
	noKey := t.TempDir()
	data, _ := os.ReadFile(filepath.Join(east, CertFile))
	os.WriteFile(filepath.Join(noKey, CertFile), data, 0o644)
	twoCerts := t.TempDir()
	chain, _ := os.ReadFile(filepath.Join(east, ChainFile))
	os.WriteFile(filepath.Join(twoCerts, CertFile), chain, 0o644)

	cases := []struct{ dir, want string }{
		{filepath.Join(empty, "missing"), "no such file or directory"},
		{notDir, "is not a directory"},
		{empty, "holds neither ca.pem (meshfed layout) nor ca-cert.pem"},
		{noKey, filepath.Join(noKey, KeyFile)},
		{twoCerts, "holds 2 certificates; want exactly the CA certificate"},
	}
	for _, tc := range cases {
		_, err := Read(tc.dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Read(%s) = %v, want %q", tc.dir, err, tc.want)
		}
	}
}

func TestWriteRefusesToReplace(t *testing.T) {
	dir := t.TempDir()
	f := pemfile.File{Name: KeyFile, Data: []byte("first"), Mode: pemfile.ModeKey}
	if err := Write(dir, false, f); err != nil {
		t.Fatal(err)
	}
	f.Data = []byte("second")
	err := Write(dir, false, pemfile.File{Name: CertFile, Data: []byte("c"), Mode: pemfile.ModePublic}, f)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("Write over an existing key = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CertFile)); !os.IsNotExist(err) {
		t.Error("a refused Write wrote the other file")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, KeyFile)); string(got) != "first" {
		t.Errorf("key replaced without force: %q", got)
	}
	if err := Write(dir, true, f); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, KeyFile)); string(got) != "second" {
		t.Errorf("force did not replace: %q", got)
	}
}

func TestIstioFilesChainEndsInRoot(t *testing.T) {
	_, _, istio := testCA(t)
	chain, err := pemfile.ReadCertificates(filepath.Join(istio, IstioChainFile))
	if err != nil {
		t.Fatal(err)
	}
	root, _ := pemfile.ReadCertificates(filepath.Join(istio, IstioRootFile))
	cert, _ := pemfile.ReadCertificates(filepath.Join(istio, IstioCertFile))
	if len(chain) != 2 || !chain[0].Equal(cert[0]) || !chain[1].Equal(root[0]) {
		t.Fatalf("cert-chain.pem is not ca-cert then root")
	}
}
