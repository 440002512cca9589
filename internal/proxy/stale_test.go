package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// clockedCAA is w's a.example CA signing by clock.
func clockedCAA(t *testing.T, w *world, clock *gwClock) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(pki.CAConfig{Signer: key(t, pki.ECP256, 0), Chain: []*x509.Certificate{w.caA.root}, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// clockedPair is a world, a clock, a.example's CA signing by it, and the
// sources of an upstream (infraTeam) and of its client (clientID) holding
// SVIDs from that CA.
func clockedPair(t *testing.T) (w *world, clock *gwClock, ca *pki.CA, upSrc, outSrc *source) {
	t.Helper()
	w = newWorld(t, pki.ECP256)
	clock = newGWClock()
	ca = clockedCAA(t, w, clock)
	return w, clock, ca, w.source(svidAt(t, ca, infraTeam, 2)), w.source(svidAt(t, ca, clientID, 3))
}

// svidAt is an SVID for id from ca, of pki's default lifetime.
func svidAt(t *testing.T, ca *pki.CA, id string, slot int) *x509svid.SVID {
	t.Helper()
	return svidFor(t, ca, id, slot, 0)
}

// svidFor is an SVID for id from ca that lives ttl (0: pki's default).
func svidFor(t *testing.T, ca *pki.CA, id string, slot int, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	k := key(t, pki.ECP256, slot)
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: k.Public(), TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: chain, PrivateKey: k}
}

// followPool returns a hook for startSidecar that has the outbound HTTP
// listener name report its connections, and settle, which waits until the
// connection of the last request is back in the pool (or was refused by
// it): the Transport takes it back on a goroutine of its own, so the next
// request could otherwise find the pool empty and dial.
func followPool(t *testing.T, name string) (hook func(*proxy.Sidecar), settle func()) {
	back := make(chan error, 64)
	hook = func(s *proxy.Sidecar) {
		proxy.SetUpstreamTrace(s, name, &httptrace.ClientTrace{PutIdleConn: func(err error) { back <- err }})
	}
	settle = func() {
		t.Helper()
		select {
		case <-back:
		case <-time.After(waitBudget):
			t.Fatal("the upstream connection did not go back to the pool")
		}
	}
	return hook, settle
}

// traced sends req with client and reads the response; back waits until
// the client's Transport has taken the connection back into its pool,
// which it does on a goroutine of its own after the body is read, so that
// the next request finds it there.
// reused, if not nil, is set to whether the request went on a pooled
// connection.
func traced(t *testing.T, client *http.Client, req *http.Request, reused *bool) (resp *http.Response, body string, back func()) {
	t.Helper()
	put := make(chan error, 1)
	trace := &httptrace.ClientTrace{PutIdleConn: func(err error) { put <- err }}
	if reused != nil {
		trace.GotConn = func(info httptrace.GotConnInfo) { *reused = info.Reused }
	}
	resp, err := client.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), func() {
		t.Helper()
		select {
		case err := <-put:
			if err != nil {
				t.Fatalf("the connection did not go back to the pool: %v", err)
			}
		case <-time.After(waitBudget):
			t.Fatal("the connection did not go back to the pool")
		}
	}
}

// slowApp is an HTTP app answering "app saw <path>"; a request for /slow
// is announced on arrived and answered only once release is closed.
func slowApp(t *testing.T) (addr string, arrived <-chan struct{}, release chan struct{}) {
	t.Helper()
	release, got := make(chan struct{}), make(chan struct{}, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			got <- struct{}{}
			<-release
		}
		fmt.Fprintf(w, "app saw %s", r.URL.Path)
	}), ReadHeaderTimeout: waitBudget}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), got, release
}

// getAsync GETs url with client on a goroutine of its own; the status
// arrives on the result (0 for a failed request).
func getAsync(client *http.Client, url string) <-chan int {
	code := make(chan int, 1)
	go func() {
		resp, err := client.Get(url)
		if err != nil {
			code <- 0
			return
		}
		resp.Body.Close()
		code <- resp.StatusCode
	}()
	return code
}

