package fetcher

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTimeout bounds one fetch, from dialing to the last byte of the
// body, when no timeout is given. A bundle is at most a megabyte.
const DefaultTimeout = 10 * time.Second

// maxResponseHeaderBytes bounds the response header block. A bundle endpoint
// answers with a handful of short headers; net/http's default is 1 MiB.
const maxResponseHeaderBytes = 64 << 10

// FetchOptions say how Fetch authenticates a bundle endpoint and how long it
// waits for it.
type FetchOptions struct {
	// RootCAs verify an https_web endpoint's certificate; nil means the
	// system's roots.
	RootCAs *x509.CertPool
	// Bundles gives the bundle of the trust domain of the peer's EndpointID
	// (https_spiffe). The X.509-SVID the endpoint presents is verified
	// against it and nothing else.
	Bundles x509bundle.Source
	// Timeout bounds the whole fetch; DefaultTimeout if zero.
	Timeout time.Duration
	// Clock decides whether the endpoint's certificate is valid; time.Now
	// if nil.
	Clock pki.Clock
}

// Fetch gets the bundle of peer.TrustDomain from its bundle endpoint, once.
//
// It speaks TLS 1.2 or higher (internal/tlspolicy), authenticates the
// endpoint as peer.Profile says, sends one GET, and refuses: a redirect
// (SPIFFE Federation §7.5.1 lets a client disable them, and a redirect
// followed silently would let whoever controls the target serve the bundle;
// configure the final URL instead), any status but 200, a body over
// bundle.MaxBytes, an answer that is not SPIFFE bundle JSON, and a bundle
// that bundle.Parse refuses or that holds no X.509 authority. The connection
// is not reused: every fetch authenticates the endpoint with the trust of
// the moment.
//
// go-spiffe's federation.FetchBundle is not used: it does not check the
// status and reads the body without a bound.
func Fetch(ctx context.Context, peer Peer, opts FetchOptions) (*spiffebundle.Bundle, error) {
	a, err := FetchConditional(ctx, peer, opts, Conditions{})
	if err != nil {
		return nil, err
	}
	return a.Bundle, nil
}

// Conditions make a fetch conditional (RFC 9110 §13.1.2) and, with Wait, a
// long poll: the protocol of meshfed's bundle endpoint, which other
// endpoints (SPIRE's) ignore, answering 200 at once.
type Conditions struct {
	// ETag is the entity tag of the last good answer, exactly as the
	// endpoint sent it. When set, the request carries If-None-Match with it,
	// and the endpoint may answer 304 Not Modified: its bundle still is the
	// one that answer carried.
	ETag string
	// Wait, with ETag, asks the endpoint to hold the request until its
	// bundle changes or Wait passes (Prefer: wait=N, RFC 7240; N is Wait in
	// whole seconds, rounded down). The fetch's timeout grows by it.
	// Ignored without ETag, and when under a second.
	Wait time.Duration
}

// Answer is what FetchConditional got.
type Answer struct {
	// Bundle is the bundle served with 200 OK; nil when NotModified.
	Bundle *spiffebundle.Bundle
	// NotModified says the endpoint answered 304 Not Modified: its bundle
	// still is the one Conditions.ETag names.
	NotModified bool
	// ETag is the answer's entity tag, to send back as Conditions.ETag;
	// empty when it carried none, or one that is not an RFC 9110 entity-tag
	// of at most 256 bytes. After a 304 it is Conditions.ETag.
	ETag string
	// WaitApplied says the endpoint honoured Conditions.Wait
	// (Preference-Applied: wait=M), and AppliedWait is M. Both are zero when
	// no wait was asked for.
	WaitApplied bool
	AppliedWait time.Duration
}

