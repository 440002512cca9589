package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/meshfed/meshfed/internal/testsync"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// withoutWestWithNorth is testMesh with west removed from spec.meshes and
// north added, and access control off.
var withoutWestWithNorth = strings.NewReplacer(
	"  - {name: west, namespace: service-mesh-hub, trustDomain: west.example}\n",
	"  - {name: north, namespace: service-mesh-hub, trustDomain: north.example}\n",
	"enforceAccessControl: true", "enforceAccessControl: false",
).Replace(testMesh)

// fileHarness runs a controller reading its VirtualMesh from a file in dir,
// as 'meshfed federation run --config' does, logging to logs.
func fileHarness(t *testing.T, dir string, clock *fakeClock, logs *testsync.Buffer) (*harness, string) {
	t.Helper()
	file := filepath.Join(dir, "vm.yaml")
	if _, err := os.Stat(file); err != nil {
		writeMesh(t, file, testMesh)
	}
	vm, err := virtualmesh.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, filepath.Join(dir, "data"), clock, func(c *Config) {
		c.Mesh, c.MeshFile = vm, file
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	return h, file
}

func writeMesh(t *testing.T, file, yaml string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) mustReload(want bool) {
	h.t.Helper()
	changed, err := h.c.ReloadMesh()
	if err != nil || changed != want {
		h.t.Fatalf("ReloadMesh: changed %v, %v; want changed %v and no error", changed, err, want)
	}
}

func memberNames(st *pb.StatusResponse) []string {
	var out []string
	for _, m := range st.GetMembers() {
		out = append(out, m.GetTrustDomain())
	}
	return out
}

// Editing the VirtualMesh file adds and removes members without a restart:
// the removed one is refused at once, on its open Watch stream too, loses
// its unused tokens, and leaves the trust domains every other member is
// sent; the added one can be given a token and join.
func TestReloadMeshRemovesAndAddsMembers(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: t0}
	logs := &testsync.Buffer{}
	h, file := fileHarness(t, dir, clock, logs)
	e := h.member(east).mustJoin()
	w := h.member(west).mustJoin()
	spare := h.token(west)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	eastStream, err := e.client().Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	westStream, err := w.client().Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []pb.Controller_WatchClient{eastStream, westStream} {
		if st, err := s.Recv(); err != nil || st.GetGeneration() != 1 || !slices.Equal(st.GetTrustDomains(), []string{"east.example", "west.example"}) {
			t.Fatalf("first state: %v, %v", st, err)
		}
	}

	h.mustReload(false) // nothing changed yet
	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(true)

	st, err := eastStream.Recv()
	if err != nil || st.GetGeneration() != 2 || !slices.Equal(st.GetTrustDomains(), []string{"east.example", "north.example"}) || st.GetEnforceAccessControl() {
		t.Fatalf("east's next state: %v, %v; want generation 2, east and north, no access control", st, err)
	}
	const notMember = `PermissionDenied: federation controller: west.example is not a member of VirtualMesh "virtual-mesh" (spec.meshes)`
	if _, err := westStream.Recv(); statusText(err) != notMember {
		t.Errorf("west's open Watch stream: %s\nwant %s", statusText(err), notMember)
	}
	if got := statusText(w.report(&pb.MemberReport{})); got != notMember {
		t.Errorf("west's report: %s\nwant %s", got, notMember)
	}
	if got, want := statusText(h.member(west).join(spare)), "Unauthenticated: federation controller: join token sha256:"+hashPrefix(spare)+" is unknown, expired or already used"; got != want {
		t.Errorf("west's unused token after the removal:\n got %s\nwant %s", got, want)
	}
	_, err = h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: "west.example"})
	if got, want := statusText(err), `InvalidArgument: federation controller: west.example is not a member of VirtualMesh "virtual-mesh"; add it to spec.meshes in `+file+` (read again within 5s)`; got != want {
		t.Errorf("a token for west:\n got %s\nwant %s", got, want)
	}
	if got := memberNames(h.status()); !slices.Equal(got, []string{"east.example", "north.example"}) {
		t.Errorf("status members: %v", got)
	}
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2})
	h.member(north).mustJoin().mustReport(&pb.MemberReport{AppliedGeneration: 2})
	for _, want := range []string{
		`level=WARN msg="member left spec.meshes; its record is dropped and it can no longer call" virtual_mesh=virtual-mesh trust_domain=west.example`,
		`level=INFO msg="VirtualMesh reloaded" virtual_mesh=virtual-mesh file=` + file + ` members=east.example,north.example added=north.example removed=west.example enforce_access_control=false generation=2 members_told=true`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s\n%s", want, logs.String())
		}
	}

	// The same content again, or rewritten unchanged, is no change.
	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(false)

	// A restart reads the file as it is now and finds nothing to change.
	h.stop()
	h2, _ := fileHarness(t, dir, clock, logs)
	if st := h2.status(); st.GetGeneration() != 2 || !slices.Equal(memberNames(st), []string{"east.example", "north.example"}) || !st.GetMembers()[1].GetJoined() {
		t.Errorf("after a restart: generation %d, members %v", st.GetGeneration(), st.GetMembers())
	}
	// Adding west back: it joins again, with a new token.
	writeMesh(t, file, testMesh)
	h2.mustReload(true)
	w.h = h2
	w.roots = h2.rootsFile()
	if got := statusText(w.report(&pb.MemberReport{})); got != `FailedPrecondition: federation controller: west.example has not joined VirtualMesh "virtual-mesh"; join with a token first` {
		t.Errorf("west added back, with its old SVID: %s", got)
	}
	h2.member(west).mustJoin().mustReport(&pb.MemberReport{AppliedGeneration: 3})
}

