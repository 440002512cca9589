package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// source is what a workload gets from its agent over the Workload API.
type source interface {
	x509svid.Source
	x509bundle.Source
}

// maxBody bounds what the client reads of a response.
const maxBody = 4 << 10

// ratingsBody is the built-in app's one answer, bookinfo's ratings.
const ratingsBody = `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}`

// request is what the ratings app saw of one request.
type request struct {
	principal string // Istio's source.principal: trust domain and path
	bundleOf  spiffeid.TrustDomain
	root      *x509.Certificate // where the client's chain ended
}

// ratings is the built-in app: HTTPS with mTLS, its certificate and the
// bundles that verify clients from its own Workload API source; it allows
// exactly one client ID.
type ratings struct {
	name string // e.g. "ratings (west.example)"
	src  source
	ln   net.Listener
	srv  *http.Server
	say  func(format string, args ...any)

	mu         sync.Mutex
	quiet      bool // under load: count, do not print
	last       request
	handshakes []string // the server side's handshake errors
}

func startRatings(name string, src source, client spiffeid.ID, say func(string, ...any)) (*ratings, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &ratings{name: name, src: src, say: say}
	a.ln = tls.NewListener(ln, tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeID(client)))
	a.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serve),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(handshakeLog{a}, "", 0),
	}
	go a.srv.Serve(a.ln)
	return a, nil
}

func (a *ratings) addr() string { return a.ln.Addr().String() }

func (a *ratings) close() { a.srv.Close() }

func (a *ratings) serve(w http.ResponseWriter, r *http.Request) {
	peer := r.TLS.PeerCertificates
	id, err := x509svid.IDFromCert(peer[0])
	if err != nil { // the handshake checked it; cannot happen
		http.Error(w, "no SPIFFE ID", http.StatusForbidden)
		return
	}
	req := request{principal: sourcePrincipal(id), bundleOf: id.TrustDomain()}
	// Verify again to name the root the client's chain ended at, in the
	// bundle of the client's own trust domain.
	if _, chains, err := x509svid.Verify(peer, a.src); err == nil {
		req.root = chains[0][len(chains[0])-1]
	}
	a.mu.Lock()
	a.last = req
	quiet := a.quiet
	a.mu.Unlock()
	if !quiet {
		a.say("  %s log: %s %s source.principal=%q", a.name, r.Method, r.URL.Path, req.principal)
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, ratingsBody)
}

func (a *ratings) setQuiet(q bool) {
	a.mu.Lock()
	a.quiet = q
	a.mu.Unlock()
}

func (a *ratings) lastRequest() request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

func (a *ratings) handshakeErrors() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.handshakes...)
}

// handshakeLog keeps the http server's "TLS handshake error" lines: the
// server side's reason for refusing a connection.
type handshakeLog struct{ a *ratings }

func (h handshakeLog) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	if _, reason, ok := strings.Cut(line, "TLS handshake error from "); ok {
		if _, r, ok := strings.Cut(reason, ": "); ok {
			line = r
		}
	}
	h.a.mu.Lock()
	h.a.handshakes = append(h.a.handshakes, line)
	h.a.mu.Unlock()
	return len(b), nil
}

// sourcePrincipal is Istio's source.principal of id: its trust domain and
// path, without the scheme.
func sourcePrincipal(id spiffeid.ID) string { return id.TrustDomain().Name() + id.Path() }

// client calls a ratings app as a workload with src's SVID, accepting only
// server; every request is a new connection, so a new mTLS handshake.
type client struct {
	src    source
	http   *http.Client
	server spiffeid.ID
}

func newClient(src source, server spiffeid.ID) *client {
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(server)), DisableKeepAlives: true}
	return &client{src: src, server: server, http: &http.Client{Transport: tr, Timeout: 5 * time.Second}}
}

// response is what one call got.
type response struct {
	status int
	body   string
	root   *x509.Certificate // where the server's chain ended, in its trust domain's bundle
}

// get calls GET /ratings/0 at addr; the error is the verifier's (or the
// network's) reason, without the URL around it.
func (c *client) get(ctx context.Context, addr string) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/ratings/0", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s: %s", resp.Status, body)
	}
	out := &response{status: resp.StatusCode, body: strings.TrimSpace(string(body))}
	if _, chains, err := x509svid.Verify(resp.TLS.PeerCertificates, c.src); err == nil {
		out.root = chains[0][len(chains[0])-1]
	}
	return out, nil
}

// chainOf verifies src's own SVID with its own bundle and returns the
// chain from the leaf to the root.
func chainOf(src source) (*x509svid.SVID, []*x509.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, nil, err
	}
	_, chains, err := x509svid.Verify(svid.Certificates, src)
	if err != nil {
		return svid, nil, err
	}
	return svid, chains[0], nil
}

// describeChain prints a chain as `openssl s_client -showcerts` lists it
// (" 0 s:subject", "   i:issuer"), but naming each certificate by its
// SPIFFE ID and trust domain.
func describeChain(chain []*x509.Certificate) []string {
	var lines []string
	for i, c := range chain {
		lines = append(lines, fmt.Sprintf("%2d s:%s", i, certName(c)), "   i:"+c.Issuer.String())
	}
	return lines
}

// certName names a certificate: a leaf by its SPIFFE ID, a CA by its
// subject and the trust domain it is limited to, if any.
func certName(c *x509.Certificate) string {
	var id spiffeid.ID
	if len(c.URIs) == 1 {
		id, _ = spiffeid.FromURI(c.URIs[0])
	}
	selfSigned := c.Subject.String() == c.Issuer.String() && c.CheckSignatureFrom(c) == nil
	switch {
	case !c.IsCA && !id.IsZero():
		return fmt.Sprintf("%s  [trust domain %s]", id, id.TrustDomain())
	case c.IsCA && !id.IsZero() && selfSigned:
		return fmt.Sprintf("%s  [root of trust domain %s]", c.Subject, id.TrustDomain())
	case c.IsCA && !id.IsZero():
		return fmt.Sprintf("%s  [CA of trust domain %s only]", c.Subject, id.TrustDomain())
	case selfSigned:
		return fmt.Sprintf("%s  [root, no trust domain: shared]", c.Subject)
	default:
		return c.Subject.String()
	}
}