// startHTTPPair starts an HTTP inbound sidecar of upSrc in front of app on
// upClock, its idle closes recorded and never run (what the tests look at is
// the other side's pool, which must not depend on the upstream closing),
// and an outbound HTTP listener "datastore" of outSrc to it on outClock
// (nil: time.Now) with outLimits; settle is followPool's.
func startHTTPPair(t *testing.T, app string, upSrc *source, upClock func() time.Time, outSrc *source, outClock func() time.Time,
	outLimits proxy.LimitsConfig) (up, out *running, settle func()) {
	t.Helper()
	up = startSidecar(t, proxy.Config{Source: upSrc, Namespace: "db", Policy: fixedMode(policy.ModeStrict), Clock: upClock,
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}},
		func(s *proxy.Sidecar) { proxy.SetAfterFunc(s, (&timers{}).afterFunc) })
	hook, settle := followPool(t, "datastore")
	out = startSidecar(t, proxy.Config{Source: outSrc, Clock: outClock, Limits: outLimits, Outbound: []proxy.OutboundConfig{
		{Name: "datastore", Service: "datastore", Upstream: up.addr(0), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}}, hook)
	return up, out, settle
}

// clockedInbound is an HTTP inbound sidecar of infraTeam on a clock the
// test moves, with its delayed closes recorded (ts), in front of httpApp,
// and the source of a client (clientID).
type clockedInbound struct {
	w                    *world
	clock                *gwClock
	serverSrc, clientSrc *source
	ts                   *timers
	r                    *running
}

