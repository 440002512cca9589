package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const reviewsID = "spiffe://east.example/ns/default/sa/reviews"

// threeTiers makes root, east (intermediate) and reviews (SVID) in dir
// with the exact invocations of the CLI contract.
func threeTiers(t *testing.T, dir string) {
	t.Helper()
	meshfed(t, dir, "ca", "create-root", "--out", "root")
	meshfed(t, dir, "ca", "create-intermediate", "--ca", "root", "--trust-domain", "east.example", "--out", "east")
	meshfed(t, dir, "ca", "issue", "--ca", "east", "--spiffe-id", reviewsID, "--out", "reviews")
}

func TestCLIContractFilesAndModes(t *testing.T) {
	dir := t.TempDir()
	threeTiers(t, dir)
	want := map[string][]string{
		"root":    {"ca.key", "ca.pem"},
		"east":    {"ca.key", "ca.pem", "chain.pem"},
		"reviews": {"bundle.pem", "cert.pem", "key.pem"},
	}
	for sub, names := range want {
		if got := listDir(t, filepath.Join(dir, sub)); strings.Join(got, ",") != strings.Join(names, ",") {
			t.Errorf("%s holds %v, want %v", sub, got, names)
		}
	}
	for _, key := range []string{"root/ca.key", "east/ca.key", "reviews/key.pem"} {
		if m := mode(t, filepath.Join(dir, key)); m != 0o600 {
			t.Errorf("%s has mode %o, want 600", key, m)
		}
	}
	chain, err := pemfile.ReadCertificates(filepath.Join(dir, "east/chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := pemfile.ReadCertificates(filepath.Join(dir, "east/ca.pem"))
	root, _ := pemfile.ReadCertificates(filepath.Join(dir, "root/ca.pem"))
	if len(chain) != 2 || !chain[0].Equal(inter[0]) || !chain[1].Equal(root[0]) {
		t.Errorf("east/chain.pem is not intermediate then root (%d certificates)", len(chain))
	}
	leafChain, _ := pemfile.ReadCertificates(filepath.Join(dir, "reviews/cert.pem"))
	if len(leafChain) != 2 || !leafChain[1].Equal(inter[0]) {
		t.Errorf("reviews/cert.pem is not leaf then intermediate (%d certificates)", len(leafChain))
	}
	if got := leafChain[0].URIs[0].String(); got != reviewsID {
		t.Errorf("leaf SPIFFE ID %s, want %s", got, reviewsID)
	}
	// The contract: inspect cert prints the SPIFFE ID in full.
	insp := meshfed(t, dir, "inspect", "cert", "reviews/cert.pem")
	if !strings.Contains(insp.stdout, "SPIFFE ID:          "+reviewsID+"\n") {
		t.Errorf("inspect cert does not print %s in full:\n%s", reviewsID, insp.stdout)
	}
	// Verified against the root it is OK; against another trust domain's, exit 1.
	meshfed(t, dir, "inspect", "cert", "reviews/cert.pem", "--root", "root/ca.pem")
	meshfedFails(t, dir, []string{"inspect", "cert", "reviews/cert.pem", "--root", "root/ca.pem", "--trust-domain", "west.example"},
		"verification failed", "verify a peer only with its own trust domain's bundle")
	// No key material on stdout or stderr, ever.
	r := meshfed(t, dir, "ca", "issue", "--ca", "east", "--spiffe-id", reviewsID+"-2", "--out", "reviews2")
	if strings.Contains(r.stdout+r.stderr, "PRIVATE KEY") {
		t.Errorf("meshfed printed key material:\n%s%s", r.stdout, r.stderr)
	}
}

func TestOpenSSLVerifiesWhatTheCLIMakes(t *testing.T) {
	dir := t.TempDir()
	threeTiers(t, dir)
	out, code := openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-untrusted", "east/ca.pem", "reviews/cert.pem")
	if code != 0 || !strings.Contains(out, "reviews/cert.pem: OK") {
		t.Fatalf("openssl verify of the full chain: exit %d\n%s", code, out)
	}
	// The intermediate alone as trust anchor, as a member that trusts only
	// its own CA would check.
	out, code = openssl(t, dir, "verify", "-partial_chain", "-CAfile", "east/ca.pem", "reviews/cert.pem")
	if code != 0 || !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify -partial_chain: exit %d\n%s", code, out)
	}
	// Without the root, OpenSSL must refuse.
	out, code = openssl(t, dir, "verify", "-CAfile", "east/ca.pem", "reviews/cert.pem")
	if code == 0 {
		t.Fatalf("openssl verify without the root succeeded:\n%s", out)
	}

	leaf, _ := openssl(t, dir, "x509", "-in", "reviews/cert.pem", "-noout", "-text")
	for _, want := range []string{
		"X509v3 Subject Alternative Name: critical", "URI:" + reviewsID,
		"X509v3 Key Usage: critical", "Digital Signature",
		"TLS Web Server Authentication, TLS Web Client Authentication",
		"CA:FALSE",
	} {
		if !strings.Contains(leaf, want) {
			t.Errorf("leaf as openssl prints it lacks %q:\n%s", want, leaf)
		}
	}
	if strings.Contains(leaf, "Key Encipherment") {
		t.Errorf("ECDSA leaf carries keyEncipherment:\n%s", leaf)
	}
	inter, _ := openssl(t, dir, "x509", "-in", "east/ca.pem", "-noout", "-text")
	for _, want := range []string{"X509v3 Name Constraints: critical", "Permitted:", "URI:east.example", "CA:TRUE, pathlen:0", "Certificate Sign, CRL Sign", "URI:spiffe://east.example"} {
		if !strings.Contains(inter, want) {
			t.Errorf("intermediate as openssl prints it lacks %q:\n%s", want, inter)
		}
	}
}

// forgeLeaf signs a leaf for id directly with the key in caDir, bypassing
// every check meshfed makes, as the holder of a stolen intermediate key could.
func forgeLeaf(t *testing.T, caDir, id string) *x509.Certificate {
	t.Helper()
	m, err := cadir.Read(caDir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		URIs:                  []*url.URL{u},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Chain[0], key.Public(), m.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNameConstraintRejectsOtherTrustDomain(t *testing.T) {
	dir := t.TempDir()
	threeTiers(t, dir)
	m, err := cadir.Read(filepath.Join(dir, "east"))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := pemfile.ReadCertificates(filepath.Join(dir, "root/ca.pem"))

	cases := []struct {
		name, id  string
		goAccepts bool // Go's crypto/x509 verdict, which is laxer than RFC 5280 for URIs
	}{
		{"other trust domain", "spiffe://west.example/ns/default/sa/ratings", false},
		{"subdomain of the permitted host", "spiffe://evil.east.example/ns/default/sa/reviews", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			leaf := forgeLeaf(t, filepath.Join(dir, "east"), tc.id)
			path := filepath.Join(dir, "forged.pem")
			if err := os.WriteFile(path, pemfile.EncodeCertificates(leaf), 0o644); err != nil {
				t.Fatal(err)
			}
			out, code := openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-untrusted", "east/ca.pem", "forged.pem")
			if code == 0 || !strings.Contains(out, "permitted subtree violation") {
				t.Errorf("openssl accepted or failed for another reason (exit %d):\n%s", code, out)
			}

			_, goErr := leaf.Verify(x509.VerifyOptions{
				Roots:         pool(roots),
				Intermediates: pool(m.Chain[:1]),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
			})
			if (goErr == nil) != tc.goAccepts {
				t.Errorf("Go's x509 verify: err = %v, want accepted=%v", goErr, tc.goAccepts)
			}

			td := spiffeid.RequireTrustDomainFromString(leaf.URIs[0].Host)
			_, _, err := pki.VerifyX509SVID([]*x509.Certificate{leaf, m.Chain[0]}, x509bundle.FromX509Authorities(td, roots), time.Time{})
			if err == nil {
				t.Fatalf("meshfed's verifier accepted %s under the east.example intermediate", tc.id)
			}
		})
	}
	// And the CLI refuses to make such a certificate at all.
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "east", "--spiffe-id", "spiffe://west.example/ns/default/sa/ratings", "--out", "west-leaf"},
		"spiffe://west.example/ns/default/sa/ratings is outside trust domain \"east.example\"")
	if _, err := os.Stat(filepath.Join(dir, "west-leaf")); !os.IsNotExist(err) {
		t.Errorf("a refused issue left %s behind", filepath.Join(dir, "west-leaf"))
	}
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestCSRFlowKeepsTheKeyHome(t *testing.T) {
	dir := t.TempDir()
	meshfed(t, dir, "ca", "create-root", "--out", "root")
	meshfed(t, dir, "ca", "csr", "--trust-domain", "west.example", "--out", "west")
	if got := strings.Join(listDir(t, filepath.Join(dir, "west")), ","); got != "ca.csr,ca.key" {
		t.Fatalf("ca csr wrote %s, want ca.csr,ca.key", got)
	}
	keyBefore, err := os.ReadFile(filepath.Join(dir, "west/ca.key"))
	if err != nil {
		t.Fatal(err)
	}

	// A signer told another trust domain refuses the CSR, and writes nothing.
	meshfedFails(t, dir, []string{"ca", "sign-csr", "--ca", "root", "--csr", "west/ca.csr", "--trust-domain", "east.example", "--out", "west"},
		"west/ca.csr", "asks for spiffe://west.example")
	// A CSR whose signature does not verify is refused.
	csr, err := os.ReadFile(filepath.Join(dir, "west/ca.csr"))
	if err != nil {
		t.Fatal(err)
	}
	tampered := tamperCSR(t, csr)
	if err := os.WriteFile(filepath.Join(dir, "tampered.csr"), tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	meshfedFails(t, dir, []string{"ca", "sign-csr", "--ca", "root", "--csr", "tampered.csr", "--trust-domain", "west.example", "--out", "west"},
		"tampered.csr", "CSR signature does not verify")

	meshfed(t, dir, "ca", "sign-csr", "--ca", "root", "--csr", "west/ca.csr", "--trust-domain", "west.example", "--out", "west")
	keyAfter, _ := os.ReadFile(filepath.Join(dir, "west/ca.key"))
	if !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("sign-csr changed the requester's key")
	}
	meshfed(t, dir, "ca", "issue", "--ca", "west", "--spiffe-id", "spiffe://west.example/ns/default/sa/ratings", "--out", "ratings")
	out, code := openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-untrusted", "west/ca.pem", "ratings/cert.pem")
	if code != 0 {
		t.Fatalf("openssl verify of an SVID from a CSR-signed intermediate: %s", out)
	}
}

// tamperCSR flips one bit of the CSR's signature.
func tamperCSR(t *testing.T, pemCSR []byte) []byte {
	t.Helper()
	csr, err := pemfile.ParseCSR(pemCSR)
	if err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), csr.Raw...)
	raw[len(raw)-3] ^= 0x01 // inside the signature BIT STRING at the end
	return pemfile.EncodeCSR(raw)
}

