package member

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refusal is a response the controller must not get away with.
type refusal struct {
	name   string
	tamper func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse)
	want   func(e *memberEnv) string
}

func fixed(s string) func(*memberEnv) string { return func(*memberEnv) string { return s } }

// signWith replaces the response's chain with an intermediate for td that r
// signs over pub (the CSR's key when pub is nil).
func signWith(t *testing.T, r *testRoot, td spiffeid.TrustDomain, newKey bool) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
	return func(csr *x509.CertificateRequest, resp *pb.IntermediateResponse) {
		pub := csr.PublicKey
		if newKey {
			k, err := pki.GenerateKey(pki.ECP256)
			if err != nil {
				t.Error(err)
				return
			}
			pub = k.Public()
		}
		chain, err := r.ca.SignIntermediate(pki.IntermediateRequest{PublicKey: pub, TrustDomain: td})
		if err != nil {
			t.Error(err)
			return
		}
		resp.CertChain = [][]byte{chain[0].Raw, r.cert.Raw}
	}
}

var refusals = []refusal{
	{
		name: "name constraint for another trust domain",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return signWith(t, e.root, west, false)
		},
		want: fixed(`member: the intermediate from the controller is refused: the intermediate's URI name constraint permits ["west.example"], not exactly "east.example"`),
	},
	{
		name: "another key than the member made",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return signWith(t, e.root, east, true)
		},
		want: fixed("member: the intermediate from the controller is refused: the intermediate certifies another key than this member's"),
	},
	{
		name: "chain to an unknown root",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return signWith(t, newRoot(t, e.clk, "stranger"), east, false)
		},
		want: fixed("member: the intermediate from the controller is refused: pki: CA: certificate does not verify to its root: x509: certificate signed by unknown authority"),
	},
	{
		name: "chain to a trusted root that does not sign",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			other := newRoot(t, e.clk, "published")
			e.other = other
			sign := signWith(t, other, east, false)
			return func(csr *x509.CertificateRequest, resp *pb.IntermediateResponse) {
				sign(csr, resp)
				resp.State.Roots = append(resp.State.Roots, other.cert.Raw)
			}
		},
		want: func(e *memberEnv) string {
			return fmt.Sprintf("member: the intermediate from the controller is refused: it chains to root %x, but the federation signs under %x", e.other.cert.SubjectKeyId, e.root.cert.SubjectKeyId)
		},
	},
	{
		name: "not a CA",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return func(csr *x509.CertificateRequest, resp *pb.IntermediateResponse) {
				chain, err := e.root.ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromPath(east, "/ca"), PublicKey: csr.PublicKey})
				if err != nil {
					t.Error(err)
					return
				}
				resp.CertChain = [][]byte{chain[0].Raw, e.root.cert.Raw}
			}
		},
		want: fixed("member: the intermediate from the controller is refused: pki: the intermediate does not conform: X509-SVID §4.1: signing certificate without CA=true in basic constraints; X509-SVID §4.3: signing certificate without keyCertSign; X509-SVID §3.2: signing certificate's SPIFFE ID spiffe://east.example/ca has a path"),
	},
	{
		name: "signing root not among the roots",
		tamper: func(t *testing.T, e *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			other := newRoot(t, e.clk, "other")
			return func(_ *x509.CertificateRequest, resp *pb.IntermediateResponse) {
				resp.State.SigningRoot = other.cert.Raw
			}
		},
		want: fixed("member: the controller's federation state is refused: the signing root is not among the roots"),
	},
	{
		name: "no intermediate",
		tamper: func(*testing.T, *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return func(_ *x509.CertificateRequest, resp *pb.IntermediateResponse) { resp.CertChain = nil }
		},
		want: fixed("member: the controller sent no intermediate"),
	},
	{
		name: "a certificate that does not parse",
		tamper: func(*testing.T, *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) {
			return func(_ *x509.CertificateRequest, resp *pb.IntermediateResponse) {
				resp.CertChain = [][]byte{{0x30, 0x03, 1, 2, 3}}
			}
		},
		want: fixed("member: the controller's chain, certificate 0: certificate does not parse: x509: malformed tbs certificate"),
	},
}

