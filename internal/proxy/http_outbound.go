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
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// httpServer is the HTTP side of a listener: an http.Server fed by the
// listener's accept loop through a handoff.
type httpServer interface {
	run()
	shutdown(ctx context.Context)
	serve(c net.Conn, info any) bool
}

// DefaultUpstreamConnsPerListener bounds the idle mTLS connections an HTTP
// outbound listener keeps to its upstream.
const DefaultUpstreamConnsPerListener = 64

// httpOutbound serves one outbound listener whose protocol is "http", as
// Envoy's HTTP connection manager does: it reads the app's HTTP/1.1
// requests and sends each over a pool of mTLS connections to the upstream
// (HTTP/1.1 keep-alive, upgrades included), each of which passed secure
// naming in its handshake, so a new connection from the app does not cost
// a new handshake. Every request is logged with the upstream's SPIFFE ID.
type httpOutbound struct {
	s   *Sidecar
	l   *listener
	srv *http.Server
	*handoff
	rp *httputil.ReverseProxy
}

type upstreamPeerKey struct{}

func newHTTPOutbound(s *Sidecar, l *listener) *httpOutbound {
	h := &httpOutbound{s: s, l: l, handoff: newHandoff(l.ln.Addr())}
	target := &url.URL{Scheme: "https", Host: l.outbound.Upstream}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		Transport:    newUpstreamPool(s, l),
		ErrorLog:     errLog,
		ErrorHandler: upstreamFailed(bodyUpstream),
		ModifyResponse: func(resp *http.Response) error {
			if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
				if id, err := x509svid.IDFromCert(resp.TLS.PeerCertificates[0]); err == nil {
					if p, ok := resp.Request.Context().Value(upstreamPeerKey{}).(*spiffeid.ID); ok {
						*p = id
					}
				}
			}
			return nil
		},
	}
	h.srv = h.newServer(s, h, errLog)
	return h
}

// ServeHTTP forwards one request of the app to the upstream and logs it.
func (h *httpOutbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &responseLog{ResponseWriter: w, status: http.StatusOK}
	var upstream spiffeid.ID
	r = r.WithContext(context.WithValue(r.Context(), upstreamPeerKey{}, &upstream))
	h.rp.ServeHTTP(rw, r)
	result := "ok"
	if rw.upstreamErr != nil {
		result = "upstream_failed"
	}
	if handlerDone(r.Context()) {
		rw.status = http.StatusSwitchingProtocols
	}
	h.s.metrics.requests.WithLabelValues(h.l.name, fmt.Sprintf("%dxx", rw.status/100)).Inc()
	// The query is left out: it may carry a token.
	attrs := []any{"listener", h.l.name, "remote", r.RemoteAddr, "peer", orDash(idString(upstream)), "method", r.Method, "host", r.Host,
		"path", r.URL.Path, "proto", r.Proto, "status", rw.status, "bytes_sent", rw.bytes,
		"duration", time.Since(start).Round(time.Microsecond), "result", result}
	if rw.upstreamErr != nil {
		attrs = append(attrs, "error", rw.upstreamErr.Error())
	}
	h.s.log.Info("request", attrs...)
}

// run serves the app's connections handed over by the accept loop.
func (h *httpOutbound) run() {
	if err := h.serveAll(h.srv); err != nil {
		h.s.log.Error("proxy: HTTP server stopped", "listener", h.l.name, "error", err)
	}
}