// A file that does not parse, or renames the VirtualMesh, changes nothing
// and is logged once; a good file afterwards is applied.
func TestReloadMeshRefusals(t *testing.T) {
	dir := t.TempDir()
	logs := &testsync.Buffer{}
	h, file := fileHarness(t, dir, &fakeClock{now: t0}, logs)
	h.member(west).mustJoin()
	cases := []struct {
		name, yaml, want string
	}{
		{"bad YAML", "apiVersion: [", "virtualmesh: " + file + ":1: did not find expected node content"},
		{"unknown field", strings.Replace(testMesh, "  federation:", "  federashun:", 1), ""},
		{"renamed", strings.Replace(testMesh, "name: virtual-mesh", "name: other-mesh", 1),
			`metadata.name changed from "virtual-mesh" to "other-mesh": a controller serves one VirtualMesh, whose name is its SPIFFE trust domain; put the name back, or run another controller with its own --data-dir`},
		{"missing", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "missing" {
				if err := os.Remove(file); err != nil {
					t.Fatal(err)
				}
			} else {
				writeMesh(t, file, tc.yaml)
			}
			before := strings.Count(logs.String(), "VirtualMesh reload refused")
			for range 2 {
				changed, err := h.c.ReloadMesh()
				if changed || err == nil || (tc.want != "" && err.Error() != tc.want) {
					t.Fatalf("ReloadMesh: changed %v, %v; want a refusal %q", changed, err, tc.want)
				}
			}
			if n := strings.Count(logs.String(), "VirtualMesh reload refused; the one in use stays"); n != before+1 {
				t.Errorf("logged %d times, want once:\n%s", n-before, logs.String())
			}
			st := h.status()
			if st.GetGeneration() != 1 || !slices.Equal(memberNames(st), []string{"east.example", "west.example"}) {
				t.Errorf("after the refusal: generation %d, members %v", st.GetGeneration(), memberNames(st))
			}
			if _, err := h.c.ReloadMesh(); st.GetConfigError() == "" || st.GetConfigError() != err.Error() {
				t.Errorf("status config_error %q, want the refusal %v", st.GetConfigError(), err)
			}
		})
	}
	if !strings.Contains(logs.String(), `spec.federashun`) {
		t.Errorf("the unknown field's refusal does not name it:\n%s", logs.String())
	}
	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(true)
	if st := h.status(); st.GetGeneration() != 2 || !slices.Equal(memberNames(st), []string{"east.example", "north.example"}) || st.GetConfigError() != "" {
		t.Errorf("the good file after the refusals: generation %d, members %v, config_error %q", st.GetGeneration(), memberNames(st), st.GetConfigError())
	}
}

