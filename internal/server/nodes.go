package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An agent's calls (Node: SignX509SVID, SignJWTSVID, FetchBundles, Watch)
// are made with its node SVID, and each is admitted only if the node's
// record says so (admitNode):
//
//   - the record exists: 'meshfed node evict' deletes it, and the node must
//     attest again;
//   - it is not banned ('meshfed node ban'), which also refuses attesting
//     again until an eviction;
//   - for a node that attested with a join token, whose identity is its
//     alone, the SVID presented is the one the record says the node uses,
//     or the one its last renewal signed (which then becomes the one it
//     uses). So a node's SVIDs form one lineage: a copy of a node SVID stops
//     working once the node renews, and an evicted node's SVIDs stay refused
//     after it attests again. A node attested with a service-account token
//     (an agent in sidecar mode) shares its identity with the other replicas
//     of its workload, so only the first two rules apply to it.
//
// Eviction and ban move the store revision, which every server sharing the
// database polls (Options.PollInterval), so each refuses the node within
// that time; the server that evicted it refuses it at once. A node's switch
// to its renewed SVID moves no revision, so a record kept is read again
// once it is a poll interval old: another server's record of the switch
// refuses the old SVID here within that time too (a renewal is checked
// against the database itself, always).

// nodeCache keeps node records this server read or wrote, each for the
// store revision current when it was read and for at most a poll interval.
type nodeCache struct {
	mu sync.Mutex
	m  map[spiffeid.ID]cachedNode
}

type cachedNode struct {
	rev  int64
	at   time.Time // when it was read
	node store.Node
}

// maxNodeCache bounds the cache; past it, it starts again empty.
const maxNodeCache = 100000

// get returns the record of id kept at revision rev, if it was read no more
// than maxAge before now.
func (c *nodeCache) get(id spiffeid.ID, rev int64, now time.Time, maxAge time.Duration) (store.Node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || e.rev != rev || now.Sub(e.at) > maxAge || now.Before(e.at) {
		return store.Node{}, false
	}
	return e.node, true
}

// put keeps n as read at revision rev at time at, unless a record read at a
// later revision is kept.
func (c *nodeCache) put(n store.Node, rev int64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[n.SPIFFEID]; ok && e.rev > rev {
		return
	}
	if c.m == nil || len(c.m) >= maxNodeCache {
		c.m = make(map[spiffeid.ID]cachedNode)
	}
	c.m[n.SPIFFEID] = cachedNode{rev: rev, at: at, node: n}
}

// oneLineage reports whether a node's SVIDs are held to one lineage: those
// of a node that attested with a join token.
func oneLineage(n store.Node) bool {
	return n.CredentialKind == string(credential.KindJoinToken)
}

// serialHex is a certificate's serial as the store keeps it.
func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// A nodeCall is a node's call admitted by nodeCaller.
type nodeCall struct {
	ident credential.Identity
	leaf  *x509.Certificate // the SVID it presented
	node  store.Node        // its record, as admitNode left it
}

// nodeCaller verifies the caller's SVID (verifiedSVID; when signing, a
// refusal counts as an issuance refused) and admits it as a node
// (admitNode). The error is a gRPC status.
func (s *Server) nodeCaller(ctx context.Context, signing bool) (nodeCall, error) {
	var c nodeCall
	var err error
	if signing {
		c.ident, err = s.nodeCredential(ctx)
	} else {
		c.ident, err = s.callerSVID(ctx, errNoNodeSVID)
	}
	if err != nil {
		return c, err
	}
	_, chain, _ := peerSVID(ctx)
	c.leaf = chain[0]
	start := time.Now()
	if c.node, err = s.admitNode(ctx, c.ident.ID, c.leaf); err != nil && signing {
		s.metrics.observeIssue(string(credential.KindSVID), "denied", start)
	}
	return c, err
}

// admitNode checks that leaf, a verified SVID of node id, may make a node's
// call (see the rules above), records the node's switch to its renewed SVID
// when leaf is that one, and returns the node's record. The error is a gRPC
// status.
func (s *Server) admitNode(ctx context.Context, id spiffeid.ID, leaf *x509.Certificate) (store.Node, error) {
	serial := serialHex(leaf)
	rev, now := s.revision.Load(), s.clock()
	n, ok := s.nodes.get(id, rev, now, s.poll)
	if !ok || (oneLineage(n) && serial != n.SerialNumber && serial != n.NewSerialNumber) {
		// Nothing kept, or the kept record refuses it: read it afresh,
		// since another server may have renewed the node.
		start := time.Now()
		fresh, err := s.store.GetNode(ctx, id)
		s.metrics.observeStore("get_node", start)
		if err != nil {
			return store.Node{}, s.nodeRefused(id, serial, err)
		}
		n = fresh
		s.nodes.put(n, rev, now)
	}
	switch {
	case n.Banned():
		return n, s.nodeRefused(id, serial, store.ErrNodeBanned)
	case !oneLineage(n) || serial == n.SerialNumber:
		return n, nil
	case serial != n.NewSerialNumber && n.SerialNumber != "":
		return n, s.nodeRefused(id, serial, store.ErrNodeSVIDSuperseded)
	}
	// The node's first call with its renewed SVID (or, for a record from
	// before lineages were kept, its first call at all).
	used, err := s.store.UseNodeSVID(ctx, id, serial, leaf.NotAfter)
	if err != nil {
		return n, s.nodeRefused(id, serial, err)
	}
	s.nodes.put(used, rev, now)
	s.log.Debug("node uses its renewed SVID", "node", id.String(), "serial", serial)
	return used, nil
}

