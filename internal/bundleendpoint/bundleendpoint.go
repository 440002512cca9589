// Package bundleendpoint serves this trust domain's SPIFFE bundle at a SPIFFE
// bundle endpoint (SPIFFE Federation §4–5), so that other trust domains can
// fetch it. It speaks both endpoint profiles: https_spiffe, where the server
// presents its own X.509-SVID (asked for on every handshake, so rotation
// needs no restart), and https_web, where it presents a certificate from PEM
// files that are reloaded when they change.
//
// The endpoint faces other organisations, so it answers GET and HEAD for "/"
// and nothing else, bounds request headers and time, asks for the bundle on
// every request (the bundle it publishes is never older than its source), and
// never tells a client more than "bundle unavailable" when something is wrong.
// It never requests a client certificate or any other client authentication
// (the specification forbids it), never caches a bundle across requests, and
// never writes a file.
package bundleendpoint

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Profile is a SPIFFE bundle endpoint profile (SPIFFE Federation §5.2).
type Profile string

// Endpoint profiles.
const (
	// ProfileSPIFFE presents an X.509-SVID; clients check its SPIFFE ID.
	ProfileSPIFFE Profile = "https_spiffe"
	// ProfileWeb presents a Web PKI certificate; clients check its DNS name
	// or IP address.
	ProfileWeb Profile = "https_web"
)

// Bounds on what a client may cost the server. A bundle fetch is one small
// GET; these leave room for slow links and nothing more.
const (
	// maxHeaderBytes bounds a request's header block. A bundle fetcher sends
	// a handful of short headers; net/http's default is 1 MiB.
	maxHeaderBytes = 16 << 10
	// readHeaderTimeout also bounds the TLS handshake (net/http uses the
	// smallest of its read and write timeouts for it).
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	// shutdownTimeout bounds how long Run waits for requests in flight once
	// its context is done; then it closes what is left.
	shutdownTimeout = 5 * time.Second
	// MaxWait bounds how long a conditional request that asks to wait
	// (Prefer: wait=N) is held for a change of the bundle.
	MaxWait = 60 * time.Second
	// maxWaiters bounds the requests held at once; beyond it a request is
	// answered at once, without waiting, so held connections cannot
	// exhaust the server.
	maxWaiters = 1024
)

