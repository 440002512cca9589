package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshfed/meshfed/internal/testsync"
)

// proxyPair is a trust domain with two workloads, each with its own agent:
// "reviews" (the client, behind an outbound listener) and "ratings" (the
// server, behind an inbound listener), both run by real `meshfed proxy`
// processes.
type proxyPair struct {
	dir                  string
	adminSock            string
	clientID, serverID   string
	outPort, inPort      int
	serverMetrics        int
	serverProxy, client  *daemon
	appHeaders           func() http.Header
	policies             string
	serverProxyConfigFmt string
}

const (
	pairTD       = "east.example"
	pairClientID = "spiffe://east.example/ns/default/sa/reviews"
	pairServerID = "spiffe://east.example/ns/default/sa/ratings"
)

// startProxyPair starts the server, agents, app and both proxies; the
// inbound listener speaks HTTP and reads its policies from policies/, which
// initial fills before the proxies start.
func startProxyPair(t *testing.T, initial map[string]string) *proxyPair {
	dir := t.TempDir()
	p := &proxyPair{dir: dir, clientID: pairClientID, serverID: pairServerID, policies: filepath.Join(dir, "policies")}
	p.adminSock = filepath.Join(dir, "east", "admin.sock")
	srv := startServer(t, dir, "--trust-domain", pairTD, "--data-dir", "east", "--admin-socket", p.adminSock)
	logOnFailure(t, "server", srv.logs)
	sockets := map[string]string{}
	for _, w := range []struct{ name, id string }{{"client", p.clientID}, {"server", p.serverID}} {
		node := "spiffe://" + pairTD + "/node/" + w.name
		token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", p.adminSock, "--spiffe-id", node).stdout)
		meshfed(t, dir, "entry", "create", "--admin-socket", p.adminSock, "--parent-id", node, "--spiffe-id", w.id,
			"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
		sockets[w.name] = filepath.Join(dir, w.name+"-agent", "workload.sock")
		a := startAgent(t, dir, "--server", srv.listen, "--trust-bundle", filepath.Join("east", "ca", "ca.pem"), "--join-token", token,
			"--data-dir", w.name+"-agent", "--socket", sockets[w.name])
		logOnFailure(t, w.name+" agent", a.logs)
	}

	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last http.Header
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = r.Header.Clone()
		mu.Unlock()
		fmt.Fprintf(w, "hello from ratings, path %s\n", r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	p.appHeaders = func() http.Header {
		mu.Lock()
		defer mu.Unlock()
		return last
	}

	if err := os.MkdirAll(p.policies, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range initial {
		writeFile(t, filepath.Join(p.policies, name), body)
	}
	p.inPort, p.outPort, p.serverMetrics = freePort(t), freePort(t), freePort(t)
	writeFile(t, filepath.Join(dir, "server-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: ratings}
policies: policies
inbound:
- {name: ratings-in, listen: "127.0.0.1:%d", forward_to: %q, protocol: http}
metrics_listen: "127.0.0.1:%d"
limits: {drain_timeout: 10s}
`, sockets["server"], p.inPort, appLn.Addr().String(), p.serverMetrics))
	writeFile(t, filepath.Join(dir, "client-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: reviews}
outbound:
- {name: ratings, listen: "127.0.0.1:%d", service: ratings, upstream: "127.0.0.1:%d", allowed_ids: [%q], protocol: http}
`, sockets["client"], p.outPort, p.inPort, p.serverID))
	p.serverProxy = startDaemon(t, dir, "server proxy", meshfedBin, "proxy", "--config", "server-proxy.yaml")
	p.client = startDaemon(t, dir, "client proxy", meshfedBin, "proxy", "--config", "client-proxy.yaml")
	for _, d := range []struct {
		d    *daemon
		line string
	}{
		{p.serverProxy, fmt.Sprintf("meshfed proxy %s: inbound ratings-in 127.0.0.1:%d -> %s", p.serverID, p.inPort, appLn.Addr())},
		{p.client, fmt.Sprintf("meshfed proxy %s: outbound ratings 127.0.0.1:%d -> 127.0.0.1:%d", p.clientID, p.outPort, p.inPort)},
	} {
		testsync.EventuallyWithin(t, 60*time.Second, d.d.name+" to start", func() bool {
			d.d.mustRun(t)
			return strings.Contains(d.d.logs.String(), d.line)
		})
	}
	return p
}

// get sends one request with curl and returns the status code and body.
func (p *proxyPair) get(t *testing.T, url string, headers ...string) (int, string) {
	t.Helper()
	args := []string{"-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, code := curl(t, p.dir, append(args, url)...)
	if code != 0 {
		return 0, out
	}
	i := strings.LastIndexByte(out, '\n')
	var status int
	fmt.Sscanf(out[i+1:], "%d", &status)
	return status, out[:i]
}

func (p *proxyPair) viaOutbound(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.outPort, path)
}

func (p *proxyPair) direct(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.inPort, path)
}

func secDoc(kind, name, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: %s\nmetadata:\n  name: %s\n  namespace: default\nspec:\n%s", kind, name, spec)
}

// TestProxyHTTPPolicy: two workloads behind real proxies; the inbound side
// enforces Istio policy from its directory, re-read without a restart:
// PERMISSIVE serves mTLS and plaintext, a forged JWT gets 401 and a valid
// one passes, a DENY on the client's principal gets 403, and STRICT turns
// plaintext away.
func TestProxyHTTPPolicy(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwksYAML, _ := json.Marshal(string(jwks))
	sign := func(k *ecdsa.PrivateKey) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Signed(s).Claims(map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "ratings",
			"exp": time.Now().Add(time.Hour).Unix()}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good, forged := sign(key), sign(otherKey)

	p := startProxyPair(t, map[string]string{
		"peer.yaml": secDoc("PeerAuthentication", "default", "  mtls:\n    mode: PERMISSIVE\n"),
		"jwt.yaml":  secDoc("RequestAuthentication", "ratings-jwt", "  selector:\n    matchLabels:\n      app: ratings\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [ratings]\n    jwks: "+string(jwksYAML)+"\n"),
	})

	// PERMISSIVE: mTLS through the outbound listener, with XFCC for the app…
	if code, body := p.get(t, p.viaOutbound("/reviews")); code != 200 || body != "hello from ratings, path /reviews\n" {
		t.Fatalf("through the proxies: %d %q", code, body)
	}
	if x := p.appHeaders().Get("X-Forwarded-Client-Cert"); !strings.HasPrefix(x, "By="+p.serverID+";Hash=") || !strings.HasSuffix(x, ";URI="+p.clientID) {
		t.Fatalf("the app got XFCC %q, want By=%s … URI=%s", x, p.serverID, p.clientID)
	}
	// …and plaintext straight to the inbound port, without XFCC.
	if code, body := p.get(t, p.direct("/plain"), "X-Forwarded-Client-Cert: By=spiffe://forged"); code != 200 || body != "hello from ratings, path /plain\n" {
		t.Fatalf("plaintext on the PERMISSIVE port: %d %q", code, body)
	}
	if x := p.appHeaders().Get("X-Forwarded-Client-Cert"); x != "" {
		t.Fatalf("a plaintext request reached the app with XFCC %q", x)
	}

	// JWT: a forged token gets 401; a valid one passes.
	if code, body := p.get(t, p.viaOutbound("/r"), "Authorization: Bearer "+forged); code != 401 || body != "Jwt verification fails" {
		t.Fatalf("forged JWT: %d %q, want 401", code, body)
	}
	if code, _ := p.get(t, p.viaOutbound("/r"), "Authorization: Bearer "+good); code != 200 {
		t.Fatalf("valid JWT: %d, want 200", code)
	}

	// A DENY on the client's principal, written while the proxies run.
	writeFile(t, filepath.Join(p.policies, "deny.yaml"), secDoc("AuthorizationPolicy", "deny-reviews",
		"  selector:\n    matchLabels:\n      app: ratings\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [east.example/ns/default/sa/reviews]\n"))
	testsync.EventuallyWithin(t, 10*time.Second, "the DENY policy to take effect", func() bool {
		code, body := p.get(t, p.viaOutbound("/r"))
		return code == 403 && body == "RBAC: access denied"
	})
	if code, _ := p.get(t, p.direct("/plain")); code != 200 {
		t.Fatalf("plaintext (no principal) after the DENY: %d, want 200", code)
	}

	// STRICT: plaintext is turned away; mTLS still reaches the policy.
	writeFile(t, filepath.Join(p.policies, "peer.yaml"), secDoc("PeerAuthentication", "default", "  mtls:\n    mode: STRICT\n"))
	testsync.EventuallyWithin(t, 10*time.Second, "STRICT to take effect", func() bool {
		code, _ := p.get(t, p.direct("/plain"))
		return code == 0
	})

	// A broken file is refused and the last good set stays in force.
	writeFile(t, filepath.Join(p.policies, "broken.yaml"), secDoc("PeerAuthentication", "broken", "  mtls:\n    mode: SOMETIMES\n"))
	testsync.EventuallyWithin(t, 10*time.Second, "the broken file to be refused", func() bool {
		return strings.Contains(p.serverProxy.logs.String(), "broken.yaml:")
	})
	if code, _ := p.get(t, p.viaOutbound("/r")); code != 403 {
		t.Fatalf("after a broken file: %d, want 403 (the DENY kept)", code)
	}

	metrics, _ := curl(t, p.dir, "-sS", "--max-time", "10", fmt.Sprintf("http://127.0.0.1:%d/metrics", p.serverMetrics))
	for _, want := range []string{
		`meshfed_proxy_policy_denials_total{listener="ratings-in",policy="default/deny-reviews",stage="authz"}`,
		`meshfed_proxy_policy_denials_total{listener="ratings-in",policy="-",stage="authn"} 1`,
		`meshfed_proxy_policy_loads_total{result="error",source="dir"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("server proxy /metrics lacks %s", want)
		}
	}
	// SIGHUP reads the policy directory at once and stops nothing.
	os.Remove(filepath.Join(p.policies, "broken.yaml"))
	os.Remove(filepath.Join(p.policies, "deny.yaml"))
	if err := p.serverProxy.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the policy directory to be read again on SIGHUP", func() bool {
		return strings.Contains(p.serverProxy.logs.String(), "SIGHUP: reading the policy directory again")
	})
	testsync.EventuallyWithin(t, 10*time.Second, "the DENY to be lifted", func() bool {
		code, _ := p.get(t, p.viaOutbound("/r"))
		return code == 200
	})
	p.serverProxy.mustRun(t)
	for _, d := range []*daemon{p.client, p.serverProxy} {
		if s := d.logs.String(); strings.Contains(s, good[:40]) || strings.Contains(s, forged[:40]) || strings.Contains(s, "PRIVATE KEY") {
			t.Errorf("%s logged a token or key material", d.name)
		}
	}
}

// TestProxyServerPolicyPush: policy stored on the server with `meshfed
// policy apply` reaches the running proxy through its agent, as istiod's
// push does, and takes effect without a restart; `policy delete` lifts it.
// A pushed document that clashes with one of the proxy's own directory is
// refused by the proxy, which keeps the last good set.
func TestProxyServerPolicyPush(t *testing.T) {
	p := startProxyPair(t, map[string]string{
		"peer.yaml": secDoc("PeerAuthentication", "default", "  mtls:\n    mode: PERMISSIVE\n"),
	})
	if code, _ := p.get(t, p.viaOutbound("/r")); code != 200 {
		t.Fatalf("before any server policy: %d, want 200", code)
	}
	writeFile(t, filepath.Join(p.dir, "deny.yaml"), secDoc("AuthorizationPolicy", "deny-reviews",
		"  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [east.example/ns/default/sa/reviews]\n"))
	applied := time.Now()
	out := meshfed(t, p.dir, "policy", "apply", "-f", "deny.yaml", "--admin-socket", p.adminSock).stdout
	if out != "AuthorizationPolicy default/deny-reviews created\n" {
		t.Fatalf("policy apply said %q", out)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the pushed DENY to take effect", func() bool {
		code, body := p.get(t, p.viaOutbound("/r"))
		return code == 403 && body == "RBAC: access denied"
	})
	t.Logf("apply -> enforced by the proxy in %s", time.Since(applied).Round(time.Millisecond))
	if code, _ := p.get(t, p.direct("/r")); code != 200 {
		t.Fatalf("plaintext (another source) under the pushed DENY: %d, want 200", code)
	}

	// A clash with the proxy's own directory: refused there, last good kept.
	writeFile(t, filepath.Join(p.dir, "clash.yaml"), secDoc("PeerAuthentication", "default", "  mtls:\n    mode: STRICT\n"))
	meshfed(t, p.dir, "policy", "apply", "-f", "clash.yaml", "--admin-socket", p.adminSock)
	testsync.EventuallyWithin(t, 10*time.Second, "the proxy to refuse the clashing push", func() bool {
		s := p.serverProxy.logs.String()
		return strings.Contains(s, "policies from the server") && strings.Contains(s, "refused, the last good set stays in force")
	})
	if code, _ := p.get(t, p.direct("/r")); code != 200 {
		t.Fatalf("after the refused push plaintext got %d, want 200 (PERMISSIVE kept)", code)
	}
	if code, _ := p.get(t, p.viaOutbound("/r")); code != 403 {
		t.Fatalf("after the refused push reviews got %d, want 403 (the DENY kept)", code)
	}

	meshfed(t, p.dir, "policy", "delete", "PeerAuthentication", "default/default", "--admin-socket", p.adminSock)
	meshfed(t, p.dir, "policy", "delete", "AuthorizationPolicy", "default/deny-reviews", "--admin-socket", p.adminSock)
	testsync.EventuallyWithin(t, 10*time.Second, "the deletion to take effect", func() bool {
		code, _ := p.get(t, p.viaOutbound("/r"))
		return code == 200
	})
}
