package bundleendpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type noSVID struct{}

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("none") }

// TestServerBounds pins what a client from another organisation may cost:
// header size, every timeout, and the TLS settings.
func TestServerBounds(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("east.example")
	s, err := New(Config{Addr: "127.0.0.1:0", TrustDomain: td, Bundles: spiffebundle.New(td), SVIDSource: noSVID{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Run(canceled())

	srv := s.srv
	if srv.MaxHeaderBytes != 16<<10 || srv.ReadHeaderTimeout != 5*time.Second || srv.ReadTimeout != 10*time.Second ||
		srv.WriteTimeout != 10*time.Second || srv.IdleTimeout != 60*time.Second {
		t.Errorf("bounds: MaxHeaderBytes=%d ReadHeaderTimeout=%s ReadTimeout=%s WriteTimeout=%s IdleTimeout=%s",
			srv.MaxHeaderBytes, srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
	}
	if !srv.Protocols.HTTP1() || srv.Protocols.HTTP2() || srv.Protocols.UnencryptedHTTP2() {
		t.Errorf("protocols = %s, want HTTP/1.1 only", srv.Protocols)
	}
	c := srv.TLSConfig
	want := []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	}
	if c.MinVersion != tls.VersionTLS12 || c.ClientAuth != tls.NoClientCert || !c.SessionTicketsDisabled || !slices.Equal(c.CipherSuites, want) {
		t.Errorf("TLS: MinVersion=%x ClientAuth=%v SessionTicketsDisabled=%t CipherSuites=%x", c.MinVersion, c.ClientAuth, c.SessionTicketsDisabled, c.CipherSuites)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
