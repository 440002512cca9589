package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

const (
	idFrontend = "spiffe://a.example/ns/web/sa/frontend"
	idBackend  = "spiffe://a.example/ns/db/sa/backend"
	idRemote   = "spiffe://b.example/ns/web/sa/remote"
)

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func authorizeID(s string) proxy.Authorizer {
	return tlsconfig.AuthorizeID(spiffeid.RequireFromString(s))
}

func peerID(t *testing.T, cs tls.ConnectionState) string {
	t.Helper()
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) == 0 {
		t.Fatal("no peer SPIFFE ID")
	}
	return cs.PeerCertificates[0].URIs[0].String()
}

func TestMTLSHandshake(t *testing.T) {
	for _, kt := range []pki.KeyType{pki.ECP256, pki.RSA2048} {
		w := newWorld(t, kt)
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			for _, clientID := range []string{idFrontend, idRemote} {
				name := string(kt) + "/" + tls.VersionName(version) + "/" + clientID
				t.Run(name, func(t *testing.T) {
					ca := w.caA
					if strings.HasPrefix(clientID, "spiffe://b.") {
						ca = w.caB
					}
					server := proxy.ServerTLS(w.source(w.caA.svid(t, idBackend, kt, 2, pkix.Name{})), authorizeID(clientID))
					server.NextProtos = []string{"h2", "http/1.1"}
					client := proxy.ClientTLS(w.source(ca.svid(t, clientID, kt, 3, pkix.Name{})), authorizeID(idBackend))
					client.NextProtos = []string{"h2", "http/1.1"}
					client.MaxVersion = version
					ss, cs, serr, cerr := handshake(t, server, client)
					if serr != nil || cerr != nil {
						t.Fatalf("server: %v; client: %v", serr, cerr)
					}
					if got := peerID(t, ss); got != clientID {
						t.Errorf("server sees %s, want %s", got, clientID)
					}
					if got := peerID(t, cs); got != idBackend {
						t.Errorf("client sees %s, want %s", got, idBackend)
					}
					if cs.Version != version || cs.NegotiatedProtocol != "h2" {
						t.Errorf("version %s, ALPN %q; want %s, h2", tls.VersionName(cs.Version), cs.NegotiatedProtocol, tls.VersionName(version))
					}
				})
			}
		}
	}
}

func TestConfigPolicy(t *testing.T) {
	src := newSource(nil)
	for name, cfg := range map[string]*tls.Config{
		"server": proxy.ServerTLS(src, nil),
		"client": proxy.ClientTLS(src, nil),
	} {
		if cfg.MinVersion != tls.VersionTLS12 {
			t.Errorf("%s: MinVersion %s", name, tls.VersionName(cfg.MinVersion))
		}
		if got, want := suiteNames(cfg.CipherSuites), suiteNames(tlspolicy.CipherSuites()); got != want {
			t.Errorf("%s: suites %s, want %s", name, got, want)
		}
		if cfg.VerifyConnection == nil {
			t.Errorf("%s: no VerifyConnection: resumed sessions would go unchecked", name)
		}
	}
}

func suiteNames(ids []uint16) string {
	var s []string
	for _, id := range ids {
		s = append(s, tls.CipherSuiteName(id))
	}
	return strings.Join(s, ",")
}

