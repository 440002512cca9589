package proxy

// Gateways: listeners whose TLS comes from PEM files instead of the agent.
//
// An ingress gateway is Istio's Gateway with tls.mode SIMPLE or MUTUAL: it
// terminates TLS with a server certificate from files, in MUTUAL mode
// requires a client certificate that chains to ca_certificates, and sends
// each connection (protocol tcp, by SNI) or request (protocol http, by Host)
// to a backend over plain local TCP. An egress gateway is a DestinationRule
// with tls.mode SIMPLE or MUTUAL: plaintext from the app, TLS with a client
// certificate from files to an upstream outside the mesh.
//
// The files are looked at again at most once a second, on a handshake, and
// swapped in atomically when they changed and load; a bad new file leaves the
// last good certificate in place and is logged. Key files are read with
// pemfile's size bound and never logged.

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// gatewayReloadInterval is how often, at most, a gateway stats its files.
const gatewayReloadInterval = time.Second

// gatewayBodyNoRoute is the body of an http ingress's 404.
const gatewayBodyNoRoute = "meshfed gateway: no route for this host\n"

// gateway is what a gateway listener carries besides the sidecar's fields.
type gateway struct {
	kind    string // "ingress" or "egress"
	mode    string // SIMPLE or MUTUAL
	target  string // the backends or the upstream, for Listeners
	ingress *gatewayIngress
	egress  *gatewayEgress
}

func (g *gateway) describe(d Listener) Listener {
	d.Gateway, d.TLSMode, d.Target = g.kind, g.mode, g.target
	return d
}

// addGateways checks the gateways of s.cfg, loads their files, binds their
// listeners and appends them to s.listeners.
func (s *Sidecar) addGateways() error {
	gc := &s.cfg.Gateways
	if err := gc.check(); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	if gc.Clock == nil {
		gc.Clock = time.Now
	}
	for i := range gc.Ingress {
		in := &gc.Ingress[i]
		g, err := s.newIngress(in)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", in.Listen)
		if err != nil {
			return fmt.Errorf("proxy: gateway %s: %w", in.Name, err)
		}
		var wrapped net.Listener = ln
		if g.http != nil {
			wrapped = &gatewayNetListener{Listener: ln, onClose: g.shutdown}
		}
		var backends []string
		for _, r := range in.Routes {
			if !slices.Contains(backends, r.Backend) {
				backends = append(backends, r.Backend)
			}
		}
		s.listeners = append(s.listeners, &listener{name: in.Name, ln: wrapped, tlsCfg: g.tlsCfg, serve: s.serveIngress,
			gateway: &gateway{kind: "ingress", mode: in.TLS.Mode, target: strings.Join(backends, ","), ingress: g}})
	}
	for i := range gc.Egress {
		out := &gc.Egress[i]
		e, err := s.newEgress(out)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", out.Listen)
		if err != nil {
			return fmt.Errorf("proxy: gateway %s: %w", out.Name, err)
		}
		s.listeners = append(s.listeners, &listener{name: out.Name, ln: ln, tlsCfg: e.tlsCfg, serve: s.serveEgress,
			gateway: &gateway{kind: "egress", mode: out.TLS.Mode, target: out.Upstream, egress: e}})
	}
	return nil
}

// gatewayHandshake runs tc's handshake under the handshake timeout and
// counts it.
func (s *Sidecar) gatewayHandshake(l *listener, tc *tls.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.Limits.HandshakeTimeout))
	defer cancel()
	err := tc.HandshakeContext(ctx)
	result := "ok"
	if err != nil {
		result = "failed"
	}
	s.metrics.handshakes.WithLabelValues(l.name, result).Inc()
	return err
}

// ---- Ingress ----

// gatewayIngress is one ingress gateway listener.
type gatewayIngress struct {
	cfg    *IngressConfig
	files  *gatewayFiles
	routes *gatewayRoutes
	tlsCfg *tls.Config
	// unrouted records, by connection, the SNI that GetCertificate found no
	// route for, so that the access log can say why the handshake failed.
	unrouted sync.Map // net.Conn -> string
	http     *ingressHTTP
}