// FetchConditional is Fetch with conditions. With cond.ETag it also accepts
// 304 Not Modified (whose ETag, if it has one, must be cond.ETag), returned
// as an Answer without a bundle; every other bound of Fetch holds, and the
// endpoint is authenticated for a 304 as for a 200.
func FetchConditional(ctx context.Context, peer Peer, opts FetchOptions, cond Conditions) (Answer, error) {
	if err := peer.Validate(); err != nil {
		return Answer{}, err
	}
	fail := func(err error) error {
		return fmt.Errorf("fetcher: %s: GET %s: %w", peer.TrustDomain.Name(), peer.URL, err)
	}
	if cond.ETag != "" && !validETag(cond.ETag) {
		return Answer{}, fmt.Errorf("fetcher: %s: the ETag to send, %s, is not an RFC 9110 entity-tag of at most %d bytes", peer.TrustDomain.Name(), showETag(cond.ETag), maxETagBytes)
	}
	var wait time.Duration // what Prefer asks for; zero: no Prefer
	if cond.ETag != "" {
		wait = max(cond.Wait, 0).Truncate(time.Second)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	timeout += wait
	clock := opts.Clock
	if clock == nil {
		clock = time.Now
	}

	tlsConf := &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		Time:         clock,
	}
	// authErr keeps why the endpoint failed authentication: net/http would
	// bury it in a connection error.
	var authErr lockedError
	switch peer.Profile {
	case ProfileHTTPSWeb:
		// net/http sets ServerName to the URL's host, and crypto/tls checks
		// the certificate against it (RFC 6125, as §5.2.1.4 asks).
		tlsConf.RootCAs = opts.RootCAs
	case ProfileHTTPSSPIFFE:
		trust, err := trustBundle(peer, opts.Bundles)
		if err != nil {
			return Answer{}, err
		}
		// The endpoint is named by its SPIFFE ID, not its host (§5.2.2.4),
		// so crypto/tls's own check is replaced by the SVID check.
		tlsConf.InsecureSkipVerify = true
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verifyEndpointSVID(cs.PeerCertificates, trust, peer.EndpointID, clock()); err != nil {
				authErr.set(err)
				return err
			}
			return nil
		}
	}

	// The context bounds everything: dialing, the handshake, the wait, the
	// headers and the body.
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimedOut)
	defer cancel()
	transport := &http.Transport{
		// TLS runs end to end through a CONNECT proxy, so a proxy from the
		// environment can delay a fetch but not alter the bundle.
		Proxy:                  http.ProxyFromEnvironment,
		TLSClientConfig:        tlsConf,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport: transport,
		// Hand the redirect back, to be refused below with its target.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer.URL, nil)
	if err != nil {
		return Answer{}, fail(err)
	}
	req.Header.Set("Accept", "application/json")
	if cond.ETag != "" {
		req.Header.Set("If-None-Match", cond.ETag)
	}
	if wait > 0 {
		req.Header.Set("Prefer", "wait="+strconv.Itoa(int(wait/time.Second)))
	}
	resp, err := client.Do(req)
	if err != nil {
		if err := authErr.get(); err != nil {
			return Answer{}, fail(err)
		}
		return Answer{}, fail(transportError(ctx, err, timeout))
	}
	defer resp.Body.Close()

	var a Answer
	if wait > 0 {
		a.AppliedWait, a.WaitApplied = appliedWait(resp.Header)
	}
	// The status line and the Location and ETag headers come from the
	// endpoint: they are quoted and cut before they reach an error.
	switch loc := resp.Header.Get("Location"); {
	case resp.StatusCode == http.StatusNotModified && cond.ETag != "":
		// A 304 needs no body; whatever came with one is not read.
		if tag := resp.Header.Get("ETag"); tag != "" && !sameETag(tag, cond.ETag) {
			return Answer{}, fail(fmt.Errorf("the endpoint answered 304 Not Modified with the ETag %s, not %s, which it was asked about", showETag(tag), cond.ETag))
		}
		a.NotModified, a.ETag = true, cond.ETag
		return a, nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "":
		return Answer{}, fail(fmt.Errorf("redirected (%q) to %q; redirects are not followed, so configure the final URL as bundle_endpoint_url", clip(resp.Status), clip(loc)))
	case resp.StatusCode != http.StatusOK && cond.ETag != "":
		return Answer{}, fail(fmt.Errorf("the endpoint answered %q, not 200 OK or 304 Not Modified", clip(resp.Status)))
	case resp.StatusCode != http.StatusOK:
		return Answer{}, fail(fmt.Errorf("the endpoint answered %q, not 200 OK", clip(resp.Status)))
	}
	if resp.ContentLength > bundle.MaxBytes {
		return Answer{}, fail(errTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, bundle.MaxBytes+1))
	if err != nil {
		return Answer{}, fail(transportError(ctx, err, timeout))
	}
	b, err := parseBody(peer.TrustDomain, body)
	if err != nil {
		return Answer{}, fail(err)
	}
	a.Bundle = b
	if tag := resp.Header.Get("ETag"); validETag(tag) {
		a.ETag = tag
	}
	return a, nil
}

var (
	errTimedOut = errors.New("fetcher: timed out")
	errTooLarge = fmt.Errorf("the bundle is larger than %d bytes", bundle.MaxBytes)
)