// TestPeerRefused covers every reason a peer is turned away, on both sides.
func TestPeerRefused(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	caC := newCA(t, pki.ECP256, 4, "c.example root")
	good := func() *source { return w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{})) }
	backend := func() *source { return w.source(w.caA.svid(t, idBackend, pki.ECP256, 2, pkix.Name{})) }
	// The attacker holds b.example's CA and issues itself a.example's IDs.
	forgedFrontend := w.caB.svid(t, idFrontend, pki.ECP256, 5, pkix.Name{})
	forgedBackend := w.caB.svid(t, idBackend, pki.ECP256, 5, pkix.Name{})
	const unknownCA = "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"
	tests := []struct {
		name           string
		serverSrc      *source
		clientSrc      *source
		serverAuth     proxy.Authorizer
		clientAuth     proxy.Authorizer
		serverErr      string // the side that refuses and its exact error
		clientErr      string
		clientVersions uint16
	}{
		{
			name:       "client not authorized",
			serverSrc:  backend(),
			clientSrc:  good(),
			serverAuth: authorizeID(idRemote),
			clientAuth: authorizeID(idBackend),
			serverErr:  "proxy: client spiffe://a.example/ns/web/sa/frontend refused: unexpected ID \"spiffe://a.example/ns/web/sa/frontend\"",
		},
		{
			name:       "server not authorized",
			serverSrc:  backend(),
			clientSrc:  good(),
			serverAuth: authorizeID(idFrontend),
			clientAuth: authorizeID(idRemote),
			clientErr:  "proxy: server spiffe://a.example/ns/db/sa/backend refused: unexpected ID \"spiffe://a.example/ns/db/sa/backend\"",
		},
		{
			name:       "nil authorizer denies",
			serverSrc:  backend(),
			clientSrc:  good(),
			serverAuth: authorizeID(idFrontend),
			clientAuth: nil,
			clientErr:  "proxy: server spiffe://a.example/ns/db/sa/backend refused: no authorizer is configured",
		},
		{
			name:       "server impersonates a.example with b.example's CA",
			serverSrc:  w.source(forgedBackend),
			clientSrc:  good(),
			serverAuth: authorizeID(idFrontend),
			clientAuth: authorizeID(idBackend),
			clientErr:  "proxy: server X.509-SVID does not verify: " + unknownCA,
		},
		{
			name:       "client impersonates a.example with b.example's CA",
			serverSrc:  backend(),
			clientSrc:  w.source(forgedFrontend),
			serverAuth: authorizeID(idFrontend),
			clientAuth: authorizeID(idBackend),
			serverErr:  "proxy: client X.509-SVID does not verify: " + unknownCA,
		},
		{
			name:       "client from an untrusted trust domain",
			serverSrc:  backend(),
			clientSrc:  w.source(caC.svid(t, "spiffe://c.example/x", pki.ECP256, 3, pkix.Name{})),
			serverAuth: tlsconfig.AuthorizeAny(),
			clientAuth: tlsconfig.AuthorizeAny(),
			serverErr:  "proxy: client X.509-SVID does not verify: x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain \"c.example\"",
		},
	}
	for _, tt := range tests {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(tt.name+"/"+tls.VersionName(version), func(t *testing.T) {
				server := proxy.ServerTLS(tt.serverSrc, tt.serverAuth)
				client := proxy.ClientTLS(tt.clientSrc, tt.clientAuth)
				client.MaxVersion = version
				_, _, serr, cerr := handshake(t, server, client)
				if tt.serverErr != "" {
					if serr == nil || serr.Error() != tt.serverErr {
						t.Errorf("server error:\n got %v\nwant %s", serr, tt.serverErr)
					}
					if cerr == nil {
						t.Error("the client thinks the connection is up")
					}
				}
				if tt.clientErr != "" {
					if cerr == nil || cerr.Error() != tt.clientErr {
						t.Errorf("client error:\n got %v\nwant %s", cerr, tt.clientErr)
					}
					if serr == nil {
						t.Error("the server thinks the connection is up")
					}
				}
			})
		}
	}
}

// TestCrossDomainImpersonationNeedsPooledRoots shows the forged SVID of
// TestPeerRefused is sound except for its issuer: with one pool of roots for
// every trust domain, as a plain tls.Config has, it is accepted. meshfed
// never pools, so it is refused.
func TestCrossDomainImpersonationNeedsPooledRoots(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	forged := w.caB.svid(t, idBackend, pki.ECP256, 5, pkix.Name{})
	pooled := x509bundle.FromX509Authorities(tdA, []*x509.Certificate{w.caA.root, w.caB.root})
	if _, _, err := pki.VerifyX509SVID(forged.Certificates, pooled, time.Time{}); err != nil {
		t.Fatalf("with pooled roots the forgery should verify (the hole); got %v", err)
	}
	separate := x509bundle.NewSet(bundle(tdA, w.caA), bundle(tdB, w.caB))
	if _, _, err := pki.VerifyX509SVID(forged.Certificates, separate, time.Time{}); err == nil {
		t.Fatal("with a bundle per trust domain the forgery verified")
	}
}

