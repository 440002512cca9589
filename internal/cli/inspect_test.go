package cli_test

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/cli"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const reviews = "spiffe://east.example/ns/default/sa/reviews"

// inspectFiles is a test PKI written to disk: a shared root, the east
// intermediate (name-constrained to east.example), the reviews SVID, and a
// root that signed none of them.
type inspectFiles struct {
	t0          time.Time
	svid        string // reviews SVID chain: leaf, east intermediate
	svidKey     string
	svidKeyPEM  []byte
	root        string // the shared root, PEM
	intermed    string // the east intermediate alone, PEM
	eastBundle  string // SPIFFE JSON bundle of east.example, holding the root
	otherRoot   string
	svidChain   []*x509.Certificate
	svidSigner  crypto.Signer
	rootCert    *x509.Certificate
	dir         string
	malformed   string
	notCert     string
	tooLarge    string
	missingFile string
}

func newInspectFiles(t *testing.T) *inspectFiles {
	t.Helper()
	// The real time, truncated: the in-process TLS server judges validity
	// by the clock. Everything meshfed judges gets it through --at.
	t0 := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return t0 }
	key := func() crypto.Signer {
		k, err := pki.GenerateKey(pki.ECP256)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rootKey, interKey, svidKey := key(), key(), key()
	root, err := pki.CreateRoot(pki.RootRequest{Signer: rootKey, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{root}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	east := spiffeid.RequireTrustDomainFromString("east.example")
	interChain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: interKey.Public(), TrustDomain: east})
	if err != nil {
		t.Fatal(err)
	}
	eastCA, err := pki.NewCA(pki.CAConfig{Signer: interKey, Chain: interChain, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := eastCA.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromString(reviews), PublicKey: svidKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.CreateRoot(pki.RootRequest{Signer: key(), CommonName: "other root CA", Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	eastJSON, err := bundle.Marshal(spiffebundle.FromX509Authorities(east, []*x509.Certificate{root}), bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pemfile.EncodePrivateKey(svidKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return &inspectFiles{
		t0:          t0,
		svid:        write("reviews.pem", pemfile.EncodeCertificates(svid...)),
		svidKey:     write("reviews-key.pem", keyPEM),
		svidKeyPEM:  keyPEM,
		root:        write("root.pem", pemfile.EncodeCertificates(root)),
		intermed:    write("east-ca.pem", pemfile.EncodeCertificates(interChain[0])),
		eastBundle:  write("east-bundle.json", eastJSON),
		otherRoot:   write("other-root.pem", pemfile.EncodeCertificates(other)),
		svidChain:   svid,
		svidSigner:  svidKey,
		rootCert:    root,
		dir:         dir,
		malformed:   write("bad.pem", []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")),
		notCert:     write("key-not-cert.pem", keyPEM),
		tooLarge:    write("huge.pem", bytes.Repeat([]byte("# padding\n"), pemfile.MaxChainBytes/10+1)),
		missingFile: filepath.Join(dir, "absent.pem"),
	}
}

func (f *inspectFiles) at(d time.Duration) string { return f.t0.Add(d).Format(time.RFC3339) }

func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = cli.Main(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestInspectCert(t *testing.T) {
	f := newInspectFiles(t)
	now := f.at(0)
	tests := []struct {
		name       string
		args       []string
		code       int
		stdoutHas  []string // lines that must appear whole
		stderr     string   // exact
		stdoutNone bool     // nothing may be printed
	}{
		{
			name: "SVID chain",
			args: []string{"inspect", "cert", f.svid, "--at", now},
			stdoutHas: []string{
				f.svid + ": 2 certificates",
				"Certificate 0 (leaf)",
				"  SPIFFE ID:          " + reviews,
				"  Trust domain:       east.example",
				"  SVID:               conforms to the X.509-SVID rules for a leaf",
				"Certificate 1 (intermediate CA)",
				"  SPIFFE ID:          spiffe://east.example",
				"  Name constraints:   critical",
				"                      permitted URI: east.example",
			},
		},
		{
			name: "verified against the bundle of its trust domain",
			args: []string{"inspect", "cert", f.svid, "--bundle", f.eastBundle, "--trust-domain", "east.example", "--at", now},
			stdoutHas: []string{
				"Verification: OK (X.509-SVID, against " + f.eastBundle + ")",
				"  SPIFFE ID:          " + reviews,
				"  Chain:              " + reviews,
				"                      CN=east.example intermediate CA,O=meshfed",
				"                      CN=meshfed root CA,O=meshfed",
			},
		},
		{
			name:      "verified against a root file",
			args:      []string{"inspect", "cert", f.svid, "--root", f.root, "--at", now},
			stdoutHas: []string{"Verification: OK (X.509-SVID, against " + f.root + ")"},
		},
		{
			name:      "bundle of another trust domain",
			args:      []string{"inspect", "cert", f.svid, "--bundle", f.eastBundle, "--trust-domain", "west.example", "--at", now},
			code:      1,
			stdoutHas: []string{"Verification: FAILED (X.509-SVID, against " + f.eastBundle + ")"},
			stderr: "meshfed: inspect cert: " + f.svid + `: verification failed: the leaf ` + reviews + ` is in trust domain "east.example" but ` +
				f.eastBundle + ` is the bundle of trust domain "west.example"; verify a peer only with its own trust domain's bundle` + "\n",
		},
		{
			name:      "wrong root",
			args:      []string{"inspect", "cert", f.svid, "--root", f.otherRoot, "--at", now},
			code:      1,
			stdoutHas: []string{"Verification: FAILED (X.509-SVID, against " + f.otherRoot + ")"},
			stderr:    "meshfed: inspect cert: " + f.svid + ": verification failed: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority\n",
		},
		{
			name:      "expired by --at",
			args:      []string{"inspect", "cert", f.svid, "--bundle", f.eastBundle, "--at", f.at(2 * time.Hour)},
			code:      1,
			stdoutHas: []string{"  Validity:           " + f.at(-pki.Backdate) + " to " + f.at(pki.DefaultSVIDTTL) + " (expired)"},
			stderr: fmt.Sprintf("meshfed: inspect cert: %s: verification failed: x509svid: could not verify leaf certificate: "+
				"x509: certificate has expired or is not yet valid: current time %s is after %s\n", f.svid, f.at(2*time.Hour), f.at(pki.DefaultSVIDTTL)),
		},
		{
			name:      "two files fail",
			args:      []string{"inspect", "cert", f.svid, f.svid, "--root", f.otherRoot, "--at", now},
			code:      1,
			stdoutHas: []string{"Verification: FAILED (X.509-SVID, against " + f.otherRoot + ")"},
			stderr:    "meshfed: inspect cert: " + f.svid + ": verification failed: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority (and 1 more file failed)\n",
		},
		{
			name:       "malformed PEM",
			args:       []string{"inspect", "cert", f.malformed},
			code:       1,
			stdoutNone: true,
			stderr:     "meshfed: inspect cert: " + f.malformed + ": pemfile: certificates: malformed PEM block after 0 good block(s): bad base64, headers or END line\n",
		},
		{
			name:       "a key, not a certificate",
			args:       []string{"inspect", "cert", f.svid, f.notCert},
			code:       1,
			stdoutNone: true,
			stderr:     "meshfed: inspect cert: " + f.notCert + `: pemfile: block 1 is "PRIVATE KEY", want "CERTIFICATE"` + "\n",
		},
		{
			name:       "too large",
			args:       []string{"inspect", "cert", f.tooLarge},
			code:       1,
			stdoutNone: true,
			stderr:     fmt.Sprintf("meshfed: inspect cert: pemfile: %s: input exceeds size limit of %d bytes\n", f.tooLarge, pemfile.MaxChainBytes),
		},
		{
			name:       "missing file",
			args:       []string{"inspect", "cert", f.missingFile},
			code:       1,
			stdoutNone: true,
			stderr:     "meshfed: inspect cert: pemfile: open " + f.missingFile + ": no such file or directory\n",
		},
		{
			name:       "a leaf given as the bundle",
			args:       []string{"inspect", "cert", f.svid, "--root", f.svid},
			code:       1,
			stdoutNone: true,
			stderr:     "meshfed: inspect: " + f.svid + ": certificate 1 (" + reviews + ") is not a CA certificate; trust anchors are the roots (or CAs) that sign chains, not leaves\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(tt.args...)
			if code != tt.code || stderr != tt.stderr {
				t.Errorf("exit %d, stderr %q\nwant exit %d, stderr %q", code, stderr, tt.code, tt.stderr)
			}
			if tt.stdoutNone && stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			lines := strings.Split(stdout, "\n")
			for _, want := range tt.stdoutHas {
				if !contains(lines, want) {
					t.Errorf("stdout lacks the line %q:\n%s", want, stdout)
				}
			}
			if leaksKey(stdout+stderr, f.svidKeyPEM) {
				t.Errorf("output holds private key material")
			}
		})
	}
}

// leaksKey reports whether any base64 line of a PEM private key appears in
// out.
func leaksKey(out string, keyPEM []byte) bool {
	for _, l := range strings.Split(string(keyPEM), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") && strings.Contains(out, l) {
			return true
		}
	}
	return false
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// certJSON is the part of inspect cert's JSON a script would read.
type certJSON struct {
	Files []struct {
		Source       string `json:"source"`
		Certificates []struct {
			Position    int    `json:"position"`
			Role        string `json:"role"`
			SPIFFEID    string `json:"spiffe_id"`
			TrustDomain string `json:"trust_domain"`
			Validity    string `json:"validity"`
			SVID        struct {
				Status string `json:"status"`
			} `json:"svid"`
		} `json:"certificates"`
		Verdict *struct {
			Status   string `json:"status"`
			SPIFFEID string `json:"spiffe_id"`
		} `json:"verdict"`
	} `json:"files"`
}

func TestInspectCertJSON(t *testing.T) {
	f := newInspectFiles(t)
	code, stdout, stderr := run("inspect", "cert", f.svid, f.root, "--bundle", f.eastBundle, "--at", f.at(0), "-o", "json")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var got certJSON
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	if len(got.Files) != 2 || len(got.Files[0].Certificates) != 2 || len(got.Files[1].Certificates) != 1 {
		t.Fatalf("files = %+v, want 2 (2 certificates, then 1)", got.Files)
	}
	leaf, inter, root := got.Files[0].Certificates[0], got.Files[0].Certificates[1], got.Files[1].Certificates[0]
	if leaf.SPIFFEID != reviews || leaf.TrustDomain != "east.example" || leaf.Role != "leaf" || leaf.Validity != "valid" || leaf.SVID.Status != "conforms" {
		t.Errorf("leaf = %+v", leaf)
	}
	if inter.Position != 1 || inter.SPIFFEID != "spiffe://east.example" || inter.Role != "intermediate CA" {
		t.Errorf("intermediate = %+v", inter)
	}
	if root.SPIFFEID != "" || root.Role != "root CA" {
		t.Errorf("root = %+v", root)
	}
	if v := got.Files[0].Verdict; v == nil || v.Status != "ok" || v.SPIFFEID != reviews {
		t.Errorf("verdict on the SVID = %+v, want ok for %s", v, reviews)
	}
	// The root is itself a trust anchor of the bundle.
	if v := got.Files[1].Verdict; v == nil || v.Status != "ok" || v.SPIFFEID != "" {
		t.Errorf("verdict on the root = %+v, want ok as plain X.509", v)
	}

	code, stdout, _ = run("inspect", "cert", f.svid, "-o", "yaml")
	if code != 0 || !strings.Contains(stdout, "spiffe_id: "+reviews+"\n") {
		t.Errorf("yaml: exit %d\n%s", code, stdout)
	}
}

func TestInspectUsageErrors(t *testing.T) {
	f := newInspectFiles(t)
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"inspect", "cert"}, "meshfed: meshfed inspect cert takes one or more certificate files (see 'meshfed inspect cert --help')\n"},
		{[]string{"inspect", "nope"}, `meshfed: unknown command "nope" for "meshfed inspect" (see 'meshfed inspect --help')` + "\n"},
		{[]string{"inspect", "cert", f.svid, "--bundle", f.eastBundle, "--root", f.root}, "meshfed: inspect cert: give --bundle or --root, not both\n"},
		{[]string{"inspect", "cert", f.svid, "--at", "yesterday"}, `meshfed: inspect cert: --at "yesterday" is not an RFC 3339 time such as 2030-01-01T00:00:00Z` + "\n"},
		{[]string{"inspect", "cert", f.svid, "-o", "xml"}, `meshfed: inspect cert: unknown output format "xml"; use text, json or yaml` + "\n"},
		{[]string{"inspect", "cert", f.svid, "--trust-domain", "east.example"}, "meshfed: inspect cert: --trust-domain names the trust domain of --bundle or --root; give one of them\n"},
		{[]string{"inspect", "cert", f.svid, "--bundle", f.eastBundle, "--trust-domain", "East Example"}, `meshfed: inspect cert: --trust-domain "East Example": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores` + "\n"},
		{[]string{"inspect", "connect", "reviews.east.example"}, `meshfed: inspect connect: "reviews.east.example" is not HOST:PORT` + "\n"},
		{[]string{"inspect", "connect", "127.0.0.1:1", "--cert", f.svid}, "meshfed: inspect connect: --cert and --key go together\n"},
		{[]string{"inspect", "connect", "127.0.0.1:1", "--timeout", "0s"}, "meshfed: inspect connect: --timeout must be positive, e.g. 5s\n"},
		{[]string{"inspect", "bundle", f.eastBundle, "--endpoint-spiffe-id", reviews}, "meshfed: inspect bundle: --endpoint-bundle and --endpoint-spiffe-id go together (the https_spiffe profile)\n"},
		{[]string{"inspect", "bundle", f.eastBundle, "--endpoint-spiffe-id", reviews, "--endpoint-bundle", f.eastBundle}, "meshfed: inspect bundle: --endpoint-bundle and --endpoint-spiffe-id apply only to an https:// URL\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args[1:], " "), func(t *testing.T) {
			code, stdout, stderr := run(tt.args...)
			if code != 2 || stderr != tt.stderr || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant exit 2, no stdout, stderr %q", code, stdout, stderr, tt.stderr)
			}
		})
	}
}

func TestInspectBundle(t *testing.T) {
	f := newInspectFiles(t)
	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas []string
		stderr    string
	}{
		{
			name: "SPIFFE JSON with its trust domain",
			args: []string{"inspect", "bundle", f.eastBundle, "--trust-domain", "east.example", "--at", f.at(0)},
			stdoutHas: []string{
				"Bundle " + f.eastBundle,
				"  Trust domain:       east.example (given)",
				"  Format:             spiffe",
				"  X.509 authorities:  1",
				"  JWT authorities:    (none)",
				"Certificate 0 (root CA)",
			},
		},
		{
			name: "PEM intermediate, trust domain inferred",
			args: []string{"inspect", "bundle", f.intermed},
			stdoutHas: []string{
				"  Trust domain:       east.example (inferred from the CA certificates' URI SAN)",
				"  SPIFFE ID:          spiffe://east.example",
			},
		},
		{
			name:   "trust domain cannot be inferred",
			args:   []string{"inspect", "bundle", f.root},
			code:   1,
			stderr: "meshfed: inspect: cannot tell which trust domain " + f.root + " is for: the trust domain of the bundle is unknown: CA certificate 1 (CN=meshfed root CA,O=meshfed) has no single spiffe:// URI SAN (no URI SAN); pass --trust-domain\n",
		},
		{
			name:   "malformed",
			args:   []string{"inspect", "bundle", f.malformed, "--trust-domain", "east.example"},
			code:   1,
			stderr: "meshfed: inspect: " + f.malformed + ": bundle: pemfile: certificates: malformed PEM block after 0 good block(s): bad base64, headers or END line\n",
		},
		{
			name:   "plain http endpoint",
			args:   []string{"inspect", "bundle", "http://bundle.east.example/"},
			code:   1,
			stderr: `meshfed: inspect: bundle endpoint "http://bundle.east.example/" is not an https:// URL` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(tt.args...)
			if code != tt.code || stderr != tt.stderr {
				t.Errorf("exit %d, stderr %q\nwant exit %d, stderr %q", code, stderr, tt.code, tt.stderr)
			}
			lines := strings.Split(stdout, "\n")
			for _, want := range tt.stdoutHas {
				if !contains(lines, want) {
					t.Errorf("stdout lacks the line %q:\n%s", want, stdout)
				}
			}
		})
	}

	code, stdout, _ := run("inspect", "bundle", f.eastBundle, "--trust-domain", "east.example", "-o", "json")
	var got struct {
		TrustDomain     string `json:"trust_domain"`
		X509Authorities []struct {
			Subject string `json:"subject"`
		} `json:"x509_authorities"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 0 {
		t.Fatalf("exit %d, %v:\n%s", code, err, stdout)
	}
	if got.TrustDomain != "east.example" || len(got.X509Authorities) != 1 || got.X509Authorities[0].Subject != "CN=meshfed root CA,O=meshfed" {
		t.Errorf("json = %+v", got)
	}
}

// TestInspectConnect runs inspect connect against an in-process mTLS server
// that presents the reviews SVID and requires a client certificate.
func TestInspectConnect(t *testing.T) {
	f := newInspectFiles(t)
	leaf := tls.Certificate{PrivateKey: f.svidSigner, Leaf: f.svidChain[0]}
	for _, c := range f.svidChain {
		leaf.Certificate = append(leaf.Certificate, c.Raw)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.rootCert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{leaf},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	chainLines := []string{
		"CONNECTED " + addr + " (SNI reviews.east.example)",
		" 0 s:(empty)",
		"   i:CN=east.example intermediate CA,O=meshfed",
		"   SPIFFE ID: " + reviews + " (trust domain east.example)",
		" 1 s:CN=east.example intermediate CA,O=meshfed",
		"   SPIFFE ID: spiffe://east.example (trust domain east.example)",
		"Client certificate: sent (" + reviews + ")",
	}
	base := []string{"inspect", "connect", addr, "--server-name", "reviews.east.example", "--cert", f.svid, "--key", f.svidKey, "--at", f.at(0)}

	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas []string
		stderr    string
	}{
		{
			name:      "not verified",
			args:      base,
			stdoutHas: append(chainLines, "Verification: NOT VERIFIED"),
		},
		{
			name:      "verified with its own trust domain's bundle",
			args:      append(base, "--bundle", f.eastBundle, "--trust-domain", "east.example"),
			stdoutHas: append(chainLines, "Verification: OK (X.509-SVID, against "+f.eastBundle+")", "  SPIFFE ID:          "+reviews),
		},
		{
			name:      "another trust domain's bundle",
			args:      append(base, "--bundle", f.eastBundle, "--trust-domain", "west.example"),
			code:      1,
			stdoutHas: append(chainLines, "Verification: FAILED (X.509-SVID, against "+f.eastBundle+")"),
			stderr: "meshfed: inspect connect: " + addr + `: verification failed: the leaf ` + reviews + ` is in trust domain "east.example" but ` +
				f.eastBundle + ` is the bundle of trust domain "west.example"; verify a peer only with its own trust domain's bundle` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(tt.args...)
			if code != tt.code || stderr != tt.stderr {
				t.Errorf("exit %d, stderr %q\nwant exit %d, stderr %q", code, stderr, tt.code, tt.stderr)
			}
			lines := strings.Split(stdout, "\n")
			for _, want := range tt.stdoutHas {
				if !contains(lines, want) {
					t.Errorf("stdout lacks the line %q:\n%s", want, stdout)
				}
			}
			if leaksKey(stdout+stderr, f.svidKeyPEM) {
				t.Errorf("output holds private key material")
			}
		})
	}

	code, stdout, _ := run(append(base, "-o", "json")...)
	var got struct {
		TLSVersion   string `json:"tls_version"`
		Certificates []struct {
			SPIFFEID string `json:"spiffe_id"`
		} `json:"certificates"`
		Verdict struct {
			Status string `json:"status"`
		} `json:"verdict"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 0 {
		t.Fatalf("exit %d, %v:\n%s", code, err, stdout)
	}
	if got.TLSVersion != "TLS 1.3" || len(got.Certificates) != 2 || got.Certificates[0].SPIFFEID != reviews || got.Verdict.Status != "not_verified" {
		t.Errorf("json = %+v", got)
	}

	// Refused: a port that was just closed.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := closed.Addr().String()
	closed.Close()
	code, stdout, stderr := run("inspect", "connect", gone)
	want := "meshfed: inspect: connect " + gone + ": dial tcp " + gone + ": connect: connection refused\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, stdout, stderr, want)
	}
}
