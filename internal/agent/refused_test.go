package agent

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestEvictedNodeAttestsAgain: once the server evicts the node, the agent
// learns it from its next call, renews nothing, keeps serving the SVID
// still valid, and attests again as soon as its join token file holds a
// token it has not used; then renewals go on.
func TestEvictedNodeAttestsAgain(t *testing.T) {
	ts, a, clock, dataDir := setup(t)
	ctx := context.Background()
	tokenFile := filepath.Join(dataDir, "..", "join-token")
	a.cfg.JoinTokenFile = tokenFile
	if err := os.WriteFile(tokenFile, []byte(a.cfg.JoinToken+"\n"), 0o600); err != nil { // the one used at start
		t.Fatal(err)
	}
	pull(t, a)
	a.Sync(ctx)
	uid1000 := []Selector{{Type: "unix", Value: "uid:1000"}}
	got := a.Cache.X509SVIDs(uid1000)
	if len(got) != 1 {
		t.Fatalf("SVIDs for uid 1000: %d", len(got))
	}
	first := got[0].SVID.Certificates[0]
	firstNode := a.node.Certificates[0]

	if _, err := ts.admin.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: nodeID}); err != nil {
		t.Fatal(err)
	}
	// The workload SVID's renewal is the agent's next call.
	clock.Set(first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 61 / 100))
	a.Sync(ctx)
	if r := a.Refused(); r != pb.ReasonNodeNotAttested {
		t.Fatalf("Refused() = %q after the eviction, want %s", r, pb.ReasonNodeNotAttested)
	}
	// The file still holds the spent token: not tried, and the SVID still
	// valid is served.
	next := a.Sync(ctx)
	if r := a.Refused(); r != pb.ReasonNodeNotAttested {
		t.Fatalf("Refused() = %q with a spent token", r)
	}
	if want := clock.Now().Add(tokenPoll); !next.Equal(want) {
		t.Errorf("next look for a token at %s, want %s (tokenPoll)", next, want)
	}
	if got := a.Cache.X509SVIDs(uid1000); len(got) != 1 || !got[0].SVID.Certificates[0].Equal(first) {
		t.Fatal("stopped serving the still-valid SVID once the node was evicted")
	}
	if m := scrape(t, a); !strings.Contains(m, "meshfed_agent_node_refused 1\n") {
		t.Errorf("/metrics while refused lacks meshfed_agent_node_refused 1")
	}
	if err := a.reattest(ctx); err == nil || !strings.Contains(err.Error(), "agent: the server refuses this node (NODE_NOT_ATTESTED) and the agent has no join token it has not used: make one with 'meshfed token create --spiffe-id "+nodeID+"' and write it to "+tokenFile) {
		t.Fatalf("reattest with the spent token: %v", err)
	}

	// A token the server does not know: tried once (then backing off as
	// from any failed attestation), and not again while the file holds it.
	if err := os.WriteFile(tokenFile, []byte(strings.Repeat("A", 43)), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Set(next)
	// MaxBackoff (8 s) spread to 3/4 by the test's Rand.
	if got, want := a.Sync(ctx), next.Add(6*time.Second); !got.Equal(want) {
		t.Errorf("after an unknown token: next try at %s, want %s (MaxBackoff spread)", got, want)
	}
	next = next.Add(6 * time.Second)
	clock.Set(next)
	if got, want := a.Sync(ctx), next.Add(tokenPoll); !got.Equal(want) {
		t.Errorf("with the refused token still in the file: next look at %s, want %s (tokenPoll, no attempt)", got, want)
	}
	next = next.Add(tokenPoll)

	// A new token in the file: the next try attests again.
	tok, err := ts.admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(tok.GetToken()), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Set(next)
	a.Sync(ctx)
	if r := a.Refused(); r != "" {
		t.Fatalf("Refused() = %q after a new token", r)
	}
	if m := scrape(t, a); !strings.Contains(m, "meshfed_agent_node_refused 0\n") {
		t.Errorf("/metrics after attesting again lacks meshfed_agent_node_refused 0")
	}
	if a.node.Certificates[0].Equal(firstNode) {
		t.Fatal("the node SVID is the one from before the eviction")
	}
	a.Sync(ctx)
	got = a.Cache.X509SVIDs(uid1000)
	if len(got) != 1 || got[0].SVID.Certificates[0].Equal(first) {
		t.Fatal("the workload SVID was not renewed after attesting again")
	}
	if time.Until(got[0].SVID.Certificates[0].NotAfter) <= 0 {
		t.Fatal("renewed to an expired SVID")
	}
}

// TestRefusalOfALeftSVIDIgnored: a refusal of the node arriving on a
// connection the agent has since replaced (a call in flight when it
// reconnected with its renewed node SVID) leaves the agent as it is; on the
// current connection it is taken. A PermissionDenied without the reason is
// an ordinary refusal of one call.
func TestRefusalOfALeftSVIDIgnored(t *testing.T) {
	_, a, _, _ := setup(t)
	st, err := status.New(codes.PermissionDenied, "server: node SVID 1 of "+nodeID+" is not the node's current one").
		WithDetails(&errdetails.ErrorInfo{Reason: pb.ReasonNodeSVIDSuperseded, Domain: pb.ErrorDomain})
	if err != nil {
		t.Fatal(err)
	}
	_, gen := a.nodeClient()
	if err := a.connect(); err != nil { // reconnected with a renewed SVID
		t.Fatal(err)
	}
	a.noteRefusal(st.Err(), gen)
	if r := a.Refused(); r != "" {
		t.Fatalf("Refused() = %q after a refusal on the connection left", r)
	}
	a.noteRefusal(status.Error(codes.PermissionDenied, "server: entry x belongs to another node"), gen+1)
	if r := a.Refused(); r != "" {
		t.Fatalf("Refused() = %q after a PermissionDenied without a reason", r)
	}
	a.noteRefusal(st.Err(), gen+1)
	if r := a.Refused(); r != pb.ReasonNodeSVIDSuperseded {
		t.Fatalf("Refused() = %q after a refusal on the current connection", r)
	}
}

// scrape returns the agent's /metrics.
func scrape(t *testing.T, a *Agent) string {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