// TestSecureNamingImpersonation is the seed's scenario: datastore runs as
// infra-team; an attacker with test-team's valid SVID hijacks datastore's
// traffic. The client, dialling datastore, refuses it.
func TestSecureNamingImpersonation(t *testing.T) {
	const (
		infraTeam = "spiffe://cluster.local/ns/default/sa/infra-team"
		testTeam  = "spiffe://cluster.local/ns/default/sa/test-team"
		sleep     = "spiffe://cluster.local/ns/default/sa/sleep"
	)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca := newCA(t, pki.ECP256, 0, "cluster.local root")
	naming, err := proxy.NewSecureNaming(map[string][]string{"datastore": {infraTeam}})
	if err != nil {
		t.Fatal(err)
	}
	client := func() *tls.Config {
		return proxy.ClientTLS(newSource(ca.svid(t, sleep, pki.ECP256, 1, pkix.Name{}), bundle(td, ca)), naming.Authorizer("datastore"))
	}
	server := func(id string) *tls.Config {
		return proxy.ServerTLS(newSource(ca.svid(t, id, pki.ECP256, 2, pkix.Name{}), bundle(td, ca)), tlsconfig.AuthorizeAny())
	}

	if _, cs, serr, cerr := handshake(t, server(infraTeam), client()); serr != nil || cerr != nil {
		t.Fatalf("legitimate datastore refused: server %v, client %v", serr, cerr)
	} else if got := peerID(t, cs); got != infraTeam {
		t.Fatalf("client sees %s", got)
	}

	_, _, _, cerr := handshake(t, server(testTeam), client())
	want := `proxy: server spiffe://cluster.local/ns/default/sa/test-team refused: proxy: secure naming: server spiffe://cluster.local/ns/default/sa/test-team is not allowed to run service "datastore" (allowed: spiffe://cluster.local/ns/default/sa/infra-team)`
	if cerr == nil || cerr.Error() != want {
		t.Fatalf("impersonator:\n got %v\nwant %s", cerr, want)
	}
}

// TestResumedSessionIsChecked proves the peer check runs on resumed
// sessions: the second handshake resumes and calls the authorizer again, and
// once the authorizer flips to deny, the third, also offered for resumption,
// is refused.
func TestResumedSessionIsChecked(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	for _, side := range []string{"client", "server"} {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(side+"/"+tls.VersionName(version), func(t *testing.T) {
				var calls atomic.Int32
				var deny atomic.Bool
				flip := func(id spiffeid.ID, _ [][]*x509.Certificate) error {
					calls.Add(1)
					if deny.Load() {
						return errors.New("flipped to deny")
					}
					return nil
				}
				serverAuth, clientAuth := tlsconfig.AuthorizeAny(), tlsconfig.AuthorizeAny()
				if side == "server" {
					serverAuth = flip
				} else {
					clientAuth = flip
				}
				server := proxy.ServerTLS(w.source(w.caA.svid(t, idBackend, pki.ECP256, 2, pkix.Name{})), serverAuth)
				client := proxy.ClientTLS(w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{})), clientAuth)
				client.MaxVersion = version
				client.ServerName = "backend" // the session cache key; each handshake has a new port
				for i, wantResumed := range []bool{false, true} {
					ss, cs, serr, cerr := handshake(t, server, client)
					if serr != nil || cerr != nil {
						t.Fatalf("handshake %d: server %v, client %v", i+1, serr, cerr)
					}
					if cs.DidResume != wantResumed || ss.DidResume != wantResumed {
						t.Fatalf("handshake %d: resumed client %v server %v, want %v", i+1, cs.DidResume, ss.DidResume, wantResumed)
					}
					if got := calls.Load(); got != int32(i+1) {
						t.Fatalf("after handshake %d the authorizer ran %d times", i+1, got)
					}
				}
				deny.Store(true)
				_, _, serr, cerr := handshake(t, server, client)
				if calls.Load() != 3 {
					t.Fatalf("the authorizer ran %d times, want 3", calls.Load())
				}
				refused, other := cerr, serr
				if side == "server" {
					refused, other = serr, cerr
				}
				if refused == nil || !strings.HasSuffix(refused.Error(), "refused: flipped to deny") {
					t.Errorf("%s error %v, want the authorizer's refusal", side, refused)
				}
				if other == nil {
					t.Error("the other side thinks the connection is up")
				}
			})
		}
	}
}

