package proxy

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// An mTLS handshake proves the peer's identity at one moment, under the
// bundles of that moment. An HTTP connection kept alive carries requests
// long after it: Envoy serves them until the connection closes, through the
// peer's certificate expiring and through its trust domain's bundle being
// replaced or withdrawn from the federation. Here a kept-alive connection
// carries a request only while its handshake's proof still holds: a
// connAuth is checked before each request on an inbound connection (a
// sidecar's, peerAuth, or a MUTUAL ingress gateway's, gatewayAuth), and
// upstreamPool (http_outbound.go) retires the outbound connections whose
// proof lapsed.

// connAuth is what the handshake of an mTLS connection proved about its
// peer, kept with the connection (connInfo.auth) so that each of its
// requests is checked against the present.
type connAuth interface {
	// check returns nil if the proof still holds at now, else a
	// *staleError.
	check(now time.Time) error
	// expiry is when the chain the peer presented stops being valid.
	expiry() time.Time
	// peer names the peer for the log.
	peer() string
}

// peerAuth is the connAuth of a sidecar's connection: the peer's
// X.509-SVID verified against the bundle of its own trust domain.
type peerAuth struct {
	src     x509bundle.Source
	chain   []*x509.Certificate // as the peer presented it
	id      spiffeid.ID
	expires time.Time // the earliest NotAfter in chain

	mu     sync.Mutex
	bundle *x509bundle.Bundle // what the chain last verified against
}

// newPeerAuth records a chain the handshake verified for id, with the
// bundle of id's trust domain in src now: the one the handshake used (if it
// changed in between, the first check verifies the chain again).
func newPeerAuth(src x509bundle.Source, chain []*x509.Certificate, id spiffeid.ID) *peerAuth {
	b, _ := src.GetX509BundleForTrustDomain(id.TrustDomain())
	return &peerAuth{src: src, chain: chain, id: id, expires: chainExpiry(chain), bundle: b}
}

func (a *peerAuth) expiry() time.Time { return a.expires }
func (a *peerAuth) peer() string      { return a.id.String() }

// staleError says why a connection's authentication no longer holds.
type staleError struct {
	reason string // for metrics: expired, untrusted, refused
	err    error
}

func (e *staleError) Error() string { return e.err.Error() }

// check: the bundle of the chain's trust domain in the source is the one
// the chain verified against, an equal one, or one that the chain verifies
// against again (which then becomes the one it verified against); and no
// certificate of the chain has expired. Trust is checked first, at a time
// the chain was valid, so that a withdrawn domain is "untrusted" even for a
// connection whose chain has expired since it opened (recheck closes those).
func (a *peerAuth) check(now time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, same, err := currentBundle(a.src, a.id.TrustDomain(), a.bundle)
	if err != nil {
		return &staleError{"untrusted", err}
	}
	if !same {
		if _, _, err := pki.VerifyX509SVID(a.chain, b, validAt(a.expires, now)); err != nil {
			return &staleError{"untrusted", fmt.Errorf("proxy: the peer's X.509-SVID no longer verifies against the bundle of %s: %w", a.id.TrustDomain(), err)}
		}
	}
	a.bundle = b
	return expired(a.expires, now)
}

// validAt is now, or expires if now is past it: the time at which a chain
// that expires then is verified again against new trust anchors.
func validAt(expires, now time.Time) time.Time {
	if now.After(expires) {
		return expires
	}
	return now
}

// expired returns a *staleError if now is past expires, the earliest
// NotAfter of a peer's chain.
func expired(expires, now time.Time) error {
	if now.After(expires) {
		return &staleError{"expired", fmt.Errorf("proxy: the peer's certificate chain expired at %s", expires.UTC().Format(time.RFC3339))}
	}
	return nil
}