func TestKeyTypesVerifyWithOpenSSL(t *testing.T) {
	cases := []struct{ keyType, opensslSays string }{
		{"ec-p256", "Public-Key: (256 bit)"},
		{"ec-p384", "Public-Key: (384 bit)"},
		{"rsa-2048", "Public-Key: (2048 bit)"},
		{"rsa-3072", "Public-Key: (3072 bit)"},
		{"rsa-4096", "Public-Key: (4096 bit)"},
	}
	for _, tc := range cases {
		t.Run(tc.keyType, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			meshfed(t, dir, "ca", "create-root", "--out", "root", "--key-type", tc.keyType, "--ttl", "356d", "--org", "service-mesh-hub")
			meshfed(t, dir, "ca", "create-intermediate", "--ca", "root", "--trust-domain", "east.example", "--out", "east", "--key-type", tc.keyType)
			meshfed(t, dir, "ca", "issue", "--ca", "east", "--spiffe-id", reviewsID, "--out", "reviews", "--key-type", tc.keyType)
			out, code := openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-untrusted", "east/ca.pem", "reviews/cert.pem")
			if code != 0 {
				t.Fatalf("openssl verify: %s", out)
			}
			text, _ := openssl(t, dir, "x509", "-in", "root/ca.pem", "-noout", "-text")
			if !strings.Contains(text, tc.opensslSays) || !strings.Contains(text, "O = service-mesh-hub") {
				t.Errorf("root lacks %q or the organisation:\n%s", tc.opensslSays, text)
			}
			leaf, _ := openssl(t, dir, "x509", "-in", "reviews/cert.pem", "-noout", "-text")
			rsaLeaf := strings.HasPrefix(tc.keyType, "rsa")
			if strings.Contains(leaf, "Key Encipherment") != rsaLeaf {
				t.Errorf("keyEncipherment present=%v, want %v for %s", !rsaLeaf, rsaLeaf, tc.keyType)
			}
		})
	}
}

