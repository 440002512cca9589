package proxy

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxHeaderBytes bounds the request line and headers of one HTTP request on
// an inbound listener or an http ingress gateway: Envoy's default, 60 KiB.
const MaxHeaderBytes = 60 << 10

// The bodies of the proxy's own refusals are Envoy's, so clients and
// scripts written against Istio read them unchanged.
const (
	bodyForbidden    = "RBAC: access denied"
	bodyUnauthorized = "Jwt verification fails"
	bodyUpstream     = "upstream connect error or disconnect/reset before headers"
	// Envoy never refuses a request for this (it serves a kept-alive
	// connection to its end), so the body is meshfed's own.
	bodyStale = "mTLS peer authentication of this connection has lapsed: retry on a new connection"
)

// httpInbound serves one inbound listener whose protocol is "http". The
// listener's accept loop terminates TLS (or admits plaintext where the
// port's mode allows) and hands each connection to one http.Server, which
// authenticates (RequestAuthentication) and authorizes (AuthorizationPolicy)
// every request under the Policy in force at that moment and forwards the
// allowed ones to the app, with X-Forwarded-Client-Cert for an mTLS peer.
type httpInbound struct {
	s   *Sidecar
	l   *listener
	srv *http.Server
	*handoff
	rp *httputil.ReverseProxy
}

// connInfo is what the accept loop learned about a connection before HTTP.
type connInfo struct {
	peer   spiffeid.ID       // the verified peer; zero for plaintext
	leaf   *x509.Certificate // the peer's leaf; nil for plaintext
	auth   connAuth          // what the handshake proved; nil for plaintext
	opened time.Time         // when it was accepted, by the listener's clock
	xfcc   string            // the XFCC element for the app; "" for plaintext
	sni    string
	source netip.Addr
	dest   netip.Addr
}

// connInfoOf is the connInfo of a request's connection, or nil.
func connInfoOf(ctx context.Context) *connInfo {
	if hc := handedIn(ctx); hc != nil {
		info, _ := hc.info.(*connInfo)
		return info
	}
	return nil
}

func newHTTPInbound(s *Sidecar, l *listener) *httpInbound {
	h := &httpInbound{s: s, l: l, handoff: newHandoff(l.ln.Addr())}
	target := &url.URL{Scheme: "http", Host: l.inbound.ForwardTo}
	idle := time.Duration(s.cfg.Limits.IdleTimeout)
	dialer := &net.Dialer{Timeout: time.Duration(s.cfg.Limits.HandshakeTimeout)}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			if info := connInfoOf(pr.In.Context()); info != nil && info.xfcc != "" {
				pr.Out.Header.Set(XFCCHeader, info.xfcc)
			}
		},
		Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     idle,
			// The app is local plaintext HTTP/1.1, whatever the peer spoke.
			ForceAttemptHTTP2: false,
		},
		ErrorLog:     errLog,
		ErrorHandler: upstreamFailed(bodyUpstream),
	}
	h.srv = h.newServer(s, h, errLog)
	s.closeLapsed(h.handoff, l.name, s.now)
	return h
}

// newServer is the http.Server of a handoff, with the sidecar's limits.
func (h *handoff) newServer(s *Sidecar, handler http.Handler, errLog *log.Logger) *http.Server {
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: time.Duration(s.cfg.Limits.HandshakeTimeout),
		IdleTimeout:       time.Duration(s.cfg.Limits.IdleTimeout),
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          errLog,
		// RFC 7540 forbids h2 over the seed's non-ECDHE TLS 1.2 suites
		// (AES256-GCM-SHA384, AES128-GCM-SHA256); the mesh allows them, so
		// a peer that negotiated one is served rather than sent away.
		HTTP2: &http.HTTP2Config{PermitProhibitedCipherSuites: true},
	}
	h.wire(srv)
	return srv
}

// upstreamFailed is the ReverseProxy error handler: 503 with body, and the
// error kept for the access log.
func upstreamFailed(body string) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, _ *http.Request, err error) {
		if rw, ok := w.(*responseLog); ok {
			rw.upstreamErr = err
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, body)
	}
}

// run serves the connections handed over by serve until shutdown.
func (h *httpInbound) run() {
	if err := h.serveAll(h.srv); err != nil {
		h.s.log.Error("proxy: HTTP server stopped", "listener", h.l.name, "error", err)
	}
}

// shutdown stops taking connections and closes idle ones; requests in
// flight finish (the sidecar's drain timeout bounds them).
func (h *httpInbound) shutdown(ctx context.Context) {
	_ = h.srv.Shutdown(ctx)
}