// BundleSource gives the current bundle of a trust domain.
// *spiffebundle.Bundle and *spiffebundle.Set satisfy it. The server calls it
// once per request and keeps nothing, so it should be cheap.
type BundleSource interface {
	GetBundleForTrustDomain(spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
}

// Config describes a bundle endpoint.
type Config struct {
	// Addr is the TCP address to listen on, such as "0.0.0.0:8443". Give
	// either Addr or Listener.
	Addr string
	// Listener, if set, is used instead of listening on Addr. The server
	// owns it once New succeeds and closes it when Run returns.
	Listener net.Listener
	// TrustDomain is the trust domain whose bundle is served.
	TrustDomain spiffeid.TrustDomain
	// Bundles gives the bundle to serve, on every request.
	Bundles BundleSource
	// Profile is ProfileSPIFFE (the default) or ProfileWeb.
	Profile Profile
	// SVIDSource gives the X.509-SVID to present, on every handshake
	// (https_spiffe only).
	SVIDSource x509svid.Source
	// CertFile and KeyFile are PEM files holding the certificate chain
	// (server certificate first) and its private key (https_web only). They
	// are checked for changes at most once a second, when a client connects.
	CertFile string
	KeyFile  string
	// Logger defaults to discarding everything.
	Logger *slog.Logger
	// Clock defaults to time.Now. It decides when the https_web files are
	// checked for changes and whether a certificate has expired.
	Clock func() time.Time
	// Changes, if set, returns a channel closed at the next change of the
	// bundle. With it the endpoint holds a conditional request that asks to
	// wait until the bundle changes, so a meshfed peer learns of a change at
	// once instead of at its next refresh (see serveBundle).
	Changes func() <-chan struct{}
}

// Server is a SPIFFE bundle endpoint. Make one with New and call Run once.
type Server struct {
	td      spiffeid.TrustDomain
	bundles BundleSource
	profile Profile
	log     *slog.Logger
	ln      net.Listener
	srv     *http.Server

	changes        func() <-chan struct{}
	stopping       chan struct{} // closed when Run begins to stop: held requests answer at once
	waiters        atomic.Int64
	ran            atomic.Bool
	bundleFailing  atomic.Bool // the bundle source is failing; logged once
	svidFailing    atomic.Bool // the SVID source is failing; logged once
	mu             sync.Mutex
	requestsByCode map[int]uint64
}

// New checks cfg, loads the https_web certificate if that is the profile, and
// listens on cfg.Addr (unless cfg.Listener is given). It serves nothing until
// Run is called; Run is what releases the address again, so a Server that New
// returned must be Run (Run with a cancelled context just closes it).
func New(cfg Config) (*Server, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("bundleendpoint: a trust domain is required")
	}
	if cfg.Bundles == nil {
		return nil, errors.New("bundleendpoint: a bundle source is required")
	}
	s := &Server{
		td:             cfg.TrustDomain,
		bundles:        cfg.Bundles,
		profile:        cfg.Profile,
		log:            cfg.Logger,
		changes:        cfg.Changes,
		stopping:       make(chan struct{}),
		requestsByCode: make(map[int]uint64),
	}
	if s.profile == "" {
		s.profile = ProfileSPIFFE
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Clock
	if now == nil {
		now = time.Now
	}

	tlsConf := &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		ClientAuth:   tls.NoClientCert,
		// Without resumption every connection gets the certificate of the
		// moment: a rotated SVID or a replaced file is what the next client
		// sees, even one that kept a session ticket. A bundle fetch every few
		// minutes gains nothing from resumption.
		SessionTicketsDisabled: true,
	}
	switch s.profile {
	case ProfileSPIFFE:
		if cfg.SVIDSource == nil {
			return nil, errors.New("bundleendpoint: profile https_spiffe needs an SVID source")
		}
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, errors.New("bundleendpoint: profile https_spiffe presents the server's SVID; certificate and key files are for https_web")
		}
		tlsConf.GetCertificate = s.svidCertificate(cfg.SVIDSource)
	case ProfileWeb:
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("bundleendpoint: profile https_web needs a certificate file and a key file")
		}
		if cfg.SVIDSource != nil {
			return nil, errors.New("bundleendpoint: profile https_web presents the certificate from files; an SVID source is for https_spiffe")
		}
		fc, err := loadCertFiles(cfg.CertFile, cfg.KeyFile, now, s.log)
		if err != nil {
			return nil, err
		}
		tlsConf.GetCertificate = fc.getCertificate
	default:
		return nil, fmt.Errorf("bundleendpoint: unknown profile %q; use %s or %s", s.profile, ProfileSPIFFE, ProfileWeb)
	}

	// HTTP/1.1 only: a bundle fetch is one GET every few minutes, so HTTP/2
	// would add a second protocol stack facing the internet (and a slower
	// graceful shutdown) for nothing.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveBundle),
		Protocols:         protocols,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(serverLog{s.log}, "", 0),
	}

	// Listen last, so that a configuration error leaves no port behind.
	switch {
	case cfg.Listener != nil && cfg.Addr != "":
		return nil, errors.New("bundleendpoint: give a listen address or a listener, not both")
	case cfg.Listener != nil:
		s.ln = cfg.Listener
	case cfg.Addr == "":
		return nil, errors.New("bundleendpoint: a listen address is required")
	default:
		ln, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("bundleendpoint: %w", err)
		}
		s.ln = ln
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is done, then stops accepting, lets requests in flight
// finish (for up to five seconds) and returns nil. If serving fails first, it
// returns that error. Run closes the listener in every case and may be called
// only once.
func (s *Server) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("bundleendpoint: Run called twice; make a new Server")
	}
	defer s.ln.Close() // ServeTLS does not close it when it fails early

	served := make(chan error, 1)
	go func() { served <- s.srv.ServeTLS(s.ln, "", "") }()
	s.log.Info("bundle endpoint serving", "addr", s.ln.Addr().String(), "profile", string(s.profile), "trust_domain", s.td.Name())

	select {
	case err := <-served:
		return fmt.Errorf("bundleendpoint: serve: %w", err)
	case <-ctx.Done():
	}
	close(s.stopping)
	stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(stop); err != nil {
		s.log.Warn("bundle endpoint: closing connections still open after the shutdown grace period", "error", err)
		s.srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("bundleendpoint: serve: %w", err)
	}
	return nil
}

