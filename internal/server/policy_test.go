package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

const (
	strictDoc = `# the namespace default is STRICT
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`
	allowDoc = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-sleep
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
`
)

// watchAsNode attests a node and opens its Watch stream, returning the
// stream after its first snapshot, and that snapshot.
func watchAsNode(t *testing.T, h *harness, ctx context.Context) (pb.Node_WatchClient, *pb.WatchResponse) {
	t.Helper()
	cert := attestNodeCert(t, h, "spiffe://east.example/node/host-1")
	stream, err := pb.NewNodeClient(h.dial(t, &cert)).Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return stream, first
}

// TestWatchCarriesPolicies: a Watch stream receives the whole policy set at
// once after an apply, after an update (the creation time kept, generation
// moved) and after a delete.
func TestWatchCarriesPolicies(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, first := watchAsNode(t, h, ctx)
	if len(first.GetPolicies()) != 0 || first.GetPolicyRevision() != 0 {
		t.Fatalf("first snapshot has policies: %v, revision %d", first.GetPolicies(), first.GetPolicyRevision())
	}
	recv := func(what string) *pb.WatchResponse {
		t.Helper()
		snap, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return snap
	}

	applied, err := admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{
		{Name: "policies.yaml", Data: []byte(strictDoc + "---\n" + allowDoc)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	wantApplied := []*pb.AppliedPolicy{
		{Kind: "PeerAuthentication", Namespace: "default", Name: "default", Result: "created"},
		{Kind: "AuthorizationPolicy", Namespace: "foo", Name: "allow-sleep", Result: "created"},
	}
	if !equalMessages(applied.GetPolicies(), wantApplied) {
		t.Errorf("ApplyPolicies = %v, want %v", applied.GetPolicies(), wantApplied)
	}
	snap := recv("after apply")
	got := snap.GetPolicies()
	if len(got) != 2 || snap.GetPolicyRevision() != applied.GetPolicyRevision() || snap.GetPolicyRevision() == 0 {
		t.Fatalf("snapshot after apply: %d policies, revision %d; want 2, %d", len(got), snap.GetPolicyRevision(), applied.GetPolicyRevision())
	}
	// Listed by kind, namespace and name; each document's own text.
	if got[0].GetKind() != "AuthorizationPolicy" || string(got[0].GetYaml()) != allowDoc ||
		got[1].GetKind() != "PeerAuthentication" || string(got[1].GetYaml()) != strictDoc || got[1].GetGeneration() != 1 {
		t.Fatalf("snapshot after apply: %v", got)
	}
	created := got[1].GetCreatedAtMs()

	// A change of entries moves the stream, not the policies: they are not
	// sent again.
	if _, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: "spiffe://east.example/node/host-1", SpiffeId: "spiffe://east.example/ns/foo/sa/sleep",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}},
	}}); err != nil {
		t.Fatal(err)
	}
	snap = recv("after an entry change")
	if len(snap.GetEntries()) != 1 || len(snap.GetPolicies()) != 0 || !snap.GetPoliciesUnchanged() || snap.GetPolicyRevision() != applied.GetPolicyRevision() {
		t.Fatalf("snapshot after an entry change: %d entries, %d policies, unchanged %v, revision %d; want 1, 0, true, %d",
			len(snap.GetEntries()), len(snap.GetPolicies()), snap.GetPoliciesUnchanged(), snap.GetPolicyRevision(), applied.GetPolicyRevision())
	}

	permissive := strings.Replace(strictDoc, "mode: STRICT\n", "mode: PERMISSIVE\n", 1)
	if _, err := admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{{Name: "p.yaml", Data: []byte(permissive)}}}); err != nil {
		t.Fatal(err)
	}
	snap = recv("after update")
	if snap.GetPoliciesUnchanged() || len(snap.GetPolicies()) != 2 {
		t.Fatalf("snapshot after update: unchanged %v, %d policies", snap.GetPoliciesUnchanged(), len(snap.GetPolicies()))
	}
	if p := snap.GetPolicies()[1]; string(p.GetYaml()) != permissive || p.GetGeneration() != 2 || p.GetCreatedAtMs() != created {
		t.Errorf("updated policy: generation %d, created %d (want 2, %d), yaml %q", p.GetGeneration(), p.GetCreatedAtMs(), created, p.GetYaml())
	}

	del, err := admin.DeletePolicy(ctx, &pb.DeletePolicyRequest{Kind: "AuthorizationPolicy", Namespace: "foo", Name: "allow-sleep"})
	if err != nil {
		t.Fatal(err)
	}
	snap = recv("after delete")
	if len(snap.GetPolicies()) != 1 || snap.GetPolicies()[0].GetName() != "default" || snap.GetPolicyRevision() != del.GetPolicyRevision() {
		t.Errorf("snapshot after delete: %v, revision %d; want only default, %d", snap.GetPolicies(), snap.GetPolicyRevision(), del.GetPolicyRevision())
	}
	_, err = admin.DeletePolicy(ctx, &pb.DeletePolicyRequest{Kind: "AuthorizationPolicy", Namespace: "foo", Name: "allow-sleep"})
	wantStatus(t, err, codes.NotFound, "store: policy AuthorizationPolicy foo/allow-sleep: not found")
	_, err = admin.DeletePolicy(ctx, &pb.DeletePolicyRequest{Kind: "Gateway", Namespace: "foo", Name: "x"})
	wantStatus(t, err, codes.InvalidArgument, `server: kind "Gateway": give PeerAuthentication, RequestAuthentication or AuthorizationPolicy`)
}

// TestApplyPoliciesRefuses: a bad document anywhere refuses the whole apply
// with its file and line, and nothing is stored.
func TestApplyPoliciesRefuses(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx := context.Background()
	if _, err := admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{{Name: "stored.yaml", Data: []byte(allowDoc)}}}); err != nil {
		t.Fatal(err)
	}
	before, err := h.srv.store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files []*pb.PolicyFile
		code  codes.Code
		want  string
	}{
		{"bad value in the second file", []*pb.PolicyFile{
			{Name: "good.yaml", Data: []byte(strictDoc)},
			{Name: "bad.yaml", Data: []byte(strings.Replace(allowDoc, "name: allow-sleep", "name: deny", 1) + "---\n" + strings.Replace(strictDoc, "mode: STRICT", "mode: STRIKT", 1))},
		}, codes.InvalidArgument, `policy: bad.yaml:20: PeerAuthentication default/default: spec.mtls.mode: unknown value "STRIKT"`},
		{"not YAML", []*pb.PolicyFile{{Name: "broken.yaml", Data: []byte(strictDoc + "---\nkind: [\n")}},
			codes.InvalidArgument, "policy: broken.yaml:11: not YAML: yaml: line 1: did not find expected node content"},
		{"twice in one apply", []*pb.PolicyFile{{Name: "a.yaml", Data: []byte(strictDoc)}, {Name: "b.yaml", Data: []byte(strictDoc)}},
			codes.InvalidArgument, "policy: b.yaml:1: PeerAuthentication default/default is also defined at a.yaml:1"},
		{"name Kubernetes refuses", []*pb.PolicyFile{{Name: "n.yaml", Data: []byte(strings.Replace(strictDoc, "name: default", "name: Default_1", 1))}},
			codes.InvalidArgument, `policy: n.yaml:1: PeerAuthentication default/Default_1: metadata.name: "Default_1" is not a Kubernetes name`},
		{"no documents", []*pb.PolicyFile{{Name: "empty.yaml", Data: []byte("# nothing\n---\n")}},
			codes.InvalidArgument, "server: no policy documents in the files given"},
		{"no files", nil, codes.InvalidArgument, "server: send 1 to 1024 policy files, not 0"},
		{"no name", []*pb.PolicyFile{{Data: []byte(strictDoc)}}, codes.InvalidArgument, "server: a policy file needs a name of 1 to 1024 bytes"},
	}
	for _, tt := range tests {
		_, err := admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: tt.files})
		wantStatus(t, err, tt.code, tt.want)
	}
	// Too big for the admin socket: gRPC refuses it before the server reads it.
	_, err = admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{{Name: "big.yaml", Data: make([]byte, MaxRequestBytes)}}})
	wantStatus(t, err, codes.ResourceExhausted, "larger than max")

	// A dry run says what would happen and stores nothing.
	dry, err := admin.ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{DryRun: true, Files: []*pb.PolicyFile{{Name: "p.yaml", Data: []byte(allowDoc + "---\n" + strictDoc)}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []*pb.AppliedPolicy{
		{Kind: "AuthorizationPolicy", Namespace: "foo", Name: "allow-sleep", Result: "unchanged"},
		{Kind: "PeerAuthentication", Namespace: "default", Name: "default", Result: "created"},
	}
	if !equalMessages(dry.GetPolicies(), want) {
		t.Errorf("dry run = %v, want %v", dry.GetPolicies(), want)
	}

	list, err := admin.ListPolicies(ctx, &pb.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetPolicies()) != 1 || list.GetPolicies()[0].GetName() != "allow-sleep" {
		t.Errorf("after refused applies the store holds %v", list.GetPolicies())
	}
	if after, err := h.srv.store.Revision(ctx); err != nil || after != before {
		t.Errorf("store revision moved from %d to %d (%v)", before, after, err)
	}
}

// TestDocumentText: each document's own text is cut at the separators
// policy.Parse splits at, comments kept.
func TestDocumentText(t *testing.T) {
	data := "# head\napiVersion: v1\n---   # two\r\nkind: B\nx: 1\n--- \nkind: C"
	tests := []struct {
		line int
		want string
	}{
		{1, "# head\napiVersion: v1\n"},
		{4, "kind: B\nx: 1\n"},
		{7, "kind: C\n"},
	}
	for _, tt := range tests {
		if got := string(documentText([]byte(data), tt.line)); got != tt.want {
			t.Errorf("documentText(line %d) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func equalMessages[M proto.Message](a, b []M) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// TestPoliciesFromAnotherServer: a policy applied on one server of the
// trust domain reaches the agents of another server on the same database
// when that server next looks at the store (its poll; tick here).
func TestPoliciesFromAnotherServer(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "shared.db")
	shared := func(c *Config) { c.Datastore = db }
	a := startWith(t, Options{PollInterval: time.Hour}, shared)
	b := startWith(t, Options{PollInterval: time.Hour}, shared)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, first := watchAsNode(t, b, ctx)
	if len(first.GetPolicies()) != 0 {
		t.Fatalf("first snapshot from b has policies: %v", first.GetPolicies())
	}
	applied, err := a.admin(t).ApplyPolicies(ctx, &pb.ApplyPoliciesRequest{Files: []*pb.PolicyFile{{Name: "p.yaml", Data: []byte(strictDoc)}}})
	if err != nil {
		t.Fatal(err)
	}
	b.srv.tick(ctx)
	snap, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.GetPolicies()) != 1 || string(snap.GetPolicies()[0].GetYaml()) != strictDoc || snap.GetPolicyRevision() != applied.GetPolicyRevision() {
		t.Errorf("b pushed %v, revision %d; want the policy applied on a, revision %d", snap.GetPolicies(), snap.GetPolicyRevision(), applied.GetPolicyRevision())
	}
}
