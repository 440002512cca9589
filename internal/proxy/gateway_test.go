package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ---- Test PKI and helpers ----

// gwLeaf is a TLS leaf from a test CA, with its PEM files in a directory.
type gwLeaf struct {
	chain     []*x509.Certificate
	cert, key string // file paths
	tls       tls.Certificate
}

// gwIssue issues a leaf for names from ca with key slot slot and writes
// it to dir/name-cert.pem and dir/name-key.pem.
func gwIssue(t *testing.T, ca *testCA, slot int, dir, name string, ttl time.Duration, names ...string) gwLeaf {
	t.Helper()
	return gwIssueKey(t, ca, pki.ECP256, slot, dir, name, ttl, names...)
}

// gwIssueKey is gwIssue with a key of type kt.
func gwIssueKey(t *testing.T, ca *testCA, kt pki.KeyType, slot int, dir, name string, ttl time.Duration, names ...string) gwLeaf {
	t.Helper()
	k := key(t, kt, slot)
	chain, err := ca.ca.SignLeaf(pki.LeafRequest{PublicKey: k.Public(), DNSNames: names, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pemfile.EncodePrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	l := gwLeaf{chain: chain, cert: filepath.Join(dir, name+"-cert.pem"), key: filepath.Join(dir, name+"-key.pem")}
	gwWrite(t, l.cert, pemfile.EncodeCertificates(chain...))
	gwWrite(t, l.key, keyPEM)
	l.tls = tls.Certificate{PrivateKey: k, Leaf: chain[0]}
	for _, c := range chain {
		l.tls.Certificate = append(l.tls.Certificate, c.Raw)
	}
	return l
}

// gwMtime is bumped for every file a test (re)writes, so that each write
// has a modification time of its own whatever the file system's
// granularity.
var gwMtime atomic.Int64

func gwWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_700_000_000+gwMtime.Add(1), 0)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func gwRootFile(t *testing.T, dir, name string, ca *testCA) string {
	t.Helper()
	p := filepath.Join(dir, name)
	gwWrite(t, p, pemfile.EncodeCertificates(ca.root))
	return p
}

func gwPool(ca *testCA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// gwClock is a clock the test moves.
type gwClock struct{ ns atomic.Int64 }

func newGWClock() *gwClock {
	c := &gwClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *gwClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *gwClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// gwLogs receives the sidecar's log lines on a channel.
type gwLogs struct{ ch chan string }

func (l *gwLogs) Write(p []byte) (int, error) {
	l.ch <- string(p)
	return len(p), nil
}

// wait returns the next log line holding every want, failing the test if
// none comes within waitBudget.
func (l *gwLogs) wait(t *testing.T, wants ...string) string {
	t.Helper()
	timeout := time.After(waitBudget)
	for {
		select {
		case line := <-l.ch:
			ok := true
			for _, w := range wants {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line with %q", wants)
			return ""
		}
	}
}

// gwRunning is a sidecar running only gateways.
type gwRunning struct {
	s    *proxy.Sidecar
	logs *gwLogs
	stop func(t *testing.T) // cancels Run and waits for it
}

func (r *gwRunning) addr(t *testing.T, name string) string {
	t.Helper()
	for _, l := range r.s.Listeners() {
		if l.Name == name {
			return l.Addr
		}
	}
	t.Fatalf("no listener %s", name)
	return ""
}

// startGateways runs gc on loopback until the test ends, and checks that
// the sidecar then drains well within its drain timeout: idle keep-alive
// connections must not hold it.
func startGateways(t *testing.T, gc proxy.GatewaysConfig, before ...func(*proxy.Sidecar)) *gwRunning {
	t.Helper()
	for i := range gc.Ingress {
		gc.Ingress[i].Listen = "127.0.0.1:0"
	}
	for i := range gc.Egress {
		gc.Egress[i].Listen = "127.0.0.1:0"
	}
	logs := &gwLogs{ch: make(chan string, 4096)}
	s, err := proxy.New(proxy.Config{Gateways: gc, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Limits: proxy.LimitsConfig{DrainTimeout: duration.Duration(time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range before {
		f(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func(t *testing.T) {
		t.Helper()
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(waitBudget):
				t.Error("the gateways did not drain within the test's budget (the drain timeout is a minute)")
			}
		})
	}
	t.Cleanup(func() { stop(t) })
	return &gwRunning{s: s, logs: logs, stop: stop}
}

// gwBackend answers each connection with its name and a newline, then
// echoes what it reads.
func gwBackend(t *testing.T, name string) string {
	t.Helper()
	return serve(t, nil, func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(c, c)
	})
}

// gwDial opens TLS to addr and returns the first line the far side sends,
// or the first error of the handshake or the read.
func gwDial(t *testing.T, addr string, cfg *tls.Config) (line string, cs tls.ConnectionState, err error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, waitBudget)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(waitBudget))
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		return "", tls.ConnectionState{}, err
	}
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake is done: a refusal arrives on the first read.
	line, err = bufio.NewReader(tc).ReadString('\n')
	return line, tc.ConnectionState(), err
}

// ---- Ingress ----

func TestGatewayIngressMutual(t *testing.T) {
	dir := t.TempDir()
	root, other := newCA(t, pki.ECP256, 10, "third-party root"), newCA(t, pki.ECP256, 11, "another root")
	server := gwIssue(t, root, 12, dir, "server", 0, "echo.example.com")
	client := gwIssue(t, root, 13, dir, "client", 0, "client.example.com")
	stranger := gwIssue(t, other, 14, dir, "stranger", 0, "client.example.com")
	r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{{
		Name: "mutual",
		TLS: proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key,
			CACertificates: gwRootFile(t, dir, "root.pem", root)},
		Routes: []proxy.IngressRoute{{Hosts: []string{"echo.example.com"}, Backend: gwBackend(t, "echo")}},
	}}})
	if got := r.s.Listeners(); len(got) != 1 || got[0].Gateway != "ingress" || got[0].TLSMode != "MUTUAL" || got[0].Target == "" || got[0].Inbound {
		t.Fatalf("Listeners() = %+v", got)
	}
	addr := r.addr(t, "mutual")
	cases := []struct {
		name       string
		certs      []tls.Certificate
		maxVersion uint16
		wantErr    string // what the client sees
		wantLog    []string
	}{
		{"client certificate from the CA", []tls.Certificate{client.tls}, 0, "",
			[]string{"listener=mutual", `peer="CN=client.example.com"`, "result=ok"}},
		{"no client certificate", nil, 0, "tls: certificate required",
			[]string{"listener=mutual", "result=handshake_failed", "tls: client didn't provide a certificate"}},
		{"no client certificate, TLS 1.2", nil, tls.VersionTLS12, "tls: handshake failure",
			[]string{"listener=mutual", "result=handshake_failed", "tls: client didn't provide a certificate"}},
		{"client certificate from another CA", []tls.Certificate{stranger.tls}, 0, "tls: bad certificate",
			[]string{"listener=mutual", "result=handshake_failed",
				"proxy: gateway mutual: client certificate CN=client.example.com does not verify against ca_certificates: x509: certificate signed by unknown authority"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			line, _, err := gwDial(t, addr, &tls.Config{RootCAs: gwPool(root), ServerName: "echo.example.com",
				Certificates: tc.certs, MaxVersion: tc.maxVersion})
			switch {
			case tc.wantErr == "" && (err != nil || line != "echo\n"):
				t.Fatalf("got %q, %v; want the backend's greeting", line, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %q, %v; want an error with %q", line, err, tc.wantErr)
			}
			r.logs.wait(t, tc.wantLog...)
		})
	}
}

func TestGatewayIngressSNIRouting(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	server := gwIssue(t, root, 12, dir, "server", 0, "gateway.example.com")
	r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{{
		Name: "sni",
		TLS:  proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: server.cert, PrivateKey: server.key},
		Routes: []proxy.IngressRoute{
			{Hosts: []string{"a.example.com"}, Backend: gwBackend(t, "exact")},
			{Hosts: []string{"*.example.com"}, Backend: gwBackend(t, "wildcard")},
			{Hosts: []string{"*.deep.example.com", "b.example.org"}, Backend: gwBackend(t, "deep")},
		},
	}}})
	addr := r.addr(t, "sni")
	cases := []struct{ sni, want string }{
		{"a.example.com", "exact"},
		{"A.Example.COM", "exact"},
		{"x.example.com", "wildcard"},
		{"y.x.example.com", "wildcard"},
		{"z.deep.example.com", "deep"},
		{"b.example.org", "deep"},
		{"example.com", ""},
		{"other.org", ""},
	}
	for _, tc := range cases {
		t.Run(tc.sni, func(t *testing.T) {
			// Routing only: the server's name is not what is under test.
			line, _, err := gwDial(t, addr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
			if tc.want != "" {
				if err != nil || line != tc.want+"\n" {
					t.Fatalf("got %q, %v; want %s", line, err, tc.want)
				}
				r.logs.wait(t, "listener=sni", "result=ok")
				return
			}
			if err == nil || !strings.Contains(err.Error(), "tls: unrecognized name") {
				t.Fatalf("got %q, %v; want an unrecognized_name alert", line, err)
			}
			r.logs.wait(t, "listener=sni", "result=no_route", fmt.Sprintf(`no route for SNI \"%s\"`, tc.sni))
		})
	}
}

