package agent

import (
	"context"
	"slices"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
)

// TestEntryUpdated: an entry updated on the server ('meshfed entry update')
// reaches the agent with its next snapshot. New DNS names get the workload a
// new SVID at the next Sync, the old one served until then; a new SPIFFE ID
// is not served under the old one meanwhile.
func TestEntryUpdated(t *testing.T) {
	ts, a, _, _ := setup(t)
	ctx := context.Background()
	pull(t, a)
	a.Sync(ctx)
	uid1000 := []Selector{{Type: "unix", Value: "uid:1000"}}
	got := a.Cache.X509SVIDs(uid1000)
	if len(got) != 1 || len(got[0].SVID.Certificates[0].DNSNames) != 0 {
		t.Fatalf("SVIDs for uid 1000 before the update: %+v", got)
	}
	first := got[0].SVID.Certificates[0]
	list, err := ts.admin.ListEntries(ctx, &pb.ListEntriesRequest{})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Fatalf("entries: %v, %v", list, err)
	}
	e := list.GetEntries()[0]
	rev := e.GetRevision()
	e.DnsNames = []string{"reviews.east.example"}
	if _, err := ts.admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: e, IfRevision: rev}); err != nil {
		t.Fatal(err)
	}
	pull(t, a)
	if got := a.Cache.X509SVIDs(uid1000); len(got) != 1 || !got[0].SVID.Certificates[0].Equal(first) {
		t.Fatal("the SVID held was not served until the new one came")
	}
	a.Sync(ctx)
	got = a.Cache.X509SVIDs(uid1000)
	if len(got) != 1 || !slices.Equal(got[0].SVID.Certificates[0].DNSNames, []string{"reviews.east.example"}) {
		t.Fatalf("after the update and a Sync: %+v", got)
	}

	e.SpiffeId = "spiffe://east.example/ns/default/sa/reviews-v2"
	if _, err := ts.admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: e}); err != nil {
		t.Fatal(err)
	}
	pull(t, a)
	if got := a.Cache.X509SVIDs(uid1000); len(got) != 0 {
		t.Fatalf("the old identity was served after the SPIFFE ID changed: %v", got[0].SVID.ID)
	}
	a.Sync(ctx)
	if got := a.Cache.X509SVIDs(uid1000); len(got) != 1 || got[0].SVID.ID.String() != "spiffe://east.example/ns/default/sa/reviews-v2" {
		t.Fatalf("after the SPIFFE ID changed and a Sync: %+v", got)
	}
}
