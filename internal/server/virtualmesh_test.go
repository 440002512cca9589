package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	fedpb "github.com/meshfed/meshfed/internal/api/federationv1"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/federation/controller"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/federation/member"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const twoMeshes = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata: {name: virtual-mesh, namespace: service-mesh-hub}
spec:
  mtlsConfig:
    autoRestartPods: true
    shared:
      rootCertificateAuthority:
        generated: {ttlDays: 356, orgName: service-mesh-hub}
  federation: {}
  meshes:
  - {name: east, namespace: service-mesh-hub, trustDomain: east.example}
  - {name: west, namespace: service-mesh-hub, trustDomain: west.example}
`

// Two running servers join a VirtualMesh: each moves from its self-signed
// root to an intermediate of the shared root made from its own key, with no
// restart; each trusts the shared root for the other's trust domain, for
// every workload; and a rotation of the shared root reaches both.
func TestVirtualMeshMembers(t *testing.T) {
	dir := t.TempDir()
	vm, err := virtualmesh.Parse("vm.yaml", []byte(twoMeshes))
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := controller.New(controller.Config{Mesh: vm, DataDir: filepath.Join(dir, "ctrl"), Listen: "127.0.0.1:0", TickInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller Run: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+ctrl.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	admin := fedpb.NewAdminClient(conn)

	member := func(td string) *harness {
		tok, err := admin.CreateToken(context.Background(), &fedpb.CreateTokenRequest{TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		tokenFile := filepath.Join(dir, td+".token")
		if err := os.WriteFile(tokenFile, []byte(tok.GetToken()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return start(t, func(c *Config) {
			c.TrustDomain = td
			c.Federation.VirtualMesh = &VirtualMeshConfig{Controller: ctrl.Addr().String(), ControllerCAFile: ctrl.RootCertFile(), JoinTokenFile: tokenFile}
		})
	}
	east, west := member("east.example"), member("west.example")
	// The member and controller run on real timers in their own
	// goroutines, which this test does not drive: it polls.
	for _, h := range []*harness{east, west} {
		testsync.Eventually(t, h.srv.set.td.Name()+" to sign with the VirtualMesh intermediate", func() bool { return h.srv.auth.FromCACerts() })
	}
	status, err := admin.Status(context.Background(), &fedpb.StatusRequest{})
	if err != nil || len(status.GetRoots()) != 1 {
		t.Fatalf("controller status: %v, %v", status, err)
	}
	shared := status.GetRoots()[0].GetCertificate()
	if !bytes.Equal(east.srv.auth.CA().Roots()[0].Raw, shared) {
		t.Fatal("east's CA does not chain to the shared root")
	}
	if td, ok := east.srv.auth.CA().TrustDomain(); !ok || td.Name() != "east.example" {
		t.Fatalf("east's intermediate is constrained to %v", td)
	}
	// East's published bundle becomes the shared root alone: its self-signed
	// root leaves once nothing signed under it is alive (nothing was).
	selfSigned, err := east.srv.auth.SelfSignedRoot()
	if err != nil || selfSigned == nil {
		t.Fatalf("self-signed root: %v", err)
	}
	east.srv.tick(context.Background())
	if roots := east.srv.bundle.Load().X509Authorities(); len(roots) != 1 || !bytes.Equal(roots[0].Raw, shared) {
		t.Fatalf("east's bundle holds %d roots, want the shared root alone", len(roots))
	}
	// West's trust domain is federated for every east workload, with the
	// shared root as its bundle.
	_, fed, err := east.srv.bundles(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(fed) != 1 || fed[0].GetTrustDomain() != "west.example" || !fed[0].GetAllWorkloads() {
		t.Fatalf("east's federated bundles: %v", fed)
	}
	wb, err := bundle.Parse(spiffeid.RequireTrustDomainFromString("west.example"), fed[0].GetSpiffeBundle())
	if err != nil || len(wb.X509Authorities()) != 1 || !bytes.Equal(wb.X509Authorities()[0].Raw, shared) {
		t.Fatalf("west's bundle at east: %v", err)
	}
	first := east.srv.auth.CA().Certificate()

	// Rotate the shared root: both members end on an intermediate of the new
	// root, still without a restart, and the old root leaves their bundles.
	if _, err := admin.RotateRoot(context.Background(), &fedpb.RotateRootRequest{}); err != nil {
		t.Fatal(err)
	}
	testsync.Eventually(t, "the rotation to finish", func() bool {
		st, err := admin.Status(context.Background(), &fedpb.StatusRequest{})
		return err == nil && st.GetRotationPhase() == "stable" && len(st.GetRoots()) == 1 && !bytes.Equal(st.GetRoots()[0].GetCertificate(), shared)
	})
	st, _ := admin.Status(context.Background(), &fedpb.StatusRequest{})
	newRoot := st.GetRoots()[0].GetCertificate()
	// Each member applies the last state (the old root dropped) and then
	// rebuilds its bundle: wait for the bundle, the end of that.
	for _, h := range []*harness{east, west} {
		testsync.Eventually(t, h.srv.set.td.Name()+" to sign under the new root and publish it alone", func() bool {
			roots := h.srv.bundle.Load().X509Authorities()
			return bytes.Equal(h.srv.auth.CA().Roots()[0].Raw, newRoot) && len(h.srv.vmState.Load().Roots) == 1 &&
				len(roots) == 1 && bytes.Equal(roots[0].Raw, newRoot)
		})
	}
	if east.srv.auth.CA().Certificate().Equal(first) {
		t.Error("east's intermediate was not re-issued")
	}
	if _, err := east.admin(t).GetBundle(context.Background(), &pb.GetBundleRequest{}); err != nil {
		t.Error(err)
	}
}

// With enforceAccessControl the other members' bundles go only to the
// workloads whose entries federate with them: cross-mesh traffic is denied
// unless an entry allows it.
func TestVirtualMeshEnforceAccessControl(t *testing.T) {
	h := start(t, nil)
	roots := h.srv.auth.CA().Roots()
	for _, enforce := range []bool{false, true} {
		h.srv.vmState.Store(&member.State{Name: "vm", Roots: roots, SigningRoot: roots[0], Generation: 3, EnforceAccessControl: enforce,
			TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("east.example"), spiffeid.RequireTrustDomainFromString("west.example")}})
		got, err := h.srv.virtualMeshBundles()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].GetTrustDomain() != "west.example" || got[0].GetAllWorkloads() == enforce || got[0].GetSequence() != 3 {
			t.Errorf("enforceAccessControl %v: %v", enforce, got)
		}
	}
}

// A member reports its own JWT-SVID keys, and the other members' keys the
// controller sent go into their federated bundles, expired ones left out.
func TestVirtualMeshJWTKeys(t *testing.T) {
	h := start(t, nil)
	own := h.srv.virtualMeshReport().JWTAuthorities
	published := h.srv.bundle.Load().JWTAuthorities()
	if len(own) != 1 || len(published) != 1 || published[own[0].ID] == nil {
		t.Fatalf("reported keys %+v, published %v; want the server's one key", own, published)
	}
	// A store that cannot be read does not withdraw the keys reported.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if got := h.srv.jwtKeysForMembers(gone); !jwtkeys.Equal(got, own) {
		t.Errorf("with the store unreadable: %+v, want the keys reported last", got)
	}
	key, der := testjwt.NewKey(t)
	now := h.srv.clock()
	west := spiffeid.RequireTrustDomainFromString("west.example")
	roots := h.srv.auth.CA().Roots()
	h.srv.vmState.Store(&member.State{Name: "vm", Roots: roots, SigningRoot: roots[0], Generation: 4,
		TrustDomains: []spiffeid.TrustDomain{h.srv.TrustDomain(), west},
		JWTAuthorities: map[spiffeid.TrustDomain][]jwtkeys.Key{west: {
			{ID: "current", Public: key.Public(), DER: der, ExpiresAt: now.Add(time.Hour)},
			{ID: "expired", Public: key.Public(), DER: der, ExpiresAt: now.Add(-time.Second)},
			{ID: "no-expiry", Public: key.Public(), DER: der},
		}}})
	got, err := h.srv.virtualMeshBundles()
	if err != nil || len(got) != 1 {
		t.Fatalf("bundles %v, %v", got, err)
	}
	b, err := spiffebundle.Parse(west, got[0].GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}
	keys := b.JWTAuthorities()
	if len(keys) != 2 || keys["current"] == nil || keys["no-expiry"] == nil || len(b.X509Authorities()) != len(roots) {
		t.Errorf("west's bundle: JWT keys %v, %d X.509 authorities", keys, len(b.X509Authorities()))
	}
}
