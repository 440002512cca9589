package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults of LimitsConfig.
const (
	DefaultMaxConnections   = 1024
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
)

// Policy is the security policy the sidecar enforces for its workload:
// the mutual TLS mode of each port (PeerAuthentication), request
// authentication (RequestAuthentication) and authorization
// (AuthorizationPolicy). *policy.Set satisfies it.
type Policy interface {
	MTLS(ns string, labels map[string]string, port uint32) policy.Decision
	Authenticate(ns string, labels map[string]string, headers map[string][]string, query url.Values, now time.Time) (policy.AuthnResult, error)
	Authorize(ns string, labels map[string]string, req policy.Request) policy.AuthzDecision
}

// Config is what a Sidecar runs. Listeners are bound by New.
type Config struct {
	Source    Source
	Namespace string
	Labels    map[string]string
	// Policy is enforced on inbound listeners; nil means PERMISSIVE on
	// every port and no authentication or authorization rules. SetPolicy
	// replaces it while the sidecar runs.
	Policy   Policy
	Inbound  []InboundConfig
	Outbound []OutboundConfig
	// Gateways take their certificates from files; they need no Source.
	Gateways GatewaysConfig
	Limits   LimitsConfig
	Logger   *slog.Logger
	// Clock gives the time JWTs and peer certificates are checked
	// against; default time.Now.
	Clock func() time.Time
}

// Sidecar is the TCP sidecar of `meshfed proxy`: inbound listeners that
// terminate mTLS (or plaintext, per PeerAuthentication) and forward to the
// local app, outbound listeners that take plaintext from the app and open
// mTLS to an upstream that passes secure naming. It logs one access line per
// connection and never logs key material.
type Sidecar struct {
	cfg       Config
	listeners []*listener
	metrics   *metrics
	log       *slog.Logger
	policy    atomic.Pointer[policyRef]
	now       func() time.Time
	// afterFunc runs f after d and returns what stops it: time.AfterFunc's,
	// which tests replace so that nothing sleeps.
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	// serving is set while Run accepts connections: /readyz.
	serving atomic.Bool
	// live are the open connections whose peers recheck looks at
	// (revoke.go).
	liveMu sync.Mutex
	live   map[*liveConn]struct{}
}

// policyRef holds the Policy in force; nil Policy means none.
type policyRef struct{ p Policy }

// listener is one bound inbound or outbound listener.
type listener struct {
	name     string
	ln       net.Listener
	inbound  *InboundConfig
	port     uint32      // inbound: the policy port
	tlsCfg   *tls.Config // inbound: server side; outbound: client side
	outbound *OutboundConfig
	gateway  *gateway   // gateway listeners only (gateway.go)
	http     httpServer // protocol "http": inbound or outbound
	// serve handles one accepted connection; the accept loop closes it
	// afterwards.
	serve  func(l *listener, c net.Conn)
	active atomic.Int64
}

// New checks cfg, fills in defaults and binds every listener.
func New(cfg Config) (*Sidecar, error) {
	if cfg.Source == nil && len(cfg.Inbound)+len(cfg.Outbound) > 0 {
		return nil, errors.New("proxy: sidecar: no Source of SVIDs and bundles")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	l := &cfg.Limits
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = durationOf(DefaultIdleTimeout)
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = durationOf(DefaultHandshakeTimeout)
	}
	if l.DrainTimeout == 0 {
		l.DrainTimeout = durationOf(DefaultDrainTimeout)
	}
	s := &Sidecar{cfg: cfg, metrics: newMetrics(), log: cfg.Logger, now: time.Now,
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }}
	if cfg.Clock != nil {
		s.now = cfg.Clock
	}
	s.policy.Store(&policyRef{p: cfg.Policy})
	fail := func(err error) (*Sidecar, error) {
		for _, x := range s.listeners {
			x.ln.Close()
		}
		return nil, err
	}
	for i := range cfg.Inbound {
		in := &cfg.Inbound[i]
		port, err := InboundPort(*in)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound[%d]: %w", i, err))
		}
		authorize, err := allowList(in.AllowedIDs)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound[%d]: allowed_ids: %w", i, err))
		}
		name := in.Name
		if name == "" {
			name = fmt.Sprintf("inbound-%d", port)
		}
		ln, err := net.Listen("tcp", in.Listen)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound %s: %w", name, err))
		}
		l := &listener{name: name, ln: ln, inbound: in, port: port, tlsCfg: ServerTLS(cfg.Source, authorize), serve: s.serveInbound}
		l.tlsCfg.Time = s.now
		if in.Protocol == ProtocolHTTP {
			l.tlsCfg.NextProtos = []string{"h2", "http/1.1"}
			l.http = newHTTPInbound(s, l)
		}
		s.listeners = append(s.listeners, l)
	}
	for i := range cfg.Outbound {
		out := &cfg.Outbound[i]
		naming, err := NewSecureNaming(map[string][]string{out.Service: out.AllowedIDs})
		if err != nil {
			return fail(fmt.Errorf("proxy: outbound[%d]: %w", i, err))
		}
		name := out.Name
		if name == "" {
			name = "outbound-" + out.Service
		}
		ln, err := net.Listen("tcp", out.Listen)
		if err != nil {
			return fail(fmt.Errorf("proxy: outbound %s: %w", name, err))
		}
		tc := ClientTLS(cfg.Source, naming.Authorizer(out.Service))
		tc.ServerName = out.Service
		tc.Time = s.now
		l := &listener{name: name, ln: ln, outbound: out, tlsCfg: tc, serve: s.serveOutbound}
		if out.Protocol == ProtocolHTTP {
			tc.NextProtos = []string{"http/1.1"}
			l.http = newHTTPOutbound(s, l)
		}
		s.listeners = append(s.listeners, l)
	}
	if err := s.addGateways(); err != nil {
		return fail(err)
	}
	return s, nil
}