func (s *Sidecar) newIngress(in *IngressConfig) (*gatewayIngress, error) {
	proto, _ := gatewayProtocol(in.Protocol)
	files, err := newGatewayFiles(in.Name, in.TLS.ServerCertificate, in.TLS.PrivateKey, in.TLS.CACertificates, s.cfg.Gateways.Clock, s.log)
	if err != nil {
		return nil, err
	}
	routes, err := newGatewayRoutes(in.Routes)
	if err != nil {
		return nil, fmt.Errorf("proxy: gateway %s: %w", in.Name, err)
	}
	g := &gatewayIngress{cfg: in, files: files, routes: routes}
	g.tlsCfg = &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if proto == gatewayTCP {
				if _, ok := routes.match(hello.ServerName); !ok {
					g.unrouted.Store(hello.Conn, hello.ServerName)
					// No certificate makes crypto/tls send unrecognized_name.
					return nil, nil
				}
			}
			return files.get().cert, nil
		},
	}
	if in.TLS.Mode == gatewayModeMutual {
		// Go's own verification is replaced by VerifyConnection, which
		// uses the CA file in force at this handshake, resumed ones too.
		g.tlsCfg.ClientAuth = tls.RequireAnyClientCert
		g.tlsCfg.VerifyConnection = g.verifyClient
	}
	if proto == gatewayHTTP {
		g.tlsCfg.NextProtos = []string{"h2", "http/1.1"}
		g.http = newIngressHTTP(s, g)
	}
	return g, nil
}

// verifyClient admits a client whose certificate chains to the CA file and,
// if subject_alt_names is set, carries one of them.
func (g *gatewayIngress) verifyClient(cs tls.ConnectionState) error {
	chain := cs.PeerCertificates
	switch {
	case len(chain) == 0:
		return fmt.Errorf("proxy: gateway %s: the client presented no certificate; MUTUAL mode requires one", g.cfg.Name)
	case len(chain) > maxPeerChain:
		return fmt.Errorf("proxy: gateway %s: the client presented %d certificates, more than %d", g.cfg.Name, len(chain), maxPeerChain)
	}
	return g.verifyChain(chain, g.files.get().roots, g.files.now())
}

// verifyChain checks a client's chain against roots at now, and its leaf
// against subject_alt_names.
func (g *gatewayIngress) verifyChain(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) error {
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: gatewayPool(chain[1:]),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fmt.Errorf("proxy: gateway %s: client certificate %s does not verify against ca_certificates: %w", g.cfg.Name, gatewayPeerName(chain[0]), err)
	}
	if sans := g.cfg.TLS.SubjectAltNames; len(sans) > 0 && !matchSubjectAltNames(chain[0], sans) {
		return fmt.Errorf("proxy: gateway %s: client certificate %s carries none of subject_alt_names %v", g.cfg.Name, gatewayPeerName(chain[0]), sans)
	}
	return nil
}

// gatewayAuth is the connAuth of a MUTUAL ingress connection: a client
// certificate chain verified against the gateway's CA file.
type gatewayAuth struct {
	g       *gatewayIngress
	chain   []*x509.Certificate
	expires time.Time

	mu    sync.Mutex
	roots *x509.CertPool // what the chain last verified against
}

func newGatewayAuth(g *gatewayIngress, chain []*x509.Certificate) *gatewayAuth {
	return &gatewayAuth{g: g, chain: chain, expires: chainExpiry(chain), roots: g.files.get().roots}
}

func (a *gatewayAuth) expiry() time.Time { return a.expires }
func (a *gatewayAuth) peer() string      { return gatewayPeerName(a.chain[0]) }

// check: the CA file in force holds the CAs the chain verified against, or
// others it verifies against again (at a time it was valid, as
// peerAuth.check does); and no certificate of the chain has expired.
func (a *gatewayAuth) check(now time.Time) error {
	roots := a.g.files.get().roots
	a.mu.Lock()
	defer a.mu.Unlock()
	if roots != a.roots && !roots.Equal(a.roots) {
		if err := a.g.verifyChain(a.chain, roots, validAt(a.expires, now)); err != nil {
			return &staleError{"untrusted", err}
		}
	}
	a.roots = roots
	return expired(a.expires, now)
}