func (f *fakeController) setTamper(fn func(*x509.CertificateRequest, *pb.IntermediateResponse)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tamper = fn
}

// TestJoinWritesCACerts joins with a token and checks every file written:
// Istio's cacerts layout with the key 0600, and the state, which loads back
// as the controller sent it.
func TestJoinWritesCACerts(t *testing.T) {
	e := newEnv(t)
	m := e.member(t, testToken)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	csr := recv(t, e.ctl.joins, "the join")
	if got := fmt.Sprint(csr.URIs); got != "[spiffe://east.example]" {
		t.Errorf("CSR names %s, want [spiffe://east.example]", got)
	}
	want := []string{
		"ca-cert.pem 0644",
		"ca-key.pem 0600",
		"cert-chain.pem 0644",
		"federation-state.json 0644",
		"root-cert.pem 0644",
	}
	if got := modes(t, e.dir); !reflect.DeepEqual(got, want) {
		t.Errorf("files:\n got %q\nwant %q", got, want)
	}
	if m.CADir() != e.dir {
		t.Errorf("CADir() = %s, want %s", m.CADir(), e.dir)
	}
	ca, err := cadir.Load(e.dir, e.clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	inter := ca.Certificate()
	if td, ok := ca.TrustDomain(); !ok || td != east {
		t.Errorf("the CA in the directory is for %q, want east.example", td)
	}
	if !samePublicKey(inter.PublicKey, csr.PublicKey) {
		t.Error("ca-cert.pem does not certify the key of the CSR")
	}
	if chain := readCerts(t, filepath.Join(e.dir, cadir.IstioChainFile)); !sameCerts(chain, []*x509.Certificate{inter, e.root.cert}) {
		t.Errorf("cert-chain.pem holds %d certificates, want the intermediate and the root", len(chain))
	}
	if roots := readCerts(t, filepath.Join(e.dir, cadir.IstioRootFile)); !sameCerts(roots, []*x509.Certificate{e.root.cert}) {
		t.Errorf("root-cert.pem holds %d certificates, want the root", len(roots))
	}
	data, err := pemfile.ReadFile(filepath.Join(e.dir, StateFile), MaxStateBytes)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseStateFile(data)
	if err != nil {
		t.Fatal(err)
	}
	sent, err := stateFromProto(e.ctl.currentState())
	if err != nil {
		t.Fatal(err)
	}
	if !sameState(got, sent) {
		t.Errorf("state file holds %+v, want %+v", got, sent)
	}
	st := m.Status()
	wantStatus := Status{
		TrustDomain:          east,
		Joined:               true,
		Name:                 "vm",
		Phase:                "steady",
		IntermediateSerial:   fmt.Sprintf("%x", inter.SerialNumber),
		IntermediateNotAfter: t0.Add(24 * time.Hour),
		RootSubjectKeyID:     fmt.Sprintf("%x", e.root.cert.SubjectKeyId),
		RenewAt:              inter.NotBefore.Add(inter.NotAfter.Sub(inter.NotBefore) / 2),
		AppliedGeneration:    1,
		LastContact:          t0,
	}
	if st != wantStatus {
		t.Errorf("Status:\n got %+v\nwant %+v", st, wantStatus)
	}
	if strings.Contains(e.logs.all(), testToken) {
		t.Error("the token was logged")
	}
}

// TestJoinRefused: a join the controller refuses, or whose response does
// not verify, writes nothing.
func TestJoinRefused(t *testing.T) {
	cases := []refusal{
		{
			name:   "unknown token",
			tamper: func(*testing.T, *memberEnv) func(*x509.CertificateRequest, *pb.IntermediateResponse) { return nil },
			want: func(e *memberEnv) string {
				return "member: join at " + e.addr + " failed: rpc error: code = PermissionDenied desc = fake: unknown token"
			},
		},
	}
	cases = append(cases, refusals...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.ctl.setTamper(tc.tamper(t, e))
			token := testToken
			if tc.name == "unknown token" {
				token = "not-" + testToken
			}
			err := e.member(t, token).Start(context.Background())
			if err == nil || err.Error() != tc.want(e) {
				t.Fatalf("Start: %v\nwant %s", err, tc.want(e))
			}
			if got := modes(t, e.dir); len(got) != 0 {
				t.Errorf("files written: %q", got)
			}
			if strings.Contains(err.Error()+e.logs.all(), "join-token") {
				t.Error("the token is in the error or the log")
			}
		})
	}
}

