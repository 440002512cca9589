package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

const (
	clientID   = "spiffe://a.example/ns/default/sa/client"
	infraTeam  = "spiffe://a.example/ns/db/sa/infra-team"
	testTeam   = "spiffe://a.example/ns/db/sa/test-team"
	otherIDB   = "spiffe://b.example/ns/default/sa/client"
	waitBudget = 10 * time.Second
)

// fixedMode is a Policy with one mTLS mode for every port and no request
// authentication or authorization rules (every request allowed).
type fixedMode policy.Mode

func (m fixedMode) MTLS(string, map[string]string, uint32) policy.Decision {
	return policy.Decision{Mode: policy.Mode(m)}
}

func (fixedMode) Authenticate(string, map[string]string, map[string][]string, url.Values, time.Time) (policy.AuthnResult, error) {
	return policy.AuthnResult{}, nil
}

func (fixedMode) Authorize(string, map[string]string, policy.Request) policy.AuthzDecision {
	return policy.AuthzDecision{Allowed: true, Rule: -1, Action: policy.ActionAllow, Reason: "test: no rules"}
}

// echoApp is the local app: it echoes what it reads and closes after EOF.
func echoApp(t *testing.T) string {
	t.Helper()
	return serve(t, nil, func(c net.Conn) { io.Copy(c, c) })
}

type running struct {
	s      *proxy.Sidecar
	logs   *testsync.Buffer
	cancel context.CancelFunc
	done   chan error
}

func (r *running) addr(i int) string { return r.s.Listeners()[i].Addr }

// startSidecar runs a sidecar on loopback until the test ends; each of
// before is called with it before it runs.
func startSidecar(t *testing.T, cfg proxy.Config, before ...func(*proxy.Sidecar)) *running {
	t.Helper()
	logs := &testsync.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	for i := range cfg.Inbound {
		cfg.Inbound[i].Listen = "127.0.0.1:0"
	}
	for i := range cfg.Outbound {
		cfg.Outbound[i].Listen = "127.0.0.1:0"
	}
	s, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range before {
		f(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitBudget):
			t.Error("sidecar did not stop")
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", logs.String())
		}
	})
	return r
}

// roundTrip writes msg on c and reads it back.
func roundTrip(c net.Conn, msg []byte) error {
	_ = c.SetDeadline(time.Now().Add(waitBudget))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func dialPlain(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) (net.Conn, error) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: waitBudget}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestInboundModes(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	app := echoApp(t)
	cases := []struct {
		mode           policy.Mode
		plainOK, tlsOK bool
	}{
		{policy.ModeStrict, false, true},
		{policy.ModePermissive, true, true},
		{policy.ModeDisable, true, false},
	}
	for _, tc := range cases {
		t.Run(string(tc.mode), func(t *testing.T) {
			r := startSidecar(t, proxy.Config{Source: serverSrc, Policy: fixedMode(tc.mode),
				Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app}}})
			pc := dialPlain(t, r.addr(0))
			err := roundTrip(pc, []byte("plain hello"))
			pc.Close()
			if (err == nil) != tc.plainOK {
				t.Errorf("plaintext client: err %v, want ok=%v", err, tc.plainOK)
			}
			c, err := dialTLS(t, r.addr(0), proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(infraTeam))))
			if err == nil {
				err = roundTrip(c, []byte("tls hello"))
				c.Close()
			}
			if (err == nil) != tc.tlsOK {
				t.Errorf("mTLS client: err %v, want ok=%v", err, tc.tlsOK)
			}
			want := map[policy.Mode][]string{
				policy.ModeStrict:     {"peer=plaintext bytes_received=0 bytes_sent=0", "result=plaintext_refused", "peer=" + clientID + " ", "result=ok"},
				policy.ModePermissive: {"peer=plaintext", "peer=" + clientID + " ", "result=ok"},
				policy.ModeDisable:    {"peer=plaintext", "result=tls_refused"},
			}[tc.mode]
			waitLog(t, r, want...)
		})
	}
}