// TestSessionResumedOnlyUnderItsSVID: a resumed handshake presents no
// certificate (the server takes the client's from the session), so the
// client resumes a session only under the SVID it was made with: after a
// rotation the next handshake is full and presents the new SVID, and once
// the SVID has expired nothing is presented or resumed.
func TestSessionResumedOnlyUnderItsSVID(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			clientSrc := w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{}))
			// Twice the client's lifetime, so that the client's SVID, even
			// the one the rotation below makes, expires first (certificate
			// times are whole seconds of the wall clock: an SVID made a
			// moment later may expire a second later).
			server := proxy.ServerTLS(w.source(w.caA.svidFor(t, idBackend, pki.ECP256, 2, pkix.Name{}, 2*pki.DefaultSVIDTTL)), tlsconfig.AuthorizeAny())
			client := proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeAny())
			client.MaxVersion = version
			client.ServerName = "backend" // the session cache key; each handshake has a new port
			steps := []struct {
				name    string
				before  func()
				resumed bool
			}{
				{"first", func() {}, false},
				{"same SVID", func() {}, true},
				{"after a rotation", func() { clientSrc.svid.Store(w.caA.svid(t, idFrontend, pki.ECP256, 4, pkix.Name{})) }, false},
				{"same new SVID", func() {}, true},
			}
			for _, st := range steps {
				st.before()
				ss, cs, serr, cerr := handshake(t, server, client)
				if serr != nil || cerr != nil {
					t.Fatalf("%s: server %v, client %v", st.name, serr, cerr)
				}
				if cs.DidResume != st.resumed || ss.DidResume != st.resumed {
					t.Fatalf("%s: resumed client %v server %v, want %v", st.name, cs.DidResume, ss.DidResume, st.resumed)
				}
				if got, want := ss.PeerCertificates[0].SerialNumber, clientSrc.svid.Load().Certificates[0].SerialNumber; got.Cmp(want) != 0 {
					t.Fatalf("%s: the server saw client certificate %x, want the SVID in use %x", st.name, got, want)
				}
			}
			expiry := clientSrc.svid.Load().Certificates[0].NotAfter
			client.Time = func() time.Time { return expiry }
			ss, _, _, cerr := handshake(t, server, client)
			if cerr == nil || !strings.Contains(cerr.Error(), "proxy: this workload's X.509-SVID "+idFrontend+" expired at "+expiry.UTC().Format(time.RFC3339)) {
				t.Errorf("at the SVID's expiry: client error %v, want the expiry named", cerr)
			}
			if ss.DidResume {
				t.Error("at the SVID's expiry the session was resumed")
			}
		})
	}
}

// TestRotation swaps the server's SVID and then the client's bundle while a
// connection is open: the open connection carries on, and each new handshake
// sees the new state.
func TestRotation(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	serverSrc := w.source(w.caA.svid(t, idBackend, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{}))
	server := proxy.ServerTLS(serverSrc, tlsconfig.AuthorizeAny())
	client := proxy.ClientTLS(clientSrc, authorizeID(idBackend))
	client.ClientSessionCache = nil // every handshake full, to see the server's certificate

	addr := serve(t, server, func(c net.Conn) { _, _ = io.Copy(c, c) })
	dial := func() (*tls.Conn, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, client)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write on the open connection: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo on the open connection: %q, %v", buf, err)
		}
	}

	old, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	echo(old, "before")
	oldSerial := old.ConnectionState().PeerCertificates[0].SerialNumber

	serverSrc.svid.Store(w.caA.svid(t, idBackend, pki.ECP256, 4, pkix.Name{}))
	fresh, err := dial()
	if err != nil {
		t.Fatalf("after SVID rotation: %v", err)
	}
	newSerial := fresh.ConnectionState().PeerCertificates[0].SerialNumber
	fresh.Close()
	if newSerial.Cmp(oldSerial) == 0 {
		t.Error("a new handshake still got the old SVID")
	}
	echo(old, "after SVID rotation")

	// The client stops trusting a.example's root: new handshakes fail, the
	// open connection, verified when it began, carries on.
	clientSrc.bundles.Store(x509bundle.NewSet(bundle(tdA, w.caB), bundle(tdB, w.caB)))
	if c, err := dial(); err == nil {
		c.Close()
		t.Error("handshake succeeded after the bundle dropped the server's root")
	}
	echo(old, "after bundle rotation")
}

// TestOutsidePolicyRefusedByGo checks with Go's own client what the OpenSSL
// tests check with OpenSSL: TLS 1.1 and a TLS 1.2 suite off the list fail.
func TestOutsidePolicyRefusedByGo(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	server := proxy.ServerTLS(w.source(w.caA.svid(t, idBackend, pki.ECP256, 2, pkix.Name{})), tlsconfig.AuthorizeAny())
	for name, tweak := range map[string]func(*tls.Config){
		"TLS 1.1": func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 },
		"ECDHE-ECDSA-CHACHA20-POLY1305": func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305}
		},
	} {
		t.Run(name, func(t *testing.T) {
			client := proxy.ClientTLS(w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{})), tlsconfig.AuthorizeAny())
			tweak(client)
			_, _, serr, cerr := handshake(t, server, client)
			if serr == nil || cerr == nil {
				t.Fatalf("accepted: server %v, client %v", serr, cerr)
			}
		})
	}
}