// serveIngress terminates TLS on one connection and forwards it (tcp) or
// hands it to the gateway's HTTP server (http).
func (s *Sidecar) serveIngress(l *listener, c net.Conn) {
	start := time.Now()
	g := l.gateway.ingress
	tc := tls.Server(c, g.tlsCfg)
	err := s.gatewayHandshake(l, tc)
	sni, unrouted := g.unrouted.LoadAndDelete(c)
	if err != nil {
		if unrouted {
			s.finish(l, c, "", 0, 0, start, "no_route", fmt.Errorf("proxy: gateway %s: no route for SNI %q: the client was sent an unrecognized_name alert", l.name, sni))
			return
		}
		s.finish(l, c, "", 0, 0, start, "handshake_failed", err)
		return
	}
	cs := tc.ConnectionState()
	peer := ""
	info := &connInfo{opened: g.files.now()}
	if len(cs.PeerCertificates) > 0 {
		peer = gatewayPeerName(cs.PeerCertificates[0])
		info.auth = newGatewayAuth(g, cs.PeerCertificates)
		defer s.trackAuth(l.name, info.auth, g.files.now, func() { c.Close() })()
	}
	if g.http != nil {
		g.http.serve(l, c, tc, info, peer, start)
		return
	}
	// A resumed session skips GetCertificate: route again.
	backend, ok := g.routes.match(cs.ServerName)
	if !ok {
		s.finish(l, c, peer, 0, 0, start, "no_route", fmt.Errorf("proxy: gateway %s: no route for SNI %q", l.name, cs.ServerName))
		return
	}
	up, err := net.DialTimeout("tcp", backend, time.Duration(s.cfg.Limits.HandshakeTimeout))
	if err != nil {
		s.finish(l, c, peer, 0, 0, start, "upstream_failed", err)
		return
	}
	defer up.Close()
	rx, tx, result, err := s.pipe(l.name, tc, up)
	s.finish(l, c, peer, rx, tx, start, result, err)
}

func (g *gatewayIngress) shutdown() {
	if g.http != nil {
		g.http.shutdown()
	}
}

// ingressHTTP is the HTTP side of an http ingress gateway: one http.Server
// fed with the connections serveIngress has terminated, routing each
// request by its Host header.
type ingressHTTP struct {
	s   *Sidecar
	g   *gatewayIngress
	srv *http.Server
	*handoff
	proxies map[string]*httputil.ReverseProxy // by backend
	start   sync.Once
}

func newIngressHTTP(s *Sidecar, g *gatewayIngress) *ingressHTTP {
	h := &ingressHTTP{s: s, g: g, handoff: newHandoff(nil), proxies: map[string]*httputil.ReverseProxy{}}
	idle := time.Duration(s.cfg.Limits.IdleTimeout)
	dialer := &net.Dialer{Timeout: time.Duration(s.cfg.Limits.HandshakeTimeout)}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	// The backends are local plaintext HTTP/1.1, whatever the client spoke.
	transport := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64, IdleConnTimeout: idle}
	for _, r := range g.cfg.Routes {
		target := &url.URL{Scheme: "http", Host: r.Backend}
		h.proxies[r.Backend] = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Host = pr.In.Host
				pr.SetXForwarded()
				// The backend sees only what this gateway vouches for.
				pr.Out.Header.Del(XFCCHeader)
				if t := pr.In.TLS; t != nil && len(t.PeerCertificates) > 0 {
					pr.Out.Header.Set(XFCCHeader, XFCC(g.files.get().by, t.PeerCertificates[0]))
				}
			},
			Transport:    transport,
			ErrorLog:     errLog,
			ErrorHandler: upstreamFailed(bodyUpstream),
		}
	}
	h.srv = h.newServer(s, h, errLog)
	s.closeLapsed(h.handoff, g.cfg.Name, g.files.now)
	return h
}

