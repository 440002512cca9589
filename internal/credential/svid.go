package credential

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshfed/meshfed/internal/pki"
)

// MaxSVIDChain bounds the certificates presented with an SVID (leaf first).
// A real chain is a leaf and one or two intermediates; path building cost
// grows with the number of candidates.
const MaxSVIDChain = 16

// SVIDVerifier verifies an X.509-SVID presented over mTLS for renewal.
type SVIDVerifier struct {
	// TrustDomain is the server's trust domain: only its SVIDs are renewed.
	TrustDomain spiffeid.TrustDomain
	// Bundle yields the trust domain's bundle. It may hold other trust
	// domains' bundles too; they are never used here.
	Bundle x509bundle.Source
	// Clock defaults to time.Now.
	Clock func() time.Time
}

func refuseSVID(format string, args ...any) *Error {
	return &Error{Kind: KindSVID, Reason: fmt.Sprintf(format, args...)}
}

// Verify verifies an SVID chain (leaf first, as the peer presented it) at
// the clock's time against the bundle of the verifier's trust domain, with
// every X.509-SVID rule pki.VerifyX509SVID checks, and returns the SVID's
// own SPIFFE ID. An SVID of another trust domain is refused even when a
// bundle the Source holds would verify it: renewal is for this trust
// domain's own identities.
func (v SVIDVerifier) Verify(chain []*x509.Certificate) (Identity, error) {
	if v.TrustDomain.IsZero() || v.Bundle == nil {
		return Identity{}, errors.New("credential: SVID verifier needs a trust domain and a bundle source")
	}
	if len(chain) == 0 || chain[0] == nil {
		return Identity{}, refuseSVID("no client certificate presented")
	}
	if len(chain) > MaxSVIDChain {
		return Identity{}, refuseSVID("SVID chain has %d certificates; the limit is %d", len(chain), MaxSVIDChain)
	}
	leaf := chain[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return Identity{}, refuseSVID("client certificate is not an X.509-SVID: %v", err)
	}
	if !id.MemberOf(v.TrustDomain) {
		return Identity{}, refuseSVID("SVID %s is of trust domain %s; only SVIDs of %s are renewed here",
			id, quote(id.TrustDomain().Name()), quote(v.TrustDomain.Name()))
	}
	now := orNow(v.Clock)()
	if now.Before(leaf.NotBefore) {
		return Identity{}, refuseSVID("SVID %s is not valid before %s", id, formatTime(leaf.NotBefore))
	}
	if now.After(leaf.NotAfter) {
		return Identity{}, refuseSVID("SVID %s expired at %s", id, formatTime(leaf.NotAfter))
	}
	got, _, err := pki.VerifyX509SVID(chain, onlyTrustDomain{v.TrustDomain, v.Bundle}, now)
	if err != nil {
		e := refuseSVID("SVID %s does not verify against the bundle of %s: %v", id, quote(v.TrustDomain.Name()), err)
		e.Err = err
		return Identity{}, e
	}
	if got != id { // unreachable: both are the leaf's URI SAN
		return Identity{}, refuseSVID("SVID names %s and verifies as %s", id, got)
	}
	return Identity{
		ID:      id,
		Kind:    KindSVID,
		Caller:  "svid serial " + leaf.SerialNumber.Text(16),
		Expires: leaf.NotAfter,
	}, nil
}

// onlyTrustDomain serves the bundle of one trust domain and no other.
type onlyTrustDomain struct {
	td  spiffeid.TrustDomain
	src x509bundle.Source
}

func (o onlyTrustDomain) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != o.td {
		return nil, fmt.Errorf("no bundle for trust domain %q is used here", td)
	}
	return o.src.GetX509BundleForTrustDomain(td)
}
