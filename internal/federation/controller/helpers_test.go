package controller

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// t0 is the tests' start of time.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

const day = 24 * time.Hour

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// testMesh is the seed's v1alpha2 VirtualMesh with trust domains, and an
// ECDSA root (the tests make many).
const testMesh = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata: {name: virtual-mesh, namespace: service-mesh-hub}
spec:
  mtlsConfig:
    autoRestartPods: true
    shared:
      rootCertificateAuthority:
        generated: {ttlDays: 356, orgName: service-mesh-hub}
  federation: {mode: PERMISSIVE}
  enforceAccessControl: true
  meshes:
  - {name: east, namespace: service-mesh-hub, trustDomain: east.example, address: "127.0.0.1:8443"}
  - {name: west, namespace: service-mesh-hub, trustDomain: west.example}
`

var (
	east  = spiffeid.RequireTrustDomainFromString("east.example")
	west  = spiffeid.RequireTrustDomainFromString("west.example")
	north = spiffeid.RequireTrustDomainFromString("north.example")
)

type harness struct {
	t      *testing.T
	clock  *fakeClock
	dir    string
	c      *Controller
	admin  pb.AdminClient
	cancel context.CancelFunc
	done   chan error
}

func mesh(t testing.TB, yaml string) *virtualmesh.VirtualMesh {
	t.Helper()
	vm, err := virtualmesh.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// start runs a controller on 127.0.0.1:0 with its data in dir.
func start(t *testing.T, dir string, clock *fakeClock, mod func(*Config)) *harness {
	t.Helper()
	cfg := Config{
		Mesh:    mesh(t, testMesh),
		DataDir: dir,
		Listen:  "127.0.0.1:0",
		Clock:   clock.Now,
		// The tests call tick themselves.
		TickInterval: time.Hour,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, clock: clock, dir: dir, c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- c.Run(ctx) }()
	conn, err := grpc.NewClient("unix://"+c.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.admin = pb.NewAdminClient(conn)
	t.Cleanup(func() {
		conn.Close()
		h.stop()
	})
	return h
}

// stop ends Run and waits for it.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	return start(t, t.TempDir(), &fakeClock{now: t0}, mod)
}

func (h *harness) token(td spiffeid.TrustDomain) string {
	h.t.Helper()
	resp, err := h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: td.Name()})
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.GetToken()
}

func (h *harness) status() *pb.StatusResponse {
	h.t.Helper()
	st, err := h.admin.Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

func (h *harness) rootsFile() []*x509.Certificate {
	h.t.Helper()
	roots, err := pemfile.ReadCertificates(filepath.Join(h.dir, rootCertFile))
	if err != nil {
		h.t.Fatal(err)
	}
	return roots
}

// member is a meshfed server as the controller sees it: an intermediate key
// it made, the intermediate, and the server SVID it issued itself.
type member struct {
	h     *harness
	td    spiffeid.TrustDomain
	key   crypto.Signer
	inter *x509.Certificate
	ca    *pki.CA
	svid  *tls.Certificate
	roots []*x509.Certificate // what it trusts
	state *pb.FederationState
}

func (h *harness) member(td spiffeid.TrustDomain) *member {
	return &member{h: h, td: td, roots: h.rootsFile()}
}

// client dials the controller as m, verifying the controller by its chain
// to m's roots and its SPIFFE ID, and presenting m's SVID if it has one.
func (m *member) client() pb.ControllerClient {
	t := m.h.t
	t.Helper()
	svid := m.svid
	roots := m.roots
	want := m.h.c.ID()
	now := m.h.clock.Now
	cfg := &tls.Config{
		InsecureSkipVerify: true, // verified below, as an SVID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var chain []*x509.Certificate
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			id, _, err := pki.VerifyX509SVID(chain, x509bundle.FromX509Authorities(want.TrustDomain(), roots), now())
			if err != nil {
				return err
			}
			if id != want {
				return fmt.Errorf("controller presented %s", id)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if svid == nil {
				return &tls.Certificate{}, nil
			}
			return svid, nil
		},
	}
	conn, err := grpc.NewClient(m.h.c.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControllerClient(conn)
}

func newCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// join joins with token and adopts what comes back.
func (m *member) join(token string) error {
	m.h.t.Helper()
	key := newKey(m.h.t)
	resp, err := m.client().Join(context.Background(), &pb.JoinRequest{
		Token: token, TrustDomain: m.td.Name(), Csr: newCSR(m.h.t, key, nil), Address: "127.0.0.1:1",
	})
	if err != nil {
		return err
	}
	m.adopt(key, resp)
	return nil
}

func (m *member) mustJoin() *member {
	m.h.t.Helper()
	if err := m.join(m.h.token(m.td)); err != nil {
		m.h.t.Fatal(err)
	}
	return m
}

// renew renews the intermediate with a new key.
func (m *member) renew() error {
	m.h.t.Helper()
	key := newKey(m.h.t)
	resp, err := m.client().RenewIntermediate(context.Background(), &pb.RenewIntermediateRequest{Csr: newCSR(m.h.t, key, nil)})
	if err != nil {
		return err
	}
	m.adopt(key, resp)
	return nil
}

// adopt takes up a new intermediate: checks it, trusts the state's roots
// and issues the member's server SVID from it.
func (m *member) adopt(key crypto.Signer, resp *pb.IntermediateResponse) {
	t := m.h.t
	t.Helper()
	var chain []*x509.Certificate
	for _, der := range resp.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	m.apply(resp.GetState())
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: chain, Roots: m.roots, Clock: m.h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	m.key, m.inter, m.ca = key, chain[0], ca
	m.svid = m.issue(spiffeid.RequireFromPath(m.td, MemberPath), ca)
}

// issue makes a TLS certificate for id signed by ca.
func (m *member) issue(id spiffeid.ID, ca *pki.CA) *tls.Certificate {
	t := m.h.t
	t.Helper()
	k := newKey(t)
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: k.Public(), TTL: 365 * day})
	if err != nil {
		t.Fatal(err)
	}
	out := &tls.Certificate{PrivateKey: k, Leaf: chain[0]}
	for _, c := range chain {
		if c.IsCA && c.CheckSignatureFrom(c) == nil {
			continue // the root stays out of the chain presented
		}
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

// apply takes up a federation state's roots.
func (m *member) apply(st *pb.FederationState) {
	t := m.h.t
	t.Helper()
	m.state = st
	m.roots = nil
	for _, der := range st.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		m.roots = append(m.roots, c)
	}
}

func (m *member) report(r *pb.MemberReport) error {
	m.h.t.Helper()
	_, err := m.client().Report(context.Background(), r)
	return err
}

func (m *member) mustReport(r *pb.MemberReport) {
	m.h.t.Helper()
	if r.IntermediateSerial == "" && m.inter != nil {
		r.IntermediateSerial = m.inter.SerialNumber.Text(16)
	}
	if err := m.report(r); err != nil {
		m.h.t.Fatal(err)
	}
}

// statusText is "code: message" of a gRPC error, or "ok".
func statusText(err error) string {
	if err == nil {
		return "ok"
	}
	st, ok := status.FromError(err)
	if !ok {
		return "not a status: " + err.Error()
	}
	return st.Code().String() + ": " + st.Message()
}

func tlsChain(t *testing.T, c *tls.Certificate) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

func hashPrefix(token string) string {
	return hex.EncodeToString(credential.HashJoinToken(token)[:4])
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