func TestGatewayIngressHTTP(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	server := gwIssue(t, root, 12, dir, "server", 0, "hello.example.com", "other.example.com")
	client := gwIssue(t, root, 13, dir, "client", 0, "client.example.com")
	app := func(name string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s host=%s xfcc=%q proto=%s", name, r.Host, r.Header.Values("X-Forwarded-Client-Cert"), r.Header.Get("X-Forwarded-Proto"))
		}), ReadHeaderTimeout: waitBudget}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	hello, other := app("hello"), app("other")
	routes := []proxy.IngressRoute{{Hosts: []string{"hello.example.com"}, Backend: hello}, {Hosts: []string{"*.example.com"}, Backend: other}}
	r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{
		{Name: "mutual-http", Protocol: "http", Routes: routes,
			TLS: proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key,
				CACertificates: gwRootFile(t, dir, "root.pem", root)}},
		{Name: "simple-http", Protocol: "http", Routes: routes,
			TLS: proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: server.cert, PrivateKey: server.key}},
	}})
	xfcc := proxy.XFCC(spiffeid.ID{}, client.chain[0])
	const forged = `By=spiffe://evil.example/gw;URI=spiffe://evil.example/ns/x/sa/admin`
	cases := []struct {
		name, listener, host string
		h2, withCert         bool
		status               int
		body                 string
		log                  []string
	}{
		{"exact host, XFCC replaced", "mutual-http", "hello.example.com", false, true, 200,
			fmt.Sprintf("hello host=hello.example.com xfcc=[%q] proto=https", xfcc),
			[]string{"listener=mutual-http", "method=GET", "host=hello.example.com", "path=/p", "proto=HTTP/1.1", "status=200", "result=ok", `peer="CN=client.example.com"`}},
		{"wildcard host with port", "mutual-http", "x.example.com:8443", false, true, 200,
			fmt.Sprintf("other host=x.example.com:8443 xfcc=[%q] proto=https", xfcc),
			[]string{"listener=mutual-http", "host=x.example.com", "status=200", "result=ok"}},
		{"h2", "mutual-http", "hello.example.com", true, true, 200,
			fmt.Sprintf("hello host=hello.example.com xfcc=[%q] proto=https", xfcc),
			[]string{"listener=mutual-http", "proto=HTTP/2.0", "status=200", "result=ok"}},
		{"no route", "mutual-http", "nope.example.org", false, true, 404,
			"meshfed gateway: no route for this host\n",
			[]string{"listener=mutual-http", "host=nope.example.org", "status=404", "result=no_route", `no route for host \"nope.example.org\"`}},
		{"SIMPLE strips the client's XFCC", "simple-http", "hello.example.com", false, false, 200,
			"hello host=hello.example.com xfcc=[] proto=https",
			[]string{"listener=simple-http", "status=200", "result=ok", "peer=-"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tlsCfg := &tls.Config{RootCAs: gwPool(root), ServerName: "hello.example.com"}
			if tc.withCert {
				tlsCfg.Certificates = []tls.Certificate{client.tls}
			}
			tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: tc.h2}
			if !tc.h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			req, err := http.NewRequest("GET", "https://"+r.addr(t, tc.listener)+"/p?token=secret", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			req.Header.Set("X-Forwarded-Client-Cert", forged)
			resp, err := (&http.Client{Transport: tr, Timeout: waitBudget}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Fatalf("got %d %q\nwant %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
			if line := r.logs.wait(t, tc.log...); strings.Contains(line, "secret") {
				t.Errorf("the access log holds the query: %s", line)
			}
		})
	}
}

// TestGatewayIngressHTTPUpgrade: an upgraded connection (WebSocket-style)
// keeps flowing after the HTTP server hands it over, and is logged once it
// ends.
func TestGatewayIngressHTTPUpgrade(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	server := gwIssue(t, root, 12, dir, "server", 0, "hello.example.com")
	client := gwIssue(t, root, 13, dir, "client", 0, "client.example.com")
	backend := upgradeEchoApp(t)
	r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{{Name: "upgrade", Protocol: "http",
		TLS: proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key,
			CACertificates: gwRootFile(t, dir, "root.pem", root)},
		Routes: []proxy.IngressRoute{{Hosts: []string{"hello.example.com"}, Backend: backend}},
	}}})
	c, err := tls.Dial("tcp", r.addr(t, "upgrade"), &tls.Config{RootCAs: gwPool(root), ServerName: "hello.example.com",
		Certificates: []tls.Certificate{client.tls}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoUpgrade(t, c, "hello.example.com")
	r.logs.wait(t, "msg=request", "listener=upgrade", "path=/ws", "status=101", "result=ok")
}

// TestGatewayHTTPDrain: on shutdown an http ingress closes idle keep-alive
// connections (HTTP/1.1) and sends GOAWAY (h2) at once, instead of holding
// the sidecar for its drain timeout.
func TestGatewayHTTPDrain(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	server := gwIssue(t, root, 12, dir, "server", 0, "hello.example.com")
	backend := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), ReadHeaderTimeout: waitBudget}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}()
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{{Name: "drain", Protocol: "http",
				TLS:    proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: server.cert, PrivateKey: server.key},
				Routes: []proxy.IngressRoute{{Hosts: []string{"*"}, Backend: backend}},
			}}})
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: gwPool(root), ServerName: "hello.example.com"}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			resp, err := (&http.Client{Transport: tr, Timeout: waitBudget}).Get("https://" + r.addr(t, "drain") + "/")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != map[bool]int{false: 1, true: 2}[h2] {
				t.Fatalf("spoke %s", resp.Proto)
			}
			// The connection stays idle in the transport's pool while
			// the sidecar stops.
			r.stop(t)
			tr.CloseIdleConnections()
		})
	}
}

