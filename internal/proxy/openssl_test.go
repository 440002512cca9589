package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The seed's six TLS 1.2 suites in OpenSSL's names, with the key type of
// the server certificate each needs.
var seedSuites = []struct {
	openssl string
	id      uint16
	kt      pki.KeyType
}{
	{"ECDHE-ECDSA-AES256-GCM-SHA384", tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, pki.ECP256},
	{"ECDHE-RSA-AES256-GCM-SHA384", tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, pki.RSA2048},
	{"ECDHE-ECDSA-AES128-GCM-SHA256", tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, pki.ECP256},
	{"ECDHE-RSA-AES128-GCM-SHA256", tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, pki.RSA2048},
	{"AES256-GCM-SHA384", tls.TLS_RSA_WITH_AES_256_GCM_SHA384, pki.RSA2048},
	{"AES128-GCM-SHA256", tls.TLS_RSA_WITH_AES_128_GCM_SHA256, pki.RSA2048},
}

// Suites OpenSSL offers and Go implements that the mesh does not allow.
var unlistedSuites = []struct {
	openssl string
	kt      pki.KeyType
}{
	{"ECDHE-RSA-CHACHA20-POLY1305", pki.RSA2048},
	{"ECDHE-ECDSA-CHACHA20-POLY1305", pki.ECP256},
	{"AES128-SHA", pki.RSA2048},
	{"ECDHE-RSA-AES128-SHA256", pki.RSA2048},
}

// tls11 makes OpenSSL 3 offer TLS 1.1 at all: at its default security level
// it refuses to, and the test would pass without asking the proxy.
var tls11 = []string{"-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"}

func opensslPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed, so the proxy's TLS is not checked against an independent peer: run ./scripts/install-deps, or apt-get install openssl")
	}
	return p
}

// pemFiles writes an SVID's chain, its key and a root to dir for OpenSSL.
func pemFiles(t *testing.T, dir, name string, svid *x509svid.SVID, root *x509.Certificate) (cert, key, ca string) {
	t.Helper()
	var certs, roots bytes.Buffer
	for _, c := range svid.Certificates {
		_ = pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	_ = pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, ca = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"), filepath.Join(dir, name+"-ca.pem")
	for path, data := range map[string][]byte{cert: certs.Bytes(), key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), ca: roots.Bytes()} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, key, ca
}

// serveProxy runs an mTLS listener of ServerTLS that answers each
// connection with "hello" and returns its address.
func serveProxy(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	return serve(t, cfg, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("hello\n")); err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	})
}

func sClient(t *testing.T, addr, cert, key, ca string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{"s_client", "-connect", addr, "-cert", cert, "-key", key, "-CAfile", ca, "-verify_return_error", "-brief"}, args...)
	cmd := exec.CommandContext(ctx, opensslPath(t), argv...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("openssl %s: %v", strings.Join(argv, " "), err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// TestOpenSSLClient has `openssl s_client` dial ServerTLS.
func TestOpenSSLClient(t *testing.T) {
	opensslPath(t)
	dir := t.TempDir()
	type side struct{ addr, cert, key, ca string }
	sides := map[pki.KeyType]side{}
	for i, kt := range []pki.KeyType{pki.ECP256, pki.RSA2048} {
		w := newWorld(t, kt)
		addr := serveProxy(t, proxy.ServerTLS(w.source(w.caA.svid(t, idBackend, kt, 2, pkix.Name{})), authorizeID(idFrontend)))
		cert, key, ca := pemFiles(t, dir, "client"+string(rune('0'+i)), w.caA.svid(t, idFrontend, kt, 3, pkix.Name{}), w.caA.root)
		sides[kt] = side{addr, cert, key, ca}
	}
	for _, s := range seedSuites {
		t.Run("accepts "+s.openssl, func(t *testing.T) {
			sd := sides[s.kt]
			out, code := sClient(t, sd.addr, sd.cert, sd.key, sd.ca, "-tls1_2", "-cipher", s.openssl)
			if code != 0 || !strings.Contains(out, "Ciphersuite: "+s.openssl) || !strings.Contains(out, "Protocol version: TLSv1.2") {
				t.Fatalf("exit %d:\n%s", code, out)
			}
		})
	}
	for _, s := range unlistedSuites {
		t.Run("refuses "+s.openssl, func(t *testing.T) {
			sd := sides[s.kt]
			out, code := sClient(t, sd.addr, sd.cert, sd.key, sd.ca, "-tls1_2", "-cipher", s.openssl)
			if code == 0 || !strings.Contains(out, "alert handshake failure") {
				t.Fatalf("want the proxy's handshake_failure alert; exit %d:\n%s", code, out)
			}
		})
	}
	t.Run("refuses TLS 1.1", func(t *testing.T) {
		sd := sides[pki.ECP256]
		out, code := sClient(t, sd.addr, sd.cert, sd.key, sd.ca, tls11...)
		if code == 0 || !strings.Contains(out, "alert protocol version") {
			t.Fatalf("want the proxy's protocol_version alert; exit %d:\n%s", code, out)
		}
	})
	t.Run("refuses a client without a certificate", func(t *testing.T) {
		sd := sides[pki.ECP256]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, opensslPath(t), "s_client", "-connect", sd.addr, "-tls1_2", "-brief")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "alert") {
			t.Fatalf("want an alert and a failure; err %v:\n%s", err, out)
		}
	})
}

