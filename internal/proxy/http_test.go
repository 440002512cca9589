package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// seen is what the app behind an HTTP inbound listener received.
type seen struct {
	Path    string
	Host    string
	Headers http.Header
}

// httpApp is the local app: it records each request and answers 200 with
// the path.
func httpApp(t *testing.T) (addr string, last func() seen) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got seen
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = seen{Path: r.URL.Path, Host: r.Host, Headers: r.Header.Clone()}
		mu.Unlock()
		fmt.Fprintf(w, "app saw %s", r.URL.Path)
	}), ReadHeaderTimeout: waitBudget}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), func() seen {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

// policySet builds a policy set from YAML documents.
func policySet(t *testing.T, yamls ...string) *policy.Set {
	t.Helper()
	docs, err := policy.Parse("test.yaml", []byte(strings.Join(yamls, "\n---\n")))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.NewSet(docs)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func doc(kind, ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s", kind, name, ns, spec)
}

// mtlsClient is an HTTP client presenting the SVID of src to a server that
// must be infraTeam; h2 selects HTTP/2 over ALPN.
func mtlsClient(src proxy.Source, h2 bool) *http.Client {
	tc := proxy.ClientTLS(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(infraTeam)))
	if h2 {
		tc.NextProtos = []string{"h2"}
	}
	return &http.Client{Timeout: waitBudget, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2}}
}

func get(t *testing.T, c *http.Client, url string, header map[string]string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Proto
}

// jwtIssuer signs ES256 tokens and publishes its key set.
type jwtIssuer struct {
	key  *ecdsa.PrivateKey
	jwks string
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{key: k, jwks: string(b)}
}

func (i *jwtIssuer) sign(t *testing.T, claims map[string]any) string {
	return testjwt.Sign(t, jose.ES256, i.key, "k1", "JWT", claims)
}