// ---- Certificate reload ----

func TestGatewayCertificateReload(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	clock := newGWClock()
	first := gwIssue(t, root, 12, dir, "server", 0, "echo.example.com")
	certFile, keyFile := first.cert, first.key
	r := startGateways(t, proxy.GatewaysConfig{Clock: clock.Now, Ingress: []proxy.IngressConfig{{
		Name:   "reload",
		TLS:    proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: certFile, PrivateKey: keyFile},
		Routes: []proxy.IngressRoute{{Hosts: []string{"echo.example.com"}, Backend: gwBackend(t, "echo")}},
	}}})
	addr := r.addr(t, "reload")
	served := func(t *testing.T) *x509.Certificate {
		t.Helper()
		line, cs, err := gwDial(t, addr, &tls.Config{RootCAs: gwPool(root), ServerName: "echo.example.com"})
		if err != nil || line != "echo\n" {
			t.Fatalf("got %q, %v", line, err)
		}
		return cs.PeerCertificates[0]
	}
	if got := served(t); !got.Equal(first.chain[0]) {
		t.Fatalf("serves serial %x, want the first certificate %x", got.SerialNumber, first.chain[0].SerialNumber)
	}

	// A renewal: both files replaced. Within the second, nothing is read.
	second := gwIssue(t, root, 13, t.TempDir(), "renewed", 0, "echo.example.com")
	copyGW := func(from, to string) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		gwWrite(t, to, data)
	}
	copyGW(second.cert, certFile)
	copyGW(second.key, keyFile)
	clock.Advance(999 * time.Millisecond)
	if got := served(t); !got.Equal(first.chain[0]) {
		t.Fatalf("within a second of the last check: serves %x, want the first certificate still", got.SerialNumber)
	}
	clock.Advance(time.Millisecond)
	if got := served(t); !got.Equal(second.chain[0]) {
		t.Fatalf("after the renewal: serves %x, want the renewed certificate %x", got.SerialNumber, second.chain[0].SerialNumber)
	}
	r.logs.wait(t, "gateway certificate files reloaded", "gateway=reload", "serial="+second.chain[0].SerialNumber.Text(16))

	// Bad new files: each keeps the renewed certificate in service.
	third := gwIssue(t, root, 14, t.TempDir(), "third", 0, "echo.example.com")
	expired := gwIssue(t, root, 15, t.TempDir(), "expired", time.Second, "echo.example.com")
	secondKey, err := os.ReadFile(second.key)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	bad := []struct {
		name       string
		cert, key  []byte
		wantLogErr string
	}{
		{"corrupt certificate", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), secondKey,
			"malformed PEM block"},
		{"certificate without its key", read(third.cert), secondKey,
			"is not the key of the certificate in " + certFile},
		{"expired certificate", read(expired.cert), read(expired.key),
			"the certificate in " + certFile + " expired at"},
		{"key file too large", read(second.cert), bytes.Repeat([]byte("k"), pemfile.MaxKeyBytes+1),
			"input exceeds size limit"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			gwWrite(t, certFile, tc.cert)
			gwWrite(t, keyFile, tc.key)
			clock.Advance(time.Minute)
			if got := served(t); !got.Equal(second.chain[0]) {
				t.Fatalf("serves %x, want the last good certificate %x", got.SerialNumber, second.chain[0].SerialNumber)
			}
			line := r.logs.wait(t, "do not load; keeping the last good ones", "gateway=reload", tc.wantLogErr)
			if strings.Contains(line, "PRIVATE KEY") || strings.Contains(line, "kkkk") {
				t.Fatalf("the log holds key material: %s", line)
			}
		})
	}
}