// nodeRefused is the status of a node refused for err (a store error),
// logged; a refusal of the node itself carries an ErrorInfo reason the
// agent acts on.
func (s *Server) nodeRefused(id spiffeid.ID, serial string, err error) error {
	var reason, msg string
	switch {
	case errors.Is(err, store.ErrNotFound):
		reason = pb.ReasonNodeNotAttested
		msg = fmt.Sprintf("server: %s is not an attested node of this trust domain (it never attested, or 'meshfed node evict' evicted it): attest again, with a new join token", id)
	case errors.Is(err, store.ErrNodeBanned):
		reason = pb.ReasonNodeBanned
		msg = fmt.Sprintf("server: node %s is banned ('meshfed node ban'); 'meshfed node evict' lifts the ban, and then it must attest again", id)
	case errors.Is(err, store.ErrNodeSVIDSuperseded):
		reason = pb.ReasonNodeSVIDSuperseded
		msg = fmt.Sprintf("server: node SVID %s of %s is not the node's current one: the node renewed or attested again since, so this copy is in use elsewhere or left behind; attest again, with a new join token", serial, id)
	default:
		s.log.Error("reading a node's record failed", "node", id.String(), "error", err)
		return status.Error(codes.Unavailable, "server: the store is unavailable; retry")
	}
	s.metrics.nodeRefusals.WithLabelValues(reason).Inc()
	s.log.Warn("node refused", "node", id.String(), "serial", serial, "reason", reason)
	st, derr := status.New(codes.PermissionDenied, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: pb.ErrorDomain})
	if derr != nil {
		return status.Error(codes.PermissionDenied, msg)
	}
	return st.Err()
}

// nodeRefusal reports whether err, from the store, refuses a node itself.
func nodeRefusal(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNodeBanned) || errors.Is(err, store.ErrNodeSVIDSuperseded)
}

// renews is what signSVID records of a node renewing its own SVID in call:
// the serial it presented, for a node held to one lineage; "" otherwise.
func renews(call nodeCall) string {
	if !oneLineage(call.node) {
		return ""
	}
	return serialHex(call.leaf)
}

// nodeMessage is a node's record as the admin API returns it.
func nodeMessage(n store.Node) *pb.AttestedNode {
	m := &pb.AttestedNode{
		SpiffeId: n.SPIFFEID.String(), AttestedAt: n.AttestedAt.Unix(), CredentialKind: n.CredentialKind,
		Serial: n.SerialNumber, ExpiresAt: n.ExpiresAt.Unix(), NewSerial: n.NewSerialNumber,
	}
	if !n.NewExpiresAt.IsZero() {
		m.NewExpiresAt = n.NewExpiresAt.Unix()
	}
	if n.Banned() {
		m.BannedAt = n.BannedAt.Unix()
	}
	return m
}

func (a *adminService) EvictNode(ctx context.Context, req *pb.EvictNodeRequest) (*pb.EvictNodeResponse, error) {
	id, err := a.s.localID(req.GetSpiffeId(), "spiffe_id")
	if err != nil {
		return nil, err
	}
	if err := a.s.store.DeleteNode(ctx, id); err != nil {
		return nil, storeStatus(err)
	}
	a.s.log.Info("node evicted", "node", id.String())
	a.s.changed(ctx)
	return &pb.EvictNodeResponse{}, nil
}

func (a *adminService) BanNode(ctx context.Context, req *pb.BanNodeRequest) (*pb.AttestedNode, error) {
	id, err := a.s.localID(req.GetSpiffeId(), "spiffe_id")
	if err != nil {
		return nil, err
	}
	n, err := a.s.store.BanNode(ctx, id)
	if err != nil {
		return nil, storeStatus(err)
	}
	a.s.log.Info("node banned", "node", id.String())
	a.s.changed(ctx)
	return nodeMessage(n), nil
}

func (a *adminService) PurgeNodes(ctx context.Context, req *pb.PurgeNodesRequest) (*pb.PurgeNodesResponse, error) {
	d := time.Duration(req.GetExpiredForSeconds()) * time.Second
	if d < time.Second {
		return nil, status.Errorf(codes.InvalidArgument, "server: expired_for_seconds %d: give at least 1", req.GetExpiredForSeconds())
	}
	purged, err := a.s.store.PurgeNodes(ctx, a.s.clock().Add(-d), req.GetDryRun())
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.PurgeNodesResponse{}
	for _, n := range purged {
		resp.Purged = append(resp.Purged, nodeMessage(n))
	}
	if !req.GetDryRun() && len(purged) > 0 {
		a.s.log.Info("nodes purged", "nodes", len(purged), "expired_for", d.String())
		a.s.changed(ctx)
	}
	return resp, nil
}