func TestInboundRefusesUnauthorizedPeer(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	app := echoApp(t)
	cases := []struct {
		name    string
		allowed []string
		client  string
		ok      bool
	}{
		{"any verified ID by default", nil, otherIDB, true},
		{"exact ID listed", []string{clientID}, clientID, true},
		{"other ID refused", []string{testTeam}, clientID, false},
		{"trust domain listed", []string{"spiffe://a.example/*"}, clientID, true},
		{"other trust domain refused", []string{"spiffe://a.example/*"}, otherIDB, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ca := w.caA
			if strings.HasPrefix(tc.client, "spiffe://b.example") {
				ca = w.caB
			}
			clientSrc := w.source(ca.svid(t, tc.client, pki.ECP256, 10+i, pkix.Name{}))
			r := startSidecar(t, proxy.Config{Source: serverSrc, Policy: fixedMode(policy.ModeStrict),
				Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, AllowedIDs: tc.allowed}}})
			c, err := dialTLS(t, r.addr(0), proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeAny()))
			if err == nil {
				// TLS 1.3: the server's refusal shows on the first read.
				err = roundTrip(c, []byte("hello"))
			}
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				waitLog(t, r, "result=handshake_failed", "is not in the listener's allowed_ids")
			}
		})
	}
}

// TestOutboundToInbound: the app's plaintext goes through an outbound
// sidecar, mTLS, an inbound STRICT sidecar, to the app, and back; secure
// naming refuses a server with a valid SVID of another identity.
func TestOutboundToInbound(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	clientSrc := w.source(w.caA.svid(t, clientID, pki.ECP256, 3, pkix.Name{}))
	app := echoApp(t)
	for _, server := range []string{infraTeam, testTeam} {
		t.Run(server, func(t *testing.T) {
			serverSrc := w.source(w.caA.svid(t, server, pki.ECP256, 2, pkix.Name{}))
			in := startSidecar(t, proxy.Config{Source: serverSrc, Policy: fixedMode(policy.ModeStrict),
				Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: app, AllowedIDs: []string{clientID}}}})
			out := startSidecar(t, proxy.Config{Source: clientSrc,
				Outbound: []proxy.OutboundConfig{{Name: "db", Service: "datastore", Upstream: in.addr(0), AllowedIDs: []string{infraTeam}}}})
			msg := make([]byte, 1<<20)
			rand.Read(msg)
			c := dialPlain(t, out.addr(0))
			err := roundTrip(c, msg)
			if server == testTeam {
				if err == nil {
					t.Fatal("secure naming let test-team serve datastore")
				}
				waitLog(t, out, "result=handshake_failed", `server `+testTeam+` is not allowed to run service \"datastore\"`)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("after half-close: read %d, %v; want EOF", n, err)
			}
			waitLog(t, out, "listener=db", "peer="+infraTeam+" ", "bytes_received=1048576 bytes_sent=1048576", "result=ok")
			waitLog(t, in, "listener=in", "peer="+clientID+" ", "bytes_received=1048576 bytes_sent=1048576", "result=ok")
		})
	}
}

func TestConnectionCapRefusesTheNextOne(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	src := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: src, Limits: proxy.LimitsConfig{MaxConnections: 2},
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t)}}})
	var open []net.Conn
	for range 2 {
		c := dialPlain(t, r.addr(0))
		if err := roundTrip(c, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	third := dialPlain(t, r.addr(0))
	if err := roundTrip(third, []byte("hi")); err == nil {
		t.Fatal("the third connection was served with a cap of 2")
	}
	waitLog(t, r, "result=over_limit")
	open[0].Close()
	waitFor(t, func() bool { return roundTrip(dialPlain(t, r.addr(0)), []byte("hi")) == nil })
}

func TestDrainLetsOpenConnectionFinish(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	src := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: src, Limits: proxy.LimitsConfig{DrainTimeout: duration.Duration(waitBudget)},
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t)}}})
	addr := r.addr(0)
	c := dialPlain(t, addr)
	if err := roundTrip(c, []byte("before")); err != nil {
		t.Fatal(err)
	}
	ready := func() int {
		rec := httptest.NewRecorder()
		r.s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz while serving: %d, want 200", code)
	}
	r.cancel()
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining: %d, want 503", code)
	}
	if err := roundTrip(c, []byte("during the drain")); err != nil {
		t.Fatalf("open connection broken by the drain: %v", err)
	}
	select {
	case err := <-r.done:
		t.Fatalf("Run returned %v with a connection open", err)
	default:
	}
	c.Close()
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitBudget):
		t.Fatal("Run did not return after the last connection closed")
	}
}