// ---- Egress ----

// gwUpstream is an external TLS server that requires a client certificate
// from ca and answers with the client certificate's subject, then echoes.
func gwUpstream(t *testing.T, server gwLeaf, ca *testCA) string {
	t.Helper()
	return serve(t, &tls.Config{Certificates: []tls.Certificate{server.tls},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: gwPool(ca), MinVersion: tls.VersionTLS12}, func(c net.Conn) {
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(waitBudget))
		if tc.Handshake() != nil {
			return
		}
		fmt.Fprintf(tc, "hello %s\n", tc.ConnectionState().PeerCertificates[0].Subject)
		io.Copy(tc, tc)
	})
}

func TestGatewayEgressOrigination(t *testing.T) {
	dir := t.TempDir()
	root, other := newCA(t, pki.ECP256, 10, "third-party root"), newCA(t, pki.ECP256, 11, "another root")
	server := gwIssue(t, root, 12, dir, "server", 0, "helloworld.example.com")
	client := gwIssue(t, root, 13, dir, "client", 0, "client.example.com")
	upstream := gwUpstream(t, server, root)
	rootFile, otherFile := gwRootFile(t, dir, "root.pem", root), gwRootFile(t, dir, "other.pem", other)
	mutual := proxy.ClientTLSFiles{Mode: "MUTUAL", ClientCertificate: client.cert, PrivateKey: client.key, CACertificates: rootFile}
	with := func(f func(*proxy.ClientTLSFiles)) proxy.ClientTLSFiles {
		c := mutual
		f(&c)
		return c
	}
	cases := []struct {
		name    string
		tls     proxy.ClientTLSFiles
		want    string // what the app reads; "" for nothing
		wantLog []string
	}{
		{"MUTUAL, server in subject_alt_names",
			with(func(c *proxy.ClientTLSFiles) {
				c.SNI, c.SubjectAltNames = "helloworld.example.com", []string{"helloworld.example.com"}
			}),
			"hello CN=client.example.com\n", []string{"listener=egress", `peer="CN=helloworld.example.com"`, "result=ok"}},
		{"MUTUAL, server checked against sni",
			with(func(c *proxy.ClientTLSFiles) { c.SNI = "helloworld.example.com" }),
			"hello CN=client.example.com\n", []string{"listener=egress", `peer="CN=helloworld.example.com"`, "result=ok"}},
		{"server not in subject_alt_names",
			with(func(c *proxy.ClientTLSFiles) {
				c.SNI, c.SubjectAltNames = "helloworld.example.com", []string{"other.example.com", "spiffe://example.com/x"}
			}),
			"", []string{"listener=egress", "result=handshake_failed",
				"proxy: gateway egress: server certificate CN=helloworld.example.com of " + upstream + " carries none of subject_alt_names [other.example.com spiffe://example.com/x]"}},
		{"server not named sni",
			with(func(c *proxy.ClientTLSFiles) { c.SNI = "wrong.example.com" }),
			"", []string{"listener=egress", "result=handshake_failed",
				"x509: certificate is valid for helloworld.example.com, not wrong.example.com"}},
		{"server from another CA",
			with(func(c *proxy.ClientTLSFiles) { c.SNI, c.CACertificates = "helloworld.example.com", otherFile }),
			"", []string{"listener=egress", "result=handshake_failed", "x509: certificate signed by unknown authority"}},
		{"SIMPLE: no client certificate, refused by the upstream",
			proxy.ClientTLSFiles{Mode: "SIMPLE", CACertificates: rootFile, SNI: "helloworld.example.com"},
			"", []string{"listener=egress", `peer="CN=helloworld.example.com"`, "result=error", "tls: certificate required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startGateways(t, proxy.GatewaysConfig{Egress: []proxy.EgressConfig{{Name: "egress", Upstream: upstream, TLS: tc.tls}}})
			c, err := net.DialTimeout("tcp", r.addr(t, "egress"), waitBudget)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(waitBudget))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close() // the access log line comes at the end of the connection
			if tc.want != "" && (err != nil || line != tc.want) {
				t.Fatalf("the app read %q, %v; want %q", line, err, tc.want)
			}
			if tc.want == "" && (line != "" || err == nil) {
				t.Fatalf("the app read %q, %v; want nothing, then the connection closed", line, err)
			}
			r.logs.wait(t, tc.wantLog...)
		})
	}
}