func durationOf(d time.Duration) duration.Duration { return duration.Duration(d) }

// Listener describes a bound listener, for a progress line.
type Listener struct {
	Name, Addr, Target string
	Inbound            bool
	Mode               policy.Mode // inbound only, at start
	// Gateway is "ingress" or "egress" for a gateway listener, with its
	// tls.mode in TLSMode; Target is then its backends or upstream.
	Gateway, TLSMode string
}

// Listeners returns the bound listeners in configuration order, inbound
// first, gateways last.
func (s *Sidecar) Listeners() []Listener {
	var out []Listener
	for _, l := range s.listeners {
		d := Listener{Name: l.name, Addr: l.ln.Addr().String()}
		if l.gateway != nil {
			out = append(out, l.gateway.describe(d))
			continue
		}
		if l.inbound != nil {
			d.Inbound, d.Target, d.Mode = true, l.inbound.ForwardTo, s.mode(l.port)
		} else {
			d.Target = l.outbound.Upstream
		}
		out = append(out, d)
	}
	return out
}

// Handler serves /metrics, /healthz (the process is up) and /readyz (200
// while the listeners accept connections; 503 before Run and once it
// drains, so a load balancer stops sending new connections first).
func (s *Sidecar) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.serving.Load() {
			http.Error(w, "not serving: starting or draining", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// SetPolicy puts p in force for every connection and request accepted from
// now on; connections already open keep the mode they were accepted under,
// but every later HTTP request on them is authorized under p.
func (s *Sidecar) SetPolicy(p Policy) { s.policy.Store(&policyRef{p: p}) }

// currentPolicy is the Policy in force, or nil.
func (s *Sidecar) currentPolicy() Policy { return s.policy.Load().p }

func (s *Sidecar) mode(port uint32) policy.Mode {
	p := s.currentPolicy()
	if p == nil {
		return policy.ModePermissive
	}
	return p.MTLS(s.cfg.Namespace, s.cfg.Labels, port).Mode
}

// Run serves every listener until ctx is done, then drains: it stops
// accepting, lets open connections finish for up to the drain timeout and
// closes what is left. It returns nil after a drain.
func (s *Sidecar) Run(ctx context.Context) error {
	var conns sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			open[c] = struct{}{}
		} else {
			delete(open, c)
		}
	}
	var servers sync.WaitGroup
	for _, l := range s.listeners {
		if l.http != nil {
			servers.Add(1)
			go func() { defer servers.Done(); l.http.run() }()
		}
	}
	defer servers.Wait()
	var accepters sync.WaitGroup
	errs := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		accepters.Add(1)
		go func() {
			defer accepters.Done()
			if err := s.accept(ctx, l, &conns, track); err != nil {
				errs <- err
			}
		}()
	}
	rctx, stopRecheck := context.WithCancel(ctx)
	defer stopRecheck()
	go s.rechecking(rctx)
	stop := make(chan struct{})
	s.serving.Store(true)
	go func() {
		select {
		case <-ctx.Done():
		case <-stop:
		}
		s.serving.Store(false)
		for _, l := range s.listeners {
			l.ln.Close()
		}
		// HTTP listeners close their idle keep-alive connections now and
		// the rest as their requests finish.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.Limits.DrainTimeout))
		defer cancel()
		var wg sync.WaitGroup
		for _, l := range s.listeners {
			if l.http != nil {
				wg.Add(1)
				go func() { defer wg.Done(); l.http.shutdown(ctx) }()
			}
		}
		wg.Wait()
	}()
	accepters.Wait()
	close(stop)
	var err error
	select {
	case err = <-errs:
	default:
	}
	drained := make(chan struct{})
	go func() { conns.Wait(); close(drained) }()
	timer := time.NewTimer(time.Duration(s.cfg.Limits.DrainTimeout))
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		mu.Lock()
		s.log.Warn("proxy: drain timeout: closing open connections", "open", len(open))
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		<-drained
	}
	return err
}