// refuseStale checks a request's connection (auth nil: plaintext, or no
// client certificate): if its proof lapsed it answers 421 with Connection:
// close (h2: GOAWAY), which RFC 9110 (15.5.20) lets the client send again on
// a new connection whatever the method, so the new handshake decides;
// counts it; and returns why.
func (s *Sidecar) refuseStale(listener string, w http.ResponseWriter, auth connAuth, now time.Time) error {
	if auth == nil {
		return nil
	}
	err := auth.check(now)
	if err == nil {
		return nil
	}
	s.metrics.stale.WithLabelValues(listener, err.(*staleError).reason).Inc()
	w.Header().Set("Connection", "close")
	writeRefusal(w, http.StatusMisdirectedRequest, bodyStale)
	return err
}

// closeLapsed has h close an idle connection when its peer's chain
// expires or it reaches limits.max_connection_duration, whichever comes
// first, if that comes before the idle timeout, so that no request finds it
// stale.
func (s *Sidecar) closeLapsed(h *handoff, listener string, now func() time.Time) {
	idle := time.Duration(s.cfg.Limits.IdleTimeout)
	h.afterFunc = func(d time.Duration, f func()) func() bool { return s.afterFunc(d, f) }
	h.lapse = func(v any) (time.Duration, bool) {
		info, _ := v.(*connInfo)
		if info == nil {
			return 0, false
		}
		at, _ := s.lapseAt(info)
		if at.IsZero() {
			return 0, false
		}
		d := at.Sub(now())
		return d, d < idle
	}
	h.lapsed = func(v any) {
		info := v.(*connInfo)
		at, why := s.lapseAt(info)
		peer := "plaintext"
		if info.auth != nil {
			peer = info.auth.peer()
		}
		s.metrics.stale.WithLabelValues(listener, why).Inc()
		if why == "max_duration" {
			s.log.Info("proxy: closed an idle connection: it reached limits.max_connection_duration", "listener", listener, "peer", peer)
			return
		}
		s.log.Info("proxy: closed an idle connection: the peer's certificate chain expired", "listener", listener,
			"peer", peer, "not_after", at.UTC().Format(time.RFC3339))
	}
}

// lapseAt is when a connection stops being kept alive: the earlier of its
// peer chain's expiry ("expired") and its limits.max_connection_duration
// ("max_duration"); zero if neither applies.
func (s *Sidecar) lapseAt(info *connInfo) (time.Time, string) {
	var at time.Time
	why := ""
	if info.auth != nil {
		at, why = info.auth.expiry(), "expired"
	}
	if max := time.Duration(s.cfg.Limits.MaxConnectionDuration); max > 0 && !info.opened.IsZero() {
		if end := info.opened.Add(max); at.IsZero() || end.Before(at) {
			at, why = end, "max_duration"
		}
	}
	return at, why
}

// closeIfOld has the response to a request on a connection that reached
// limits.max_connection_duration close it (HTTP/1.1: Connection: close;
// h2: GOAWAY): the request is served, the client's next one opens a new
// connection.
func (s *Sidecar) closeIfOld(w http.ResponseWriter, info *connInfo, now time.Time) {
	if max := time.Duration(s.cfg.Limits.MaxConnectionDuration); max > 0 && !info.opened.IsZero() && now.Sub(info.opened) >= max {
		w.Header().Set("Connection", "close")
	}
}

// currentBundle returns td's bundle in bundles now and whether it is was or
// equal to it (a workloadapi.X509Source hands out new bundle values on every
// update, most of them equal to the last).
func currentBundle(bundles x509bundle.Source, td spiffeid.TrustDomain, was *x509bundle.Bundle) (*x509bundle.Bundle, bool, error) {
	b, err := bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, false, fmt.Errorf("proxy: trust domain %s is no longer trusted: %w", td, err)
	}
	return b, b == was || (was != nil && b.Equal(was)), nil
}

// chainExpiry is the earliest NotAfter in chain.
func chainExpiry(chain []*x509.Certificate) time.Time {
	var t time.Time
	for i, c := range chain {
		if i == 0 || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}