// serve hands tc to the HTTP server and returns once the server is done
// with it. Each request is logged by ServeHTTP.
func (h *ingressHTTP) serve(l *listener, c net.Conn, tc *tls.Conn, info *connInfo, peer string, start time.Time) {
	h.start.Do(func() { go h.run() })
	if !h.handoff.serve(tc, info) {
		h.s.finish(l, c, peer, 0, 0, start, "closed", fmt.Errorf("proxy: gateway %s is shutting down", l.name))
		return
	}
	h.s.metrics.connections.WithLabelValues(l.name, "ok").Inc()
}

// run serves the queued connections until the queue is closed.
func (h *ingressHTTP) run() {
	if err := h.serveAll(h.srv); err != nil {
		h.s.log.Error("proxy: gateway HTTP server stopped", "listener", h.g.cfg.Name, "error", err)
	}
}

// shutdown stops taking connections, closes idle ones and asks h2 clients
// to go away; requests in flight finish within the drain timeout, after
// which Sidecar.Run closes the connections themselves.
func (h *ingressHTTP) shutdown() {
	h.queue.Close()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.s.cfg.Limits.DrainTimeout)+time.Second)
		defer cancel()
		_ = h.srv.Shutdown(ctx)
	}()
}

// ServeHTTP routes one request by its Host header and logs it.
func (h *ingressHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &responseLog{ResponseWriter: w, status: http.StatusOK}
	var body *gatewayBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &gatewayBody{ReadCloser: r.Body}
		r.Body = body
	}
	host := gatewayHost(r.Host)
	result := "ok"
	var err error
	info := connInfoOf(r.Context())
	if info == nil {
		info = &connInfo{}
	}
	now := h.g.files.now()
	if err = h.s.refuseStale(h.g.cfg.Name, rw, info.auth, now); err != nil {
		result = "peer_stale"
	} else if backend, ok := h.g.routes.match(host); ok {
		h.s.closeIfOld(rw, info, now)
		h.proxies[backend].ServeHTTP(rw, r)
		if rw.upstreamErr != nil {
			result, err = "upstream_failed", rw.upstreamErr
		}
	} else {
		result, err = "no_route", fmt.Errorf("proxy: gateway %s: no route for host %q", h.g.cfg.Name, host)
		rw.Header().Set("Content-Type", "text/plain")
		rw.WriteHeader(http.StatusNotFound)
		io.WriteString(rw, gatewayBodyNoRoute)
	}
	if handlerDone(r.Context()) {
		rw.status = http.StatusSwitchingProtocols
	}
	peer := "-"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		peer = gatewayPeerName(r.TLS.PeerCertificates[0])
	}
	var rx int64
	if body != nil {
		rx = body.n
	}
	h.s.metrics.bytes.WithLabelValues(h.g.cfg.Name, "received").Add(float64(rx))
	h.s.metrics.bytes.WithLabelValues(h.g.cfg.Name, "sent").Add(float64(rw.bytes))
	// The query is left out: it may carry tokens.
	attrs := []any{"listener", h.g.cfg.Name, "remote", r.RemoteAddr, "peer", peer, "method", r.Method, "host", host,
		"path", r.URL.Path, "proto", r.Proto, "status", rw.status, "bytes_received", rx, "bytes_sent", rw.bytes,
		"duration", time.Since(start).Round(time.Microsecond), "result", result}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	h.s.log.Info("request", attrs...)
}

// gatewayBody counts the bytes of a request body read by the proxy.
type gatewayBody struct {
	io.ReadCloser
	n int64
}