// parseBody reads a fetched body as the bundle of td. The body is untrusted
// input: it is refused when over bundle.MaxBytes, when it is not the SPIFFE
// bundle JSON an endpoint must serve (SPIFFE Federation §5.2: bundle.Parse
// would also read PEM), when bundle.Parse refuses it, and when it holds no
// X.509 authority: such a bundle would authenticate no X.509-SVID of td, so
// storing it would cut the mesh off from td while claiming to be current.
func parseBody(td spiffeid.TrustDomain, body []byte) (*spiffebundle.Bundle, error) {
	if len(body) > bundle.MaxBytes {
		return nil, errTooLarge
	}
	if bundle.Detect(body) != bundle.FormatSPIFFE {
		return nil, errors.New("the answer is not SPIFFE bundle JSON (it does not begin with '{')")
	}
	b, err := bundle.Parse(td, body)
	if err != nil {
		return nil, bounded(err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("the bundle holds no x509-svid authority, so it would authenticate no X.509-SVID of the trust domain")
	}
	return b, nil
}

// maxErrorBytes bounds what an error repeats of an endpoint's answer. The
// parsers quote parts of their input (a key ID, a curve name, a
// certificate's subject), which a hostile endpoint can make a megabyte long,
// and the error goes to the log and to Status.
const maxErrorBytes = 512

// bounded cuts err's text to maxErrorBytes, keeping err in the chain.
func bounded(err error) error {
	msg := err.Error()
	if len(msg) <= maxErrorBytes {
		return err
	}
	return &truncatedError{msg: clip(msg), err: err}
}

// clip cuts s to maxErrorBytes, marking the cut.
func clip(s string) string {
	if len(s) <= maxErrorBytes {
		return s
	}
	return strings.ToValidUTF8(s[:maxErrorBytes], "") + "... (truncated)"
}

type truncatedError struct {
	msg string
	err error
}

func (e *truncatedError) Error() string { return e.msg }
func (e *truncatedError) Unwrap() error { return e.err }

// trustBundle returns the X.509 authorities an https_spiffe endpoint is
// verified against: those of its SPIFFE ID's trust domain, and only those.
func trustBundle(peer Peer, src x509bundle.Source) (*x509bundle.Bundle, error) {
	endpointTD := peer.EndpointID.TrustDomain()
	var (
		b   *x509bundle.Bundle
		err = errors.New("no bundle source was given")
	)
	if src != nil {
		b, err = src.GetX509BundleForTrustDomain(endpointTD)
	}
	if err == nil && (b == nil || len(b.X509Authorities()) == 0) {
		err = fmt.Errorf("the bundle of %s holds no x509-svid authority", endpointTD.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("fetcher: %s: cannot authenticate the bundle endpoint %s: %w; get the bundle of %s out of band and run \"meshfed bundle set --trust-domain %s --in BUNDLE.json\" first",
			peer.TrustDomain.Name(), peer.EndpointID, err, endpointTD.Name(), endpointTD.Name())
	}
	if b.TrustDomain() != endpointTD {
		// An SVID must be verified only with its own trust domain's
		// bundle (SPIFFE Trust Domain and Bundle §6.4, Federation §7.3).
		return nil, fmt.Errorf("fetcher: %s: the bundle source returned the bundle of %s for %s", peer.TrustDomain.Name(), b.TrustDomain().Name(), endpointTD.Name())
	}
	return b, nil
}

// verifyEndpointSVID checks that certs is an X.509-SVID chain that trust
// vouches for at now, and that it names want.
func verifyEndpointSVID(certs []*x509.Certificate, trust *x509bundle.Bundle, want spiffeid.ID, now time.Time) error {
	if len(certs) == 0 {
		return errors.New("the endpoint presented no certificate")
	}
	// pki's verification: go-spiffe's, plus the X.509-SVID rules and RFC
	// 5280's URI name constraints (Go admits subdomains under one).
	id, _, err := pki.VerifyX509SVID(certs, trust, now)
	if err != nil {
		return fmt.Errorf("the endpoint's certificate is not an X.509-SVID the stored bundle of %s vouches for: %w", trust.TrustDomain().Name(), err)
	}
	if id != want {
		return fmt.Errorf("the endpoint presented the X.509-SVID of %s, not %s", id, want)
	}
	return nil
}

// transportError says what went wrong below HTTP: the timeout in words, and
// net/http's error without the "Get URL:" it repeats.
func transportError(ctx context.Context, err error, timeout time.Duration) error {
	if errors.Is(context.Cause(ctx), errTimedOut) {
		return fmt.Errorf("no complete answer within %s", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// lockedError is an error set on the TLS handshake's goroutine and read on
// the caller's.
type lockedError struct {
	mu  sync.Mutex
	err error
}

func (e *lockedError) set(err error) {
	e.mu.Lock()
	e.err = err
	e.mu.Unlock()
}

func (e *lockedError) get() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}