// ServeHTTP authenticates, authorizes and forwards one request.
func (h *httpInbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.s
	start := time.Now()
	info := connInfoOf(r.Context())
	if info == nil {
		info = &connInfo{}
	}
	rw := &responseLog{ResponseWriter: w, status: http.StatusOK}
	// The app sees only what this proxy vouches for (Envoy's SANITIZE_SET).
	r.Header.Del(XFCCHeader)
	normalizePath(r.URL)
	now := s.now()
	if err := s.refuseStale(h.l.name, rw, info.auth, now); err != nil {
		h.log(r, rw, info, start, "peer_stale", policy.AuthnResult{}, policy.AuthzDecision{Rule: -1}, err)
		return
	}
	s.closeIfOld(rw, info, now)

	var (
		authn  policy.AuthnResult
		dec    = policy.AuthzDecision{Allowed: true, Rule: -1, Action: policy.ActionAllow}
		result = "ok"
	)
	if pol := s.currentPolicy(); pol != nil {
		var err error
		authn, err = pol.Authenticate(s.cfg.Namespace, s.cfg.Labels, r.Header, r.URL.Query(), now)
		if err != nil {
			s.metrics.denials.WithLabelValues(h.l.name, "authn", "-").Inc()
			rw.Header().Set("WWW-Authenticate", `Bearer realm="meshfed", error="invalid_token"`)
			writeRefusal(rw, http.StatusUnauthorized, bodyUnauthorized)
			h.log(r, rw, info, start, "unauthenticated", authn, dec, err)
			return
		}
		req := policy.Request{
			Principal: principal(info.peer),
			SourceIP:  info.source,
			RemoteIP:  info.source,
			DestIP:    info.dest,
			Port:      h.l.port,
			SNI:       info.sni,
			Host:      r.Host,
			Method:    r.Method,
			Path:      r.URL.Path,
			Headers:   r.Header,
			Auth:      &authn,
		}
		dec = pol.Authorize(s.cfg.Namespace, s.cfg.Labels, req)
		if !dec.Allowed {
			s.metrics.denials.WithLabelValues(h.l.name, "authz", denyingPolicy(dec)).Inc()
			writeRefusal(rw, http.StatusForbidden, bodyForbidden)
			h.log(r, rw, info, start, "denied", authn, dec, nil)
			return
		}
		if authn.Principal != "" {
			if !authn.ForwardOriginalToken && authn.TokenHeader != "" {
				r.Header.Del(authn.TokenHeader)
			}
			if authn.OutputPayloadToHeader != "" && authn.Payload != "" {
				r.Header.Set(authn.OutputPayloadToHeader, authn.Payload)
			}
		}
	}
	h.rp.ServeHTTP(rw, r)
	if rw.upstreamErr != nil {
		result = "upstream_failed"
	}
	if handlerDone(r.Context()) {
		rw.status = http.StatusSwitchingProtocols
	}
	h.log(r, rw, info, start, result, authn, dec, rw.upstreamErr)
}

// log writes the access-log line of one request. The query string is left
// out: it may carry a token (access_token).
func (h *httpInbound) log(r *http.Request, rw *responseLog, info *connInfo, start time.Time, result string, authn policy.AuthnResult, dec policy.AuthzDecision, err error) {
	s := h.s
	peer := "-"
	if !info.peer.IsZero() {
		peer = info.peer.String()
	}
	s.metrics.requests.WithLabelValues(h.l.name, fmt.Sprintf("%dxx", rw.status/100)).Inc()
	attrs := []any{"listener", h.l.name, "remote", r.RemoteAddr, "peer", peer, "source.principal", orDash(principal(info.peer)),
		"method", r.Method, "host", r.Host, "path", r.URL.Path, "proto", r.Proto, "status", rw.status, "bytes_sent", rw.bytes,
		"duration", time.Since(start).Round(time.Microsecond), "result", result}
	if authn.Principal != "" {
		attrs = append(attrs, "request.auth.principal", authn.Principal)
	}
	if dec.Policy != "" {
		attrs = append(attrs, "policy", dec.Policy, "rule", dec.Rule)
	}
	if dec.Audit {
		attrs = append(attrs, "audit", dec.AuditPolicy)
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	s.log.Info("request", attrs...)
}

func writeRefusal(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// denyingPolicy names the policy of a denial for metrics: the DENY policy,
// or "(no ALLOW matched)".
func denyingPolicy(d policy.AuthzDecision) string {
	if d.Policy != "" {
		return d.Policy
	}
	return "(no ALLOW matched)"
}

// principal is Istio's source.principal of a peer: its SPIFFE ID without
// "spiffe://"; "" for plaintext.
func principal(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return strings.TrimPrefix(id.String(), "spiffe://")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// normalizePath removes dot segments and repeated slashes from the path,
// keeping a trailing slash, so that authorization and the app see the same
// path ("/public/../admin" is "/admin" to both). A path that had to change
// is forwarded in its normalized form.
func normalizePath(u *url.URL) {
	p := u.Path
	if p == "" || p[0] != '/' {
		return
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	if clean != p {
		u.Path, u.RawPath = clean, ""
	}
}

// addrIP is the IP of a TCP address, or the zero Addr.
func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// responseLog records the status and size of a response for the access
// log. Unwrap lets http.ResponseController (which ReverseProxy uses to
// flush) reach the underlying writer.
type responseLog struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wrote       bool
	upstreamErr error
}

func (w *responseLog) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseLog) Write(b []byte) (int, error) {
	w.wrote = true
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *responseLog) Unwrap() http.ResponseWriter { return w.ResponseWriter }