func (h *httpOutbound) shutdown(ctx context.Context) {
	_ = h.srv.Shutdown(ctx)
	h.rp.Transport.(*upstreamPool).closeIdle()
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// upstreamPool is the Transport of an outbound HTTP listener: its mTLS
// connections to the upstream (HTTP/1.1 keep-alive), in generations. A
// generation's connections carry requests until the earliest expiry of a
// certificate chain in their handshakes (the upstream's, or the SVID this
// side presented), or until the bundle of a trust domain an upstream
// verified against changes (beyond a new copy of the same roots, as on every
// SVID rotation), or is withdrawn. The next request then starts a new
// generation, whose connections handshake anew under the present SVID and
// bundles, and the old one closes each of its connections as it finishes
// its request: what Envoy does to a cluster's connection pools when its TLS
// context changes. No request in flight is cut.
type upstreamPool struct {
	s      *Sidecar
	l      *listener
	dialer *net.Dialer
	idle   time.Duration

	mu  sync.Mutex // held to replace cur
	cur atomic.Pointer[poolGen]

	// trace, set by tests before the listener serves, follows each
	// request's connection (httptrace.ClientTrace.PutIdleConn tells when
	// one is back in the pool).
	trace *httptrace.ClientTrace
}

// poolGen is one generation of an upstreamPool.
type poolGen struct {
	t       *http.Transport
	retired atomic.Bool

	mu      sync.Mutex
	opened  time.Time // when its first connection was made; zero before
	expires time.Time // the earliest NotAfter of a chain in a handshake; zero before the first
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
}

func newUpstreamPool(s *Sidecar, l *listener) *upstreamPool {
	p := &upstreamPool{s: s, l: l, idle: time.Duration(s.cfg.Limits.IdleTimeout),
		dialer: &net.Dialer{Timeout: time.Duration(s.cfg.Limits.HandshakeTimeout)}}
	p.cur.Store(p.newGen())
	return p
}

func (p *upstreamPool) newGen() *poolGen {
	g := &poolGen{bundles: map[spiffeid.TrustDomain]*x509bundle.Bundle{}}
	g.t = &http.Transport{
		// Every connection is mTLS with the workload's SVID, and the
		// upstream must be allowed to run the service (secure naming, in
		// the handshake's VerifyConnection).
		DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			raw, err := p.dialer.DialContext(ctx, network, p.l.outbound.Upstream)
			if err != nil {
				return nil, err
			}
			hooked := &closeHook{Conn: raw}
			tc := tls.Client(hooked, p.l.tlsCfg)
			id, err := p.s.handshake(p.l, tc)
			if err != nil {
				raw.Close()
				return nil, err
			}
			chain := tc.ConnectionState().PeerCertificates
			g.add(p.s.cfg.Source, id, chain, p.s.now())
			// The Transport closes tc, which closes hooked: the connection
			// is checked by recheck until then.
			hooked.onClose = p.s.trackAuth(p.l.name, newPeerAuth(p.s.cfg.Source, chain, id), p.s.now, func() { hooked.Close() })
			return tc, nil
		},
		MaxIdleConnsPerHost: DefaultUpstreamConnsPerListener,
		IdleConnTimeout:     p.idle,
		ForceAttemptHTTP2:   false,
	}
	return g
}

// add records a connection's handshake with upstream id, which presented
// chain at now, while this side presented its present SVID.
func (g *poolGen) add(src Source, id spiffeid.ID, chain []*x509.Certificate, now time.Time) {
	expires := chainExpiry(chain)
	if own, err := src.GetX509SVID(); err == nil {
		expires = minTime(expires, chainExpiry(own.Certificates))
	}
	b, _ := src.GetX509BundleForTrustDomain(id.TrustDomain())
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened.IsZero() {
		g.opened = now
	}
	if g.expires.IsZero() || expires.Before(g.expires) {
		g.expires = expires
	}
	if _, ok := g.bundles[id.TrustDomain()]; !ok && b != nil {
		g.bundles[id.TrustDomain()] = b
	}
}

