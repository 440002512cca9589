package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source gives this workload's X.509-SVID and the X.509 bundle of each trust
// domain it trusts. go-spiffe's workloadapi.X509Source satisfies it. Both are
// read on every handshake, so a rotation needs no restart and leaves open
// connections alone (the sidecar's kept-alive HTTP connections are checked
// against it again per request: peerauth.go).
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// Authorizer decides whether a verified peer may talk to this side. It is
// go-spiffe's type, so tlsconfig.AuthorizeID, AuthorizeMemberOf and the rest
// compose with SecureNaming.Authorizer. A nil Authorizer denies every peer.
type Authorizer = tlsconfig.Authorizer

// maxPeerChain bounds the certificates a peer may present. An X.509-SVID chain
// is a leaf and a few intermediates; a longer one is refused before any
// signature is checked.
const maxPeerChain = 8

// ServerTLS returns the configuration of an mTLS listener: it presents the
// current SVID of src, requires a client certificate and accepts the client
// only if pki.VerifyX509SVID verifies it against the bundle of the client's
// own trust domain and authorize allows its SPIFFE ID. TLS 1.2 is the
// minimum and for TLS 1.2 only tlspolicy.CipherSuites() are offered.
//
// The check runs in VerifyConnection, which crypto/tls calls on full and
// resumed handshakes alike. Session tickets are left on (Go's default, with
// keys it rotates itself): a resumed session carries the client's
// certificate chain, which is verified again against the bundle and the
// authorizer in force at resumption, and crypto/tls refuses to resume once
// that certificate has expired. Set SessionTicketsDisabled on the result to
// turn them off.
//
// Set NextProtos on the result for ALPN ("h2", "http/1.1"); it is passed
// through unchanged. Set Time to control the clock of verification.
func ServerTLS(src Source, authorize Authorizer) *tls.Config {
	certs := &certCache{src: src}
	cfg := &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		// Go's own verification is replaced by VerifyConnection, which picks
		// the bundle of the client's trust domain instead of one pool.
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.get()
		},
	}
	cfg.VerifyConnection = verifyPeer(src, authorize, "client", cfg)
	certs.cfg = cfg
	return cfg
}

// ClientTLS returns the configuration of an mTLS dialer: it presents the
// current SVID of src and accepts the server only if pki.VerifyX509SVID
// verifies it against the bundle of the server's own trust domain and
// authorize allows its SPIFFE ID (SecureNaming.Authorizer for the dialled
// service is the usual choice). Server names and DNS SANs play no part.
//
// The result has a client session cache of its own, so reconnecting to the
// same server resumes the session; the server's chain is verified again, with
// the bundle and authorizer in force then, on every resumption. Sessions are
// cached by ServerName, or by the server's address if it is empty: set it to
// the dialled service name, which also sends it as SNI.
func ClientTLS(src Source, authorize Authorizer) *tls.Config {
	certs := &certCache{src: src}
	cfg := &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		// Not insecure: VerifyConnection verifies the server's SVID. This only
		// turns off Go's verification against one pool of roots and a host
		// name, which is the cross-trust-domain hole SPIFFE avoids.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.get()
		},
		ClientSessionCache: svidSessions{inner: tls.NewLRUClientSessionCache(0), certs: certs},
	}
	cfg.VerifyConnection = verifyPeer(src, authorize, "server", cfg)
	certs.cfg = cfg
	return cfg
}

// verifyPeer returns a VerifyConnection callback for the side whose peer is
// role ("client" or "server").
func verifyPeer(bundles x509bundle.Source, authorize Authorizer, role string, cfg *tls.Config) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		chain := cs.PeerCertificates
		switch {
		case len(chain) == 0:
			return fmt.Errorf("proxy: the %s presented no certificate; mTLS requires an X.509-SVID", role)
		case len(chain) > maxPeerChain:
			return fmt.Errorf("proxy: the %s presented %d certificates, more than the %d an X.509-SVID chain may have", role, len(chain), maxPeerChain)
		}
		now := time.Now()
		if cfg.Time != nil {
			now = cfg.Time()
		}
		id, chains, err := pki.VerifyX509SVID(chain, bundles, now)
		if err != nil {
			return fmt.Errorf("proxy: %s X.509-SVID does not verify: %w", role, err)
		}
		if authorize == nil {
			return fmt.Errorf("proxy: %s %s refused: no authorizer is configured", role, id)
		}
		if err := authorize(id, chains); err != nil {
			return fmt.Errorf("proxy: %s %s refused: %w", role, id, err)
		}
		return nil
	}
}

// svidSessions is a client session cache that resumes a session only under
// the SVID it was made with, and none once the SVID has expired. A resumed
// handshake presents no certificate: the server takes the client's from the
// session, so without this a session made before a rotation would go on
// presenting the SVID it replaced, and an expired one, to any server lenient
// enough to resume it.
type svidSessions struct {
	inner tls.ClientSessionCache
	certs *certCache
}

func (s svidSessions) Get(key string) (*tls.ClientSessionState, bool) {
	k, ok := s.key(key)
	if !ok {
		return nil, false
	}
	return s.inner.Get(k)
}

func (s svidSessions) Put(key string, cs *tls.ClientSessionState) {
	if k, ok := s.key(key); ok {
		s.inner.Put(k, cs)
	}
}

// key is the cache key of a session with key made under the SVID in use
// now; false if there is none to present.
func (s svidSessions) key(key string) (string, bool) {
	cert, err := s.certs.get()
	if err != nil {
		return "", false
	}
	return key + "\x00" + cert.Leaf.SerialNumber.Text(16), true
}

// certCache turns the source's SVID into a tls.Certificate, rebuilding it only
// when the source hands out a different SVID (workloadapi.X509Source returns
// the same pointer until it rotates).
type certCache struct {
	src  x509svid.Source
	cfg  *tls.Config // its Time, if set, is the clock that finds the SVID expired
	last atomic.Pointer[cachedCert]
}

type cachedCert struct {
	svid *x509svid.SVID
	cert *tls.Certificate
}

func (c *certCache) get() (*tls.Certificate, error) {
	svid, err := c.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("proxy: no X.509-SVID to present: %w", err)
	}
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, errors.New("proxy: no X.509-SVID to present: the source returned an empty one")
	}
	// A source keeps the last SVID it had when the agent goes away. Past
	// its expiry no meshfed peer accepts it, and a lenient one would take
	// an identity no longer vouched for; neither is worth a handshake.
	now := time.Now
	if c.cfg != nil && c.cfg.Time != nil {
		now = c.cfg.Time
	}
	if exp := svid.Certificates[0].NotAfter; !now().Before(exp) {
		return nil, fmt.Errorf("proxy: this workload's X.509-SVID %s expired at %s and the Workload API has not replaced it (is the agent running?); presenting none",
			svid.ID, exp.UTC().Format(time.RFC3339))
	}
	if last := c.last.Load(); last != nil && last.svid == svid {
		return last.cert, nil
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	c.last.Store(&cachedCert{svid: svid, cert: cert})
	return cert, nil
}