// TestJoinWriteIsAllOrNothing: when one file cannot be written, none is.
func TestJoinWriteIsAllOrNothing(t *testing.T) {
	e := newEnv(t)
	blocker := filepath.Join(e.dir, cadir.IstioChainFile)
	if err := os.MkdirAll(blocker, 0o755); err != nil {
		t.Fatal(err)
	}
	err := e.member(t, testToken).Start(context.Background())
	want := fmt.Sprintf("member: write %s: pemfile: %s is a directory; nothing was written", e.dir, blocker)
	if err == nil || err.Error() != want {
		t.Fatalf("Start: %v\nwant %s", err, want)
	}
	if got := modes(t, e.dir); !reflect.DeepEqual(got, []string{"cert-chain.pem 0755"}) {
		t.Errorf("files: %q", got)
	}
}

// TestJoinVerifiesController: the first join trusts only a controller whose
// SVID has the controller's path and chains to the controller CA file.
func TestJoinVerifiesController(t *testing.T) {
	cases := []struct {
		name      string
		path      string
		otherRoot bool
		want      string
	}{
		{
			name: "another SPIFFE ID",
			path: ServerPath,
			want: "member: the controller presented spiffe://controller.test/meshfed/server; a VirtualMesh controller's SPIFFE ID has the path /meshfed/federation-controller",
		},
		{
			name:      "another root",
			path:      ControllerPath,
			otherRoot: true,
			want:      "member: the controller's certificate does not verify to the federation's roots: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.addr = serve(t, e.ctl, tc.path)
			if tc.otherRoot {
				e.caFile = writeRoots(t, newRoot(t, e.clk, "stranger"))
			}
			err := e.member(t, testToken).Start(context.Background())
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v\nwant Unavailable with %s", err, tc.want)
			}
			if len(e.ctl.joins) != 0 {
				t.Error("the join reached the controller")
			}
		})
	}
}

// TestStartWithoutUsableIntermediate: without a token, Start needs a usable
// intermediate in the directory and says how to get a token otherwise.
func TestStartWithoutUsableIntermediate(t *testing.T) {
	const hint = "no join token was given; create one on the controller with 'meshfed federation token create --trust-domain east.example' and start with it"
	cases := []struct {
		name  string
		setup func(t *testing.T, e *memberEnv)
		token string
		want  func(e *memberEnv) string
	}{
		{
			name: "empty directory",
			want: func(e *memberEnv) string {
				return "member: " + e.dir + " holds no VirtualMesh intermediate yet and " + hint
			},
		},
		{
			name: "expired intermediate",
			setup: func(t *testing.T, e *memberEnv) {
				if err := e.member(t, testToken).Start(context.Background()); err != nil {
					t.Fatal(err)
				}
				e.clk.Advance(25 * time.Hour)
			},
			want: func(e *memberEnv) string {
				return "member: no usable VirtualMesh intermediate (the intermediate in " + e.dir + `: pki: CA: "CN=east.example intermediate CA,O=meshfed" expired at 2030-01-03T03:04:05Z; rotate it) and ` + hint
			},
		},
		{
			name: "intermediate of another trust domain",
			setup: func(t *testing.T, e *memberEnv) {
				if err := e.member(t, testToken, func(c *Config) { c.TrustDomain = west }).Start(context.Background()); err != nil {
					t.Fatal(err)
				}
			},
			want: func(e *memberEnv) string {
				return "member: no usable VirtualMesh intermediate (the intermediate in " + e.dir + `: the intermediate's URI name constraint permits ["west.example"], not exactly "east.example") and ` + hint
			},
		},
		{
			name:  "token but no controller CA file",
			token: testToken,
			setup: func(t *testing.T, e *memberEnv) { e.caFile = "" },
			want:  fixed("member: the first join needs the controller's CA file (root-cert.pem in the controller's data directory)"),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.setup != nil {
				tc.setup(t, e)
			}
			err := e.member(t, tc.token).Start(context.Background())
			if err == nil || err.Error() != tc.want(e) {
				t.Fatalf("Start: %v\nwant %s", err, tc.want(e))
			}
		})
	}
}