// accept serves l until it is closed, backing off on accept errors that
// are not the listener's closing.
func (s *Sidecar) accept(ctx context.Context, l *listener, conns *sync.WaitGroup, track func(net.Conn, bool)) error {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.log.Warn("proxy: accept failed; retrying", "listener", l.name, "error", err, "backoff", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if l.active.Add(1) > int64(s.cfg.Limits.MaxConnections) {
			l.active.Add(-1)
			c.Close()
			s.finish(l, c, "", 0, 0, time.Now(), "over_limit", nil)
			continue
		}
		conns.Add(1)
		track(c, true)
		go func() {
			defer conns.Done()
			defer track(c, false)
			defer l.active.Add(-1)
			defer c.Close()
			l.serve(l, c)
		}()
	}
}

// serveInbound terminates one inbound connection as the port's mode says
// and forwards it to the app.
func (s *Sidecar) serveInbound(l *listener, c net.Conn) {
	start := time.Now()
	lim := s.cfg.Limits
	mode := s.mode(l.port)
	isTLS, conn, err := Sniff(c, time.Duration(lim.HandshakeTimeout))
	if err != nil {
		s.finish(l, c, "", 0, 0, start, "closed", err)
		return
	}
	peer := "plaintext"
	info := &connInfo{source: addrIP(c.RemoteAddr()), dest: addrIP(c.LocalAddr()), opened: s.now()}
	switch {
	case isTLS && mode == policy.ModeDisable:
		s.finish(l, c, "", 0, 0, start, "tls_refused", fmt.Errorf("proxy: port %d is in DISABLE mode: TLS is refused", l.port))
		return
	case !isTLS && mode == policy.ModeStrict:
		s.finish(l, c, peer, 0, 0, start, "plaintext_refused", fmt.Errorf("proxy: port %d is in STRICT mode: plaintext is refused", l.port))
		return
	case isTLS:
		tc := tls.Server(conn, l.tlsCfg)
		id, err := s.handshake(l, tc)
		if err != nil {
			s.finish(l, c, "", 0, 0, start, "handshake_failed", err)
			return
		}
		conn, peer = tc, id.String()
		st := tc.ConnectionState()
		info.peer, info.leaf, info.sni = id, st.PeerCertificates[0], st.ServerName
		info.auth = newPeerAuth(s.cfg.Source, st.PeerCertificates, id)
		defer s.trackAuth(l.name, info.auth, s.now, func() { c.Close() })()
		if self, err := s.cfg.Source.GetX509SVID(); err == nil {
			info.xfcc = XFCC(self.ID, info.leaf)
		}
	}
	if l.http != nil {
		if !l.http.serve(conn, info) {
			s.finish(l, c, peer, 0, 0, start, "closed", errors.New("proxy: draining: the HTTP server takes no more connections"))
			return
		}
		s.finish(l, c, peer, 0, 0, start, "ok", nil)
		return
	}
	if pol := s.currentPolicy(); pol != nil {
		dec := pol.Authorize(s.cfg.Namespace, s.cfg.Labels, policy.Request{TCP: true, Principal: principal(info.peer),
			SourceIP: info.source, RemoteIP: info.source, DestIP: info.dest, Port: l.port, SNI: info.sni})
		if !dec.Allowed {
			s.metrics.denials.WithLabelValues(l.name, "authz", denyingPolicy(dec)).Inc()
			s.finish(l, c, peer, 0, 0, start, "denied", fmt.Errorf("proxy: %s", dec.Reason))
			return
		}
	}
	up, err := net.DialTimeout("tcp", l.inbound.ForwardTo, time.Duration(lim.HandshakeTimeout))
	if err != nil {
		s.finish(l, c, peer, 0, 0, start, "upstream_failed", err)
		return
	}
	defer up.Close()
	rx, tx, result, err := s.pipe(l.name, conn, up)
	s.finish(l, c, peer, rx, tx, start, result, err)
}

