package proxy_test

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.example")
	tdB = spiffeid.RequireTrustDomainFromString("b.example")
)

// keys caches generated keys for the test binary: no test needs a fresh one,
// and RSA generation is slow. Slots give distinct keys of one type.
var keys sync.Map // keySlot -> func() (crypto.Signer, error)

type keySlot struct {
	kt   pki.KeyType
	slot int
}

func key(t testing.TB, kt pki.KeyType, slot int) crypto.Signer {
	t.Helper()
	gen, _ := keys.LoadOrStore(keySlot{kt, slot}, sync.OnceValues(func() (crypto.Signer, error) {
		return pki.GenerateKey(kt)
	}))
	k, err := gen.(func() (crypto.Signer, error))()
	if err != nil {
		t.Fatalf("generate %s key: %v", kt, err)
	}
	return k
}

// testCA is a root CA made by pki. Its root carries no trust domain, so it
// will sign an SVID for any ID: the tests need one that lies.
type testCA struct {
	root *x509.Certificate
	ca   *pki.CA
}

func newCA(t testing.TB, kt pki.KeyType, slot int, name string) *testCA {
	t.Helper()
	k := key(t, kt, slot)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: k, CommonName: name, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: k, Chain: []*x509.Certificate{root}})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{root: root, ca: ca}
}

// svid issues an SVID for id with a key of type kt from key slot slot.
func (c *testCA) svid(t testing.TB, id string, kt pki.KeyType, slot int, subject pkix.Name) *x509svid.SVID {
	t.Helper()
	return c.svidFor(t, id, kt, slot, subject, 0)
}

// svidFor is svid with a lifetime (pki.DefaultSVIDTTL if zero).
func (c *testCA) svidFor(t testing.TB, id string, kt pki.KeyType, slot int, subject pkix.Name, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	k := key(t, kt, slot)
	chain, err := c.ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: k.Public(), Subject: subject, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: chain, PrivateKey: k}
}

// source is a Source whose SVID and bundles tests swap while it is in use,
// as a workloadapi.X509Source does on rotation.
type source struct {
	svid    atomic.Pointer[x509svid.SVID]
	bundles atomic.Pointer[x509bundle.Set]
}

func newSource(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *source {
	s := &source{}
	s.svid.Store(svid)
	s.bundles.Store(x509bundle.NewSet(bundles...))
	return s
}

func (s *source) GetX509SVID() (*x509svid.SVID, error) {
	v := s.svid.Load()
	if v == nil {
		return nil, errors.New("no SVID yet")
	}
	return v, nil
}

func (s *source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.Load().GetX509BundleForTrustDomain(td)
}

func bundle(td spiffeid.TrustDomain, cas ...*testCA) *x509bundle.Bundle {
	var roots []*x509.Certificate
	for _, c := range cas {
		roots = append(roots, c.root)
	}
	return x509bundle.FromX509Authorities(td, roots)
}

// world is two trust domains, a.example and b.example, each with its own
// root, and a source per workload that trusts both.
type world struct {
	caA, caB *testCA
}

func newWorld(t testing.TB, kt pki.KeyType) *world {
	return &world{caA: newCA(t, kt, 0, "a.example root"), caB: newCA(t, kt, 1, "b.example root")}
}

func (w *world) source(svid *x509svid.SVID) *source {
	return newSource(svid, bundle(tdA, w.caA), bundle(tdB, w.caB))
}

// handshake runs one TLS handshake between the two configs over loopback TCP
// and returns both sides' results. The server writes one byte after its
// handshake and the client reads it, so a TLS 1.3 session ticket reaches the
// client before the connection closes.
func handshake(t testing.TB, server, client *tls.Config) (serverState, clientState tls.ConnectionState, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cs  tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{'x'})
			// Wait for the client to close, so its read of the ticket and
			// the byte completes.
			_, _ = io.Copy(io.Discard, tc)
		}
		done <- result{tc.ConnectionState(), err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, client)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	clientErr = tc.Handshake()
	if clientErr == nil {
		var b [1]byte
		_, clientErr = io.ReadFull(tc, b[:])
		clientState = tc.ConnectionState()
	}
	tc.Close()
	r := <-done
	return r.cs, clientState, r.err, clientErr
}

// serve accepts on a new loopback listener (TLS with cfg, when set) until
// the test ends, running handle on each connection in its own goroutine and
// closing the connection afterwards. It returns the listener's address.
func serve(t testing.TB, cfg *tls.Config, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}
