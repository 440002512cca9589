package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// BenchmarkHandshake measures new mTLS handshakes (no resumption) over
// loopback TCP through ServerTLS/ClientTLS, and, as the ceiling, bare
// crypto/tls with the same certificates and Go's own chain verification
// against one pool of roots. Compare the two in one run.
func BenchmarkHandshake(b *testing.B) {
	for _, kt := range []pki.KeyType{pki.ECP256, pki.RSA2048} {
		w := newWorld(b, kt)
		serverSVID := w.caA.svid(b, idBackend, kt, 2, pkix.Name{})
		clientSVID := w.caA.svid(b, idFrontend, kt, 3, pkix.Name{})
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			name := string(kt) + "/" + tls.VersionName(version)

			server := proxy.ServerTLS(w.source(serverSVID), tlsconfig.AuthorizeID(mustID(idFrontend)))
			client := proxy.ClientTLS(w.source(clientSVID), tlsconfig.AuthorizeID(mustID(idBackend)))
			client.ClientSessionCache = nil
			client.MaxVersion = version
			b.Run("proxy/"+name, func(b *testing.B) { benchHandshakes(b, server, client) })

			roots := x509.NewCertPool()
			roots.AddCert(w.caA.root)
			bareServer := &tls.Config{
				MinVersion: tlspolicy.MinVersion, CipherSuites: tlspolicy.CipherSuites(),
				Certificates: []tls.Certificate{tlsCert(serverSVID)},
				ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: roots,
			}
			bareClient := &tls.Config{
				MinVersion: tlspolicy.MinVersion, MaxVersion: version, CipherSuites: tlspolicy.CipherSuites(),
				Certificates: []tls.Certificate{tlsCert(clientSVID)},
				RootCAs:      roots,
				// An SVID has no DNS name; check the chain the same way and
				// skip only the host name.
				InsecureSkipVerify: true,
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					leaf, err := x509.ParseCertificate(raw[0])
					if err != nil {
						return err
					}
					_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
					return err
				},
			}
			b.Run("bare/"+name, func(b *testing.B) { benchHandshakes(b, bareServer, bareClient) })
		}
	}
}

func tlsCert(s *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, x := range s.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func benchHandshakes(b *testing.B, server, client *tls.Config) {
	addr := serve(b, server, func(c net.Conn) { _ = c.(*tls.Conn).Handshake() })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		tc := tls.Client(c, client)
		if err := tc.Handshake(); err != nil {
			b.Fatal(err)
		}
		tc.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