// serveOutbound opens mTLS to the upstream for one plaintext connection of
// the app.
func (s *Sidecar) serveOutbound(l *listener, c net.Conn) {
	start := time.Now()
	lim := s.cfg.Limits
	if l.http != nil {
		// Requests go over pooled mTLS connections; each is logged.
		result, err := "ok", error(nil)
		if !l.http.serve(c, nil) {
			result, err = "closed", errors.New("proxy: draining: the HTTP server takes no more connections")
		}
		s.finish(l, c, "", 0, 0, start, result, err)
		return
	}
	raw, err := net.DialTimeout("tcp", l.outbound.Upstream, time.Duration(lim.HandshakeTimeout))
	if err != nil {
		s.finish(l, c, "", 0, 0, start, "upstream_failed", err)
		return
	}
	defer raw.Close()
	tc := tls.Client(raw, l.tlsCfg)
	id, err := s.handshake(l, tc)
	if err != nil {
		s.finish(l, c, "", 0, 0, start, "handshake_failed", err)
		return
	}
	auth := newPeerAuth(s.cfg.Source, tc.ConnectionState().PeerCertificates, id)
	untrack := s.trackAuth(l.name, auth, s.now, func() { raw.Close(); c.Close() })
	rx, tx, result, err := s.pipe(l.name, c, tc)
	untrack() // before the access-log line, which tests wait for
	s.finish(l, c, id.String(), rx, tx, start, result, err)
}

// handshake runs tc's handshake under the handshake timeout and returns the
// peer's SPIFFE ID (already verified and authorized by the config).
func (s *Sidecar) handshake(l *listener, tc *tls.Conn) (spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.Limits.HandshakeTimeout))
	defer cancel()
	err := tc.HandshakeContext(ctx)
	var id spiffeid.ID
	if err == nil {
		id, err = x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	s.metrics.handshakes.WithLabelValues(l.name, result).Inc()
	return id, err
}

// pipe copies both ways between down (the accepted side) and up until both
// directions end, an error, or neither direction moves for the idle timeout.
// It returns the bytes received from down and sent to it.
func (s *Sidecar) pipe(name string, down, up net.Conn) (rx, tx int64, result string, err error) {
	idle := time.Duration(s.cfg.Limits.IdleTimeout)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var nrx, ntx atomic.Int64
	// The first error closes both sides, which unblocks the other
	// direction. One direction runs on this goroutine: a connection costs
	// one goroutine fewer.
	var once sync.Once
	var first error
	stop := func(e error) {
		if e != nil {
			once.Do(func() {
				first = e
				down.Close()
				up.Close()
			})
		}
	}
	if max := time.Duration(s.cfg.Limits.MaxConnectionDuration); max > 0 {
		defer s.afterFunc(max, func() { stop(errMaxDuration) })()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop(copyIdle(up, down, &nrx, &last, idle))
	}()
	stop(copyIdle(down, up, &ntx, &last, idle))
	<-done
	rx, tx = nrx.Load(), ntx.Load()
	s.metrics.bytes.WithLabelValues(name, "received").Add(float64(rx))
	s.metrics.bytes.WithLabelValues(name, "sent").Add(float64(tx))
	switch {
	case first == nil:
		return rx, tx, "ok", nil
	case errors.Is(first, errIdle):
		return rx, tx, "idle_timeout", nil
	case errors.Is(first, errMaxDuration):
		return rx, tx, "max_duration", nil
	}
	return rx, tx, "error", first
}

var (
	errIdle        = errors.New("proxy: idle timeout")
	errMaxDuration = errors.New("proxy: limits.max_connection_duration reached")
)

// Buffers of copyIdle. Each direction of a connection has a small buffer
// of its own, which is all an idle connection holds. A read that fills it
// borrows a large one from copyBufs, kept for as long as data keeps coming
// and given back by the first read that waits releaseCopyBuf: a stream is
// copied in large chunks, and a connection idle for a second holds only
// its small buffers.
const (
	smallCopyBuf   = 2 << 10
	largeCopyBuf   = 32 << 10
	releaseCopyBuf = time.Second
)

var copyBufs = sync.Pool{New: func() any { return new([largeCopyBuf]byte) }}