// sServer starts `openssl s_server` with args and returns its address.
func sServer(t *testing.T, cert, key, ca string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	argv := append([]string{"s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key, "-CAfile", ca, "-Verify", "1", "-verify_return_error"}, args...)
	cmd := exec.CommandContext(ctx, opensslPath(t), argv...)
	// s_server stops at the end of its stdin: hold it open until cleanup.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if port, ok := strings.CutPrefix(lines.Text(), "ACCEPT "); ok {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			_, p, err := net.SplitHostPort(port)
			if err != nil {
				t.Fatalf("s_server said %q", lines.Text())
			}
			return net.JoinHostPort("127.0.0.1", p)
		}
	}
	cancel()
	_ = cmd.Wait()
	t.Fatalf("openssl s_server did not start: %s", stderr.String())
	return ""
}

// TestOpenSSLServer has ClientTLS dial `openssl s_server`.
func TestOpenSSLServer(t *testing.T) {
	opensslPath(t)
	dir := t.TempDir()
	type side struct {
		client        *tls.Config
		cert, key, ca string
	}
	sides := map[pki.KeyType]side{}
	for i, kt := range []pki.KeyType{pki.ECP256, pki.RSA2048} {
		w := newWorld(t, kt)
		cert, key, ca := pemFiles(t, dir, "server"+string(rune('0'+i)), w.caA.svid(t, idBackend, kt, 2, pkix.Name{}), w.caA.root)
		client := proxy.ClientTLS(w.source(w.caA.svid(t, idFrontend, kt, 3, pkix.Name{})), tlsconfig.AuthorizeID(mustID(idBackend)))
		sides[kt] = side{client, cert, key, ca}
	}
	dial := func(t *testing.T, cfg *tls.Config, addr string) (tls.ConnectionState, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg.Clone()}
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer c.Close()
		return c.(*tls.Conn).ConnectionState(), nil
	}
	for _, s := range seedSuites {
		t.Run("accepts "+s.openssl, func(t *testing.T) {
			sd := sides[s.kt]
			addr := sServer(t, sd.cert, sd.key, sd.ca, "-tls1_2", "-cipher", s.openssl)
			cs, err := dial(t, sd.client, addr)
			if err != nil {
				t.Fatal(err)
			}
			if cs.Version != tls.VersionTLS12 || cs.CipherSuite != s.id {
				t.Fatalf("negotiated %s %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
			}
			if got := peerID(t, cs); got != idBackend {
				t.Fatalf("server is %s", got)
			}
		})
	}
	for _, s := range unlistedSuites {
		t.Run("refuses "+s.openssl, func(t *testing.T) {
			sd := sides[s.kt]
			addr := sServer(t, sd.cert, sd.key, sd.ca, "-tls1_2", "-cipher", s.openssl)
			// The proxy never offers the suite, so s_server finds none shared.
			if _, err := dial(t, sd.client, addr); err == nil || !strings.Contains(err.Error(), "handshake failure") {
				t.Fatalf("want a handshake failure, got %v", err)
			}
		})
	}
	t.Run("refuses TLS 1.1", func(t *testing.T) {
		sd := sides[pki.ECP256]
		addr := sServer(t, sd.cert, sd.key, sd.ca, tls11...)
		_, err := dial(t, sd.client, addr)
		if err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("want a protocol version refusal, got %v", err)
		}
	})
}