func TestTLSLeafForAGateway(t *testing.T) {
	dir := t.TempDir()
	// The third-party-root seed: step certificate create ... --profile leaf --san helloworld.zufar.io
	meshfed(t, dir, "ca", "create-root", "--out", "root", "--key-type", "rsa-2048", "--ttl", "87600h")
	meshfed(t, dir, "ca", "issue", "--ca", "root", "--san", "helloworld.zufar.io", "--key-type", "rsa-2048", "--ttl", "8760h", "--out", "server")
	out, code := openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-verify_hostname", "helloworld.zufar.io", "server/cert.pem")
	if code != 0 {
		t.Fatalf("openssl verify -verify_hostname: %s", out)
	}
	out, code = openssl(t, dir, "verify", "-CAfile", "root/ca.pem", "-verify_hostname", "other.zufar.io", "server/cert.pem")
	if code == 0 || !strings.Contains(out, "hostname mismatch") {
		t.Fatalf("openssl accepted the leaf for another host (exit %d): %s", code, out)
	}
	text, _ := openssl(t, dir, "x509", "-in", "server/cert.pem", "-noout", "-text")
	if strings.Contains(text, "URI:") || !strings.Contains(text, "DNS:helloworld.zufar.io") {
		t.Errorf("gateway leaf SANs wrong:\n%s", text)
	}
}

