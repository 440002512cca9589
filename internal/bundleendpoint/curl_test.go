package bundleendpoint_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/bundleendpoint"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// curl is the real HTTP client of these tests: a bundle endpoint must serve
// what an operator's curl sees, not only what go-spiffe's client accepts.

type curlResult struct {
	exit        int    // curl's exit code
	code        string // %{http_code}
	contentType string // %{content_type}
	body        []byte
	stderr      string
}

func runCurl(t *testing.T, args ...string) curlResult {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl not installed: run ./scripts/test, which installs it")
	}
	bodyFile := filepath.Join(t.TempDir(), "body")
	// -q first: ignore any ~/.curlrc. --noproxy: loopback, never a proxy.
	full := append([]string{"-q", "--silent", "--show-error", "--noproxy", "*", "--max-time", "5",
		"--output", bodyFile, "--write-out", "%{http_code} %{content_type}"}, args...)
	cmd := exec.Command(path, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var r curlResult
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatal(err)
		}
		r.exit = exit.ExitCode()
	}
	r.stderr = stderr.String()
	r.code, r.contentType, _ = strings.Cut(stdout.String(), " ")
	if data, err := os.ReadFile(bodyFile); err == nil {
		r.body = data
	}
	return r
}

func writePEM(t *testing.T, certs ...*x509.Certificate) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root.pem")
	writeFile(t, path, pemfile.EncodeCertificates(certs...))
	return path
}

// checkBundleBody asserts the body is exactly the served bundle's JSON and
// parses back to the same bundle.
func checkBundleBody(t *testing.T, body []byte, want *spiffebundle.Bundle) {
	t.Helper()
	if !bytes.Equal(body, marshal(t, want)) {
		t.Errorf("body\n%s\nwant\n%s", body, marshal(t, want))
	}
	got, err := spiffebundle.Parse(east, body)
	if err != nil {
		t.Fatalf("body does not parse as a SPIFFE bundle: %v", err)
	}
	if !got.Equal(want) {
		t.Errorf("body parses to a different bundle")
	}
}

// TestCurlWebProfile: curl verifies the https_web endpoint fully (chain to
// the given root and the IP address 127.0.0.1 in the certificate) and gets
// the bundle.
func TestCurlWebProfile(t *testing.T) {
	p := newPKI(t)
	want := p.bundle(t, 7)
	chain, key := p.leaf(t, pki.ECP256) // IP SAN 127.0.0.1
	certFile, keyFile := writePair(t, t.TempDir(), chain, key)
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: want}, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile})
	root := writePEM(t, p.root)
	otherRoot := writePEM(t, newPKI(t).root)

	tests := []struct {
		name        string
		args        []string
		exit        int
		code        string
		contentType string
	}{
		{"GET", []string{"--cacert", root, url(s, "/")}, 0, "200", "application/json"},
		{"HEAD", []string{"--cacert", root, "--head", url(s, "/")}, 0, "200", "application/json"},
		{"POST", []string{"--cacert", root, "--data", "{}", url(s, "/")}, 0, "405", "text/plain; charset=utf-8"},
		{"other path", []string{"--cacert", root, url(s, "/other")}, 0, "404", "text/plain; charset=utf-8"},
		// 60: the peer certificate cannot be authenticated with the known CA certificates.
		{"another root", []string{"--cacert", otherRoot, url(s, "/")}, 60, "000", ""},
		// 35: TLS handshake failure; the server refuses TLS 1.1.
		{"TLS 1.1", []string{"--cacert", root, "--tls-max", "1.1", url(s, "/")}, 35, "000", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCurl(t, tt.args...)
			if r.exit != tt.exit || r.code != tt.code || r.contentType != tt.contentType {
				t.Fatalf("curl exit %d, %s %q; want exit %d, %s %q\nstderr: %s", r.exit, r.code, r.contentType, tt.exit, tt.code, tt.contentType, r.stderr)
			}
			if tt.name == "GET" {
				checkBundleBody(t, r.body, want)
			}
		})
	}
}

// TestCurlSPIFFEProfile: the https_spiffe endpoint presents an X.509-SVID,
// named by its SPIFFE ID only, so curl can check its chain but has no DNS
// name or IP address to match (SPIFFE clients check the ID instead, as
// TestSPIFFEProfileFetch does). curl shows exactly that: with the trust
// domain's root the chain verifies and only the name check fails; with
// another root the chain itself is refused. Pinning the SVID's public key
// then authenticates the endpoint to curl without a name.
func TestCurlSPIFFEProfile(t *testing.T) {
	p := newPKI(t)
	want := p.bundle(t, 7)
	svid := p.svid(t, endpointID)
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: want}, SVIDSource: newSVIDSource(svid)})
	root := writePEM(t, p.root)
	otherRoot := writePEM(t, newPKI(t).root)
	pin := pinOf(t, svid.Certificates[0])
	otherPin := pinOf(t, p.svid(t, endpointID).Certificates[0])

	tests := []struct {
		name        string
		args        []string
		exit        int
		code        string
		contentType string
		stderr      string // a part of curl's message, for the failures
	}{
		{"root: chain verifies, no name to match", []string{"--cacert", root, url(s, "/")}, 60, "000", "",
			"SSL: unable to obtain common name from peer certificate"},
		{"another root: chain refused", []string{"--cacert", otherRoot, url(s, "/")}, 60, "000", "",
			// the test CA is a root that signs SVIDs itself, so the chain
			// ends in a self-signed certificate curl does not trust
			"SSL certificate problem: self-signed certificate in certificate chain"},
		{"SVID key pinned", []string{"--insecure", "--pinnedpubkey", pin, url(s, "/")}, 0, "200", "application/json", ""},
		{"another key pinned", []string{"--insecure", "--pinnedpubkey", otherPin, url(s, "/")}, 90, "000", "",
			"SSL: public key does not match pinned public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCurl(t, tt.args...)
			if r.exit != tt.exit || r.code != tt.code || r.contentType != tt.contentType || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("curl exit %d, %s %q, stderr %q\nwant exit %d, %s %q, stderr containing %q", r.exit, r.code, r.contentType, r.stderr, tt.exit, tt.code, tt.contentType, tt.stderr)
			}
			if tt.exit == 0 {
				checkBundleBody(t, r.body, want)
			}
		})
	}
}

// pinOf is curl's --pinnedpubkey form of a certificate's public key.
func pinOf(t *testing.T, c *x509.Certificate) string {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(c.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	return "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
}