// A member's JWT-SVID keys, reported, reach every member in the next state;
// the same keys reported again change nothing, bad ones are refused, and a
// removed member's keys leave with it.
func TestMemberJWTKeysPassedOn(t *testing.T) {
	dir := t.TempDir()
	h, file := fileHarness(t, dir, &fakeClock{now: t0}, &testsync.Buffer{})
	e := h.member(east).mustJoin()
	w := h.member(west).mustJoin()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.client().Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := stream.Recv(); err != nil || len(st.GetJwtAuthorities()) != 0 {
		t.Fatalf("first state: %v, %v", st, err)
	}
	_, der := testjwt.NewKey(t)
	keys := []*pb.JWTAuthority{{KeyId: "west-1", PublicKey: der, ExpiresAt: t0.Add(day).Unix()}}
	w.mustReport(&pb.MemberReport{JwtAuthorities: keys})
	st, err := stream.Recv()
	if err != nil || st.GetGeneration() != 2 || len(st.GetJwtAuthorities()) != 1 {
		t.Fatalf("after west reported a key: %v, %v", st, err)
	}
	if got := st.GetJwtAuthorities()[0]; got.GetTrustDomain() != "west.example" || len(got.GetAuthorities()) != 1 ||
		got.GetAuthorities()[0].GetKeyId() != "west-1" || !bytes.Equal(got.GetAuthorities()[0].GetPublicKey(), der) ||
		got.GetAuthorities()[0].GetExpiresAt() != t0.Add(day).Unix() {
		t.Errorf("west's keys as sent: %v", got)
	}
	w.mustReport(&pb.MemberReport{JwtAuthorities: keys})
	if st := h.status(); st.GetGeneration() != 2 || !slices.Equal(st.GetMembers()[1].GetJwtKeyIds(), []string{"west-1"}) {
		t.Errorf("after the same keys again: generation %d (want 2, unchanged), west's key IDs in the status %v", st.GetGeneration(), st.GetMembers()[1].GetJwtKeyIds())
	}
	// East's keys may not take the members' keys past the bound.
	defer func(old int) { maxStateJWTBytes = old }(maxStateJWTBytes)
	maxStateJWTBytes = 2 * (len("west-1") + len(der))
	big := []*pb.JWTAuthority{{KeyId: "east-1", PublicKey: der}, {KeyId: "east-2", PublicKey: der}}
	if got := statusText(e.report(&pb.MemberReport{JwtAuthorities: big})); got != fmt.Sprintf("InvalidArgument: federation controller: report: with these JWT authorities the members' keys would take %d bytes of every federation state; at most %d", 3*(len("west-1")+len(der)), maxStateJWTBytes) {
		t.Errorf("a report past the bound: %s", got)
	}
	e.mustReport(&pb.MemberReport{JwtAuthorities: big[:1]}) // exactly at it
	if st, err := stream.Recv(); err != nil || len(st.GetJwtAuthorities()) != 2 {
		t.Fatalf("after east reported one key: %v, %v", st, err)
	}
	bad := []*pb.JWTAuthority{{KeyId: "west-2", PublicKey: []byte("not a key")}}
	if got := statusText(w.report(&pb.MemberReport{JwtAuthorities: bad})); !strings.HasPrefix(got, `InvalidArgument: federation controller: report: JWT authority "west-2": public key does not parse`) {
		t.Errorf("a report with a bad key: %s", got)
	}

	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(true)
	if st, err := stream.Recv(); err != nil || len(st.GetJwtAuthorities()) != 1 || st.GetJwtAuthorities()[0].GetTrustDomain() != "east.example" {
		t.Errorf("after west left: %v, %v; want east's keys only", st, err)
	}
}

// A rotation waiting for a member that is gone moves on by itself once the
// member is removed from spec.meshes, without --force.
func TestRemovingAMemberUnblocksARotation(t *testing.T) {
	dir := t.TempDir()
	h, file := fileHarness(t, dir, &fakeClock{now: t0}, &testsync.Buffer{})
	e := h.member(east).mustJoin()
	h.member(west).mustJoin() // and then never reports again
	rotate(t, h, false)
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2, Agents: 1, AgentsCurrent: 1})
	if st := h.status(); st.GetRotationPhase() != "publishing" || !strings.Contains(st.GetWaitingFor(), "west.example") {
		t.Fatalf("before the removal: phase %s, waiting for %q", st.GetRotationPhase(), st.GetWaitingFor())
	}
	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(true)
	// East applies the new generation; the phase advances by itself.
	e.mustReport(&pb.MemberReport{AppliedGeneration: 3, Agents: 1, AgentsCurrent: 1})
	if st := h.status(); st.GetRotationPhase() != "reissuing" || strings.Contains(st.GetWaitingFor(), "west.example") {
		t.Errorf("after west was removed: phase %s, waiting for %q; want reissuing, waiting for east only", st.GetRotationPhase(), st.GetWaitingFor())
	}
}

// A member removed from spec.meshes between a Watch's authentication (the
// stream interceptor) and its first state is refused that state: the
// handler checks the member again after reading the state it would send,
// as it does before every later one. Here the handler is called as the
// interceptor would have called it before the removal.
func TestWatchRefusesAMemberRemovedBeforeItsFirstState(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: t0}
	h, file := fileHarness(t, dir, clock, &testsync.Buffer{})
	w := h.member(west).mustJoin()
	writeMesh(t, file, withoutWestWithNorth)
	h.mustReload(true)

	ctx, cancel := context.WithCancel(peer.NewContext(context.Background(), &peer.Peer{
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: tlsChain(t, w.svid)}},
	}))
	defer cancel()
	stream := &recordingStream{ctx: context.WithValue(ctx, memberKey{}, west), sent: cancel}
	err := (&controllerService{c: h.c}).Watch(&pb.WatchRequest{}, stream)
	const notMember = `PermissionDenied: federation controller: west.example is not a member of VirtualMesh "virtual-mesh" (spec.meshes)`
	if len(stream.msgs) != 0 || statusText(err) != notMember {
		t.Fatalf("Watch of a removed member: %d states sent, %s; want none, %s", len(stream.msgs), statusText(err), notMember)
	}
}

// recordingStream is a Watch stream that keeps what is sent and calls sent
// after each message.
type recordingStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*pb.FederationState
	sent func()
}

func (s *recordingStream) Context() context.Context { return s.ctx }

func (s *recordingStream) Send(m *pb.FederationState) error {
	s.msgs = append(s.msgs, m)
	s.sent()
	return nil
}
