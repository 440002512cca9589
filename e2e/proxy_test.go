package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
)

// TestProxyOutboundToStrictInbound: one server, two agents (one per
// workload), and two `meshfed proxy` processes: the client's outbound
// listener and the server's inbound listener, STRICT by a PeerAuthentication
// in the policies directory. curl through the outbound listener reaches the
// app over mTLS; a plaintext client on the inbound port is turned away.
func TestProxyOutboundToStrictInbound(t *testing.T) {
	dir := t.TempDir()
	const (
		td       = "east.example"
		clientID = "spiffe://east.example/ns/default/sa/reviews"
		serverID = "spiffe://east.example/ns/default/sa/ratings"
	)
	sock := filepath.Join(dir, "east", "admin.sock")
	srv := startServer(t, dir, "--trust-domain", td, "--data-dir", "east", "--admin-socket", sock)
	logOnFailure(t, "server", srv.logs)
	sockets := map[string]string{}
	for _, w := range []struct{ name, id string }{{"client", clientID}, {"server", serverID}} {
		node := "spiffe://" + td + "/node/" + w.name
		token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", node).stdout)
		meshfed(t, dir, "entry", "create", "--admin-socket", sock, "--parent-id", node, "--spiffe-id", w.id,
			"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
		sockets[w.name] = filepath.Join(dir, w.name+"-agent", "workload.sock")
		a := startAgent(t, dir, "--server", srv.listen, "--trust-bundle", filepath.Join("east", "ca", "ca.pem"), "--join-token", token,
			"--data-dir", w.name+"-agent", "--socket", sockets[w.name])
		logOnFailure(t, w.name+" agent", a.logs)
	}

	// The app: a tiny HTTP server on loopback.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprintf(w, "hello from ratings, path %s\n", r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	writeFile(t, filepath.Join(dir, "policies", "strict.yaml"), `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`)
	inPort, outPort, metricsPort := freePort(t), freePort(t), freePort(t)
	writeFile(t, filepath.Join(dir, "server-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: ratings}
policies: policies
inbound:
- {name: ratings-in, listen: "127.0.0.1:%d", forward_to: %q, allowed_ids: [%q]}
limits: {drain_timeout: 10s}
`, sockets["server"], inPort, appLn.Addr().String(), clientID))
	writeFile(t, filepath.Join(dir, "client-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: reviews}
outbound:
- {name: ratings, listen: "127.0.0.1:%d", service: ratings, upstream: "127.0.0.1:%d", allowed_ids: [%q]}
metrics_listen: "127.0.0.1:%d"
`, sockets["client"], outPort, inPort, serverID, metricsPort))
	serverProxy := startDaemon(t, dir, "server proxy", meshfedBin, "proxy", "--config", "server-proxy.yaml")
	clientProxy := startDaemon(t, dir, "client proxy", meshfedBin, "proxy", "--config", "client-proxy.yaml")
	for _, p := range []struct {
		d    *daemon
		line string
	}{
		{serverProxy, fmt.Sprintf("meshfed proxy %s: inbound ratings-in 127.0.0.1:%d -> %s (STRICT)", serverID, inPort, appLn.Addr())},
		{clientProxy, fmt.Sprintf("meshfed proxy %s: outbound ratings 127.0.0.1:%d -> 127.0.0.1:%d", clientID, outPort, inPort)},
	} {
		testsync.EventuallyWithin(t, 60*time.Second, p.d.name+" to start", func() bool {
			p.d.mustRun(t)
			return strings.Contains(p.d.logs.String(), p.line)
		})
	}

	// Through outbound → mTLS → STRICT inbound → app.
	out, code := curl(t, dir, "-sS", "--max-time", "10", fmt.Sprintf("http://127.0.0.1:%d/reviews", outPort))
	if code != 0 || out != "hello from ratings, path /reviews\n" {
		t.Fatalf("curl through the proxies: exit %d, %q", code, out)
	}

	// A plaintext client on the STRICT inbound port gets nothing.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inPort))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: ratings\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	c.Close()
	// The proxy closes without reading the rest of the request, so the
	// kernel may answer with a reset instead of a FIN; either way nothing
	// reached the app.
	if len(got) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("plaintext client on the STRICT port read %q, %v; want nothing, then EOF or a reset", got, err)
	}
	if out, code := curl(t, dir, "-sS", "--max-time", "10", fmt.Sprintf("http://127.0.0.1:%d/", inPort)); code == 0 {
		t.Fatalf("curl in plaintext to the STRICT port succeeded: %q", out)
	}

	if n := served.Load(); n != 1 {
		t.Errorf("the app served %d requests, want 1 (the one through mTLS)", n)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the access log lines", func() bool {
		s := serverProxy.logs.String()
		return strings.Contains(s, "listener=ratings-in") && strings.Contains(s, "peer="+clientID+" ") &&
			strings.Contains(s, "result=ok") && strings.Contains(s, "peer=plaintext bytes_received=0 bytes_sent=0") &&
			strings.Contains(s, "result=plaintext_refused") &&
			strings.Contains(clientProxy.logs.String(), "peer="+serverID+" ")
	})
	metrics, code := curl(t, dir, "-sS", "--max-time", "10", fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	for _, want := range []string{
		`meshfed_proxy_connections_total{listener="ratings",result="ok"} 1`,
		`meshfed_proxy_handshakes_total{listener="ratings",result="ok"} 1`,
	} {
		if code != 0 || !strings.Contains(metrics, want) {
			t.Errorf("client proxy /metrics (exit %d) lacks %s:\n%s", code, want, metrics)
		}
	}
	for _, d := range []*daemon{clientProxy, serverProxy} {
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