func TestDrainTimeoutClosesWhatIsLeft(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	src := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: src, Limits: proxy.LimitsConfig{DrainTimeout: duration.Duration(100 * time.Millisecond)},
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t)}}})
	c := dialPlain(t, r.addr(0))
	if err := roundTrip(c, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
	case <-time.After(waitBudget):
		t.Fatal("Run did not return after the drain timeout")
	}
	_ = c.SetReadDeadline(time.Now().Add(waitBudget))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after the drain timeout")
	}
}

func TestIdleTimeout(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	src := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: src, Limits: proxy.LimitsConfig{IdleTimeout: duration.Duration(200 * time.Millisecond)},
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t)}}})
	c := dialPlain(t, r.addr(0))
	if err := roundTrip(c, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitBudget))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %v, want EOF", err)
	}
	waitLog(t, r, "result=idle_timeout")
}

func TestParseConfig(t *testing.T) {
	good := `workload_api_socket: /run/agent.sock
namespace: db
labels: {app: datastore}
inbound:
- {listen: "0.0.0.0:15006", forward_to: "127.0.0.1:5432", allowed_ids: ["spiffe://a.example/*"]}
outbound:
- {listen: "127.0.0.1:15001", service: datastore, upstream: "db:15006", allowed_ids: ["` + infraTeam + `"]}
limits: {max_connections: 10, idle_timeout: 1m, handshake_timeout: 5s, drain_timeout: 20s, max_connection_duration: 1h}
`
	c, err := proxy.ParseConfig("good.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxConnections != 10 || time.Duration(c.Limits.IdleTimeout) != time.Minute || c.Outbound[0].Service != "datastore" ||
		time.Duration(c.Limits.MaxConnectionDuration) != time.Hour {
		t.Errorf("parsed %+v", c)
	}
	cases := []struct{ name, yaml, want string }{
		{"unknown key", good + "extra: 1\n", `unknown field "extra"`},
		{"no socket", "inbound: [{listen: a, forward_to: 'b:1'}]\n", "workload_api_socket is required"},
		{"no listeners", "workload_api_socket: x\n", "no inbound or outbound listeners"},
		{"inbound without target", "workload_api_socket: x\ninbound: [{listen: a}]\n", "inbound[0]: listen and forward_to are required"},
		{"bad allowed id", "workload_api_socket: x\ninbound: [{listen: a, forward_to: 'b:1', allowed_ids: [nope]}]\n", "inbound[0]: allowed_ids:"},
		{"no secure naming", "workload_api_socket: x\noutbound: [{listen: a, service: s, upstream: 'b:1'}]\n", "allowed_ids is required"},
		{"too large", strings.Repeat("#", proxy.MaxConfigBytes+1), "larger than"},
		{"negative max duration", strings.Replace(good, "max_connection_duration: 1h", "max_connection_duration: -1h", 1), `invalid duration "-1h": must be positive`},
	}
	for _, tc := range cases {
		_, err := proxy.ParseConfig("p.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "proxy: config p.yaml: ") {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

// waitLog waits until the log holds every want.
func waitLog(t *testing.T, r *running, wants ...string) {
	t.Helper()
	for _, want := range wants {
		waitFor(t, func() bool { return strings.Contains(r.logs.String(), want) })
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBudget)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