func TestIstioCACertsLayout(t *testing.T) {
	dir := t.TempDir()
	meshfed(t, dir, "ca", "create-root", "--out", "root")
	meshfed(t, dir, "ca", "istio-cacerts", "--ca", "root", "--trust-domain", "east.example", "--out", "cacerts")
	if got := strings.Join(listDir(t, filepath.Join(dir, "cacerts")), ","); got != "ca-cert.pem,ca-key.pem,cert-chain.pem,root-cert.pem" {
		t.Fatalf("cacerts holds %s", got)
	}
	if m := mode(t, filepath.Join(dir, "cacerts/ca-key.pem")); m != 0o600 {
		t.Errorf("ca-key.pem mode %o, want 600", m)
	}
	caCert, _ := os.ReadFile(filepath.Join(dir, "cacerts/ca-cert.pem"))
	rootCert, _ := os.ReadFile(filepath.Join(dir, "cacerts/root-cert.pem"))
	chain, _ := os.ReadFile(filepath.Join(dir, "cacerts/cert-chain.pem"))
	root, _ := os.ReadFile(filepath.Join(dir, "root/ca.pem"))
	if !bytes.Equal(rootCert, root) {
		t.Error("root-cert.pem is not the root")
	}
	if !bytes.Equal(chain, append(append([]byte(nil), caCert...), root...)) {
		t.Error("cert-chain.pem is not ca-cert.pem followed by the root")
	}
	out, code := openssl(t, dir, "verify", "-CAfile", "cacerts/root-cert.pem", "cacerts/ca-cert.pem")
	if code != 0 {
		t.Fatalf("openssl verify ca-cert.pem: %s", out)
	}
	pubFromKey, _ := openssl(t, dir, "pkey", "-in", "cacerts/ca-key.pem", "-pubout")
	pubFromCert, _ := openssl(t, dir, "x509", "-in", "cacerts/ca-cert.pem", "-noout", "-pubkey")
	if pubFromKey != pubFromCert || !strings.Contains(pubFromKey, "PUBLIC KEY") {
		t.Errorf("ca-key.pem does not match ca-cert.pem")
	}
	// The Istio layout is itself a CA directory meshfed can issue from.
	meshfed(t, dir, "ca", "issue", "--ca", "cacerts", "--spiffe-id", reviewsID, "--out", "reviews")
	out, code = openssl(t, dir, "verify", "-CAfile", "cacerts/root-cert.pem", "-untrusted", "cacerts/ca-cert.pem", "reviews/cert.pem")
	if code != 0 {
		t.Fatalf("openssl verify of an SVID from the Istio layout: %s", out)
	}
	// Converting a root directly would hand istiod the root key: refused.
	meshfedFails(t, dir, []string{"ca", "istio-cacerts", "--ca", "root", "--out", "root-cacerts"}, "is a root")
}