// Requests returns how many requests the handler answered, by HTTP status
// code. Requests that net/http refuses before they reach the handler (a bad
// request line, headers over the size bound) are not counted.
func (s *Server) Requests() map[int]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.requestsByCode)
}

// serveBundle answers GET and HEAD for "/" with the bundle as SPIFFE JSON.
//
// Every answer carries an ETag (the SHA-256 of the JSON, which encodes one
// bundle to the same bytes every time). A request whose If-None-Match names
// the current ETag gets 304 Not Modified; if it also says Prefer: wait=N
// (RFC 7240), the endpoint holds it until the bundle changes (then 200 with
// the new bundle) or for N seconds, at most MaxWait (then 304), and says
// Preference-Applied: wait=N. That is how a meshfed peer keeps one request
// outstanding and hears of a rotation at once; a peer that sends neither
// header (SPIRE) is answered as before.
//
// go-spiffe's federation.NewHandler is not used: it refuses HEAD, serves any
// path, and answers a source failure with 500 and the trust domain name. The
// JSON is the same (spiffebundle's Marshal), indented as `meshfed bundle
// show` prints it.
func (s *Server) serveBundle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		s.fail(w, http.StatusNotFound, "not found")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.fail(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	var changed <-chan struct{}
	wait := s.preferredWait(r)
	if wait > 0 {
		changed = s.changes() // before reading, so no change is missed
	}
	data, err := s.bundleJSON()
	if err != nil {
		s.unavailable(w, err)
		return
	}
	if s.bundleFailing.CompareAndSwap(true, false) {
		s.log.Info("bundle endpoint: serving the bundle again", "trust_domain", s.td.Name())
	}
	tag := etag(data)
	notModified := r.Header.Get("If-None-Match") == tag
	if notModified && wait > 0 {
		data, tag, notModified, err = s.waitForChange(w, r, tag, wait, changed)
		if err != nil {
			s.unavailable(w, err)
			return
		}
	}
	h := w.Header()
	h.Set("ETag", tag)
	if notModified {
		w.WriteHeader(http.StatusNotModified)
		s.count(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	s.count(http.StatusOK)
}

// preferredWait is the wait a conditional request asks for (Prefer:
// wait=N), bounded by MaxWait, or 0: no wait asked, no If-None-Match, no
// change notifications, or too many requests held already.
func (s *Server) preferredWait(r *http.Request) time.Duration {
	if s.changes == nil || r.Header.Get("If-None-Match") == "" {
		return 0
	}
	for _, v := range r.Header.Values("Prefer") {
		for pref := range strings.SplitSeq(v, ",") {
			name, val, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`))
			if err != nil || n <= 0 {
				return 0
			}
			return min(time.Duration(n)*time.Second, MaxWait)
		}
	}
	return 0
}

// waitForChange holds a request whose If-None-Match is the current tag
// until the bundle changes or wait passes. It reports the bundle to send and
// whether it is still unchanged.
func (s *Server) waitForChange(w http.ResponseWriter, r *http.Request, tag string, wait time.Duration, changed <-chan struct{}) ([]byte, string, bool, error) {
	if s.waiters.Add(1) > maxWaiters {
		s.waiters.Add(-1)
		return nil, tag, true, nil
	}
	defer s.waiters.Add(-1)
	// The server's write timeout would cut a held request; this one may
	// take the wait, plus the usual time to write.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + writeTimeout))
	w.Header().Set("Preference-Applied", "wait="+strconv.Itoa(int(wait/time.Second)))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return nil, tag, true, nil
		case <-r.Context().Done():
			return nil, tag, true, nil
		case <-s.stopping:
			return nil, tag, true, nil
		case <-changed:
		}
		changed = s.changes()
		data, err := s.bundleJSON()
		if err != nil {
			return nil, "", false, err
		}
		if now := etag(data); now != tag {
			return data, now, false, nil
		}
	}
}

// unavailable answers 503, logging the cause once per failing spell.
func (s *Server) unavailable(w http.ResponseWriter, err error) {
	if s.bundleFailing.CompareAndSwap(false, true) {
		s.log.Error("bundle endpoint: cannot get this trust domain's bundle; answering 503 until it can",
			"trust_domain", s.td.Name(), "error", err)
	}
	s.fail(w, http.StatusServiceUnavailable, "bundle unavailable")
}

// etag is the entity tag of a bundle's JSON: a strong one (RFC 9110), since
// bundle.Marshal encodes one bundle to the same bytes every time.
func etag(data []byte) string {
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// bundleJSON asks the source for the bundle and encodes it.
func (s *Server) bundleJSON() ([]byte, error) {
	b, err := s.bundles.GetBundleForTrustDomain(s.td)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, errors.New("the bundle source returned no bundle")
	}
	if b.TrustDomain() != s.td {
		// Publishing it would bind another domain's keys to this one.
		return nil, fmt.Errorf("the bundle source returned the bundle of %q", b.TrustDomain().Name())
	}
	return bundle.Marshal(b, bundle.FormatSPIFFE)
}

// fail answers with a short plain-text message that says nothing internal.
func (s *Server) fail(w http.ResponseWriter, code int, msg string) {
	http.Error(w, msg, code)
	s.count(code)
}

func (s *Server) count(code int) {
	s.mu.Lock()
	s.requestsByCode[code]++
	s.mu.Unlock()
}

// svidCertificate returns a GetCertificate that asks src for the SVID on
// every handshake, through go-spiffe's tlsconfig, and logs when the source
// starts failing and when it recovers rather than on every handshake.
func (s *Server) svidCertificate(src x509svid.Source) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	get := tlsconfig.GetCertificate(checkedSVIDSource{src})
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := get(hello)
		if err != nil {
			if s.svidFailing.CompareAndSwap(false, true) {
				s.log.Error("bundle endpoint: no SVID to present; TLS handshakes fail until there is one", "error", err)
			}
			return nil, fmt.Errorf("bundleendpoint: no SVID to present: %w", err)
		}
		if s.svidFailing.CompareAndSwap(true, false) {
			s.log.Info("bundle endpoint: presenting an SVID again", "spiffe_id", cert.Leaf.URIs[0].String())
		}
		return cert, nil
	}
}

// checkedSVIDSource turns an SVID without a certificate or key into an error;
// tlsconfig would index into it.
type checkedSVIDSource struct{ x509svid.Source }

func (c checkedSVIDSource) GetX509SVID() (*x509svid.SVID, error) {
	svid, err := c.Source.GetX509SVID()
	if err != nil {
		return nil, err
	}
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil || len(svid.Certificates[0].URIs) == 0 {
		return nil, errors.New("the SVID source returned an empty SVID")
	}
	return svid, nil
}

// serverLog receives net/http's own error lines. Those a client can cause at
// will (failed handshakes) go to Debug, so that a scanner cannot flood the
// log; anything else is a warning.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		level = slog.LevelDebug
	}
	l.log.Log(context.Background(), level, msg)
	return len(p), nil
}
