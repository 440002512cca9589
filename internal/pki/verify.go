package pki

import (
	"crypto/x509"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// VerifyX509SVID verifies an X.509-SVID chain (leaf first) against the bundle
// of the leaf's own trust domain taken from bundles. It adds to go-spiffe's
// verification every leaf rule of the X.509-SVID specification and URI name
// constraints with RFC 5280 semantics. It returns the SPIFFE ID and the
// verified chains that satisfy all of them.
func VerifyX509SVID(chain []*x509.Certificate, bundles x509bundle.Source, now time.Time) (spiffeid.ID, [][]*x509.Certificate, error) {
	var opts []x509svid.VerifyOption
	if !now.IsZero() {
		opts = append(opts, x509svid.WithTime(now))
	}
	id, chains, err := x509svid.Verify(chain, bundles, opts...)
	if err != nil {
		return id, nil, err
	}
	if vs := CheckX509SVID(chain[0]); len(vs) > 0 {
		return id, nil, &ViolationError{Subject: "X.509-SVID " + id.String(), Violations: vs}
	}
	var good [][]*x509.Certificate
	var lastErr error
	for _, c := range chains {
		if err := CheckURIConstraints(chain[0].URIs[0], c[1:]); err != nil {
			lastErr = err
			continue
		}
		good = append(good, c)
	}
	if len(good) == 0 {
		if lastErr == nil {
			lastErr = errors.New("pki: no verified chain")
		}
		return id, nil, lastErr
	}
	return id, good, nil
}