func startClockedInbound(t *testing.T, limits proxy.LimitsConfig) *clockedInbound {
	t.Helper()
	in := &clockedInbound{w: newWorld(t, pki.ECP256), clock: newGWClock(), ts: &timers{}}
	in.serverSrc = in.w.source(in.w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	in.clientSrc = in.w.source(in.w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	app, _ := httpApp(t)
	in.r = startSidecar(t, proxy.Config{Source: in.serverSrc, Namespace: "db", Policy: fixedMode(policy.ModeStrict), Clock: in.clock.Now,
		Limits: limits, Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}},
		func(s *proxy.Sidecar) { proxy.SetAfterFunc(s, in.ts.afterFunc) })
	return in
}

// timers records the sidecar's delayed closes instead of running them.
type timers struct {
	mu  sync.Mutex
	all []*pendingTimer
}

type pendingTimer struct {
	d       time.Duration
	f       func()
	stopped atomic.Bool
}

func (ts *timers) afterFunc(d time.Duration, f func()) func() bool {
	p := &pendingTimer{d: d, f: f}
	ts.mu.Lock()
	ts.all = append(ts.all, p)
	ts.mu.Unlock()
	return func() bool { return !p.stopped.Swap(true) }
}

// armed returns the timers not stopped.
func (ts *timers) armed() []*pendingTimer {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []*pendingTimer
	for _, p := range ts.all {
		if !p.stopped.Load() {
			out = append(out, p)
		}
	}
	return out
}

func metricLine(t *testing.T, r *running, line string) bool {
	t.Helper()
	return strings.Contains(scrape(t, r), line+"\n")
}

// TestHTTPInboundStaleConnection: a kept-alive mTLS connection to an HTTP
// inbound listener carries a request only while its handshake's proof
// holds. A new copy of the same bundle changes nothing; an idle connection
// is closed when the client's chain expires; a request on a connection
// whose client is no longer trusted, or whose chain expired, is refused
// with 421 and the connection closed, and the client's next connection
// handshakes anew.
func TestHTTPInboundStaleConnection(t *testing.T) {
	in := startClockedInbound(t, proxy.LimitsConfig{IdleTimeout: duration.Duration(2 * time.Hour)})
	w, clock, serverSrc, clientSrc, ts, r := in.w, in.clock, in.serverSrc, in.clientSrc, in.ts, in.r
	url := "https://" + r.addr(0) + "/x"
	client := mtlsClient(clientSrc, false)
	handshakes := func(n int) string {
		return fmt.Sprintf(`meshfed_proxy_handshakes_total{listener="in",result="ok"} %d`, n)
	}
	ok := func(step string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, body, back := traced(t, client, req, nil)
		if resp.StatusCode != 200 || body != "app saw /x" {
			t.Fatalf("%s: %d %q, want 200 from the app", step, resp.StatusCode, body)
		}
		back()
	}
	stale := func(step string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest || !resp.Close ||
			string(b) != "mTLS peer authentication of this connection has lapsed: retry on a new connection" {
			t.Fatalf("%s: %d close=%v %q, want 421 and the connection closed", step, resp.StatusCode, resp.Close, b)
		}
	}

	ok("first request")
	// Idle now, with the client's chain expiring before the idle timeout:
	// a close is armed for its expiry.
	waitFor(t, func() bool { return len(ts.armed()) == 1 })
	leaf := clientSrc.svid.Load().Certificates[0]
	if d, left := ts.armed()[0].d, leaf.NotAfter.Sub(clock.Now()); d < left-time.Minute || d > left+time.Minute {
		t.Fatalf("idle close armed after %s, want the client's time left (%s)", d, leaf.NotAfter.Sub(clock.Now()))
	}

	// A new copy of the same roots, as every rotation of the server's own
	// SVID hands out: the same connection goes on.
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	ok("after an equal bundle")
	if !metricLine(t, r, handshakes(1)) {
		t.Fatalf("want the kept-alive connection reused:\n%s", scrape(t, r))
	}

	// The expiry comes while the connection is idle: it is closed, and the
	// client's next request handshakes anew.
	waitFor(t, func() bool { return len(ts.armed()) == 1 })
	ts.armed()[0].f()
	waitLog(t, r, "closed an idle connection: the peer's certificate chain expired", "peer="+clientID)
	ok("after the idle close")
	if m := scrape(t, r); !strings.Contains(m, handshakes(2)+"\n") ||
		!strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="in",reason="expired"} 1`+"\n") {
		t.Fatalf("want a second handshake after the idle close:\n%s", m)
	}

	// a.example leaves the server's bundles: the kept-alive connection of
	// an a.example client may carry no more requests.
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdB, w.caB)))
	stale("after a.example was withdrawn")
	waitLog(t, r, "result=peer_stale", "status=421", "trust domain a.example is no longer trusted")
	if resp, err := client.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("a new connection of the withdrawn domain was served: %d", resp.StatusCode)
	}
	waitLog(t, r, "result=handshake_failed", "a.example")

	// Back, with a rotated root beside the old one: the client's chain
	// still verifies, so a new connection is served...
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	ok("after a.example came back")
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA, w.caB), bundle(tdB, w.caB)))
	ok("after a root was added")
	// ... and once the client's chain has expired it is refused.
	clock.Advance(2 * time.Hour)
	stale("after the client's chain expired")
	waitLog(t, r, "the peer's certificate chain expired at "+leaf.NotAfter.UTC().Format(time.RFC3339))
	if m := scrape(t, r); !strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="in",reason="expired"} 2`+"\n") ||
		!strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="in",reason="untrusted"} 1`+"\n") {
		t.Fatalf("want the stale connections counted by reason:\n%s", m)
	}
}

// TestHTTPOutboundRenewsStaleConnections: an outbound HTTP listener's pooled
// connections to its upstream carry requests only while their handshakes'
// proof holds; then the pool's next request opens a new connection, and a
// request already on an old one finishes.
func TestHTTPOutboundRenewsStaleConnections(t *testing.T) {
	w, clock, ca, upSrc, outSrc := clockedPair(t)
	app, arrived, release := slowApp(t)
	_, out, settle := startHTTPPair(t, app, upSrc, clock.Now, outSrc, clock.Now, proxy.LimitsConfig{})
	client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + out.addr(0)
	want := func(step, path string, code int) {
		t.Helper()
		if got, body, _ := get(t, client, base+path, nil); got != code || (code == 200 && body != "app saw "+path) {
			t.Fatalf("%s: %d %q, want %d", step, got, body, code)
		}
	}
	counts := func(step string, lines ...string) {
		t.Helper()
		m := scrape(t, out)
		for _, l := range lines {
			if !strings.Contains(m, l+"\n") {
				t.Fatalf("%s: want %s in:\n%s", step, l, m)
			}
		}
	}
	handshakes := func(n int) string {
		return fmt.Sprintf(`meshfed_proxy_handshakes_total{listener="datastore",result="ok"} %d`, n)
	}

	for i := range 3 {
		want(fmt.Sprintf("request %d", i), "/a", 200)
		settle()
	}
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	want("after an equal bundle", "/b", 200)
	settle()
	counts("one connection so far", handshakes(1))

	// A request in flight on the pooled connection while the bundle of
	// the upstream's domain changes (a root added): the next request goes
	// over a new connection, and the one in flight finishes.
	slow := getAsync(client, base+"/slow")
	<-arrived
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA, w.caB), bundle(tdB, w.caB)))
	want("after a root was added", "/c", 200)
	settle()
	close(release)
	if code := <-slow; code != 200 {
		t.Fatalf("the request in flight when the pool was renewed: %d, want 200", code)
	}
	settle() // refused: its generation is retired
	counts("after a root was added", handshakes(2), `meshfed_proxy_stale_connections_total{listener="datastore",reason="untrusted"} 1`)
	waitLog(t, out, "renewing the upstream connections", "the bundle of a.example changed")

	// Two hours on, both sides hold new SVIDs; the pooled connection's
	// chains have expired, so it is not used again (the upstream would
	// refuse it with 421).
	clock.Advance(2 * time.Hour)
	upSrc.svid.Store(svidAt(t, ca, infraTeam, 2))
	outSrc.svid.Store(svidAt(t, ca, clientID, 3))
	want("after the chains expired", "/d", 200)
	settle()
	counts("after the chains expired", handshakes(3), `meshfed_proxy_stale_connections_total{listener="datastore",reason="expired"} 1`)

	// The upstream's domain is withdrawn: no request goes over the pooled
	// connection, and a new one is refused.
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdB, w.caB)))
	want("after a.example was withdrawn", "/e", http.StatusServiceUnavailable)
	counts("after a.example was withdrawn", handshakes(3), `meshfed_proxy_stale_connections_total{listener="datastore",reason="untrusted"} 2`)
}

// TestGatewayIngressStaleConnection: on a MUTUAL http ingress gateway, a
// kept-alive connection carries a request only while the client's chain is
// unexpired and verifies against the CA file in force; a rewrite of the
// same CAs changes nothing.
func TestGatewayIngressStaleConnection(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, pki.ECP256, 10, "third-party root")
	other := newCA(t, pki.ECP256, 11, "another root")
	server := gwIssue(t, root, 12, dir, "server", 0, "hello.example.com")
	client := gwIssue(t, root, 13, dir, "client", 2*time.Minute, "client.example.com")
	caFile := gwRootFile(t, dir, "root.pem", root)
	app, _ := httpApp(t)
	clock := newGWClock()
	ts := &timers{}
	r := startGateways(t, proxy.GatewaysConfig{Clock: clock.Now, Ingress: []proxy.IngressConfig{{Name: "gw", Protocol: "http",
		Routes: []proxy.IngressRoute{{Hosts: []string{"hello.example.com"}, Backend: app}},
		TLS:    proxy.ServerTLSFiles{Mode: "MUTUAL", ServerCertificate: server.cert, PrivateKey: server.key, CACertificates: caFile}}}},
		func(s *proxy.Sidecar) { proxy.SetAfterFunc(s, ts.afterFunc) })
	hc := &http.Client{Timeout: waitBudget, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: gwPool(root), ServerName: "hello.example.com", Certificates: []tls.Certificate{client.tls}}}}
	newReq := func() *http.Request {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+r.addr(t, "gw")+"/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "hello.example.com"
		return req
	}
	do := func(step string) (*http.Response, string, bool, error) {
		t.Helper()
		req := newReq()
		var reused bool
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}))
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", reused, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), reused, nil
	}
	ok := func(step string, wantReused bool) {
		t.Helper()
		var reused bool
		resp, body, back := traced(t, hc, newReq(), &reused)
		if resp.StatusCode != 200 || body != "app saw /x" || reused != wantReused {
			t.Fatalf("%s: %d %q reused=%v, want 200 from the app, reused=%v", step, resp.StatusCode, body, reused, wantReused)
		}
		back()
	}
	stale := func(step string) {
		t.Helper()
		resp, body, reused, err := do(step)
		if err != nil || resp.StatusCode != http.StatusMisdirectedRequest || !resp.Close || !reused ||
			body != "mTLS peer authentication of this connection has lapsed: retry on a new connection" {
			t.Fatalf("%s: %v %q reused=%v (%v), want 421 on the kept-alive connection, closed", step, resp, body, reused, err)
		}
	}
	rewrite := func(ca *testCA) {
		gwWrite(t, caFile, pemfile.EncodeCertificates(ca.root))
		clock.Advance(time.Second) // the files are looked at once a second
	}

	ok("first request", false)
	waitFor(t, func() bool { return len(ts.armed()) == 1 })
	if d := ts.armed()[0].d; d <= time.Minute || d > 2*time.Minute {
		t.Fatalf("idle close armed after %s, want the client certificate's time left (under 2m)", d)
	}
	rewrite(root)
	ok("after the same CA file was written again", true)

	waitFor(t, func() bool { return len(ts.armed()) == 1 })
	ts.armed()[0].f()
	r.logs.wait(t, "closed an idle connection: the peer's certificate chain expired", "listener=gw", "CN=client.example.com")
	ok("after the idle close", false)

	rewrite(other)
	stale("after the CA file was replaced")
	r.logs.wait(t, "listener=gw", "status=421", "result=peer_stale", "does not verify against ca_certificates")
	if _, _, _, err := do("a new connection"); err == nil {
		t.Fatal("a new connection of a client the CA file no longer holds was served")
	}

	rewrite(root)
	ok("after the CA came back", false)
	// Taken out again: the open connection is closed at the next check,
	// idle or not.
	rewrite(other)
	if n := proxy.Recheck(r.s); n != 1 {
		t.Fatalf("the check of open connections closed %d, want the client's", n)
	}
	r.logs.wait(t, "closed a connection: its peer is no longer trusted", "listener=gw", "CN=client.example.com")
	rewrite(root)
	ok("on a new connection", false)
	clock.Advance(3 * time.Minute)
	stale("after the client certificate expired")
	r.logs.wait(t, "listener=gw", "result=peer_stale", "the peer's certificate chain expired at "+client.chain[0].NotAfter.UTC().Format(time.RFC3339))
}

// TestHTTPOutboundRetriesRefusedConnection: an upstream whose clock is ahead
// finds a pooled connection's handshake stale before this side does and
// answers 421; the outbound listener renews its connections and sends a
// request without a body once more on a new one, while a request with a
// body (which cannot be read twice) gets the 421.
func TestHTTPOutboundRetriesRefusedConnection(t *testing.T) {
	_, upClock, upCA, upSrc, outSrc := clockedPair(t)
	// The upstream's SVID is valid by both clocks throughout: a proxy
	// presents no SVID its own clock finds expired.
	upSrc.svid.Store(svidFor(t, upCA, infraTeam, 2, 24*time.Hour))
	app, _ := httpApp(t)
	// The upstream's idle closes are recorded, never run: an idle connection
	// it closed at once (its clock is past the client's expiry) would leave
	// nothing for it to refuse.
	up, out, settle := startHTTPPair(t, app, upSrc, upClock.Now, outSrc, nil, proxy.LimitsConfig{})
	client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + out.addr(0)
	send := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body == "" {
			req.Body = http.NoBody
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := send("GET", "/a", ""); code != 200 || body != "app saw /a" {
		t.Fatalf("first request: %d %q", code, body)
	}
	settle()
	// The upstream's clock runs two hours ahead: the client SVID on the
	// pooled connection has expired for it, not for this side. A new SVID
	// (valid then) is in the source.
	upClock.Advance(2 * time.Hour)
	outSrc.svid.Store(svidAt(t, upCA, clientID, 3))
	if code, body := send("GET", "/b", ""); code != 200 || body != "app saw /b" {
		t.Fatalf("a GET on the refused connection: %d %q, want it sent again on a new connection", code, body)
	}
	settle() // the new connection; the refused one was closed
	waitLog(t, up, "result=peer_stale", "status=421")
	waitLog(t, out, "renewing the upstream connections", "the upstream refused a pooled connection with 421")
	if m := scrape(t, out); !strings.Contains(m, `meshfed_proxy_handshakes_total{listener="datastore",result="ok"} 2`+"\n") ||
		!strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="datastore",reason="refused"} 1`+"\n") {
		t.Fatalf("want the refusal counted and one new handshake:\n%s", m)
	}

	upClock.Advance(2 * time.Hour)
	outSrc.svid.Store(svidAt(t, upCA, clientID, 3))
	if code, body := send("POST", "/c", "payload"); code != http.StatusMisdirectedRequest {
		t.Fatalf("a POST with a body on the refused connection: %d %q, want the upstream's 421", code, body)
	}
	if code, body := send("POST", "/d", "payload"); code != 200 || body != "app saw /d" {
		t.Fatalf("the POST after it: %d %q, want 200 on a new connection", code, body)
	}
}