// ---- Configuration ----

func TestGatewayParseConfig(t *testing.T) {
	good := `gateways:
  ingress:
  - name: helloworld-ingress
    listen: 0.0.0.0:8443
    protocol: http
    tls: {mode: MUTUAL, server_certificate: cluster-b-server-cert.pem, private_key: cluster-b-server-key.pem, ca_certificates: /etc/root-cert.pem}
    routes:
    - {hosts: [helloworld.zufar.io, "*.zufar.io"], backend: 127.0.0.1:5000}
  egress:
  - name: helloworld-egress
    listen: 127.0.0.1:15002
    upstream: helloworld.zufar.io:443
    tls: {mode: MUTUAL, client_certificate: certs/cluster-a-client-cert.pem, private_key: certs/cluster-a-client-key.pem, ca_certificates: root-cert.pem, sni: helloworld.zufar.io, subject_alt_names: [helloworld.zufar.io]}
`
	c, err := proxy.ParseConfig("/etc/meshfed/proxy.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	in, out := c.Gateways.Ingress[0], c.Gateways.Egress[0]
	for _, p := range []struct{ got, want string }{
		{in.TLS.ServerCertificate, "/etc/meshfed/cluster-b-server-cert.pem"},
		{in.TLS.PrivateKey, "/etc/meshfed/cluster-b-server-key.pem"},
		{in.TLS.CACertificates, "/etc/root-cert.pem"},
		{out.TLS.ClientCertificate, "/etc/meshfed/certs/cluster-a-client-cert.pem"},
		{out.TLS.CACertificates, "/etc/meshfed/root-cert.pem"},
		{out.TLS.SNI, "helloworld.zufar.io"},
		{in.Protocol, "http"},
	} {
		if p.got != p.want {
			t.Errorf("got %q, want %q", p.got, p.want)
		}
	}
	ingress := func(tlsYAML, routes string) string {
		return "gateways:\n  ingress:\n  - {name: i, listen: ':1', tls: " + tlsYAML + ", routes: " + routes + "}\n"
	}
	const mutualTLS = "{mode: MUTUAL, server_certificate: c, private_key: k, ca_certificates: ca}"
	const oneRoute = "[{hosts: [a.example], backend: '127.0.0.1:1'}]"
	cases := []struct{ name, yaml, want string }{
		{"unknown gateway key", ingress("{mode: SIMPLE, server_certificate: c, private_key: k, credential_name: x}", oneRoute), `unknown field "credential_name"`},
		{"no mode", ingress("{server_certificate: c, private_key: k}", oneRoute), "gateways.ingress[0] (i): tls.mode is required: SIMPLE or MUTUAL"},
		{"passthrough", ingress("{mode: PASSTHROUGH, server_certificate: c, private_key: k}", oneRoute), `tls.mode "PASSTHROUGH" is not supported`},
		{"MUTUAL without CA", ingress("{mode: MUTUAL, server_certificate: c, private_key: k}", oneRoute), "tls: ca_certificates is required in MUTUAL mode"},
		{"SIMPLE with CA", ingress("{mode: SIMPLE, server_certificate: c, private_key: k, ca_certificates: ca}", oneRoute), "ca_certificates is used only in MUTUAL mode"},
		{"no key", ingress("{mode: SIMPLE, server_certificate: c}", oneRoute), "tls: server_certificate and private_key are required"},
		{"no routes", ingress(mutualTLS, "[]"), "routes: at least one route is required"},
		{"bad wildcard", ingress(mutualTLS, "[{hosts: ['a.*.example'], backend: '127.0.0.1:1'}]"), `routes[0]: host "a.*.example": want a DNS name, *.domain or *`},
		{"duplicate host", ingress(mutualTLS, "[{hosts: [a.example], backend: '127.0.0.1:1'}, {hosts: [A.example], backend: '127.0.0.1:2'}]"), `routes[1]: host "A.example" is in an earlier route too`},
		{"backend without port", ingress(mutualTLS, "[{hosts: [a.example], backend: app}]"), "routes[0]: backend: address app: missing port in address"},
		{"bad protocol", "gateways:\n  ingress:\n  - {name: i, listen: ':1', protocol: udp, tls: " + mutualTLS + ", routes: " + oneRoute + "}\n", `protocol "udp" is not supported: use tcp or http`},
		{"no name", "gateways:\n  egress:\n  - {listen: ':1', upstream: 'h:1', tls: {mode: SIMPLE}}\n", "gateways.egress[0]: name is required"},
		{"duplicate name", "gateways:\n  egress:\n  - {name: e, listen: ':1', upstream: 'h:1', tls: {mode: SIMPLE}}\n  - {name: e, listen: ':2', upstream: 'h:1', tls: {mode: SIMPLE}}\n", `gateways.egress[1]: name "e" is used by another gateway`},
		{"egress MUTUAL without certificate", "gateways:\n  egress:\n  - {name: e, listen: ':1', upstream: 'h:1', tls: {mode: MUTUAL, ca_certificates: ca}}\n", "tls: client_certificate and private_key are required in MUTUAL mode"},
		{"egress without upstream port", "gateways:\n  egress:\n  - {name: e, listen: ':1', upstream: h, tls: {mode: SIMPLE}}\n", "gateways.egress[0] (e): upstream: address h: missing port in address"},
		{"inbound still needs the socket", ingress(mutualTLS, oneRoute) + "inbound: [{listen: a, forward_to: 'b:1'}]\n", "workload_api_socket is required"},
		{"nothing at all", "limits: {max_connections: 1}\n", "no inbound or outbound listeners or gateways"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := proxy.ParseConfig("p.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "proxy: config p.yaml: ") {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestGatewayNewLoadsFiles(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	server := gwIssue(t, root, 12, dir, "server", 0, "a.example")
	other := gwIssue(t, root, 13, dir, "other", 0, "a.example")
	routes := []proxy.IngressRoute{{Hosts: []string{"a.example"}, Backend: "127.0.0.1:1"}}
	cases := []struct {
		name string
		tls  proxy.ServerTLSFiles
		want string
	}{
		{"missing certificate", proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: filepath.Join(dir, "nope.pem"), PrivateKey: server.key},
			"proxy: gateway g: certificate: pemfile: open " + filepath.Join(dir, "nope.pem") + ": no such file or directory"},
		{"key of another certificate", proxy.ServerTLSFiles{Mode: "SIMPLE", ServerCertificate: server.cert, PrivateKey: other.key},
			"proxy: gateway g: the private key in " + other.key + " is not the key of the certificate in " + server.cert},
		{"CA file holding a key", proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key, CACertificates: server.key},
			`proxy: gateway g: ca_certificates: ` + server.key + `: pemfile: block 1 is "PRIVATE KEY", want "CERTIFICATE"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := proxy.New(proxy.Config{Gateways: proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{
				{Name: "g", Listen: "127.0.0.1:0", TLS: tc.tls, Routes: routes}}}})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err %v\nwant %s", err, tc.want)
			}
		})
	}
	if _, err := proxy.New(proxy.Config{Inbound: []proxy.InboundConfig{{Listen: "127.0.0.1:0", ForwardTo: "127.0.0.1:1"}}}); err == nil ||
		err.Error() != "proxy: sidecar: no Source of SVIDs and bundles" {
		t.Fatalf("an inbound listener without a Source: err %v", err)
	}
}

// ---- OpenSSL ----

// TestGatewayOpenSSL has `openssl s_client` dial a MUTUAL ingress gateway.
func TestGatewayOpenSSL(t *testing.T) {
	opensslPath(t)
	dir := t.TempDir()
	root := newCA(t, pki.RSA2048, 20, "third-party root")
	server := gwIssueKey(t, root, pki.RSA2048, 21, dir, "server", 0, "helloworld.zufar.io")
	client := gwIssueKey(t, root, pki.RSA2048, 22, dir, "client", 0, "helloworld.zufar.io")
	rootFile := gwRootFile(t, dir, "root-cert.pem", root)
	r := startGateways(t, proxy.GatewaysConfig{Ingress: []proxy.IngressConfig{{
		Name: "openssl",
		TLS: proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key,
			CACertificates: rootFile},
		Routes: []proxy.IngressRoute{{Hosts: []string{"helloworld.zufar.io"}, Backend: gwBackend(t, "helloworld")}},
	}}})
	addr := r.addr(t, "openssl")
	sni := []string{"-servername", "helloworld.zufar.io", "-verify_hostname", "helloworld.zufar.io"}
	for _, v := range []string{"-tls1_2", "-tls1_3"} {
		t.Run("client certificate "+v, func(t *testing.T) {
			out, code := sClient(t, addr, client.cert, client.key, rootFile, append(sni, v)...)
			if code != 0 || !strings.Contains(out, "Verification: OK") {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			r.logs.wait(t, "listener=openssl", `peer="CN=helloworld.zufar.io"`)
		})
	}
	t.Run("refuses TLS 1.1", func(t *testing.T) {
		out, code := sClient(t, addr, client.cert, client.key, rootFile, append(sni, tls11...)...)
		if code == 0 || !strings.Contains(out, "alert protocol version") {
			t.Fatalf("want the gateway's protocol_version alert; exit %d:\n%s", code, out)
		}
	})
	t.Run("refuses a client without a certificate", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, opensslPath(t), "s_client", "-connect", addr, "-servername", "helloworld.zufar.io", "-tls1_2", "-brief")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "alert handshake failure") {
			t.Fatalf("want a handshake_failure alert and a failure; err %v:\n%s", err, out)
		}
		r.logs.wait(t, "listener=openssl", "result=handshake_failed", "tls: client didn't provide a certificate")
	})
}

// FuzzGatewayConfig: any gateways: section is parsed or refused with the
// package prefix, never a panic; what parses has only absolute file paths.
func FuzzGatewayConfig(f *testing.F) {
	f.Add([]byte("gateways:\n  ingress:\n  - {name: i, listen: ':1', protocol: http, tls: {mode: MUTUAL, server_certificate: c.pem, private_key: k.pem, ca_certificates: ca.pem}, routes: [{hosts: ['*.zufar.io', a.b], backend: '127.0.0.1:5000'}]}\n"))
	f.Add([]byte("gateways:\n  egress:\n  - {name: e, listen: ':1', upstream: 'h:443', tls: {mode: MUTUAL, client_certificate: c, private_key: k, sni: h, subject_alt_names: [h, 'spiffe://x/y']}}\n"))
	f.Add([]byte("gateways:\n  ingress:\n  - {name: i, listen: ':1', tls: {mode: SIMPLE, server_certificate: /c, private_key: /k}, routes: [{hosts: ['*'], backend: 'x:1'}]}\n"))
	f.Add([]byte("gateways: {ingress: [{name: i, routes: [{hosts: ['*.*']}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := proxy.ParseConfig("/etc/f.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "proxy: config /etc/f.yaml: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		for _, in := range c.Gateways.Ingress {
			for _, p := range []string{in.TLS.ServerCertificate, in.TLS.PrivateKey, in.TLS.CACertificates} {
				if p != "" && !filepath.IsAbs(p) {
					t.Fatalf("relative path %q after parsing", p)
				}
			}
		}
		for _, out := range c.Gateways.Egress {
			for _, p := range []string{out.TLS.ClientCertificate, out.TLS.PrivateKey, out.TLS.CACertificates} {
				if p != "" && !filepath.IsAbs(p) {
					t.Fatalf("relative path %q after parsing", p)
				}
			}
		}
	})
}

// upgradeEchoApp is a backend that switches a request with "Upgrade: echo"
// to a line echo, as a WebSocket server switches protocols.
func upgradeEchoApp(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(line)
			brw.Flush()
		}
	}), ReadHeaderTimeout: waitBudget}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	return ln.Addr().String()
}

// echoUpgrade asks for the upgrade on c and checks three lines come back
// through the upgraded stream, then closes c.
func echoUpgrade(t *testing.T, c net.Conn, host string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitBudget))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, msg := range []string{"ping\n", "pong\n", "again\n"} {
		io.WriteString(c, msg)
		if got, err := br.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("through the upgraded stream: got %q, %v; want %q", got, err, msg)
		}
	}
	c.Close()
}