// stale returns why g's connections may no longer carry requests at now,
// or nil; max is limits.max_connection_duration (0: none), counted from
// g's first connection.
func (g *poolGen) stale(src Source, now time.Time, max time.Duration) *staleError {
	g.mu.Lock()
	defer g.mu.Unlock()
	if max > 0 && !g.opened.IsZero() && now.Sub(g.opened) >= max {
		return &staleError{"max_duration", fmt.Errorf("proxy: the upstream connections reached limits.max_connection_duration (%s)", max)}
	}
	if !g.expires.IsZero() {
		if err := expired(g.expires, now); err != nil {
			return err.(*staleError)
		}
	}
	for td, was := range g.bundles {
		b, same, err := currentBundle(src, td, was)
		if err != nil {
			return &staleError{"untrusted", err}
		}
		if !same {
			return &staleError{"untrusted", fmt.Errorf("proxy: the bundle of %s changed", td)}
		}
		g.bundles[td] = b
	}
	return nil
}

// gen returns the generation for the next request, starting a new one if
// the current one is stale.
func (p *upstreamPool) gen() *poolGen {
	g := p.cur.Load()
	if reason := g.stale(p.s.cfg.Source, p.s.now(), time.Duration(p.s.cfg.Limits.MaxConnectionDuration)); reason != nil {
		return p.renew(g, reason)
	}
	return g
}

// renew retires g, if it is still the current generation, and returns the
// current one.
func (p *upstreamPool) renew(g *poolGen, reason *staleError) *poolGen {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.cur.Load(); now != g {
		return now // another request renewed it
	}
	next := p.newGen()
	p.cur.Store(next)
	g.retired.Store(true)
	g.t.CloseIdleConnections()
	p.s.metrics.stale.WithLabelValues(p.l.name, reason.reason).Inc()
	p.s.log.Info("proxy: renewing the upstream connections", "listener", p.l.name, "reason", reason.Error())
	return next
}

// RoundTrip sends req on a connection of the current generation. An
// upstream that answers 421 and closes the connection (a meshfed inbound
// listener finding the connection's handshake stale: its clock ahead of
// this side's, or a bundle change it saw first) has the generation renewed
// and, for a request without a body, gets it once more on a new
// connection, as RFC 9110 (15.5.20) allows whatever the method.
func (p *upstreamPool) RoundTrip(req *http.Request) (*http.Response, error) {
	if p.trace != nil {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), p.trace))
	}
	g := p.gen()
	resp, err := g.t.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusMisdirectedRequest && resp.Close {
		next := p.renew(g, &staleError{"refused", errors.New("proxy: the upstream refused a pooled connection with 421")})
		if req.Body == nil || req.Body == http.NoBody {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			g.done()
			g = next
			resp, err = g.t.RoundTrip(req)
		}
	}
	if err != nil {
		g.done()
		return nil, err
	}
	body := &poolBody{ReadCloser: resp.Body, done: g.done}
	if rw, ok := resp.Body.(io.ReadWriteCloser); ok {
		// A protocol switch: ReverseProxy copies both ways on the body.
		resp.Body = &poolUpgradeBody{poolBody: body, w: rw}
	} else {
		resp.Body = body
	}
	return resp, nil
}

// done is called when a request of g ends: in a retired generation its
// connection, idle now or as soon as the Transport takes it back, closes
// (CloseIdleConnections also closes the ones that go idle after it).
func (g *poolGen) done() {
	if g.retired.Load() {
		g.t.CloseIdleConnections()
	}
}

// closeIdle closes the idle connections of the current generation.
func (p *upstreamPool) closeIdle() { p.cur.Load().t.CloseIdleConnections() }

// poolBody is a response body that tells its generation when it is closed.
type poolBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *poolBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// poolUpgradeBody is the body of a 101 response: the connection itself.
type poolUpgradeBody struct {
	*poolBody
	w io.Writer
}

func (b *poolUpgradeBody) Write(p []byte) (int, error) { return b.w.Write(p) }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// closeHook is a connection that calls onClose, once, when it is closed
// (onClose is set before anyone else holds the connection: a failed
// handshake closes the connection under it instead).
type closeHook struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *closeHook) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.onClose)
	return err
}