// TestRestartReusesIntermediate: a member started again on its directory
// signs with the same intermediate without a token, and hands the persisted
// state to the server before anything else.
func TestRestartReusesIntermediate(t *testing.T) {
	e := newEnv(t)
	first := e.member(t, testToken)
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	recv(t, e.ctl.joins, "the join")
	before := dirContents(t, e.dir)

	e.clk.Advance(time.Hour)
	m := e.member(t, "")
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := m.Status().IntermediateSerial, first.Status().IntermediateSerial; got != want {
		t.Errorf("serial %s after the restart, want %s", got, want)
	}
	run(t, m)
	s := recv(t, e.states, "the persisted state")
	if s.Name != "vm" || s.Generation != 1 || !sameCerts(s.Roots, []*x509.Certificate{e.root.cert}) || !s.SigningRoot.Equal(e.root.cert) ||
		!reflect.DeepEqual(s.TrustDomains, []spiffeid.TrustDomain{east, west}) || s.Phase != "steady" {
		t.Errorf("OnState got %+v", s)
	}
	r := recv(t, e.ctl.reports, "the first report")
	want := &pb.MemberReport{
		AppliedGeneration:     1,
		IntermediateSerial:    m.Status().IntermediateSerial,
		IntermediateExpiresAt: t0.Add(24 * time.Hour).Unix(),
		LiveSvidsByRoot:       map[string]int64{"ab": 3},
		Agents:                2,
		AgentsCurrent:         1,
	}
	if r.String() != want.String() {
		t.Errorf("report:\n got %v\nwant %v", r, want)
	}
	if len(e.ctl.joins) != 0 {
		t.Error("the restarted member joined again")
	}
	if after := dirContents(t, e.dir); !reflect.DeepEqual(after, before) {
		t.Error("the restart rewrote the directory")
	}
}

// TestRefusedRenewalKeepsFiles: every response that does not verify leaves
// the files and the intermediate in use as they were, and backs off.
func TestRefusedRenewalKeepsFiles(t *testing.T) {
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.member(t, testToken)
			ctx := context.Background()
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			before, serial := dirContents(t, e.dir), m.Status().IntermediateSerial
			e.ctl.setTamper(tc.tamper(t, e))
			l := &loop{m: m}
			defer l.closeSession()
			l.renew(ctx, e.clk.Now(), "test")
			recv(t, e.ctl.renewals, "the renewal")
			st := m.Status()
			if want := tc.want(e) + " (retrying in 1s)"; st.LastError != want {
				t.Errorf("LastError %q\n     want %q", st.LastError, want)
			}
			if st.IntermediateSerial != serial {
				t.Errorf("serial %s in use, want %s", st.IntermediateSerial, serial)
			}
			if !l.renewRetryAt.Equal(t0.Add(time.Second)) {
				t.Errorf("retry at %s, want 1s later", l.renewRetryAt)
			}
			if after := dirContents(t, e.dir); !reflect.DeepEqual(after, before) {
				t.Error("the directory changed")
			}
		})
	}
}

// waitReport returns the first report that satisfies ok.
func waitReport(t *testing.T, f *fakeController, ok func(*pb.MemberReport) bool) *pb.MemberReport {
	t.Helper()
	for {
		if r := recv(t, f.reports, "a report"); ok(r) {
			return r
		}
	}
}