func (b *gatewayBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// gatewayNetListener runs onClose once when the sidecar closes the
// listener, so that an http gateway starts draining its keep-alive
// connections with it.
type gatewayNetListener struct {
	net.Listener
	once    sync.Once
	onClose func()
}

func (l *gatewayNetListener) Close() error {
	l.once.Do(l.onClose)
	return l.Listener.Close()
}

// ---- Egress ----

// gatewayEgress is one egress gateway listener.
type gatewayEgress struct {
	cfg   *EgressConfig
	files *gatewayFiles
	// verifyName is the DNS name the server must carry when
	// subject_alt_names is empty: sni, or the upstream's host.
	verifyName string
	tlsCfg     *tls.Config
}

func (s *Sidecar) newEgress(out *EgressConfig) (*gatewayEgress, error) {
	proto, _ := gatewayProtocol(out.Protocol)
	files, err := newGatewayFiles(out.Name, out.TLS.ClientCertificate, out.TLS.PrivateKey, out.TLS.CACertificates, s.cfg.Gateways.Clock, s.log)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(out.Upstream)
	e := &gatewayEgress{cfg: out, files: files, verifyName: host}
	if out.TLS.SNI != "" {
		e.verifyName = out.TLS.SNI
	}
	e.tlsCfg = &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		ServerName:   e.verifyName,
		// Not insecure: VerifyConnection verifies the server against the CA
		// file in force at this handshake (resumptions included) and the
		// names of subject_alt_names or sni.
		InsecureSkipVerify: true,
		VerifyConnection:   e.verifyServer,
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
	}
	if net.ParseIP(e.verifyName) != nil {
		// An IP address is verified, but not sent as SNI.
		e.tlsCfg.ServerName = ""
	}
	if out.TLS.Mode == gatewayModeMutual {
		e.tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return files.get().cert, nil
		}
	}
	if proto == gatewayHTTP {
		e.tlsCfg.NextProtos = []string{"http/1.1"}
	}
	return e, nil
}

// verifyServer admits a server whose chain verifies against the CA file
// (the system roots without one) and that carries one of subject_alt_names,
// or the name of sni or the upstream if that is empty.
func (e *gatewayEgress) verifyServer(cs tls.ConnectionState) error {
	chain := cs.PeerCertificates
	switch {
	case len(chain) == 0:
		return fmt.Errorf("proxy: gateway %s: the server presented no certificate", e.cfg.Name)
	case len(chain) > maxPeerChain:
		return fmt.Errorf("proxy: gateway %s: the server presented %d certificates, more than %d", e.cfg.Name, len(chain), maxPeerChain)
	}
	opts := x509.VerifyOptions{
		Roots:         e.files.get().roots,
		Intermediates: gatewayPool(chain[1:]),
		CurrentTime:   e.files.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	sans := e.cfg.TLS.SubjectAltNames
	if len(sans) == 0 {
		opts.DNSName = e.verifyName
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return fmt.Errorf("proxy: gateway %s: server certificate %s of %s does not verify: %w", e.cfg.Name, gatewayPeerName(chain[0]), e.cfg.Upstream, err)
	}
	if len(sans) > 0 && !matchSubjectAltNames(chain[0], sans) {
		return fmt.Errorf("proxy: gateway %s: server certificate %s of %s carries none of subject_alt_names %v", e.cfg.Name, gatewayPeerName(chain[0]), e.cfg.Upstream, sans)
	}
	return nil
}

// serveEgress opens TLS to the upstream for one plaintext connection of
// the app.
func (s *Sidecar) serveEgress(l *listener, c net.Conn) {
	start := time.Now()
	e := l.gateway.egress
	raw, err := net.DialTimeout("tcp", e.cfg.Upstream, time.Duration(s.cfg.Limits.HandshakeTimeout))
	if err != nil {
		s.finish(l, c, "", 0, 0, start, "upstream_failed", err)
		return
	}
	defer raw.Close()
	tc := tls.Client(raw, e.tlsCfg)
	if err := s.gatewayHandshake(l, tc); err != nil {
		s.finish(l, c, "", 0, 0, start, "handshake_failed", err)
		return
	}
	peer := gatewayPeerName(tc.ConnectionState().PeerCertificates[0])
	rx, tx, result, err := s.pipe(l.name, c, tc)
	s.finish(l, c, peer, rx, tx, start, result, err)
}

// ---- Routes ----

// gatewayRoutes matches a host name against the routes of an ingress, as
// Istio does: an exact name first, then the longest matching "*.domain",
// then "*".
type gatewayRoutes struct {
	exact map[string]string // host -> backend
	wild  []gatewayWildcard // longest suffix first
	any   string            // the backend of "*", or ""
}

type gatewayWildcard struct{ suffix, backend string } // suffix: ".example.com"

func newGatewayRoutes(routes []IngressRoute) (*gatewayRoutes, error) {
	rs := &gatewayRoutes{exact: map[string]string{}}
	for _, r := range routes {
		for _, h := range r.Hosts {
			p, err := parseHostPattern(h)
			if err != nil {
				return nil, err
			}
			switch {
			case p == "*":
				rs.any = r.Backend
			case strings.HasPrefix(p, "*."):
				rs.wild = append(rs.wild, gatewayWildcard{suffix: p[1:], backend: r.Backend})
			default:
				rs.exact[p] = r.Backend
			}
		}
	}
	sort.SliceStable(rs.wild, func(i, j int) bool { return len(rs.wild[i].suffix) > len(rs.wild[j].suffix) })
	return rs, nil
}

// match returns the backend for host (an SNI or a Host header without its
// port).
func (rs *gatewayRoutes) match(host string) (string, bool) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host != "" {
		if b, ok := rs.exact[host]; ok {
			return b, true
		}
		for _, w := range rs.wild {
			if len(host) > len(w.suffix) && strings.HasSuffix(host, w.suffix) {
				return w.backend, true
			}
		}
	}
	if rs.any != "" {
		return rs.any, true
	}
	return "", false
}

