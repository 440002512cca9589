package member

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/federation/controller"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
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
func startController(t *testing.T, clk *fakeClock) (*controller.Controller, pb.AdminClient) {
	t.Helper()
	vm, err := virtualmesh.Parse("test.yaml", []byte(testMesh))
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{
		Mesh:         vm,
		DataDir:      t.TempDir(),
		Listen:       "127.0.0.1:0",
		Clock:        clk.Now,
		TickInterval: time.Hour, // no maintenance during the test
	})
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
	e := &memberEnv{
		clk:    clk,
		addr:   c.Addr().String(),
		caFile: c.RootCertFile(),
		dir:    filepath.Join(t.TempDir(), "virtualmesh"),
		logs:   newLogRecorder(),
		states: make(chan State, 100),
	}
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
