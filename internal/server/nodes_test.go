package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const hostID = "spiffe://east.example/node/host-1"

// attestNodeCert attests hostID (or id) with a new join token and returns its
// node SVID as a client certificate.
func attestNodeCert(t *testing.T, h *harness, id string) tls.Certificate {
	t.Helper()
	ctx := context.Background()
	tok, err := h.admin(t).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: id})
	if err != nil {
		t.Fatal(err)
	}
	key, csr := newCSR(t)
	resp, err := pb.NewNodeClient(h.dial(t, nil)).AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: resp.GetSvid().GetCertChain(), PrivateKey: key}
}

// renewNode renews the node's own SVID presenting cert and returns the new
// one.
func renewNode(t *testing.T, h *harness, cert tls.Certificate) (tls.Certificate, error) {
	t.Helper()
	key, csr := newCSR(t)
	resp, err := pb.NewNodeClient(h.dial(t, &cert)).SignX509SVID(context.Background(), &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: csr}}})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: resp.GetSvids()[0].GetCertChain(), PrivateKey: key}, nil
}

func serialOf(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	c, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", c.SerialNumber)
}

// nodeRecord is the admin API's record of hostID.
func nodeRecord(t *testing.T, h *harness) *pb.AttestedNode {
	t.Helper()
	resp, err := h.admin(t).ListNodes(context.Background(), &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.GetNodes() {
		if n.GetSpiffeId() == hostID {
			return n
		}
	}
	t.Fatalf("no record of %s in %v", hostID, resp.GetNodes())
	return nil
}

// wantNodeRefused checks that err refuses the node itself: PermissionDenied
// with msg in its message and reason in its ErrorInfo.
func wantNodeRefused(t *testing.T, err error, reason, msg string) {
	t.Helper()
	wantStatus(t, err, codes.PermissionDenied, msg)
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetReason() != reason || info.GetDomain() != pb.ErrorDomain {
				t.Fatalf("ErrorInfo %s/%s, want %s/%s", info.GetDomain(), info.GetReason(), pb.ErrorDomain, reason)
			}
			return
		}
	}
	t.Fatalf("%v carries no ErrorInfo", err)
}