// TestWithdrawnTrustClosesConnections: open TCP connections through an
// outbound and an inbound sidecar are closed by the side that stops
// trusting the other's trust domain; a new copy of the same roots, an added
// root and the chains' expiry close nothing.
func TestWithdrawnTrustClosesConnections(t *testing.T) {
	w, clock, ca, upSrc, outSrc := clockedPair(t)
	app := echoApp(t)
	in := startSidecar(t, proxy.Config{Source: upSrc, Policy: fixedMode(policy.ModeStrict), Clock: clock.Now,
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, AllowedIDs: []string{clientID}}}})
	out := startSidecar(t, proxy.Config{Source: outSrc, Clock: clock.Now,
		Outbound: []proxy.OutboundConfig{{Name: "db", Service: "datastore", Upstream: in.addr(0), AllowedIDs: []string{infraTeam}}}})
	open := func() net.Conn {
		t.Helper()
		c := dialPlain(t, out.addr(0))
		if err := roundTrip(c, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	alive := func(step string, c net.Conn) {
		t.Helper()
		if err := roundTrip(c, []byte("still there?")); err != nil {
			t.Fatalf("%s: the connection broke: %v", step, err)
		}
	}
	closedBy := func(step string, c net.Conn, r *running) {
		t.Helper()
		if n := proxy.Recheck(r.s); n != 1 {
			t.Fatalf("%s: recheck closed %d connections, want 1", step, n)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitBudget))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("%s: read %d, %v from a connection that should be closed", step, n, err)
		}
		c.Close() // the app's side too, so the other sidecar's end of it ends
	}
	both := func() int { return proxy.Recheck(in.s) + proxy.Recheck(out.s) }

	c := open()
	upSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA, w.caB), bundle(tdB, w.caB)))
	if n := both(); n != 0 {
		t.Fatalf("an equal bundle and an added root closed %d connections", n)
	}
	alive("after an equal bundle and an added root", c)
	clock.Advance(2 * time.Hour)
	if n := both(); n != 0 {
		t.Fatalf("the chains' expiry closed %d connections", n)
	}
	alive("after the chains expired", c)

	// The inbound side withdraws a.example, the client's domain: the
	// connection is closed, though its chains expired long ago.
	upSrc.bundles.Store(x509bundle.NewSet(bundle(tdB, w.caB)))
	closedBy("inbound, a.example withdrawn", c, in)
	waitLog(t, in, "closed a connection: its peer is no longer trusted", "listener=in", "peer="+clientID, "trust domain a.example is no longer trusted")

	// The outbound side withdraws a.example, the upstream's domain (once
	// its side of the first connection has ended), on a new connection
	// with SVIDs valid now.
	waitLog(t, out, "msg=connection listener=db")
	upSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	upSrc.svid.Store(svidAt(t, ca, infraTeam, 2))
	outSrc.svid.Store(svidAt(t, ca, clientID, 3))
	c = open()
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caB), bundle(tdB, w.caB)))
	closedBy("outbound, a.example's root replaced", c, out)
	waitLog(t, out, "closed a connection: its peer is no longer trusted", "listener=db", "peer="+infraTeam, "no longer verifies against the bundle of a.example")
	if m := scrape(t, out); !strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="db",reason="untrusted"} 1`+"\n") {
		t.Fatalf("want the closed connection counted:\n%s", m)
	}
}

// TestWithdrawnTrustClosesPooledConnection: an outbound HTTP listener's
// pooled connection to an upstream whose trust domain is withdrawn is
// closed with the request in flight on it.
func TestWithdrawnTrustClosesPooledConnection(t *testing.T) {
	w, clock, _, upSrc, outSrc := clockedPair(t)
	app, arrived, release := slowApp(t)
	defer close(release)
	up := startSidecar(t, proxy.Config{Source: upSrc, Namespace: "db", Policy: fixedMode(policy.ModeStrict), Clock: clock.Now,
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}})
	out := startSidecar(t, proxy.Config{Source: outSrc, Clock: clock.Now, Outbound: []proxy.OutboundConfig{
		{Name: "datastore", Service: "datastore", Upstream: up.addr(0), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}})
	client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
	slow := getAsync(client, "http://"+out.addr(0)+"/slow")
	<-arrived
	outSrc.bundles.Store(x509bundle.NewSet(bundle(tdB, w.caB)))
	if n := proxy.Recheck(out.s); n != 1 {
		t.Fatalf("the check closed %d connections, want the pooled one", n)
	}
	if code := <-slow; code != http.StatusServiceUnavailable {
		t.Fatalf("the request in flight to a withdrawn domain: %d, want 503", code)
	}
	waitLog(t, out, "closed a connection: its peer is no longer trusted", "listener=datastore", "peer="+infraTeam)
	if n := proxy.Recheck(out.s); n != 0 {
		t.Fatalf("a second check closed %d more", n)
	}
}

// TestHTTPInboundStaleConnectionH2: over h2, a request on a connection
// whose client is no longer trusted gets 421 and the connection a GOAWAY,
// so the client's next request opens a new connection.
func TestHTTPInboundStaleConnectionH2(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	app, _ := httpApp(t)
	r := startSidecar(t, proxy.Config{Source: serverSrc, Namespace: "db", Policy: fixedMode(policy.ModeStrict),
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, Protocol: proxy.ProtocolHTTP}}})
	client := mtlsClient(clientSrc, true)
	url := "https://" + r.addr(0) + "/x"
	if code, body, proto := get(t, client, url, nil); code != 200 || body != "app saw /x" || proto != "HTTP/2.0" {
		t.Fatalf("first request: %d %q %s", code, body, proto)
	}
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdB, w.caB)))
	if code, body, proto := get(t, client, url, nil); code != http.StatusMisdirectedRequest || proto != "HTTP/2.0" ||
		body != "mTLS peer authentication of this connection has lapsed: retry on a new connection" {
		t.Fatalf("after a.example was withdrawn: %d %q %s, want 421 over h2", code, body, proto)
	}
	serverSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB)))
	if code, body, _ := get(t, client, url, nil); code != 200 || body != "app saw /x" {
		t.Fatalf("after a.example came back: %d %q", code, body)
	}
	if !metricLine(t, r, `meshfed_proxy_handshakes_total{listener="in",result="ok"} 2`) {
		t.Fatalf("want the request after the GOAWAY on a second connection:\n%s", scrape(t, r))
	}
}

// TestMaxConnectionDuration: limits.max_connection_duration ends a TCP
// connection when it is reached; an HTTP inbound connection past it serves
// the request and closes, an idle one is closed then; the outbound pool
// renews its connections.
func TestMaxConnectionDuration(t *testing.T) {
	const max = 20 * time.Minute
	limits := proxy.LimitsConfig{MaxConnectionDuration: duration.Duration(max), IdleTimeout: duration.Duration(2 * time.Hour)}

	t.Run("tcp", func(t *testing.T) {
		w, clock, _, upSrc, outSrc := clockedPair(t)
		_ = w
		ts := &timers{}
		in := startSidecar(t, proxy.Config{Source: upSrc, Policy: fixedMode(policy.ModeStrict), Clock: clock.Now, Limits: limits,
			Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t), AllowedIDs: []string{clientID}}}},
			func(s *proxy.Sidecar) { proxy.SetAfterFunc(s, ts.afterFunc) })
		out := startSidecar(t, proxy.Config{Source: outSrc, Clock: clock.Now,
			Outbound: []proxy.OutboundConfig{{Name: "db", Service: "datastore", Upstream: in.addr(0), AllowedIDs: []string{infraTeam}}}})
		c := dialPlain(t, out.addr(0))
		if err := roundTrip(c, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return len(ts.armed()) == 1 })
		if d := ts.armed()[0].d; d != max {
			t.Fatalf("the connection's end armed after %s, want %s", d, max)
		}
		ts.armed()[0].f()
		_ = c.SetReadDeadline(time.Now().Add(waitBudget))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("read %d, %v after the maximum duration; want the connection closed", n, err)
		}
		waitLog(t, in, "msg=connection listener=in", "result=max_duration")
	})

	t.Run("http inbound", func(t *testing.T) {
		in := startClockedInbound(t, limits)
		clock, clientSrc, ts, r := in.clock, in.clientSrc, in.ts, in.r
		client := mtlsClient(clientSrc, false)
		req := func(step string, wantClose bool) {
			t.Helper()
			rq, err := http.NewRequest(http.MethodGet, "https://"+r.addr(0)+"/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, body, back := traced(t, client, rq, nil)
			if resp.StatusCode != 200 || body != "app saw /x" || resp.Close != wantClose {
				t.Fatalf("%s: %d %q close=%v, want 200, close=%v", step, resp.StatusCode, body, resp.Close, wantClose)
			}
			if !wantClose {
				back()
			}
		}
		req("first request", false)
		waitFor(t, func() bool { return len(ts.armed()) == 1 })
		if d := ts.armed()[0].d; d > max || d < max-time.Minute {
			t.Fatalf("idle close armed after %s, want the %s left", d, max)
		}
		clock.Advance(max)
		req("at the maximum duration", true)
		req("the next one, on a new connection", false)
		if !metricLine(t, r, `meshfed_proxy_handshakes_total{listener="in",result="ok"} 2`) {
			t.Fatalf("want a second handshake:\n%s", scrape(t, r))
		}
		// Idle when it reaches it: closed then.
		waitFor(t, func() bool { return len(ts.armed()) == 1 })
		ts.armed()[0].f()
		waitLog(t, r, "closed an idle connection: it reached limits.max_connection_duration", "listener=in", "peer="+clientID)
	})

	t.Run("http outbound", func(t *testing.T) {
		_, clock, _, upSrc, outSrc := clockedPair(t)
		app, _ := httpApp(t)
		_, out, settle := startHTTPPair(t, app, upSrc, clock.Now, outSrc, clock.Now, limits)
		client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
		for _, step := range []string{"first", "second"} {
			if code, body, _ := get(t, client, "http://"+out.addr(0)+"/x", nil); code != 200 || body != "app saw /x" {
				t.Fatalf("%s request: %d %q", step, code, body)
			}
			settle()
		}
		clock.Advance(max)
		if code, body, _ := get(t, client, "http://"+out.addr(0)+"/x", nil); code != 200 || body != "app saw /x" {
			t.Fatalf("at the maximum duration: %d %q", code, body)
		}
		if m := scrape(t, out); !strings.Contains(m, `meshfed_proxy_handshakes_total{listener="datastore",result="ok"} 2`+"\n") ||
			!strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="datastore",reason="max_duration"} 1`+"\n") {
			t.Fatalf("want the pool renewed once:\n%s", m)
		}
	})
}

