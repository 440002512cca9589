package member

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// t0 is the fake clock's start; every certificate of a test is made at it.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

var (
	east = spiffeid.RequireTrustDomainFromString("east.example")
	west = spiffeid.RequireTrustDomainFromString("west.example")
)

const testToken = "join-token-that-must-never-be-logged"

// fakeClock is a clock whose time moves only by Advance; Timer channels
// fire when it reaches their deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Timer(at time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !c.now.Before(at) {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: at, ch: ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if c.now.Before(t.at) {
			keep = append(keep, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = keep
}

// testRoot is a shared root made in code.
type testRoot struct {
	key  crypto.Signer
	cert *x509.Certificate
	ca   *pki.CA
}

func newRoot(t *testing.T, clk *fakeClock, cn string) *testRoot {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, CommonName: cn, Now: clk.Now()})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &testRoot{key: key, cert: cert, ca: ca}
}

// fakeController is a test double of the remote VirtualMesh controller: it
// signs intermediates from CSRs with a real root, streams a state, and
// records what members send. tamper, if set, rewrites a response.
type fakeController struct {
	pb.UnimplementedControllerServer
	clk     *fakeClock
	ttl     time.Duration // of the intermediates it signs
	serving *testRoot     // signs its serving SVID

	mu        sync.Mutex
	state     *pb.FederationState
	signer    *testRoot
	trusted   []*testRoot
	tamper    func(csr *x509.CertificateRequest, resp *pb.IntermediateResponse)
	failWatch int // Watch calls to refuse before sending anything
	subs      map[chan *pb.FederationState]bool

	joins    chan *x509.CertificateRequest
	renewals chan *x509.CertificateRequest
	reports  chan *pb.MemberReport
	watches  chan struct{}
	endWatch chan error // ends the open Watch stream with this error
}

func newFakeController(clk *fakeClock, root *testRoot) *fakeController {
	f := &fakeController{
		clk:      clk,
		ttl:      24 * time.Hour,
		serving:  root,
		signer:   root,
		trusted:  []*testRoot{root},
		subs:     map[chan *pb.FederationState]bool{},
		joins:    make(chan *x509.CertificateRequest, 100),
		renewals: make(chan *x509.CertificateRequest, 100),
		reports:  make(chan *pb.MemberReport, 1000),
		watches:  make(chan struct{}, 100),
		endWatch: make(chan error, 1),
	}
	f.state = &pb.FederationState{
		Name:          "vm",
		Roots:         [][]byte{root.cert.Raw},
		SigningRoot:   root.cert.Raw,
		TrustDomains:  []string{east.Name(), west.Name()},
		RotationPhase: "steady",
		Generation:    1,
	}
	return f
}

// setRoots changes which roots are trusted and which one signs, as a
// rotation does, and streams the new state.
func (f *fakeController) setRoots(phase string, signer *testRoot, trusted ...*testRoot) *pb.FederationState {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := proto.Clone(f.state).(*pb.FederationState)
	st.Roots = nil
	for _, r := range trusted {
		st.Roots = append(st.Roots, r.cert.Raw)
	}
	st.SigningRoot = signer.cert.Raw
	st.RotationPhase = phase
	st.Generation++
	f.state, f.signer, f.trusted = st, signer, trusted
	for ch := range f.subs {
		ch <- proto.Clone(st).(*pb.FederationState)
	}
	return proto.Clone(st).(*pb.FederationState)
}

func (f *fakeController) currentState() *pb.FederationState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return proto.Clone(f.state).(*pb.FederationState)
}

func (f *fakeController) Join(_ context.Context, req *pb.JoinRequest) (*pb.IntermediateResponse, error) {
	if req.GetToken() != testToken {
		return nil, status.Error(codes.PermissionDenied, "fake: unknown token")
	}
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return f.sign(td, req.GetCsr(), f.joins)
}

func (f *fakeController) RenewIntermediate(ctx context.Context, req *pb.RenewIntermediateRequest) (*pb.IntermediateResponse, error) {
	td, err := f.member(ctx)
	if err != nil {
		return nil, err
	}
	return f.sign(td, req.GetCsr(), f.renewals)
}

func (f *fakeController) sign(td spiffeid.TrustDomain, der []byte, seen chan *x509.CertificateRequest) (*pb.IntermediateResponse, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	f.mu.Lock()
	signer, ttl, tamper := f.signer, f.ttl, f.tamper
	st := proto.Clone(f.state).(*pb.FederationState)
	f.mu.Unlock()
	chain, err := signer.ca.SignIntermediateFromCSR(csr, pki.IntermediateRequest{TrustDomain: td, TTL: ttl})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &pb.IntermediateResponse{State: st}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	if tamper != nil {
		tamper(csr, resp)
	}
	seen <- csr
	return resp, nil
}

func (f *fakeController) Watch(_ *pb.WatchRequest, stream grpc.ServerStreamingServer[pb.FederationState]) error {
	if _, err := f.member(stream.Context()); err != nil {
		return err
	}
	ch := make(chan *pb.FederationState, 100)
	f.mu.Lock()
	refuse := f.failWatch > 0
	if refuse {
		f.failWatch--
	} else {
		f.subs[ch] = true
	}
	st := proto.Clone(f.state).(*pb.FederationState)
	f.mu.Unlock()
	f.watches <- struct{}{}
	if refuse {
		return status.Error(codes.Unavailable, "fake: not now")
	}
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}()
	if err := stream.Send(st); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case err := <-f.endWatch:
			return err
		case st := <-ch:
			if err := stream.Send(st); err != nil {
				return err
			}
		}
	}
}