func keyOf(t *testing.T, dir string) any {
	t.Helper()
	k, err := pemfile.ReadPrivateKey(filepath.Join(dir, cadir.IstioKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// TestRenewOnSigningRootChange follows a root rotation: a published root is
// trusted (root-cert.pem, OnState) without a renewal; when the federation
// signs under it the member renews with a new key at once, writes the new
// intermediate, hands the state to the server again and reports it.
func TestRenewOnSigningRootChange(t *testing.T) {
	e := newEnv(t)
	m := e.member(t, testToken)
	run(t, m)
	if s := recv(t, e.states, "the first state"); s.Generation != 1 {
		t.Fatalf("first state has generation %d", s.Generation)
	}
	waitReport(t, e.ctl, func(r *pb.MemberReport) bool { return r.AppliedGeneration == 1 })
	old := m.Status()
	oldKey := keyOf(t, e.dir)

	root2 := newRoot(t, e.clk, "root two")
	e.ctl.setRoots("published", e.root, e.root, root2)
	if s := recv(t, e.states, "the published state"); s.Generation != 2 || len(s.Roots) != 2 || !s.SigningRoot.Equal(e.root.cert) {
		t.Fatalf("OnState got generation %d, %d roots", s.Generation, len(s.Roots))
	}
	waitReport(t, e.ctl, func(r *pb.MemberReport) bool { return r.AppliedGeneration == 2 })
	if roots := readCerts(t, filepath.Join(e.dir, cadir.IstioRootFile)); !sameCerts(roots, []*x509.Certificate{e.root.cert, root2.cert}) {
		t.Errorf("root-cert.pem holds %d roots, want root one then root two", len(roots))
	}
	if got := m.Status().IntermediateSerial; got != old.IntermediateSerial {
		t.Error("a published root renewed the intermediate")
	}

	e.ctl.setRoots("signing-new", root2, root2, e.root)
	if s := recv(t, e.states, "the state that signs under root two"); s.Generation != 3 {
		t.Fatalf("OnState got generation %d", s.Generation)
	}
	csr := recv(t, e.ctl.renewals, "the renewal")
	if samePublicKey(csr.PublicKey, oldKey) {
		t.Error("the renewal reused the old key")
	}
	if s := recv(t, e.states, "the state after the renewal"); s.Generation != 3 {
		t.Errorf("OnState after the renewal got generation %d", s.Generation)
	}
	r := waitReport(t, e.ctl, func(r *pb.MemberReport) bool { return r.IntermediateSerial != old.IntermediateSerial })
	if r.AppliedGeneration != 3 {
		t.Errorf("report after the renewal applied generation %d", r.AppliedGeneration)
	}
	ca, err := cadir.Load(e.dir, e.clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublicKey(keyOf(t, e.dir), csr.PublicKey) || fmt.Sprintf("%x", ca.Certificate().SerialNumber) != r.IntermediateSerial {
		t.Error("the directory does not hold the renewed intermediate with the new key")
	}
	if chain := readCerts(t, filepath.Join(e.dir, cadir.IstioChainFile)); !sameCerts(chain, []*x509.Certificate{ca.Certificate(), root2.cert}) {
		t.Error("cert-chain.pem is not the new intermediate and root two")
	}
	if roots := readCerts(t, filepath.Join(e.dir, cadir.IstioRootFile)); !sameCerts(roots, []*x509.Certificate{root2.cert, e.root.cert}) {
		t.Error("root-cert.pem is not root two then root one")
	}
	if st := m.Status(); st.RootSubjectKeyID != fmt.Sprintf("%x", root2.cert.SubjectKeyId) || st.AppliedGeneration != 3 || st.Phase != "signing-new" {
		t.Errorf("Status %+v", st)
	}
	line := e.logs.waitLog(t, "VirtualMesh intermediate renewed")
	if want := fmt.Sprintf("reason=the federation now signs under root %x", root2.cert.SubjectKeyId); !strings.Contains(line, want) {
		t.Errorf("log %q does not say %q", line, want)
	}
	if strings.Contains(e.logs.all(), "PRIVATE KEY") || strings.Contains(e.logs.all(), testToken) {
		t.Error("a key or the token was logged")
	}
}

// TestRenewAfterExpiry: an intermediate that expired before it could be
// renewed cannot authenticate the member any more; the member says how to
// join again instead of calling.
func TestRenewAfterExpiry(t *testing.T) {
	e := newEnv(t)
	m := e.member(t, testToken)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(25 * time.Hour)
	l := &loop{m: m}
	defer l.closeSession()
	l.renew(context.Background(), e.clk.Now(), "test")
	want := "member: the intermediate expired at 2030-01-03T03:04:05Z before it could be renewed, so the controller will not accept this member's SVID; create a join token with 'meshfed federation token create --trust-domain east.example' and restart with it (retrying in 1s)"
	if got := m.Status().LastError; got != want {
		t.Errorf("LastError %q\n     want %q", got, want)
	}
	if len(e.ctl.renewals) != 0 {
		t.Error("the member called the controller")
	}
}

// TestRenewAtHalfLife: with the root unchanged the intermediate is renewed
// when the clock reaches half its life, and not before.
func TestRenewAtHalfLife(t *testing.T) {
	e := newEnv(t)
	m := e.member(t, testToken)
	run(t, m)
	recv(t, e.states, "the first state")
	old := m.Status()
	inter := readCerts(t, filepath.Join(e.dir, cadir.IstioCertFile))[0]
	half := inter.NotBefore.Add(inter.NotAfter.Sub(inter.NotBefore) / 2)
	if !old.RenewAt.Equal(half) {
		t.Fatalf("RenewAt %s, want %s", old.RenewAt, half)
	}
	recv(t, e.ctl.reports, "the report at the start")
	e.clk.Advance(half.Sub(e.clk.Now()) - time.Minute)
	recv(t, e.ctl.reports, "the report a minute before half life")
	if len(e.ctl.renewals) != 0 {
		t.Fatal("renewed before half life")
	}
	e.clk.Advance(time.Minute)
	recv(t, e.ctl.renewals, "the renewal")
	line := e.logs.waitLog(t, "VirtualMesh intermediate renewed")
	if !strings.Contains(line, "reason=past its renewal time") {
		t.Errorf("log %q", line)
	}
	r := waitReport(t, e.ctl, func(r *pb.MemberReport) bool { return r.IntermediateSerial != old.IntermediateSerial })
	if want := half.Add(24 * time.Hour).Unix(); r.IntermediateExpiresAt != want {
		t.Errorf("new intermediate expires at %d, want %d", r.IntermediateExpiresAt, want)
	}
}

// TestWatchReconnectsWithBackoff: a lost stream is opened again after 1s,
// 2s, 4s, capped at MaxBackoff, by the clock; the backoff starts over once
// a stream has delivered a state.
func TestWatchReconnectsWithBackoff(t *testing.T) {
	e := newEnv(t)
	m := e.member(t, testToken)
	run(t, m)
	recv(t, e.ctl.watches, "the first stream")
	recv(t, e.states, "the first state")
	waitReport(t, e.ctl, func(*pb.MemberReport) bool { return true })

	e.ctl.mu.Lock()
	e.ctl.failWatch = 3
	e.ctl.mu.Unlock()
	e.ctl.endWatch <- status.Error(codes.Unavailable, "fake: going away")
	const prefix = "no watch stream from the controller; reconnecting error=member: watch stream from the controller ended: rpc error: code = Unavailable desc = "
	steps := []struct {
		cause string
		wait  time.Duration
	}{
		{"fake: going away", time.Second},
		{"fake: not now", 2 * time.Second},
		{"fake: not now", 4 * time.Second},
		{"fake: not now", 4 * time.Second},
	}
	for i, s := range steps {
		want := fmt.Sprintf("%s%s (reconnecting in %s)", prefix, s.cause, s.wait)
		if got := e.logs.waitLog(t, "no watch stream"); got != want {
			t.Fatalf("failure %d: log\n %q\nwant %q", i+1, got, want)
		}
		e.clk.Advance(s.wait)
		recv(t, e.ctl.watches, "the stream opened again")
	}
	// The last stream was accepted and delivers a state; losing it starts
	// the backoff over.
	e.ctl.endWatch <- status.Error(codes.Unavailable, "fake: going away")
	want := fmt.Sprintf("%sfake: going away (reconnecting in 1s)", prefix)
	if got := e.logs.waitLog(t, "no watch stream"); got != want {
		t.Fatalf("log\n %q\nwant %q", got, want)
	}
}

// TestRefusedStateIsOfferedAgain: a state the server refuses is not
// persisted, and is offered again after the backoff.
func TestRefusedStateIsOfferedAgain(t *testing.T) {
	e := newEnv(t)
	refuse := make(chan bool, 1)
	m := e.member(t, testToken, func(c *Config) {
		c.OnState = func(_ context.Context, s State) error {
			e.states <- s
			if s.Generation == 2 && len(refuse) == 0 {
				refuse <- true
				return errors.New("not now")
			}
			return nil
		}
	})
	run(t, m)
	recv(t, e.states, "the first state")
	root2 := newRoot(t, e.clk, "root two")
	e.ctl.setRoots("published", e.root, e.root, root2)
	recv(t, e.states, "the refused state")
	line := e.logs.waitLog(t, "the server refused a federation state")
	if want := "the server refused a federation state error=member: apply generation 2: not now (retrying in 1s)"; line != want {
		t.Errorf("log %q\nwant %q", line, want)
	}
	if got := m.Status().AppliedGeneration; got != 1 {
		t.Errorf("applied generation %d after a refusal", got)
	}
	e.clk.Advance(time.Second)
	if s := recv(t, e.states, "the state offered again"); s.Generation != 2 {
		t.Errorf("offered generation %d", s.Generation)
	}
	waitReport(t, e.ctl, func(r *pb.MemberReport) bool { return r.AppliedGeneration == 2 })
	data, err := pemfile.ReadFile(filepath.Join(e.dir, StateFile), MaxStateBytes)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := parseStateFile(data); err != nil || s.Generation != 2 {
		t.Errorf("state file: %v, %v", s, err)
	}
}

func TestNewRefuses(t *testing.T) {
	ok := Config{TrustDomain: east, Controller: "127.0.0.1:1", Dir: "/tmp/x"}
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "member: a trust domain is required"},
		{"no controller", func(c *Config) { c.Controller = "" }, "member: the controller's address (host:port) is required"},
		{"no directory", func(c *Config) { c.Dir = "" }, "member: a directory for the intermediate is required"},
		{"jitter", func(c *Config) { c.Jitter = 1 }, "member: jitter 1 is outside [0, 1)"},
		{"key type", func(c *Config) { c.KeyType = "dsa" }, `member: pki: unknown key type "dsa"; use one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096`},
		{"backoff", func(c *Config) { c.MinBackoff = time.Hour }, "member: maximum backoff 1m0s is below the minimum 1h0m0s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("New: %v\nwant %s", err, tc.want)
			}
		})
	}
}