// gatewayHost is the host of a Host header, without port or IPv6 brackets.
func gatewayHost(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// ---- Certificate files ----

// gatewayCreds is one consistent load of a gateway's files.
type gatewayCreds struct {
	cert  *tls.Certificate // nil without a certificate file
	roots *x509.CertPool   // nil without a CA file: the system roots
	by    spiffeid.ID      // the certificate's SPIFFE ID, if it has one (XFCC By)
}

// gatewayFiles holds a gateway's certificate, key and CA files and reloads
// them, at most once per gatewayReloadInterval, when their size or
// modification time changes.
type gatewayFiles struct {
	name          string
	cert, key, ca string
	now           func() time.Time
	log           *slog.Logger

	mu        sync.Mutex // held while checking the files
	checkedAt time.Time
	stamps    [3]gatewayStamp
	cur       atomic.Pointer[gatewayCreds]
}

// gatewayStamp is what a stat of one file says; a file that is missing or
// unset stamps as zero.
type gatewayStamp struct {
	modTime int64
	size    int64
}

// CheckFiles loads every gateway's certificate, key and CA files as New
// does, binding nothing: for `meshfed proxy --check`.
func (g *GatewaysConfig) CheckFiles() error {
	discard := slog.New(slog.DiscardHandler)
	for _, in := range g.Ingress {
		if _, err := newGatewayFiles(in.Name, in.TLS.ServerCertificate, in.TLS.PrivateKey, in.TLS.CACertificates, time.Now, discard); err != nil {
			return err
		}
	}
	for _, out := range g.Egress {
		if _, err := newGatewayFiles(out.Name, out.TLS.ClientCertificate, out.TLS.PrivateKey, out.TLS.CACertificates, time.Now, discard); err != nil {
			return err
		}
	}
	return nil
}

func newGatewayFiles(name, cert, key, ca string, now func() time.Time, log *slog.Logger) (*gatewayFiles, error) {
	f := &gatewayFiles{name: name, cert: cert, key: key, ca: ca, now: now, log: log}
	f.stamps = f.stat()
	creds, err := f.load()
	if err != nil {
		return nil, err
	}
	f.cur.Store(creds)
	f.checkedAt = now()
	return f, nil
}

// get returns the credentials in force, first loading the files again if
// the interval has passed and they changed. A handshake that finds another
// one checking uses the current credentials without waiting.
func (f *gatewayFiles) get() *gatewayCreds {
	if f.mu.TryLock() {
		now := f.now()
		if d := now.Sub(f.checkedAt); d >= gatewayReloadInterval || d < 0 {
			f.checkedAt = now
			if st := f.stat(); st != f.stamps {
				f.stamps = st
				if creds, err := f.load(); err != nil {
					f.log.Warn("proxy: gateway certificate files changed but do not load; keeping the last good ones", "gateway", f.name, "error", err)
				} else {
					f.cur.Store(creds)
					attrs := []any{"gateway", f.name}
					if creds.cert != nil {
						attrs = append(attrs, "serial", creds.cert.Leaf.SerialNumber.Text(16), "not_after", creds.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
					}
					f.log.Info("proxy: gateway certificate files reloaded", attrs...)
				}
			}
		}
		f.mu.Unlock()
	}
	return f.cur.Load()
}

func (f *gatewayFiles) stat() [3]gatewayStamp {
	var st [3]gatewayStamp
	for i, p := range []string{f.cert, f.key, f.ca} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			st[i] = gatewayStamp{modTime: fi.ModTime().UnixNano(), size: fi.Size()}
		}
	}
	return st
}

