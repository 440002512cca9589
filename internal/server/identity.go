package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ServerPath is the path of the server's own SPIFFE ID.
const ServerPath = "/meshfed/server"

// servingIdentity is the server's own X.509-SVID, re-issued by its CA at
// half life or when the CA changes, and swapped atomically under live
// listeners.
type servingIdentity struct {
	s       *Server
	current atomic.Pointer[x509svid.SVID]
	cert    atomic.Pointer[tls.Certificate]
	signer  atomic.Pointer[pki.CA] // the CA that signed current
	renewAt atomic.Pointer[time.Time]
	mu      sync.Mutex // one rotate at a time
}

func (si *servingIdentity) id() spiffeid.ID {
	return spiffeid.RequireFromPath(si.s.set.td, ServerPath)
}

// rotate issues a new serving SVID from the CA in use.
func (si *servingIdentity) rotate() error {
	si.mu.Lock()
	defer si.mu.Unlock()
	ca := si.s.auth.CA()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return err
	}
	chain, err := ca.SignX509SVID(pki.SVIDRequest{
		ID:          si.id(),
		PublicKey:   key.Public(),
		TTL:         si.s.set.nodeTTL,
		DNSNames:    si.s.set.dnsNames,
		IPAddresses: si.s.set.ips,
	})
	if err != nil {
		return fmt.Errorf("server: issue the server's own SVID: %w", err)
	}
	chain = withoutRoot(chain, ca)
	svid := &x509svid.SVID{ID: si.id(), Certificates: chain, PrivateKey: key}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	si.current.Store(svid)
	si.cert.Store(&tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: chain[0]})
	si.signer.Store(ca)
	// Half of the life it has from now: NotBefore is backdated for clock
	// skew, and counting from it would make a short-lived SVID due at once.
	now := si.s.clock()
	at := now.Add(chain[0].NotAfter.Sub(now) / 2)
	si.renewAt.Store(&at)
	si.s.log.Info("server SVID issued", "spiffe_id", svid.ID.String(), "not_after", chain[0].NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// due reports whether the serving SVID should be re-issued: at half its
// lifetime, or when the CA that signed it is no longer the CA in use.
func (si *servingIdentity) due(now time.Time) bool {
	svid, at := si.current.Load(), si.renewAt.Load()
	if svid == nil || at == nil || si.signer.Load() != si.s.auth.CA() {
		return true
	}
	return !now.Before(*at)
}

// GetX509SVID makes servingIdentity an x509svid.Source.
func (si *servingIdentity) GetX509SVID() (*x509svid.SVID, error) {
	if s := si.current.Load(); s != nil {
		return s, nil
	}
	return nil, errors.New("server: no serving SVID yet")
}

func withoutRoot(chain []*x509.Certificate, ca *pki.CA) []*x509.Certificate {
	n := len(chain)
	if n > 1 {
		for _, r := range ca.Roots() {
			if chain[n-1].Equal(r) {
				return chain[:n-1]
			}
		}
	}
	return chain
}

// tlsConfig is the signing API's TLS: the server's SVID, a client
// certificate requested but optional (istio-agent authenticates with a JWT),
// and, when one is sent, verified as an SVID of this trust domain on every
// handshake, resumed ones included (VerifyConnection runs on both).
func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		ClientAuth:   tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.identity.cert.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("server: no serving certificate")
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			_, _, err := pki.VerifyX509SVID(cs.PeerCertificates, s.localBundleSource(), s.clock())
			if err != nil {
				return fmt.Errorf("server: client certificate refused: %w", err)
			}
			return nil
		},
		NextProtos: []string{"h2"},
	}
}

// localBundleSource verifies SVIDs of this trust domain: the roots of the CA
// in use plus every X.509 authority the domain's servers published.
func (s *Server) localBundleSource() x509bundle.Source {
	return x509bundle.NewSet(x509bundle.FromX509Authorities(s.set.td, s.localRoots(context.Background())))
}

// peerSVID returns the verified SVID the caller presented, if any.
func peerSVID(ctx context.Context) (spiffeid.ID, []*x509.Certificate, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, false
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, nil, false
	}
	return id, ti.State.PeerCertificates, true
}