// copyIdle copies src to dst, counting into n, until src ends; then it
// half-closes dst. A read that times out ends the copy only if neither
// direction has moved (last) for idle.
func copyIdle(dst, src net.Conn, n, last *atomic.Int64, idle time.Duration) error {
	small := make([]byte, smallCopyBuf)
	buf := small
	var large *[largeCopyBuf]byte
	defer func() {
		if large != nil {
			copyBufs.Put(large)
		}
	}()
	for {
		wait := idle
		if large != nil {
			wait = min(idle, releaseCopyBuf)
		}
		_ = src.SetReadDeadline(time.Now().Add(wait))
		nr, err := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			_ = dst.SetWriteDeadline(time.Now().Add(idle))
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				return werr
			}
		}
		if large == nil && nr == len(small) {
			large = copyBufs.Get().(*[largeCopyBuf]byte)
			buf = large[:]
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if large != nil {
					copyBufs.Put(large)
					large, buf = nil, small
				}
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue
				}
				return errIdle
			}
			if errors.Is(err, io.EOF) {
				closeWrite(dst)
				return nil
			}
			return err
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	if rc, ok := c.(*replayConn); ok {
		closeWrite(rc.Conn)
	}
}

// finish writes the access log line and counts the connection.
func (s *Sidecar) finish(l *listener, c net.Conn, peer string, rx, tx int64, start time.Time, result string, err error) {
	s.metrics.connections.WithLabelValues(l.name, result).Inc()
	if peer == "" {
		peer = "-"
	}
	attrs := []any{"listener", l.name, "remote", c.RemoteAddr().String(), "peer", peer,
		"bytes_received", rx, "bytes_sent", tx, "duration", time.Since(start).Round(time.Microsecond), "result", result}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	s.log.Info("connection", attrs...)
}

// allowList is the inbound authorizer: any verified peer when entries is
// empty, otherwise only the listed IDs and trust domains ("spiffe://td/*").
func allowList(entries []string) (Authorizer, error) {
	if len(entries) == 0 {
		return tlsconfig.AuthorizeAny(), nil
	}
	var pats []namePattern
	for _, e := range entries {
		p, err := parseNamePattern(e)
		if err != nil {
			return nil, err
		}
		pats = append(pats, p)
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		for _, p := range pats {
			if p.matches(id) {
				return nil
			}
		}
		return fmt.Errorf("proxy: %s is not in the listener's allowed_ids", id)
	}, nil
}

// metrics are the sidecar's Prometheus metrics, on its own registry.
type metrics struct {
	registry    *prometheus.Registry
	connections *prometheus.CounterVec
	handshakes  *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	requests    *prometheus.CounterVec
	denials     *prometheus.CounterVec
	stale       *prometheus.CounterVec
	// policyLoads and policyDocuments are PolicyLoader's.
	policyLoads     *prometheus.CounterVec
	policyDocuments prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_connections_total",
			Help: "Connections ended, by listener and result (ok, over_limit, plaintext_refused, tls_refused, handshake_failed, upstream_failed, idle_timeout, max_duration, denied, error, closed).",
		}, []string{"listener", "result"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_handshakes_total",
			Help: "mTLS handshakes, by listener and result (ok, failed).",
		}, []string{"listener", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_bytes_total",
			Help: "Bytes proxied, by listener and direction relative to the accepted connection (received, sent).",
		}, []string{"listener", "direction"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_http_requests_total",
			Help: "HTTP requests on inbound listeners, by listener and status class (2xx, 4xx, ...).",
		}, []string{"listener", "code"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_policy_denials_total",
			Help: "Connections and requests refused by policy, by listener, stage (authn: RequestAuthentication, authz: AuthorizationPolicy) and the deciding policy (ns/name).",
		}, []string{"listener", "stage", "policy"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_stale_connections_total",
			Help: "Connections whose mTLS peer authentication lapsed, by listener and reason (expired: a certificate of the peer's chain; untrusted: the chain no longer verifies against its trust domain's bundle or the CA file; refused: the upstream answered 421; max_duration: limits.max_connection_duration). Kept-alive HTTP inbound: the request was refused with 421 or the idle connection closed; HTTP outbound: the pool's connections were renewed; untrusted: any open connection was closed.",
		}, []string{"listener", "reason"}),
		policyLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_proxy_policy_loads_total",
			Help: "Policy sets built, by source of the change (dir, server) and result (ok; error: refused, the last good set stays in force).",
		}, []string{"source", "result"}),
		policyDocuments: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshfed_proxy_policy_documents",
			Help: "Istio security documents in the policy set in force.",
		}),
	}
	m.registry.MustRegister(m.connections, m.handshakes, m.bytes, m.requests, m.denials, m.stale, m.policyLoads, m.policyDocuments,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
