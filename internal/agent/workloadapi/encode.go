package workloadapi

import (
	"crypto/x509"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxEncoded bounds the SVIDs and bundles x509Encodings keeps between two
// changes of the Source: far more than the entries of one host.
const maxEncoded = 4096

// x509Encodings memoises the Workload API encoding of SVIDs (chain DER and
// PKCS#8 key) and X.509 bundles (authorities' DER), which every new
// FetchX509SVID and FetchX509Bundles stream would otherwise make again.
//
// An SVID is recognised by its pointer and the pointers of its
// certificates (the Source hands out the same *x509svid.SVID until the
// entry's next SVID replaces it), a bundle by its trust domain and the
// pointers of its authorities; certificates are immutable, so an encoding
// found is the one MarshalRaw or rawAuthorities would make now. What was kept is
// dropped when the Source changes, and when more than maxEncoded are kept.
// The keys' encodings stay in memory as the keys do; they are never logged.
type x509Encodings struct {
	mu      sync.Mutex
	changed <-chan struct{} // the Source's, when the memo was last emptied
	svids   map[*x509svid.SVID]encodedSVID
	bundles map[spiffeid.TrustDomain]encodedBundle
}

type encodedSVID struct {
	chain      []*x509.Certificate
	certs, key []byte
}

type encodedBundle struct {
	authorities []*x509.Certificate
	raw         []byte
}

// since empties the memo unless changed is the channel it was last emptied
// at; call it with the Source's current channel before encoding.
func (m *x509Encodings) since(changed <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.changed != changed || len(m.svids)+len(m.bundles) > maxEncoded {
		m.changed = changed
		m.svids = map[*x509svid.SVID]encodedSVID{}
		m.bundles = map[spiffeid.TrustDomain]encodedBundle{}
	}
}

// svid returns what svid.MarshalRaw returns. The slices are shared: never
// modify them.
func (m *x509Encodings) svid(svid *x509svid.SVID) (certs, key []byte, err error) {
	m.mu.Lock()
	e, ok := m.svids[svid]
	m.mu.Unlock()
	if ok && slices.Equal(e.chain, svid.Certificates) {
		return e.certs, e.key, nil
	}
	if certs, key, err = svid.MarshalRaw(); err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svids != nil {
		m.svids[svid] = encodedSVID{chain: slices.Clone(svid.Certificates), certs: certs, key: key}
	}
	return certs, key, nil
}

// bundle returns b as the Workload API carries it (rawAuthorities). The
// slice is shared: never modify it.
func (m *x509Encodings) bundle(b *x509bundle.Bundle) []byte {
	authorities := b.X509Authorities()
	td := b.TrustDomain()
	m.mu.Lock()
	e, ok := m.bundles[td]
	m.mu.Unlock()
	if ok && slices.Equal(e.authorities, authorities) {
		return e.raw
	}
	raw := rawAuthorities(authorities)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bundles != nil {
		m.bundles[td] = encodedBundle{authorities: authorities, raw: raw}
	}
	return raw
}

// rawAuthorities is a bundle as the Workload API carries it: the
// authorities' DER, concatenated.
func rawAuthorities(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
