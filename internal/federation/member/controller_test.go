package member

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/federation/controller"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const testMesh = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata: {name: virtual-mesh, namespace: service-mesh-hub}
spec:
  mtlsConfig:
    shared:
      rootCertificateAuthority:
        generated: {ttlDays: 356, orgName: service-mesh-hub}
  federation: {mode: PERMISSIVE}
  enforceAccessControl: true
  meshes:
  - {name: east, namespace: service-mesh-hub, trustDomain: east.example}
  - {name: west, namespace: service-mesh-hub, trustDomain: west.example}
`

// startController runs the real VirtualMesh controller on 127.0.0.1:0 with
// the fake clock, and returns it with a client of its admin socket.
func startController(t *testing.T, clk *fakeClock, edit ...func(*controller.Config)) (*controller.Controller, pb.AdminClient) {
	t.Helper()
	vm, err := virtualmesh.Parse("test.yaml", []byte(testMesh))
	if err != nil {
		t.Fatal(err)
	}
	cfg := controller.Config{
		Mesh:         vm,
		DataDir:      t.TempDir(),
		Listen:       "127.0.0.1:0",
		Clock:        clk.Now,
		TickInterval: time.Hour, // no maintenance during the test
	}
	for _, f := range edit {
		f(&cfg)
	}
	c, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	conn, err := grpc.NewClient("unix://"+c.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := recv(t, done, "the controller to stop"); err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	return c, pb.NewAdminClient(conn)
}

// controllerEnv is a member's environment beside the real controller c.
func controllerEnv(t *testing.T, clk *fakeClock, c *controller.Controller) *memberEnv {
	return &memberEnv{
		clk:    clk,
		addr:   c.Addr().String(),
		caFile: c.RootCertFile(),
		dir:    filepath.Join(t.TempDir(), "virtualmesh"),
		logs:   newLogRecorder(),
		states: make(chan State, 100),
	}
}

// TestWithController joins the real controller with a token from its admin
// socket and follows a whole rotation of the shared root, which the
// controller advances on the member's reports alone: the new root is
// published and applied, the member renews under it with a new key, and the
// old root is retired.
func TestWithController(t *testing.T) {
	clk := newFakeClock()
	c, admin := startController(t, clk)
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &pb.CreateTokenRequest{TrustDomain: east.Name()})
	if err != nil {
		t.Fatal(err)
	}
	e := controllerEnv(t, clk, c)
	m := e.member(t, tok.GetToken(), func(cfg *Config) {
		cfg.Report = func() Report { return Report{Agents: 1, AgentsCurrent: 1} }
	})
	run(t, m)

	first := recv(t, e.states, "the state of the join")
	if first.Name != "virtual-mesh" || first.Generation != 1 || first.Phase != "stable" || !first.EnforceAccessControl ||
		len(first.Roots) != 1 || !reflect.DeepEqual(first.TrustDomains, []spiffeid.TrustDomain{east, west}) {
		t.Fatalf("state after the join: %+v", first)
	}
	oldRoot := first.SigningRoot
	oldKey := keyOf(t, e.dir)

	if _, err := admin.RotateRoot(ctx, &pb.RotateRootRequest{}); err != nil {
		t.Fatal(err)
	}
	// publishing (2), reissuing (3, then again after the renewal),
	// retiring (4), stable (5).
	var phases []string
	var last State
	for last.Generation != 5 {
		last = recv(t, e.states, "the rotation's states")
		phases = append(phases, fmt.Sprintf("%d %s %d", last.Generation, last.Phase, len(last.Roots)))
	}
	want := []string{"2 publishing 2", "3 reissuing 2", "3 reissuing 2", "4 retiring 2", "5 stable 1"}
	if !reflect.DeepEqual(phases, want) {
		t.Errorf("states handed to the server:\n got %q\nwant %q", phases, want)
	}
	newRoot := last.SigningRoot
	if newRoot.Equal(oldRoot) || !sameCerts(last.Roots, []*x509.Certificate{newRoot}) {
		t.Fatal("the rotation did not end on a new root alone")
	}

	// The directory follows the applied state once the state of
	// generation 5 is written after OnState.
	for line := ""; !strings.Contains(line, " generation=5 "); {
		line = e.logs.waitLog(t, "federation state applied")
	}
	st := m.Status()
	if st.RootSubjectKeyID != fmt.Sprintf("%x", newRoot.SubjectKeyId) || st.Phase != "stable" {
		t.Errorf("member status %+v", st)
	}
	if samePublicKey(keyOf(t, e.dir), oldKey) {
		t.Error("the renewal kept the old key")
	}
	ca, err := cadir.Load(e.dir, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%x", ca.Certificate().SerialNumber) != st.IntermediateSerial ||
		!sameCerts(readCerts(t, filepath.Join(e.dir, cadir.IstioChainFile)), []*x509.Certificate{ca.Certificate(), newRoot}) {
		t.Error("the directory does not hold the renewed intermediate under the new root")
	}
	if roots := readCerts(t, filepath.Join(e.dir, cadir.IstioRootFile)); !sameCerts(roots, []*x509.Certificate{newRoot}) {
		t.Errorf("root-cert.pem holds %d roots, want the new one", len(roots))
	}

	cs, err := admin.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cs.GetRotationPhase() != "stable" || cs.GetWaitingFor() != "" || len(cs.GetRoots()) != 1 {
		t.Errorf("controller status: phase %s, waiting for %q, %d roots", cs.GetRotationPhase(), cs.GetWaitingFor(), len(cs.GetRoots()))
	}
	ms := cs.GetMembers()[0]
	if ms.GetTrustDomain() != "east.example" || !ms.GetJoined() || ms.GetIntermediateSerial() != st.IntermediateSerial ||
		ms.GetRootSubjectKeyId() != st.RootSubjectKeyID {
		t.Errorf("controller's view of the member: %v", ms)
	}
}

// TestJoinAgainAfterRemovedAndAddedBack: a member is removed from
// spec.meshes and added back, so the controller no longer knows it and
// refuses its still valid intermediate; the member joins again, without a
// restart, with the next token its TokenSource gives (the spent one is
// refused, and it says what to do).
func TestJoinAgainAfterRemovedAndAddedBack(t *testing.T) {
	clk := newFakeClock()
	file := filepath.Join(t.TempDir(), "vm.yaml")
	writeMeshFile(t, file, testMesh)
	c, admin := startController(t, clk, func(cfg *controller.Config) {
		cfg.MeshFile = file
		cfg.ReloadInterval = time.Hour // the test reloads
	})
	ctx := context.Background()
	newToken := func() string {
		t.Helper()
		tok, err := admin.CreateToken(ctx, &pb.CreateTokenRequest{TrustDomain: east.Name()})
		if err != nil {
			t.Fatal(err)
		}
		return tok.GetToken()
	}
	var mu sync.Mutex
	token := newToken()
	e := controllerEnv(t, clk, c)
	reports := make(chan struct{}, 100)
	m := e.member(t, "", func(cfg *Config) {
		cfg.TokenSource = func() (string, error) {
			mu.Lock()
			defer mu.Unlock()
			return token, nil
		}
		cfg.Report = func() Report {
			reports <- struct{}{}
			return Report{}
		}
	})
	run(t, m)
	if first := recv(t, e.states, "the state of the join"); first.Generation != 1 {
		t.Fatalf("state after the join: %+v", first)
	}
	serial1 := m.Status().IntermediateSerial

	reload := func(yaml string) {
		t.Helper()
		writeMeshFile(t, file, yaml)
		if changed, err := c.ReloadMesh(); !changed || err != nil {
			t.Fatalf("ReloadMesh: %v, %v", changed, err)
		}
	}
	reload(strings.Replace(testMesh, "  - {name: east, namespace: service-mesh-hub, trustDomain: east.example}\n", "", 1))
	if line := e.logs.waitLog(t, "no watch stream from the controller"); !strings.Contains(line, `east.example is not a member of VirtualMesh "virtual-mesh" (spec.meshes)`) {
		t.Fatalf("after the removal: %s", line)
	}
	reload(testMesh)
	clk.Advance(4 * time.Second) // the watch's backoff
	if line := e.logs.waitLog(t, "the controller has no record of this member"); !strings.Contains(line, "FailedPrecondition") {
		t.Errorf("the refusal that starts a new join: %s", line)
	}
	// The token file still holds the spent token.
	if line := e.logs.waitLog(t, "joining the VirtualMesh again failed"); !strings.Contains(line, "is unknown, expired or already used") ||
		!strings.Contains(line, "make a token with 'meshfed federation token create --trust-domain east.example'") {
		t.Errorf("a join again with the spent token: %s", line)
	}
	mu.Lock()
	token = newToken()
	mu.Unlock()
	clk.Advance(4 * time.Second)
	e.logs.waitLog(t, "joined the VirtualMesh again")
	if st := recv(t, e.states, "the state of the new join"); st.Generation != 3 || !reflect.DeepEqual(st.TrustDomains, []spiffeid.TrustDomain{east, west}) {
		t.Errorf("state after joining again: %+v", st)
	}
	serial2 := m.Status().IntermediateSerial
	if serial2 == serial1 {
		t.Error("joining again kept the old intermediate")
	}
	ca, err := cadir.Load(e.dir, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%x", ca.Certificate().SerialNumber) != serial2 {
		t.Error("the directory does not hold the new intermediate")
	}
	cs, err := admin.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ms := cs.GetMembers()[0]; !ms.GetJoined() || ms.GetIntermediateSerial() != serial2 {
		t.Errorf("the controller's view of east: %v", ms)
	}
	// The member reports again, on its new intermediate: the controller
	// knows the generation it applied only from a report. The report hook
	// runs before each report, so by its next call the last report is
	// done.
	failures := strings.Count(e.logs.all(), "cannot report")
	for i := 0; ; i++ {
		recv(t, reports, "a report after joining again")
		cs, err := admin.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if cs.GetMembers()[0].GetAppliedGeneration() == 3 {
			break
		}
		if i == 5 {
			t.Fatalf("no report of generation 3 reached the controller:\n%s", e.logs.all())
		}
		clk.Advance(DefaultReportInterval)
	}
	if n := strings.Count(e.logs.all(), "cannot report"); n != failures {
		t.Errorf("reports failed after joining again:\n%s", e.logs.all())
	}
}

func writeMeshFile(t *testing.T, file, yaml string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestJWTKeysThroughTheController: the JWT-SVID keys a member reports come
// back in the next state, for its trust domain, as every member gets them.
func TestJWTKeysThroughTheController(t *testing.T) {
	clk := newFakeClock()
	c, admin := startController(t, clk)
	tok, err := admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: east.Name()})
	if err != nil {
		t.Fatal(err)
	}
	key, der := testjwt.NewKey(t)
	want := jwtkeys.Key{ID: "east-1", Public: key.Public(), DER: der, ExpiresAt: clk.Now().Add(time.Hour).Truncate(time.Second)}
	e := controllerEnv(t, clk, c)
	m := e.member(t, tok.GetToken(), func(cfg *Config) {
		cfg.Report = func() Report { return Report{JWTAuthorities: []jwtkeys.Key{want}} }
	})
	run(t, m)
	if first := recv(t, e.states, "the state of the join"); len(first.JWTAuthorities) != 0 {
		t.Fatalf("the join's state has JWT keys: %+v", first.JWTAuthorities)
	}
	st := recv(t, e.states, "the state with east's keys")
	if st.Generation != 2 || !jwtkeys.Equal(st.JWTAuthorities[east], []jwtkeys.Key{want}) || len(st.JWTAuthorities) != 1 {
		t.Fatalf("state %d with JWT keys %+v; want east's key", st.Generation, st.JWTAuthorities)
	}
}
