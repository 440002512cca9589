package server

import (
	"context"
	"crypto/x509"
	"slices"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"google.golang.org/grpc/codes"
)

// TestUpdateEntry: an updated entry keeps its ID, reaches the node's Watch
// stream at once, and the SVIDs signed for it from then on carry what it
// says now; an update from a stale read is ABORTED, and bad fields are
// refused as at creation.
func TestUpdateEntry(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cert := attestNodeCert(t, h, hostID)
	node := pb.NewNodeClient(h.dial(t, &cert))
	created, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: hostID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}, DnsNames: []string{"reviews.default.svc"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := node.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	next := &pb.Entry{Id: created.GetId(), ParentId: hostID, SpiffeId: created.GetSpiffeId(),
		Selectors: created.GetSelectors(), DnsNames: []string{"reviews.default.svc", "reviews.east.example"}, FederatesWith: []string{"west.example"}}
	updated, err := admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: next, IfRevision: created.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	if updated.GetId() != created.GetId() || updated.GetRevision() <= created.GetRevision() || updated.GetCreatedAt() != created.GetCreatedAt() {
		t.Errorf("updated entry %v; want the same ID and creation time, a later revision than %d", updated, created.GetRevision())
	}
	snap, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if es := snap.GetEntries(); len(es) != 1 || es[0].GetId() != created.GetId() || !slices.Equal(es[0].GetDnsNames(), next.GetDnsNames()) ||
		!slices.Equal(es[0].GetFederatesWith(), []string{"west.example"}) {
		t.Errorf("Watch after the update: %v", snap.GetEntries())
	}
	_, csr := newCSR(t)
	signed, err := node.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{EntryId: created.GetId(), Csr: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(signed.GetSvids()[0].GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(leaf.DNSNames, next.GetDnsNames()) {
		t.Errorf("SVID DNS names %v, want %v", leaf.DNSNames, next.GetDnsNames())
	}

	// A second admin who read the entry before the update.
	_, err = admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: created, IfRevision: created.GetRevision()})
	wantStatus(t, err, codes.Aborted, "read it again")
	bad := &pb.Entry{Id: created.GetId(), ParentId: hostID, SpiffeId: "spiffe://west.example/x", Selectors: created.GetSelectors()}
	_, err = admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: bad})
	wantStatus(t, err, codes.InvalidArgument, "spiffe_id")
	_, err = admin.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: &pb.Entry{Id: "nope", ParentId: hostID, SpiffeId: created.GetSpiffeId(), Selectors: created.GetSelectors()}})
	wantStatus(t, err, codes.NotFound, `store: entry "nope": not found`)
}