// A member holds an intermediate of the shared root, under which it could
// issue itself a certificate with the controller's path in its own trust
// domain; only one signed by a root directly is taken for the controller.
func TestVerifyControllerRefusesAMemberImpersonatingIt(t *testing.T) {
	clk := &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	root := newRoot(t, clk, "shared root")
	svid := func(ca *pki.CA, id string) []*x509.Certificate {
		key, err := pki.GenerateKey(pki.ECP256)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	if err := verifyController(svid(root.ca, "spiffe://virtual-mesh/meshfed/federation-controller"), []*x509.Certificate{root.cert}, clk.Now()); err != nil {
		t.Fatalf("the controller's own certificate: %v", err)
	}
	interKey, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	interChain, err := root.ca.SignIntermediate(pki.IntermediateRequest{PublicKey: interKey.Public(), TrustDomain: spiffeid.RequireTrustDomainFromString("east.example")})
	if err != nil {
		t.Fatal(err)
	}
	east, err := pki.NewCA(pki.CAConfig{Signer: interKey, Chain: interChain, Roots: []*x509.Certificate{root.cert}, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	forged := svid(east, "spiffe://east.example/meshfed/federation-controller")
	err = verifyController(forged, []*x509.Certificate{root.cert}, clk.Now())
	want := "member: spiffe://east.example/meshfed/federation-controller is not signed by a shared root directly"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("a member's certificate as the controller: %v, want %q", err, want)
	}
}