// TestExpiredOwnSVIDIsNotPresented: once this workload's SVID has expired
// (the agent is gone, and the source keeps the last SVID it had), the
// sidecar presents it to nobody. Against a lenient upstream, which would
// take it, the outbound pool would otherwise open a connection per request,
// each one stale at once, and log a renewal each time.
func TestExpiredOwnSVIDIsNotPresented(t *testing.T) {
	_, clock, ca, _, outSrc := clockedPair(t)
	upSVID := svidFor(t, ca, infraTeam, 2, 24*time.Hour)
	cert := tls.Certificate{PrivateKey: upSVID.PrivateKey, Leaf: upSVID.Certificates[0]}
	for _, c := range upSVID.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	var handshakes atomic.Int64
	lenient := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "lenient saw %s", r.URL.Path)
	}))
	lenient.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert, // takes any client certificate, expired or not
		VerifyConnection: func(tls.ConnectionState) error {
			handshakes.Add(1)
			return nil
		},
	}
	lenient.StartTLS()
	t.Cleanup(lenient.Close)
	hook, settle := followPool(t, "datastore")
	out := startSidecar(t, proxy.Config{Source: outSrc, Clock: clock.Now, Outbound: []proxy.OutboundConfig{
		{Name: "datastore", Service: "datastore", Upstream: lenient.Listener.Addr().String(), AllowedIDs: []string{infraTeam}, Protocol: proxy.ProtocolHTTP},
	}}, hook)
	client := &http.Client{Timeout: waitBudget, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + out.addr(0)
	if code, body, _ := get(t, client, base+"/a", nil); code != 200 || body != "lenient saw /a" {
		t.Fatalf("with a valid SVID: %d %q", code, body)
	}
	settle()

	clock.Advance(2 * time.Hour) // the client SVID has expired; the upstream's has not
	for _, path := range []string{"/b", "/c", "/d"} {
		if code, _, _ := get(t, client, base+path, nil); code != http.StatusServiceUnavailable {
			t.Fatalf("%s with an expired SVID: %d, want 503", path, code)
		}
	}
	waitLog(t, out, "result=upstream_failed", "this workload's X.509-SVID spiffe://a.example/ns/default/sa/client expired at")
	if n := handshakes.Load(); n != 1 {
		t.Errorf("the upstream saw %d handshakes, want only the first request's", n)
	}
	if n := strings.Count(out.logs.String(), "renewing the upstream connections"); n != 1 {
		t.Errorf("the pool was renewed %d times, want once (its connection's chain expired):\n%s", n, out.logs.String())
	}
	if m := scrape(t, out); !strings.Contains(m, `meshfed_proxy_stale_connections_total{listener="datastore",reason="expired"} 1`+"\n") {
		t.Errorf("want one expired generation counted:\n%s", m)
	}
}
