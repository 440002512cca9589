package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
)

// A workload gets a JWT-SVID over the Workload API that validates with the
// JWT keys of the bundle the server publishes; the agent keeps it until half
// its life, and never serves an expired one.
func TestWorkloadJWTSVID(t *testing.T) {
	ts, a, clock, _ := setup(t)
	ctx := context.Background()
	// An entry for this test process, the workload.
	me := []Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())}}
	e, err := ts.admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: nodeID, SpiffeId: "spiffe://east.example/ns/default/sa/api",
		Selectors: []*pb.Selector{{Type: me[0].Type, Value: me[0].Value}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pull(t, a)
	a.Sync(ctx)
	m, err := ts.admin.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	published, err := bundle.Parse(ts.srv.TrustDomain(), m.GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}
	if local, _ := a.Cache.JWTBundles(); local == nil || !local.Equal(published.JWTBundle()) || local.Empty() {
		t.Fatalf("the agent's JWT bundle %v is not the server's %v", local, published.JWTBundle())
	}

	socket := filepath.Join(t.TempDir(), "agent.sock")
	wl, err := workloadapi.New(workloadapi.Config{SocketPath: socket, Source: a.Cache, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- wl.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	client, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	aud := "spiffe://west.example/reports"
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	validated, err := jwtsvid.ParseAndValidate(svid.Marshal(), published, []string{aud})
	if err != nil || validated.ID.String() != e.GetSpiffeId() {
		t.Fatalf("the workload's JWT-SVID against the published bundle: %v, %v", validated, err)
	}
	// The agent validates on the workload's behalf with the same keys.
	if v, err := client.ValidateJWTSVID(ctx, svid.Marshal(), aud); err != nil || v.ID != validated.ID {
		t.Fatalf("ValidateJWTSVID: %v, %v", v, err)
	}

	// Kept until half its life, then signed anew.
	id := spiffeid.RequireFromString(e.GetSpiffeId())
	token := func() string {
		t.Helper()
		svids, err := a.Cache.JWTSVIDs(ctx, me, id, []string{aud})
		if err != nil || len(svids) != 1 {
			t.Fatalf("JWTSVIDs: %v, %v", svids, err)
		}
		return svids[0].Marshal()
	}
	start := clock.Now()
	life := svid.Expiry.Sub(start)
	clock.Set(start.Add(life * 4 / 10))
	if token() != svid.Marshal() {
		t.Fatal("a new JWT-SVID before half life")
	}
	clock.Set(start.Add(life * 6 / 10))
	renewed := token()
	if renewed == svid.Marshal() {
		t.Fatal("the same JWT-SVID after half life")
	}

	// With the server gone, the one kept is served until its half life,
	// and nothing after its expiry.
	ts.stop()
	if token() != renewed {
		t.Fatal("the kept JWT-SVID was not served while the server is down")
	}
	clock.Set(start.Add(2 * life))
	if svids, err := a.Cache.JWTSVIDs(ctx, me, id, []string{aud}); err == nil {
		t.Fatalf("JWT-SVIDs %v with the server down and the kept one expired", svids)
	}
}