// load reads and checks the files: the certificate chain and the key must
// match and the certificate must not have expired.
func (f *gatewayFiles) load() (*gatewayCreds, error) {
	creds := &gatewayCreds{}
	if f.cert != "" {
		data, err := pemfile.ReadFile(f.cert, pemfile.MaxChainBytes)
		if err != nil {
			return nil, fmt.Errorf("proxy: gateway %s: certificate: %w", f.name, err)
		}
		chain, err := pemfile.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("proxy: gateway %s: certificate %s: %w", f.name, f.cert, err)
		}
		if len(chain) > maxPeerChain {
			return nil, fmt.Errorf("proxy: gateway %s: certificate %s: %d certificates, more than %d", f.name, f.cert, len(chain), maxPeerChain)
		}
		data, err = pemfile.ReadFile(f.key, pemfile.MaxKeyBytes)
		if err != nil {
			return nil, fmt.Errorf("proxy: gateway %s: private key: %w", f.name, err)
		}
		key, err := pemfile.ParsePrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("proxy: gateway %s: private key %s: %w", f.name, f.key, err)
		}
		leaf := chain[0]
		if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
			return nil, fmt.Errorf("proxy: gateway %s: the private key in %s is not the key of the certificate in %s", f.name, f.key, f.cert)
		}
		if now := f.now(); now.After(leaf.NotAfter) {
			return nil, fmt.Errorf("proxy: gateway %s: the certificate in %s expired at %s", f.name, f.cert, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
		for _, c := range chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		creds.cert = cert
		for _, u := range leaf.URIs {
			if id, err := spiffeid.FromURI(u); err == nil {
				creds.by = id
				break
			}
		}
	}
	if f.ca != "" {
		roots, err := pemfile.ReadCertificates(f.ca)
		if err != nil {
			return nil, fmt.Errorf("proxy: gateway %s: ca_certificates: %w", f.name, err)
		}
		creds.roots = gatewayPool(roots)
	}
	return creds, nil
}

// ---- Helpers ----

func gatewayPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// matchSubjectAltNames reports whether leaf carries one of names: a URI SAN
// equal to a name holding "://", or a DNS name or IP address SAN that
// verifies the name (a wildcard SAN covers one label, as in HTTPS).
func matchSubjectAltNames(leaf *x509.Certificate, names []string) bool {
	for _, n := range names {
		if strings.Contains(n, "://") {
			for _, u := range leaf.URIs {
				if u.String() == n {
					return true
				}
			}
			continue
		}
		if leaf.VerifyHostname(n) == nil {
			return true
		}
	}
	return false
}

// gatewayPeerName names a peer certificate in the access log: its URI SAN,
// else its subject, else its first DNS name.
func gatewayPeerName(c *x509.Certificate) string {
	switch {
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case c.Subject.String() != "":
		return c.Subject.String()
	case len(c.DNSNames) > 0:
		return "DNS:" + c.DNSNames[0]
	}
	return "(unnamed certificate)"
}
