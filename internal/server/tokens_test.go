package server

import (
	"context"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

// TestListAndRevokeJoinTokens: unused tokens are listed by the id their
// creation gave; a revoked one attests nothing; the maintenance round
// deletes expired ones.
func TestListAndRevokeJoinTokens(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, nil)
	admin := h.admin(t)
	ctx := context.Background()
	create := func(id string, ttl time.Duration) *pb.CreateJoinTokenResponse {
		t.Helper()
		tok, err := admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: int64(ttl / time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	first := create(hostID, time.Hour)
	second := create(hostID, 2*time.Hour)
	create("spiffe://east.example/node/host-2", time.Hour)
	if len(first.GetId()) != len("sha256:")+8 || first.GetId() == second.GetId() {
		t.Fatalf("token ids %q, %q", first.GetId(), second.GetId())
	}
	all, err := admin.ListJoinTokens(ctx, &pb.ListJoinTokensRequest{})
	if err != nil || len(all.GetTokens()) != 3 {
		t.Fatalf("ListJoinTokens: %v, %v; want 3", all, err)
	}
	mine, err := admin.ListJoinTokens(ctx, &pb.ListJoinTokensRequest{SpiffeId: hostID})
	if err != nil || len(mine.GetTokens()) != 2 || mine.GetTokens()[0].GetId() != first.GetId() || mine.GetTokens()[1].GetId() != second.GetId() {
		t.Fatalf("ListJoinTokens(host-1): %v, %v; want first, second", mine, err)
	}

	resp, err := admin.RevokeJoinTokens(ctx, &pb.RevokeJoinTokensRequest{SpiffeId: hostID, Id: first.GetId()})
	if err != nil || resp.GetRevoked() != 1 {
		t.Fatalf("RevokeJoinTokens(first): %v, %v", resp, err)
	}
	_, csr := newCSR(t)
	_, err = pb.NewNodeClient(h.dial(t, nil)).AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: first.GetToken()}, Csr: csr})
	wantStatus(t, err, codes.Unauthenticated, "is unknown, expired or already used")
	_, err = admin.RevokeJoinTokens(ctx, &pb.RevokeJoinTokensRequest{SpiffeId: hostID, Id: first.GetId()})
	wantStatus(t, err, codes.NotFound, "server: no unused join token "+first.GetId()+" for "+hostID)
	_, err = admin.RevokeJoinTokens(ctx, &pb.RevokeJoinTokensRequest{SpiffeId: hostID, Id: "abcd"})
	wantStatus(t, err, codes.InvalidArgument, `server: token id "abcd": want sha256: and 8 to 64 hex digits`)
	if resp, err := admin.RevokeJoinTokens(ctx, &pb.RevokeJoinTokensRequest{SpiffeId: hostID}); err != nil || resp.GetRevoked() != 1 {
		t.Fatalf("RevokeJoinTokens(host-1, all): %v, %v", resp, err)
	}

	// host-2's token expires; the next round deletes it.
	host2 := spiffeid.RequireFromString("spiffe://east.example/node/host-2")
	if left, err := h.srv.store.ListJoinTokens(ctx, host2, clock.Now()); err != nil || len(left) != 1 {
		t.Fatalf("host-2's token before it expired: %v, %v", left, err)
	}
	before := clock.Now()
	clock.Advance(time.Hour + time.Minute)
	h.srv.tick(ctx)
	if left, err := h.srv.store.ListJoinTokens(ctx, host2, before); err != nil || len(left) != 0 {
		t.Errorf("host-2's expired token after a round: %v, %v; want it deleted", left, err)
	}
}
