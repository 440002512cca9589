package workloadapi_test

import (
	"context"
	"testing"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/api/agentv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// fixedPolicies is a PolicySource that never changes.
type fixedPolicies struct{ snap *agentv1.PolicySnapshot }

func (f fixedPolicies) Policies() *agentv1.PolicySnapshot { return f.snap }
func (fixedPolicies) PoliciesChanged() <-chan struct{}    { return nil }

func policyClient(t *testing.T, path string) agentv1.PolicyDiscoveryClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewPolicyDiscoveryClient(conn)
}

func watchPolicies(ctx context.Context, c agentv1.PolicyDiscoveryClient) (*agentv1.PolicySnapshot, error) {
	s, err := c.WatchPolicies(ctx, &agentv1.WatchPoliciesRequest{})
	if err != nil {
		return nil, err
	}
	return s.Recv()
}

// TestWatchPolicies: any caller the attestor identifies gets the policy,
// entries or not; one it cannot identify is refused as Workload API callers
// are, and a call without the security header before that.
func TestWatchPolicies(t *testing.T) {
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	w.src.entries = nil // this caller has no identity: policy is not secret
	snap := &agentv1.PolicySnapshot{Revision: 7, Policies: []*agentv1.Policy{{Kind: "PeerAuthentication", Namespace: "default", Name: "default", Yaml: []byte("kind: PeerAuthentication\n")}}}
	header := metadata.AppendToOutgoingContext(t.Context(), "workload.spiffe.io", "true")

	c := policyClient(t, serve(t, workloadapi.Config{Source: w.src, Policies: fixedPolicies{snap}}))
	got, err := watchPolicies(header, c)
	if err != nil || !proto.Equal(got, snap) {
		t.Fatalf("WatchPolicies = %v, %v; want %v", got, err, snap)
	}
	_, err = watchPolicies(t.Context(), c)
	wantStatus(t, err, codes.InvalidArgument, "security header missing")

	refused := policyClient(t, serve(t, workloadapi.Config{Source: w.src, Policies: fixedPolicies{snap}, Attestor: failingAttestor{a}}))
	_, err = watchPolicies(header, refused)
	wantStatus(t, err, codes.Unauthenticated, "could not attest the caller: attest: process 7 has exited")

	// A source that is not a PolicySource, and no Policies: not served.
	none := policyClient(t, serve(t, workloadapi.Config{Source: w.src}))
	_, err = watchPolicies(header, none)
	wantStatus(t, err, codes.Unimplemented, "unknown service meshfed.agent.v1.PolicyDiscovery")
}
