package proxy

import (
	"crypto/x509"
	"fmt"
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
// carries a request only while its handshake's proof still holds: peerAuth
// checks an inbound connection before each request, and upstreamPool
// (http_outbound.go) retires the outbound connections whose proof lapsed.

// peerAuth is what the handshake of an inbound mTLS connection verified,
// kept with the connection so that each of its requests is checked against
// the present.
type peerAuth struct {
	chain   []*x509.Certificate // as the peer presented it
	td      spiffeid.TrustDomain
	expires time.Time // the earliest NotAfter in chain

	mu     sync.Mutex
	bundle *x509bundle.Bundle // what the chain last verified against
}

// newPeerAuth records a chain the handshake verified for id, with the
// bundle of id's trust domain in bundles now: the one the handshake used
// (if it changed in between, the first check verifies the chain again).
func newPeerAuth(chain []*x509.Certificate, id spiffeid.ID, bundles x509bundle.Source) *peerAuth {
	b, _ := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	return &peerAuth{chain: chain, td: id.TrustDomain(), expires: chainExpiry(chain), bundle: b}
}

// staleError says why a connection's authentication no longer holds.
type staleError struct {
	reason string // for metrics: expired, untrusted
	err    error
}

func (e *staleError) Error() string { return e.err.Error() }

// check returns nil if the peer's authentication still holds at now: no
// certificate of its chain has expired, and its trust domain's bundle in
// bundles is the one the chain verified against, an equal one, or one that
// the chain verifies against again (which then becomes the one it verified
// against). Otherwise it returns a *staleError.
func (a *peerAuth) check(bundles x509bundle.Source, now time.Time) error {
	if now.After(a.expires) {
		return &staleError{"expired", fmt.Errorf("proxy: the peer's certificate chain expired at %s", a.expires.UTC().Format(time.RFC3339))}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	b, same, err := currentBundle(bundles, a.td, a.bundle)
	if err != nil {
		return &staleError{"untrusted", err}
	}
	if !same {
		if _, _, err := pki.VerifyX509SVID(a.chain, b, now); err != nil {
			return &staleError{"untrusted", fmt.Errorf("proxy: the peer's X.509-SVID no longer verifies against the bundle of %s: %w", a.td, err)}
		}
	}
	a.bundle = b
	return nil
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
