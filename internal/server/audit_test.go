package server

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
)

// TestAuditRetention: the maintenance round deletes the audit rows of
// certificates that expired more than audit.retention ago, once a minute at
// most, and counts them; rows of certificates still valid stay.
func TestAuditRetention(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, func(c *Config) { c.Audit.Retention = "1h" })
	admin := h.admin(t)
	ctx := context.Background()
	// An hour's node SVID for host-1, a day's for host-2.
	tok, err := admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: hostID})
	if err != nil {
		t.Fatal(err)
	}
	_, csr := newCSR(t)
	if _, err := pb.NewNodeClient(h.dial(t, nil)).AttestNode(ctx, &pb.AttestNodeRequest{
		Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr, TtlSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	attestNodeCert(t, h, "spiffe://east.example/node/host-2")
	issued := func() int {
		resp, err := admin.ListIssued(ctx, &pb.ListIssuedRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.GetIssued())
	}
	h.srv.tick(ctx)
	if n := issued(); n != 2 {
		t.Fatalf("%d audit rows before any expired, want 2", n)
	}
	// The clock stands still for the server, so host-1's SVID expires at
	// exactly start+1h, and its row may go at start+2h.
	clock.Advance(119*time.Minute + 30*time.Second) // expired 59m30s ago
	h.srv.tick(ctx)
	if n := issued(); n != 2 {
		t.Fatalf("%d audit rows within the retention, want 2", n)
	}
	clock.Advance(40 * time.Second) // past the retention, but 40s since the last round
	h.srv.tick(ctx)
	if n := issued(); n != 2 {
		t.Fatalf("%d audit rows 40s after the last round, want 2 (a round a minute at most)", n)
	}
	clock.Advance(30 * time.Second)
	h.srv.tick(ctx)
	if n := issued(); n != 1 {
		t.Fatalf("%d audit rows after the retention, want 1 (the valid one)", n)
	}
	body := h.metricsText(t)
	if !strings.Contains(body, "meshfed_server_audit_pruned_rows_total 1\n") {
		t.Error("/metrics lacks meshfed_server_audit_pruned_rows_total 1")
	}
}
