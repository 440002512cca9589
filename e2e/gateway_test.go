package e2e

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
)

// TestGatewayThirdPartyRoot is the "mutual TLS with a third-party root"
// walkthrough (docs/gateways.md) with meshfed's offline CA instead of step:
// a root both sides trust, a client certificate for cluster A and a server
// certificate for cluster B, then one `meshfed proxy` as cluster B's ingress
// gateway (MUTUAL, http, to the helloworld app) and one as cluster A's
// egress (TLS origination with the client certificate). Plain HTTP into the
// egress reaches the app over mutual TLS; a client without a certificate
// is turned away at the ingress; a renewed server certificate is served
// without a restart.
func TestGatewayThirdPartyRoot(t *testing.T) {
	dir := t.TempDir()
	meshfed(t, dir, "ca", "create-root", "--out", "root", "--common-name", "a-b-root-ca", "--key-type", "rsa-2048", "--ttl", "87600h")
	meshfed(t, dir, "ca", "issue", "--ca", "root", "--san", "helloworld.zufar.io", "--common-name", "cluster-a-client",
		"--key-type", "rsa-2048", "--ttl", "8760h", "--out", "cluster-a-client")
	meshfed(t, dir, "ca", "issue", "--ca", "root", "--san", "helloworld.zufar.io", "--common-name", "cluster-b-server",
		"--key-type", "rsa-2048", "--ttl", "8760h", "--out", "cluster-b-server")
	clientCert := readCert(t, filepath.Join(dir, "cluster-a-client", "cert.pem"))

	// The helloworld app of cluster B: plain HTTP on loopback, reporting
	// the Host and X-Forwarded-Client-Cert it was given.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprintf(w, "hello from helloworld: host=%s path=%s xfcc=%s\n", r.Host, r.URL.Path, strings.Join(r.Header.Values("X-Forwarded-Client-Cert"), "|"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	inPort, outPort := freePort(t), freePort(t)
	// Paths are relative to each file's directory.
	writeFile(t, filepath.Join(dir, "cluster-b", "ingress.yaml"), fmt.Sprintf(`gateways:
  ingress:
  - name: helloworld-ingress
    listen: 127.0.0.1:%d
    protocol: http
    tls: {mode: MUTUAL, server_certificate: ../cluster-b-server/cert.pem, private_key: ../cluster-b-server/key.pem, ca_certificates: ../root/ca.pem}
    routes:
    - {hosts: [helloworld.zufar.io], backend: %q}
limits: {drain_timeout: 10s}
`, inPort, appLn.Addr().String()))
	writeFile(t, filepath.Join(dir, "cluster-a", "egress.yaml"), fmt.Sprintf(`gateways:
  egress:
  - name: helloworld-egress
    listen: 127.0.0.1:%d
    upstream: 127.0.0.1:%d
    protocol: http
    tls:
      mode: MUTUAL
      client_certificate: ../cluster-a-client/cert.pem
      private_key: ../cluster-a-client/key.pem
      ca_certificates: ../root/ca.pem
      sni: helloworld.zufar.io
      subject_alt_names: [helloworld.zufar.io]
`, outPort, inPort))
	ingress := startDaemon(t, dir, "ingress proxy", meshfedBin, "proxy", "--config", filepath.Join("cluster-b", "ingress.yaml"))
	egress := startDaemon(t, dir, "egress proxy", meshfedBin, "proxy", "--config", filepath.Join("cluster-a", "egress.yaml"))
	for _, p := range []struct {
		d    *daemon
		line string
	}{
		{ingress, fmt.Sprintf("meshfed proxy (gateways only): ingress gateway helloworld-ingress 127.0.0.1:%d -> %s (MUTUAL)", inPort, appLn.Addr())},
		{egress, fmt.Sprintf("meshfed proxy (gateways only): egress gateway helloworld-egress 127.0.0.1:%d -> 127.0.0.1:%d (MUTUAL)", outPort, inPort)},
	} {
		testsync.EventuallyWithin(t, 60*time.Second, p.d.name+" to start", func() bool {
			p.d.mustRun(t)
			return strings.Contains(p.d.logs.String(), p.line)
		})
	}

	// Cluster A's client speaks plain HTTP to http://helloworld.zufar.io;
	// the egress upgrades the connection to mutual TLS.
	sum := sha256.Sum256(clientCert.Raw)
	wantXFCC := fmt.Sprintf(`Hash=%s;Subject="CN=cluster-a-client";DNS=helloworld.zufar.io`, hex.EncodeToString(sum[:]))
	out, code := curl(t, dir, "-sS", "--max-time", "10", "--connect-to", fmt.Sprintf("helloworld.zufar.io:80:127.0.0.1:%d", outPort),
		"-H", "X-Forwarded-Client-Cert: By=spiffe://forged/gw;URI=spiffe://forged/admin", "http://helloworld.zufar.io/hello")
	if want := "hello from helloworld: host=helloworld.zufar.io path=/hello xfcc=" + wantXFCC + "\n"; code != 0 || out != want {
		t.Fatalf("curl through the egress: exit %d\n got %q\nwant %q", code, out, want)
	}

	// The ingress on its own, as an outside client with the certificate sees it.
	resolve := fmt.Sprintf("helloworld.zufar.io:%d:127.0.0.1", inPort)
	url := fmt.Sprintf("https://helloworld.zufar.io:%d/direct", inPort)
	out, code = curl(t, dir, "-sS", "--max-time", "10", "--resolve", resolve, "--cacert", "root/ca.pem",
		"--cert", "cluster-a-client/cert.pem", "--key", "cluster-a-client/key.pem", url)
	if want := "hello from helloworld: host=helloworld.zufar.io:" + fmt.Sprint(inPort) + " path=/direct xfcc=" + wantXFCC + "\n"; code != 0 || out != want {
		t.Fatalf("curl with the client certificate: exit %d\n got %q\nwant %q", code, out, want)
	}
	// Without a client certificate: refused.
	if out, code := curl(t, dir, "-sS", "--max-time", "10", "--resolve", resolve, "--cacert", "root/ca.pem", url); code == 0 {
		t.Fatalf("curl without a client certificate succeeded: %q", out)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "root", "ca.pem")))
	if line, err := tlsFirstLine(fmt.Sprintf("127.0.0.1:%d", inPort), &tls.Config{RootCAs: roots, ServerName: "helloworld.zufar.io"}); err == nil ||
		!strings.Contains(err.Error(), "tls: certificate required") {
		t.Fatalf("TLS without a client certificate: read %q, %v; want the certificate_required alert", line, err)
	}
	if n := served.Load(); n != 2 {
		t.Errorf("the app served %d requests, want 2", n)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the access log lines", func() bool {
		in, eg := ingress.logs.String(), egress.logs.String()
		return strings.Contains(in, `msg=request listener=helloworld-ingress`) && strings.Contains(in, `peer="CN=cluster-a-client" method=GET host=helloworld.zufar.io path=/hello proto=HTTP/1.1 status=200`) &&
			strings.Contains(in, "result=handshake_failed error=\"tls: client didn't provide a certificate\"") &&
			strings.Contains(eg, `listener=helloworld-egress`) && strings.Contains(eg, `peer="CN=cluster-b-server"`) && strings.Contains(eg, "result=ok")
	})

	// Renewal: a new server certificate in the same files is served
	// without a restart.
	meshfed(t, dir, "ca", "issue", "--ca", "root", "--san", "helloworld.zufar.io", "--common-name", "cluster-b-server",
		"--key-type", "rsa-2048", "--ttl", "8760h", "--out", "cluster-b-server", "--force")
	renewed := readCert(t, filepath.Join(dir, "cluster-b-server", "cert.pem"))
	clientPair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cluster-a-client", "cert.pem"), filepath.Join(dir, "cluster-a-client", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	testsync.EventuallyWithin(t, 20*time.Second, "the renewed server certificate", func() bool {
		c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inPort), &tls.Config{RootCAs: roots, ServerName: "helloworld.zufar.io", Certificates: []tls.Certificate{clientPair}})
		if err != nil {
			t.Fatalf("handshake with the ingress: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Equal(renewed)
	})
	testsync.EventuallyWithin(t, 10*time.Second, "the reload log line", func() bool {
		return strings.Contains(ingress.logs.String(), "gateway certificate files reloaded")
	})

	for _, d := range []*daemon{egress, ingress} {
		d.stop(t)
		if err := <-d.done; err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want 0", d.name, err)
		}
		d.done <- nil
		if strings.Contains(d.logs.String(), "PRIVATE KEY") {
			t.Errorf("%s logged key material", d.name)
		}
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tlsFirstLine dials addr with TLS and reads one line: in TLS 1.3 a server's
// refusal of the client certificate arrives on the first read.
func tlsFirstLine(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: helloworld.zufar.io\r\n\r\n")
	return bufio.NewReader(c).ReadString('\n')
}