// TestNodeSVIDLineage: a join-token node's renewals keep one SVID in use:
// a renewal leaves the old SVID working until the new one is first
// presented, a lost answer is renewed again from the old one, and after the
// switch the old SVID (or a copy of it) is refused every node call.
func TestNodeSVIDLineage(t *testing.T) {
	h := start(t, nil)
	ctx := context.Background()
	s1 := attestNodeCert(t, h, hostID)
	if got := nodeRecord(t, h); got.GetSerial() != serialOf(t, s1) || got.GetNewSerial() != "" {
		t.Fatalf("after attestation: serial %s, new %q; want %s and none", got.GetSerial(), got.GetNewSerial(), serialOf(t, s1))
	}
	s2, err := renewNode(t, h, s1)
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeRecord(t, h); got.GetSerial() != serialOf(t, s1) || got.GetNewSerial() != serialOf(t, s2) {
		t.Fatalf("after a renewal: serial %s, new %s; want %s, %s", got.GetSerial(), got.GetNewSerial(), serialOf(t, s1), serialOf(t, s2))
	}
	// The answer was lost: the node renews with s1 again, and s2 is never used.
	s3, err := renewNode(t, h, s1)
	if err != nil {
		t.Fatalf("renewing again with the SVID in use: %v", err)
	}
	_, err = pb.NewNodeClient(h.dial(t, &s2)).FetchBundles(ctx, &pb.FetchBundlesRequest{})
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "node SVID "+serialOf(t, s2)+" of "+hostID+" is not the node's current one")
	// The node presents s3: from now on it is the one in use.
	if _, err := pb.NewNodeClient(h.dial(t, &s3)).FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatalf("FetchBundles with the renewed SVID: %v", err)
	}
	if got := nodeRecord(t, h); got.GetSerial() != serialOf(t, s3) || got.GetNewSerial() != "" {
		t.Fatalf("after the switch: serial %s, new %q; want %s and none", got.GetSerial(), got.GetNewSerial(), serialOf(t, s3))
	}
	// s1, valid for hours yet, is refused every node call: a copy of it
	// left on a stolen disk is worth nothing now.
	old := pb.NewNodeClient(h.dial(t, &s1))
	_, err = renewNode(t, h, s1)
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "so this copy is in use elsewhere or left behind")
	_, err = old.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{Audience: []string{"x"}})
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "is not the node's current one")
	stream, err := old.Watch(ctx, &pb.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "is not the node's current one")

	// One call renews the node's own SVID once at most.
	_, c1 := newCSR(t)
	_, c2 := newCSR(t)
	_, err = pb.NewNodeClient(h.dial(t, &s3)).SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: c1}, {Csr: c2}}})
	wantStatus(t, err, codes.InvalidArgument, "server: 2 requests for the node's own SVID; a call renews it once at most")

	// An SVID of this trust domain that is no node's (a workload's) makes
	// no node call.
	entry, err := h.admin(t).CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: hostID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	wkey, wcsr := newCSR(t)
	signed, err := pb.NewNodeClient(h.dial(t, &s3)).SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{EntryId: entry.GetId(), Csr: wcsr}}})
	if err != nil {
		t.Fatal(err)
	}
	workload := tls.Certificate{Certificate: signed.GetSvids()[0].GetCertChain(), PrivateKey: wkey}
	_, err = pb.NewNodeClient(h.dial(t, &workload)).FetchBundles(ctx, &pb.FetchBundlesRequest{})
	wantNodeRefused(t, err, pb.ReasonNodeNotAttested, "server: spiffe://east.example/ns/default/sa/reviews is not an attested node of this trust domain")

	// The metrics count the refusals by reason; the two signing calls
	// refused with s1 count as issuances denied.
	body := h.metricsText(t)
	for _, want := range []string{
		`meshfed_server_node_refusals_total{reason="NODE_NOT_ATTESTED"} 1`,
		`meshfed_server_node_refusals_total{reason="NODE_SVID_SUPERSEDED"} 4`,
		`meshfed_server_issuance_total{credential="x509-svid",result="denied"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestNodeEvictAndBan: an eviction refuses the node's next call and ends
// its Watch stream; it attests again with a new token, and its SVIDs from
// before stay refused. A ban refuses its calls and its attestation (signing
// nothing) until an eviction lifts it.
func TestNodeEvictAndBan(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s1 := attestNodeCert(t, h, hostID)
	node := pb.NewNodeClient(h.dial(t, &s1))
	stream, err := node.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	if _, err := admin.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: hostID}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantNodeRefused(t, err, pb.ReasonNodeNotAttested, "server: "+hostID+" is not an attested node of this trust domain (it never attested, or 'meshfed node evict' evicted it): attest again, with a new join token")
	_, err = renewNode(t, h, s1)
	wantNodeRefused(t, err, pb.ReasonNodeNotAttested, "is not an attested node")
	_, err = admin.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: hostID})
	wantStatus(t, err, codes.NotFound, "store: node "+hostID+": not found")
	_, err = admin.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: "spiffe://west.example/node/host-1"})
	wantStatus(t, err, codes.InvalidArgument, "spiffe_id")

	// Attested again with a new token: the new SVID works, the old not.
	s2 := attestNodeCert(t, h, hostID)
	if _, err := renewNode(t, h, s2); err != nil {
		t.Fatalf("renewal after attesting again: %v", err)
	}
	_, err = renewNode(t, h, s1)
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "is not the node's current one")

	// Banned: refused, and so is attesting again.
	banned, err := admin.BanNode(ctx, &pb.BanNodeRequest{SpiffeId: hostID})
	if err != nil {
		t.Fatal(err)
	}
	if banned.GetBannedAt() == 0 || banned.GetSerial() != serialOf(t, s2) {
		t.Errorf("BanNode returned %v; want a ban time and serial %s", banned, serialOf(t, s2))
	}
	_, err = renewNode(t, h, s2)
	wantNodeRefused(t, err, pb.ReasonNodeBanned, "server: node "+hostID+" is banned ('meshfed node ban'); 'meshfed node evict' lifts the ban, and then it must attest again")
	before, err := admin.ListIssued(ctx, &pb.ListIssuedRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: hostID})
	if err != nil {
		t.Fatal(err)
	}
	_, csr := newCSR(t)
	_, err = pb.NewNodeClient(h.dial(t, nil)).AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr})
	wantNodeRefused(t, err, pb.ReasonNodeBanned, "is banned")
	after, err := admin.ListIssued(ctx, &pb.ListIssuedRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.GetIssued()) != len(before.GetIssued()) {
		t.Errorf("a banned node's attestation issued %d certificates", len(after.GetIssued())-len(before.GetIssued()))
	}

	// The refused token was not spent: evicted, the ban is lifted and that
	// same token attests the node.
	if _, err := admin.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: hostID}); err != nil {
		t.Fatal(err)
	}
	key, csr := newCSR(t)
	resp, err := pb.NewNodeClient(h.dial(t, nil)).AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr})
	if err != nil {
		t.Fatalf("the token refused while the node was banned, after the eviction: %v", err)
	}
	s3 := tls.Certificate{Certificate: resp.GetSvid().GetCertChain(), PrivateKey: key}
	if _, err := renewNode(t, h, s3); err != nil {
		t.Fatalf("renewal after the ban was lifted: %v", err)
	}
}

// TestNodeEvictedOnAnotherServer: two servers on one database; a node
// evicted at one is refused at the other once that one has polled the
// store (no more than Options.PollInterval later), and a renewal at one is
// the node's current SVID at the other.
func TestNodeEvictedOnAnotherServer(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "shared.db")
	shared := func(c *Config) { c.Datastore = db }
	a := startWith(t, Options{PollInterval: time.Hour}, shared)
	b := startWith(t, Options{PollInterval: time.Hour}, shared)
	ctx := context.Background()
	s1 := attestNodeCert(t, a, hostID)
	// Renewed at a, first presented at b.
	s2, err := renewNode(t, a, s1)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := renewNode(t, b, s2)
	if err != nil {
		t.Fatalf("renewal at b with the SVID renewed at a: %v", err)
	}
	if _, err := renewNode(t, a, s1); err == nil {
		t.Fatal("a renewed the node with the SVID it had switched away from at b")
	}
	atB := pb.NewNodeClient(b.dial(t, &s3))
	if _, err := atB.FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatal(err)
	}

	if _, err := a.admin(t).EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: hostID}); err != nil {
		t.Fatal(err)
	}
	// Until b polls, it goes by the record it read.
	if _, err := atB.FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatalf("b before its poll: %v", err)
	}
	b.srv.tick(ctx)
	_, err = atB.FetchBundles(ctx, &pb.FetchBundlesRequest{})
	wantNodeRefused(t, err, pb.ReasonNodeNotAttested, "is not an attested node")
}

// TestNodeSwitchSeenByAnotherServer: a node switches to its renewed SVID at
// one server; another server that kept the record from before goes on
// admitting the old SVID for no longer than its poll interval (a switch
// moves no revision), then refuses it.
func TestNodeSwitchSeenByAnotherServer(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "shared.db")
	shared := func(c *Config) { c.Datastore = db }
	const poll = time.Minute
	// b's clock moves on from the real one; what b signed at its start
	// stays valid for the TLS clients, which use the real clock.
	clock := &testClock{now: time.Now()}
	a := startWith(t, Options{PollInterval: poll}, shared)
	b := startWith(t, Options{PollInterval: poll, Clock: clock.Now}, shared)
	ctx := context.Background()
	s1 := attestNodeCert(t, a, hostID)
	oldAtB := pb.NewNodeClient(b.dial(t, &s1))
	if _, err := oldAtB.FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatal(err)
	}
	s2, err := renewNode(t, a, s1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewNodeClient(a.dial(t, &s2)).FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(poll - time.Second)
	if _, err := oldAtB.FetchBundles(ctx, &pb.FetchBundlesRequest{}); err != nil {
		t.Fatalf("b within a poll interval of reading the record: %v", err)
	}
	clock.Advance(2 * time.Second)
	_, err = oldAtB.FetchBundles(ctx, &pb.FetchBundlesRequest{})
	wantNodeRefused(t, err, pb.ReasonNodeSVIDSuperseded, "is not the node's current one")
}

// TestPurgeNodes: the records of nodes whose SVIDs all expired longer ago
// than asked are deleted (a dry run only lists them); a banned one stays.
func TestPurgeNodes(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := startWith(t, Options{Clock: clock.Now}, nil)
	admin := h.admin(t)
	ctx := context.Background()
	attestNodeCert(t, h, hostID)
	attestNodeCert(t, h, "spiffe://east.example/node/host-2")
	if _, err := admin.BanNode(ctx, &pb.BanNodeRequest{SpiffeId: "spiffe://east.example/node/host-2"}); err != nil {
		t.Fatal(err)
	}
	_, err := admin.PurgeNodes(ctx, &pb.PurgeNodesRequest{})
	wantStatus(t, err, codes.InvalidArgument, "server: expired_for_seconds 0: give at least 1")
	week := int64(7 * 24 * 3600)
	if resp, err := admin.PurgeNodes(ctx, &pb.PurgeNodesRequest{ExpiredForSeconds: week}); err != nil || len(resp.GetPurged()) != 0 {
		t.Fatalf("purge of live nodes: %v, %v", resp, err)
	}
	clock.Advance(24*time.Hour + 8*24*time.Hour) // the node SVIDs (24h) expired over a week ago
	resp, err := admin.PurgeNodes(ctx, &pb.PurgeNodesRequest{ExpiredForSeconds: week, DryRun: true})
	if err != nil || len(resp.GetPurged()) != 1 || resp.GetPurged()[0].GetSpiffeId() != hostID {
		t.Fatalf("dry run: %v, %v; want %s", resp, err, hostID)
	}
	resp, err = admin.PurgeNodes(ctx, &pb.PurgeNodesRequest{ExpiredForSeconds: week})
	if err != nil || len(resp.GetPurged()) != 1 || resp.GetPurged()[0].GetSpiffeId() != hostID {
		t.Fatalf("purge: %v, %v; want %s", resp, err, hostID)
	}
	list, err := admin.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil || len(list.GetNodes()) != 1 || list.GetNodes()[0].GetBannedAt() == 0 {
		t.Errorf("left after the purge: %v, %v; want the banned node only", list.GetNodes(), err)
	}
}