func (f *fakeController) Report(ctx context.Context, r *pb.MemberReport) (*pb.ReportResponse, error) {
	if _, err := f.member(ctx); err != nil {
		return nil, err
	}
	f.reports <- r
	return &pb.ReportResponse{}, nil
}

// member authenticates the caller by its client SVID, as the contract says.
func (f *fakeController) member(ctx context.Context) (spiffeid.TrustDomain, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.TrustDomain{}, status.Error(codes.Unauthenticated, "fake: no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.TrustDomain{}, status.Error(codes.Unauthenticated, "fake: no client certificate")
	}
	f.mu.Lock()
	var roots anyTrustDomain
	for _, r := range f.trusted {
		roots = append(roots, r.cert)
	}
	f.mu.Unlock()
	id, _, err := pki.VerifyX509SVID(info.State.PeerCertificates, roots, f.clk.Now())
	if err != nil {
		return spiffeid.TrustDomain{}, status.Error(codes.Unauthenticated, "fake: "+err.Error())
	}
	if id.Path() != ServerPath {
		return spiffeid.TrustDomain{}, status.Errorf(codes.PermissionDenied, "fake: %s is not a member server", id)
	}
	return id.TrustDomain(), nil
}

// serve runs f on 127.0.0.1 with a serving SVID at path, returning its
// address.
func serve(t *testing.T, f *fakeController, path string) string {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := f.serving.ca.SignX509SVID(pki.SVIDRequest{
		ID:        spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("controller.test"), path),
		PublicKey: key.Public(),
		TTL:       10 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
	})))
	pb.RegisterControllerServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// writeRoots writes a controller CA file.
func writeRoots(t *testing.T, roots ...*testRoot) string {
	t.Helper()
	var certs []*x509.Certificate
	for _, r := range roots {
		certs = append(certs, r.cert)
	}
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := pemfile.WriteFile(path, pemfile.EncodeCertificates(certs...), pemfile.ModePublic); err != nil {
		t.Fatal(err)
	}
	return path
}

// logRecorder is a slog handler that keeps every line and offers each on
// a channel, so a test can wait for one.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
	ch    chan string
}

func newLogRecorder() *logRecorder { return &logRecorder{ch: make(chan string, 10000)} }

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += fmt.Sprintf(" %s=%s", a.Key, a.Value.String())
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, line)
	h.mu.Unlock()
	select {
	case h.ch <- line:
	default:
	}
	return nil
}

func (h *logRecorder) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.lines, "\n")
}

// waitLog returns the next line that starts with prefix.
func (h *logRecorder) waitLog(t *testing.T, prefix string) string {
	t.Helper()
	for {
		line := recv(t, h.ch, "log line "+prefix)
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
}

// recv waits for a value; the timeout only bounds a broken test.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// memberEnv is a member under test beside its fake controller.
type memberEnv struct {
	clk    *fakeClock
	root   *testRoot
	ctl    *fakeController
	addr   string
	caFile string
	dir    string
	logs   *logRecorder
	states chan State
	other  *testRoot // a second root, when a case makes one
}

func newEnv(t *testing.T) *memberEnv {
	t.Helper()
	clk := newFakeClock()
	root := newRoot(t, clk, "root one")
	ctl := newFakeController(clk, root)
	return &memberEnv{
		clk:    clk,
		root:   root,
		ctl:    ctl,
		addr:   serve(t, ctl, ControllerPath),
		caFile: writeRoots(t, root),
		dir:    filepath.Join(t.TempDir(), "virtualmesh"),
		logs:   newLogRecorder(),
		states: make(chan State, 100),
	}
}

// member makes a member of east.example with jitter fixed at none.
func (e *memberEnv) member(t *testing.T, token string, edit ...func(*Config)) *Member {
	t.Helper()
	cfg := Config{
		TrustDomain:      east,
		Controller:       e.addr,
		ControllerCAFile: e.caFile,
		Token:            token,
		Dir:              e.dir,
		Address:          "east.example:8443",
		Clock:            e.clk.Now,
		Timer:            e.clk.Timer,
		Logger:           slog.New(e.logs),
		MinBackoff:       time.Second,
		MaxBackoff:       4 * time.Second,
		OnState: func(_ context.Context, s State) error {
			e.states <- s
			return nil
		},
		Report: func() Report {
			return Report{LiveSVIDsByRoot: map[string]int64{"ab": 3}, Agents: 2, AgentsCurrent: 1}
		},
	}
	for _, f := range edit {
		f(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.rand = func() float64 { return 0 }
	return m
}

// run runs m until the test ends.
func run(t *testing.T, m *Member) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := recv(t, done, "Run to return"); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// dirContents maps every file in dir to its content and mode.
func dirContents(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%04o %s", info.Mode().Perm(), data)
	}
	return out
}

// modes lists the entries of dir with their modes, sorted.
func modes(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %04o", e.Name(), info.Mode().Perm()))
	}
	sort.Strings(out)
	return out
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	certs, err := pemfile.ReadCertificates(path)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}