// TestHTTPInbound runs an HTTP inbound listener under Istio policy: mTLS
// peers over HTTP/1.1 and h2, XFCC for the app, a DENY on a principal, an
// ALLOW on paths, JWT rules, path normalization, and a policy swap that
// takes effect on the next request of an open connection.
func TestHTTPInbound(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	testSrc := w.source(w.caA.svid(t, testTeam, pki.ECP256, 4, pkix.Name{}))
	app, last := httpApp(t)
	iss := newJWTIssuer(t)
	// A fixed instant, inside the SVIDs' lifetime: the clock checks both.
	now := time.Now().Add(time.Minute).Truncate(time.Second)
	jwksJSON, _ := json.Marshal(iss.jwks)

	set := policySet(t,
		doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n"),
		doc("AuthorizationPolicy", "db", "deny-test-team", "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [a.example/ns/db/sa/test-team]\n"),
		doc("AuthorizationPolicy", "db", "deny-admin", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin*]\n"),
		doc("AuthorizationPolicy", "db", "allow", "  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        paths: [/public/*, /api/*]\n  - from:\n    - source:\n        requestPrincipals: [https://issuer.example/*]\n    to:\n    - operation:\n        paths: [/jwt]\n"),
		doc("RequestAuthentication", "db", "jwt", "  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [datastore]\n    jwks: "+string(jwksJSON)+"\n    outputPayloadToHeader: x-jwt-payload\n"),
	)
	r := startSidecar(t, proxy.Config{Source: serverSrc, Namespace: "db", Labels: map[string]string{"app": "datastore"}, Policy: set,
		Clock:   func() time.Time { return now },
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}})
	base := "https://" + r.addr(0)

	for _, h2 := range []bool{false, true} {
		c := mtlsClient(clientSrc, h2)
		code, body, proto := get(t, c, base+"/public/x", map[string]string{proxy.XFCCHeader: "By=spiffe://forged;URI=spiffe://a.example/ns/db/sa/admin"})
		wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
		if code != 200 || body != "app saw /public/x" || proto != wantProto {
			t.Fatalf("h2=%v: got %d %q %s, want 200 from the app over %s", h2, code, body, proto, wantProto)
		}
		xfcc := last().Headers.Values(proxy.XFCCHeader)
		if len(xfcc) != 1 || !strings.HasPrefix(xfcc[0], "By="+infraTeam+";Hash=") || !strings.HasSuffix(xfcc[0], ";URI="+clientID) {
			t.Fatalf("app got XFCC %q, want one element By=%s … URI=%s (the client's forged one removed)", xfcc, infraTeam, clientID)
		}
		if got := last().Headers.Get("X-Forwarded-Proto"); got != "https" {
			t.Errorf("X-Forwarded-Proto %q, want https", got)
		}
	}

	goodToken := iss.sign(t, map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "datastore", "exp": now.Add(time.Hour).Unix()})
	forged := newJWTIssuer(t).sign(t, map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "datastore", "exp": now.Add(time.Hour).Unix()})
	expired := iss.sign(t, map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "datastore", "exp": now.Add(-time.Hour).Unix()})
	cases := []struct {
		name   string
		src    proxy.Source
		path   string
		header map[string]string
		code   int
		body   string
		log    string
	}{
		{"ALLOW rule 0 by path", clientSrc, "/api/v1", nil, 200, "app saw /api/v1", "policy=db/allow rule=0"},
		{"no ALLOW rule matches", clientSrc, "/private", nil, 403, "RBAC: access denied", "result=denied"},
		{"DENY on the principal", testSrc, "/public/x", nil, 403, "RBAC: access denied", "policy=db/deny-test-team"},
		{"DENY on a path, dot segments removed first", clientSrc, "/public/../admin/users", nil, 403, "RBAC: access denied", "policy=db/deny-admin"},
		{"valid JWT meets the requestPrincipals rule", clientSrc, "/jwt", map[string]string{"Authorization": "Bearer " + goodToken}, 200, "app saw /jwt", "request.auth.principal=https://issuer.example/alice"},
		{"missing JWT passes authentication, fails authorization", clientSrc, "/jwt", nil, 403, "RBAC: access denied", "path=/jwt"},
		{"forged JWT", clientSrc, "/public/x", map[string]string{"Authorization": "Bearer " + forged}, 401, "Jwt verification fails", "result=unauthenticated"},
		{"expired JWT", clientSrc, "/public/x", map[string]string{"Authorization": "Bearer " + expired}, 401, "Jwt verification fails", "token is expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := get(t, mtlsClient(tc.src, false), base+tc.path, tc.header)
			if code != tc.code || body != tc.body {
				t.Fatalf("got %d %q, want %d %q", code, body, tc.code, tc.body)
			}
			waitLog(t, r, tc.log)
		})
	}

	t.Run("JWT removed, payload forwarded", func(t *testing.T) {
		get(t, mtlsClient(clientSrc, false), base+"/jwt", map[string]string{"Authorization": "Bearer " + goodToken})
		got := last()
		if a := got.Headers.Get("Authorization"); a != "" {
			t.Errorf("app got Authorization %q, want it removed (forwardOriginalToken false)", a)
		}
		payload, err := base64.RawURLEncoding.DecodeString(got.Headers.Get("X-Jwt-Payload"))
		if err != nil || !strings.Contains(string(payload), `"sub":"alice"`) {
			t.Errorf("x-jwt-payload %q (%v), want the token's payload", got.Headers.Get("X-Jwt-Payload"), err)
		}
	})

	t.Run("the token never reaches the log", func(t *testing.T) {
		if strings.Contains(r.logs.String(), goodToken[:40]) || strings.Contains(r.logs.String(), forged[:40]) {
			t.Fatal("a token appears in the access log")
		}
	})

	t.Run("policy swap applies to the next request of an open connection", func(t *testing.T) {
		c := mtlsClient(clientSrc, false)
		first, err := http.NewRequest(http.MethodGet, base+"/public/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, _, back := traced(t, c, first, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("before the swap: %d, want 200", resp.StatusCode)
		}
		back() // the connection is in the pool for the next request
		r.s.SetPolicy(policySet(t,
			doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n"),
			doc("AuthorizationPolicy", "db", "deny-all-public", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/public/*]\n"),
		))
		var reused bool
		req, _ := http.NewRequest(http.MethodGet, base+"/public/x", nil)
		resp, body, _ := traced(t, c, req, &reused)
		if resp.StatusCode != 403 || string(body) != "RBAC: access denied" || !reused {
			t.Fatalf("after the swap: %d %q on a reused connection: %v; want 403 on the open connection", resp.StatusCode, body, reused)
		}
		waitLog(t, r, "policy=db/deny-all-public")
	})

	t.Run("metrics", func(t *testing.T) {
		m := scrape(t, r)
		for _, want := range []string{
			`meshfed_proxy_policy_denials_total{listener="in",policy="db/deny-test-team",stage="authz"} 1`,
			`meshfed_proxy_policy_denials_total{listener="in",policy="-",stage="authn"} 2`,
			`meshfed_proxy_http_requests_total{code="2xx",listener="in"}`,
		} {
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %s\n%s", want, m)
			}
		}
	})
}

// TestHTTPInboundPermissivePlaintext: a PERMISSIVE HTTP port serves
// plaintext requests too, without XFCC, as an unauthenticated source.
func TestHTTPInboundPermissivePlaintext(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	app, last := httpApp(t)
	set := policySet(t,
		doc("AuthorizationPolicy", "db", "deny-plaintext", "  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: [\"*\"]\n    to:\n    - operation:\n        paths: [/secure]\n"),
	)
	r := startSidecar(t, proxy.Config{Source: serverSrc, Namespace: "db", Policy: set,
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}})
	c := &http.Client{Timeout: waitBudget}
	code, body, _ := get(t, c, "http://"+r.addr(0)+"/open", map[string]string{proxy.XFCCHeader: "By=spiffe://forged"})
	if code != 200 || body != "app saw /open" {
		t.Fatalf("plaintext: %d %q, want 200 from the app", code, body)
	}
	if x := last().Headers.Get(proxy.XFCCHeader); x != "" {
		t.Errorf("plaintext request reached the app with XFCC %q, want none", x)
	}
	if got := last().Headers.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("X-Forwarded-Proto %q, want http", got)
	}
	if code, _, _ := get(t, c, "http://"+r.addr(0)+"/secure", nil); code != 403 {
		t.Fatalf("plaintext to /secure: %d, want 403 (DENY notPrincipals *)", code)
	}
	waitLog(t, r, "peer=- source.principal=- method=GET host="+r.addr(0)+" path=/open proto=HTTP/1.1 status=200")
}

// TestTCPInboundAuthorization: on a TCP port the TCP subset of
// AuthorizationPolicy decides per connection.
func TestTCPInboundAuthorization(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	app := echoApp(t)
	set := policySet(t,
		doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n"),
		doc("AuthorizationPolicy", "db", "deny-test-team", "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [a.example/ns/db/sa/test-team]\n"),
	)
	r := startSidecar(t, proxy.Config{Source: serverSrc, Namespace: "db", Policy: set,
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app}}})
	for i, tc := range []struct {
		id string
		ok bool
	}{{clientID, true}, {testTeam, false}} {
		src := w.source(w.caA.svid(t, tc.id, pki.ECP256, 10+i, pkix.Name{}))
		c, err := dialTLS(t, r.addr(0), proxy.ClientTLS(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(infraTeam))))
		if err == nil {
			err = roundTrip(c, []byte("hello"))
		}
		if (err == nil) != tc.ok {
			t.Fatalf("%s: err %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
	waitLog(t, r, "peer="+testTeam+" ", "result=denied", "DENY policy db/deny-test-team rule 0 matched")
}

// scrape reads the sidecar's metrics.
func scrape(t *testing.T, r *running) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.s.Handler(), ReadHeaderTimeout: waitBudget}
	go srv.Serve(ln)
	defer srv.Close()
	code, body, _ := get(t, &http.Client{Timeout: waitBudget}, "http://"+ln.Addr().String()+"/metrics", nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	return body
}

// TestHTTPInboundCurl has curl (OpenSSL, nghttp2), an independent client,
// call an HTTP inbound listener over mTLS with HTTP/1.1 and h2 (ALPN),
// including h2 over a seed suite without ECDHE, which RFC 7540 would refuse.
// curl's -k only skips its host name check (an SVID has no DNS name); the
// server's key is pinned instead.
func TestHTTPInboundCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed: run ./scripts/install-deps")
	}
	dir := t.TempDir()
	for i, tc := range []struct {
		kt     pki.KeyType
		suite  string
		http   string
		proto  string
		status string
	}{
		{pki.ECP256, "ECDHE-ECDSA-AES128-GCM-SHA256", "--http1.1", "1.1", "200"},
		{pki.ECP256, "ECDHE-ECDSA-AES256-GCM-SHA384", "--http2", "2", "200"},
		{pki.RSA2048, "AES256-GCM-SHA384", "--http2", "2", "200"},
		{pki.RSA2048, "ECDHE-RSA-AES128-GCM-SHA256", "--http2", "2", "403"},
	} {
		t.Run(tc.suite+tc.http, func(t *testing.T) {
			w := newWorld(t, tc.kt)
			serverSVID := w.caA.svid(t, infraTeam, tc.kt, 2, pkix.Name{})
			client := clientID
			if tc.status == "403" {
				client = testTeam
			}
			cert, key, _ := pemFiles(t, dir, fmt.Sprint("curl", i), w.caA.svid(t, client, tc.kt, 3, pkix.Name{}), w.caA.root)
			app, _ := httpApp(t)
			r := startSidecar(t, proxy.Config{Source: w.source(serverSVID), Namespace: "db", Policy: policySet(t,
				doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n"),
				doc("AuthorizationPolicy", "db", "deny-test-team", "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [a.example/ns/db/sa/test-team]\n"),
			), Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}})
			der, err := x509.MarshalPKIXPublicKey(serverSVID.Certificates[0].PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(der)
			pin := "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
			out, err := exec.Command(curl, "-sS", "-k", "--pinnedpubkey", pin, "--cert", cert, "--key", key, "--tlsv1.2", "--tls-max", "1.2",
				"--ciphers", tc.suite, tc.http, "--max-time", "10", "-o", "-", "-w", "\n%{http_version} %{http_code}", "https://"+r.addr(0)+"/x").CombinedOutput()
			want := map[string]string{"200": "app saw /x\n" + tc.proto + " 200", "403": "RBAC: access denied\n" + tc.proto + " 403"}[tc.status]
			if err != nil || string(out) != want {
				t.Fatalf("curl: %v\n%s\nwant %q", err, out, want)
			}
		})
	}
}

// TestHTTPInboundUpgrade: an upgraded connection (WebSocket-style) through
// an HTTP inbound listener keeps flowing after the HTTP server hands it
// over, and is logged once it ends.
func TestHTTPInboundUpgrade(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: serverSrc, Namespace: "db", Policy: fixedMode(policy.ModeStrict),
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: upgradeEchoApp(t), Protocol: proxy.ProtocolHTTP}}})
	tc := proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(infraTeam)))
	tc.NextProtos = []string{"http/1.1"}
	c, err := dialTLS(t, r.addr(0), tc)
	if err != nil {
		t.Fatal(err)
	}
	echoUpgrade(t, c, "ratings")
	waitLog(t, r, "msg=request", "path=/ws proto=HTTP/1.1 status=101")
}

// TestHTTPOutbound: an HTTP outbound listener sends the app's requests
// over pooled mTLS connections that passed secure naming: ten requests on
// ten new app connections cost one handshake; the app behind the inbound
// side sees the client's identity; an upgrade goes through; a server not
// allowed to run the service gets no request, and the app a 503.
func TestHTTPOutbound(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	app, last := httpApp(t)
	start := func(serverID string, slot int, forward string) *running {
		return startSidecar(t, proxy.Config{Source: w.source(w.caA.svid(t, serverID, pki.ECP256, slot, pkix.Name{})), Namespace: "db",
			Policy: fixedMode(policy.ModeStrict), Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: forward, Protocol: proxy.ProtocolHTTP}}})
	}
	in := start(infraTeam, 2, app)
	hook, settle := followPool(t, "datastore")
	out := startSidecar(t, proxy.Config{Source: clientSrc, Outbound: []proxy.OutboundConfig{
		{Name: "datastore", Service: "datastore", Upstream: in.addr(0), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}}, hook)
	client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 10 {
		code, body, _ := get(t, client, fmt.Sprintf("http://%s/r/%d", out.addr(0), i), nil)
		if code != 200 || body != fmt.Sprintf("app saw /r/%d", i) {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
		settle() // so that the next request finds the connection in the pool
	}
	if x := last().Headers.Get(proxy.XFCCHeader); !strings.HasSuffix(x, ";URI="+clientID) {
		t.Fatalf("the app got XFCC %q, want the client's identity", x)
	}
	if m := scrape(t, out); !strings.Contains(m, `meshfed_proxy_handshakes_total{listener="datastore",result="ok"} 1`+"\n") ||
		!strings.Contains(m, `meshfed_proxy_http_requests_total{code="2xx",listener="datastore"} 10`+"\n") {
		t.Fatalf("want 10 requests over 1 handshake:\n%s", m)
	}
	waitLog(t, out, "msg=request listener=datastore", "peer="+infraTeam+" method=GET host="+out.addr(0)+" path=/r/9 proto=HTTP/1.1 status=200")

	// An upgraded stream (WebSocket-style) through both sides.
	upIn := start(infraTeam, 4, upgradeEchoApp(t))
	upOut := startSidecar(t, proxy.Config{Source: clientSrc, Outbound: []proxy.OutboundConfig{
		{Name: "ws", Service: "datastore", Upstream: upIn.addr(0), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}})
	c, err := net.DialTimeout("tcp", upOut.addr(0), waitBudget)
	if err != nil {
		t.Fatal(err)
	}
	echoUpgrade(t, c, "datastore")

	// Secure naming: test-team is not allowed to run datastore.
	impostor := start(testTeam, 5, app)
	bad := startSidecar(t, proxy.Config{Source: clientSrc, Outbound: []proxy.OutboundConfig{
		{Name: "datastore", Service: "datastore", Upstream: impostor.addr(0), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}})
	code, body, _ := get(t, client, "http://"+bad.addr(0)+"/secret", nil)
	if code != http.StatusServiceUnavailable || body != "upstream connect error or disconnect/reset before headers" {
		t.Fatalf("to an impostor: %d %q, want 503", code, body)
	}
	waitLog(t, bad, "path=/secret", "status=503", "result=upstream_failed", testTeam, "datastore")
}