func TestBundleConversion(t *testing.T) {
	dir := t.TempDir()
	meshfed(t, dir, "ca", "create-root", "--out", "root")
	meshfed(t, dir, "ca", "bundle", "--ca", "root", "--trust-domain", "east.example", "--sequence", "3", "--refresh-hint", "5m", "--out", "bundle.json")
	raw, err := os.ReadFile(filepath.Join(dir, "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			Kty string   `json:"kty"`
			X5c []string `json:"x5c"`
		} `json:"keys"`
		Sequence    uint64 `json:"spiffe_sequence"`
		RefreshHint int64  `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("bundle.json: %v\n%s", err, raw)
	}
	if len(doc.Keys) != 1 || doc.Keys[0].Use != "x509-svid" || doc.Keys[0].Kty != "EC" || len(doc.Keys[0].X5c) != 1 {
		t.Errorf("bundle keys = %+v", doc.Keys)
	}
	if doc.Sequence != 3 || doc.RefreshHint != 300 {
		t.Errorf("spiffe_sequence=%d spiffe_refresh_hint=%d, want 3 and 300", doc.Sequence, doc.RefreshHint)
	}
	r := meshfed(t, dir, "ca", "bundle", "--in", "bundle.json", "--trust-domain", "east.example")
	root, _ := os.ReadFile(filepath.Join(dir, "root/ca.pem"))
	if r.stdout != string(root) {
		t.Errorf("JSON back to PEM differs from the root:\n%s", r.stdout)
	}
}

func TestBadInputOneLineNothingWritten(t *testing.T) {
	dir := t.TempDir()
	threeTiers(t, dir)

	// Malformed PEM in the CA directory.
	bad := filepath.Join(dir, "bad")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, "east/ca.pem"))
	corrupt := bytes.Replace(good, []byte("MII"), []byte("M!I"), 1)
	os.WriteFile(filepath.Join(bad, "ca.pem"), corrupt, 0o644)
	copyFile(t, filepath.Join(dir, "east/ca.key"), filepath.Join(bad, "ca.key"))
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "bad", "--spiffe-id", reviewsID, "--out", "out1"}, "bad/ca.pem", "malformed PEM")

	// A key that does not belong to the certificate.
	wrong := filepath.Join(dir, "wrong")
	os.MkdirAll(wrong, 0o755)
	copyFile(t, filepath.Join(dir, "east/ca.pem"), filepath.Join(wrong, "ca.pem"))
	copyFile(t, filepath.Join(dir, "east/chain.pem"), filepath.Join(wrong, "chain.pem"))
	copyFile(t, filepath.Join(dir, "root/ca.key"), filepath.Join(wrong, "ca.key"))
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "wrong", "--spiffe-id", reviewsID, "--out", "out2"}, "wrong", "private key does not belong to the CA certificate")

	// An expired issuer.
	expired := filepath.Join(dir, "expired")
	key, _ := pki.GenerateKey(pki.ECP256)
	old, err := pki.CreateRoot(pki.RootRequest{Signer: key, TTL: time.Hour, Now: time.Now().Add(-48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := cadir.Files([]*x509.Certificate{old}, key)
	if err := cadir.Write(expired, false, files...); err != nil {
		t.Fatal(err)
	}
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "expired", "--spiffe-id", reviewsID, "--out", "out3"}, "expired", "rotate it")

	// Something that is not a SPIFFE ID.
	r := meshfedFails(t, dir, []string{"ca", "issue", "--ca", "east", "--spiffe-id", "https://east.example/reviews", "--out", "out4"}, "is not a SPIFFE ID")
	if r.code != 2 {
		t.Errorf("usage error exit code %d, want 2", r.code)
	}
	// A SPIFFE ID without a path cannot name a workload.
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "east", "--spiffe-id", "spiffe://east.example", "--out", "out5"}, "has no path")

	for _, out := range []string{"out1", "out2", "out3", "out4", "out5"} {
		if _, err := os.Stat(filepath.Join(dir, out)); !os.IsNotExist(err) {
			t.Errorf("failed command left %s behind", out)
		}
	}

	// Existing files are not replaced without --force, and stay as they were.
	before, _ := os.ReadFile(filepath.Join(dir, "reviews/cert.pem"))
	meshfedFails(t, dir, []string{"ca", "issue", "--ca", "east", "--spiffe-id", reviewsID, "--out", "reviews"}, "reviews/cert.pem exists", "--force")
	after, _ := os.ReadFile(filepath.Join(dir, "reviews/cert.pem"))
	if !bytes.Equal(before, after) {
		t.Error("refused issue changed reviews/cert.pem")
	}
	meshfed(t, dir, "ca", "issue", "--ca", "east", "--spiffe-id", reviewsID, "--out", "reviews", "--force")
	after, _ = os.ReadFile(filepath.Join(dir, "reviews/cert.pem"))
	if bytes.Equal(before, after) {
		t.Error("--force did not replace reviews/cert.pem")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
