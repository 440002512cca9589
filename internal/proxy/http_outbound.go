package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

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
	idle := time.Duration(s.cfg.Limits.IdleTimeout)
	dialer := &net.Dialer{Timeout: time.Duration(s.cfg.Limits.HandshakeTimeout)}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			// Every connection is mTLS with the workload's SVID, and the
			// upstream must be allowed to run the service (secure naming,
			// in the handshake's VerifyConnection).
			DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				raw, err := dialer.DialContext(ctx, network, l.outbound.Upstream)
				if err != nil {
					return nil, err
				}
				tc := tls.Client(raw, l.tlsCfg)
				if _, err := s.handshake(l, tc); err != nil {
					raw.Close()
					return nil, err
				}
				return tc, nil
			},
			MaxIdleConnsPerHost: DefaultUpstreamConnsPerListener,
			IdleConnTimeout:     idle,
			ForceAttemptHTTP2:   false,
		},
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
	h.rp.Transport.(*http.Transport).CloseIdleConnections()
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
