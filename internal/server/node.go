package server

import (
	"context"
	"errors"
	"slices"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxSVIDRequests bounds the CSRs in one SignX509SVID call.
const MaxSVIDRequests = 100

// nodeService is what agents call.
type nodeService struct {
	pb.UnimplementedNodeServer
	s *Server
}

func (n *nodeService) AttestNode(ctx context.Context, req *pb.AttestNodeRequest) (*pb.AttestNodeResponse, error) {
	s := n.s
	var ident credential.Identity
	var err error
	switch c := req.GetCredential().(type) {
	case *pb.AttestNodeRequest_JoinToken:
		// A token for a banned node is refused before it is spent, so that
		// it still works once the node is evicted (the order the refusal
		// asks for); a ban made between this and the spending is caught
		// below, after it.
		if id, err := s.store.JoinTokenSubject(ctx, credential.HashJoinToken(c.JoinToken), s.clock()); err == nil {
			if n, err := s.store.GetNode(ctx, id); err == nil && n.Banned() {
				return nil, s.nodeRefused(id, "", store.ErrNodeBanned)
			}
		}
		if ident, err = s.tokens.Verify(ctx, c.JoinToken); err != nil {
			return nil, s.credentialError(credential.KindJoinToken, err)
		}
	case *pb.AttestNodeRequest_Jwt:
		if s.jwt == nil {
			return nil, s.credentialError(credential.KindKubernetesJWT, errNoJWTIssuers)
		}
		if ident, err = s.jwt.Verify(ctx, c.Jwt); err != nil {
			return nil, s.credentialError(credential.KindKubernetesJWT, err)
		}
	default:
		return nil, status.Error(codes.Unauthenticated, "server: AttestNode needs a join token or a service-account JWT")
	}
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	// A banned node signs nothing; the record checks it again below, in
	// case it was banned meanwhile.
	if n, err := s.store.GetNode(ctx, ident.ID); err == nil && n.Banned() {
		return nil, s.nodeRefused(ident.ID, "", store.ErrNodeBanned)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, s.nodeRefused(ident.ID, "", err)
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if ttl <= 0 {
		ttl = s.set.nodeTTL
	}
	out, err := s.signSVID(ctx, ident, csr, ttl, nil, "")
	if err != nil {
		return nil, err
	}
	leaf := out.chain[0]
	if err := s.store.UpsertNode(ctx, store.Node{
		SPIFFEID: ident.ID, AttestedAt: s.clock(), CredentialKind: string(ident.Kind),
		SerialNumber: serialHex(leaf), ExpiresAt: leaf.NotAfter,
	}); err != nil {
		if errors.Is(err, store.ErrNodeBanned) {
			return nil, s.nodeRefused(ident.ID, "", err)
		}
		s.log.Error("recording the attested node failed", "node", ident.ID.String(), "error", err)
		return nil, status.Error(codes.Unavailable, "server: the store is unavailable; retry")
	}
	b, err := s.localBundle()
	if err != nil {
		return nil, err
	}
	return &pb.AttestNodeResponse{Svid: svidMessage(out, ""), Bundle: b}, nil
}

func (n *nodeService) SignX509SVID(ctx context.Context, req *pb.SignX509SVIDRequest) (*pb.SignX509SVIDResponse, error) {
	s := n.s
	call, err := s.nodeCaller(ctx, true)
	if err != nil {
		return nil, err
	}
	node := call.ident
	if len(req.GetRequests()) == 0 || len(req.GetRequests()) > MaxSVIDRequests {
		return nil, status.Errorf(codes.InvalidArgument, "server: send 1 to %d SVID requests, not %d", MaxSVIDRequests, len(req.GetRequests()))
	}
	own := 0
	for _, r := range req.GetRequests() {
		if r.GetEntryId() == "" {
			own++
		}
	}
	if own > 1 {
		return nil, status.Errorf(codes.InvalidArgument, "server: %d requests for the node's own SVID; a call renews it once at most", own)
	}
	resp := &pb.SignX509SVIDResponse{}
	for _, r := range req.GetRequests() {
		csr, err := parseCSR(r.GetCsr())
		if err != nil {
			return nil, err
		}
		ttl := time.Duration(r.GetTtlSeconds()) * time.Second
		ident, e, err := s.entryIdentity(ctx, node, r.GetEntryId())
		if err != nil {
			return nil, err
		}
		var dns []string
		switch {
		case e != nil:
			if ttl <= 0 {
				ttl = e.X509TTL
			}
			dns = e.DNSNames
		case ttl <= 0:
			ttl = s.set.nodeTTL // a node renewing its own SVID
		}
		renewing := ""
		if e == nil {
			renewing = renews(call) // the node's record will name the new SVID
		}
		out, err := s.signSVID(ctx, ident, csr, ttl, dns, renewing)
		if err != nil {
			return nil, err
		}
		resp.Svids = append(resp.Svids, svidMessage(out, r.GetEntryId()))
	}
	return resp, nil
}

// nodeCredential is the calling node's SVID, verified now by
// svidCredential (a refusal counted as an issuance refused), for the calls
// that sign. The error is a gRPC status.
func (s *Server) nodeCredential(ctx context.Context) (credential.Identity, error) {
	node, ok, err := s.svidCredential(ctx)
	if !ok {
		return node, status.Error(codes.Unauthenticated, errNoNodeSVID)
	}
	return node, err
}

// entryIdentity is what the caller, a node whose SVID nodeCredential
// verified, may have signed: the identity of entryID if the node is its
// parent, or with an empty entryID the node's own (e is then nil). The error
// is a gRPC status.
func (s *Server) entryIdentity(ctx context.Context, node credential.Identity, entryID string) (ident credential.Identity, e *store.Entry, err error) {
	if entryID == "" {
		return node, nil, nil
	}
	callerID := node.ID
	got, err := s.store.GetEntry(ctx, entryID)
	if errors.Is(err, store.ErrNotFound) {
		return ident, nil, status.Errorf(codes.NotFound, "server: no entry %q", entryID)
	}
	if err != nil {
		return ident, nil, status.Error(codes.Unavailable, "server: the store is unavailable; retry")
	}
	if got.ParentID != callerID {
		s.log.Warn("node asked for an entry it is not the parent of; refused", "node", callerID.String(), "entry", got.ID, "parent", got.ParentID.String())
		return ident, nil, status.Errorf(codes.PermissionDenied, "server: entry %q belongs to %s, not to %s", got.ID, got.ParentID, callerID)
	}
	return credential.Identity{ID: got.SPIFFEID, Kind: credential.KindSVID, Caller: "node " + callerID.String() + " entry " + got.ID}, &got, nil
}

func (n *nodeService) FetchBundles(ctx context.Context, _ *pb.FetchBundlesRequest) (*pb.FetchBundlesResponse, error) {
	if _, err := n.s.nodeCaller(ctx, false); err != nil {
		return nil, err
	}
	local, fed, err := n.s.bundles(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.FetchBundlesResponse{Bundle: local, Federated: fed}, nil
}

// Watch sends a snapshot now and after every change, until the agent leaves.
func (n *nodeService) Watch(_ *pb.WatchRequest, stream pb.Node_WatchServer) error {
	s := n.s
	ctx := stream.Context()
	call, err := s.nodeCaller(ctx, false)
	if err != nil {
		return err
	}
	node, callerID := call.ident, call.ident.ID
	s.metrics.watchers.Inc()
	defer s.metrics.watchers.Dec()
	id := s.watchers.add()
	defer s.watchers.remove(id)
	var last, lastPolicies int64 = -1, -1
	for {
		wake := s.changes.wait()
		if view := s.view.Load(); view != last {
			// The stream lives as long as the connection; what it sends
			// next is for an SVID valid now.
			if now := s.clock(); now.After(node.Expires) {
				return status.Errorf(codes.Unauthenticated, "server: the SVID this stream was opened with expired at %s; reconnect with a current SVID",
					node.Expires.UTC().Format(time.RFC3339))
			}
			// An eviction or a ban moves the revision, so the view; a
			// stream of an SVID the node renewed away from ends too.
			if _, err := s.admitNode(ctx, callerID, call.leaf); err != nil {
				return err
			}
			snap, err := s.snapshot(ctx, callerID)
			if err != nil {
				return err
			}
			snap.Revision = s.revision.Load()
			if snap.PolicyRevision == lastPolicies {
				snap.Policies, snap.PoliciesUnchanged = nil, true
			}
			lastPolicies = snap.PolicyRevision
			if err := stream.Send(snap); err != nil {
				return err
			}
			last = view
			s.watchers.sent(id, view)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopping:
			return status.Error(codes.Unavailable, "server: shutting down; reconnect")
		case <-wake:
		}
	}
}

// snapshot is what an agent needs: bundles, the entries it serves and the
// policies for its proxies.
func (s *Server) snapshot(ctx context.Context, node spiffeid.ID) (*pb.WatchResponse, error) {
	local, fed, err := s.bundles(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := s.entriesFor(ctx, node)
	if err != nil {
		return nil, err
	}
	policies, policyRev, err := s.policySnapshot(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.WatchResponse{Bundle: local, Federated: fed, Entries: entries, SigningRootKeyId: s.auth.CA().RootKeyID(),
		Policies: policies, PolicyRevision: policyRev}, nil
}

// entriesFor returns the entries whose parent is node, and those parented
// by them in turn (bounded depth), as SPIRE's agents receive them.
func (s *Server) entriesFor(ctx context.Context, node spiffeid.ID) ([]*pb.Entry, error) {
	var out []*pb.Entry
	seen := map[spiffeid.ID]bool{node: true}
	parents := []spiffeid.ID{node}
	for depth := 0; depth < 8 && len(parents) > 0; depth++ {
		var next []spiffeid.ID
		for _, p := range parents {
			p := p
			es, err := s.store.ListEntries(ctx, store.EntryFilter{ParentID: &p})
			if err != nil {
				return nil, status.Error(codes.Unavailable, "server: the store is unavailable; retry")
			}
			for _, e := range es {
				out = append(out, entryMessage(e))
				if !seen[e.SPIFFEID] {
					seen[e.SPIFFEID] = true
					next = append(next, e.SPIFFEID)
				}
			}
		}
		parents = next
	}
	return out, nil
}

// localBundle is this trust domain's bundle as a message.
func (s *Server) localBundle() (*pb.Bundle, error) {
	b := s.bundle.Load()
	if b == nil {
		return nil, status.Error(codes.Unavailable, "server: bundle not built yet; retry")
	}
	data, err := b.Marshal()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "server: bundle: %v", err)
	}
	seq, _ := b.SequenceNumber()
	return &pb.Bundle{TrustDomain: s.set.td.Name(), SpiffeBundle: data, Sequence: seq}, nil
}

// bundles returns this domain's bundle and every federated one.
func (s *Server) bundles(ctx context.Context) (*pb.Bundle, []*pb.Bundle, error) {
	local, err := s.localBundle()
	if err != nil {
		return nil, nil, err
	}
	fed, err := s.store.ListFederatedBundles(ctx)
	if err != nil {
		return nil, nil, status.Error(codes.Unavailable, "server: the store is unavailable; retry")
	}
	out, err := s.virtualMeshBundles()
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "server: VirtualMesh bundles: %v", err)
	}
	for _, f := range fed {
		if slices.ContainsFunc(out, func(b *pb.Bundle) bool { return b.GetTrustDomain() == f.TrustDomain.Name() }) {
			continue // a VirtualMesh member: the shared roots are its bundle
		}
		msg := &pb.Bundle{TrustDomain: f.TrustDomain.Name(), SpiffeBundle: f.JSON}
		if b, err := bundle.Parse(f.TrustDomain, f.JSON); err == nil {
			msg.Sequence, _ = b.SequenceNumber()
		}
		out = append(out, msg)
	}
	return local, out, nil
}

func svidMessage(out *issued, entryID string) *pb.X509SVID {
	m := &pb.X509SVID{ExpiresAt: out.chain[0].NotAfter.Unix(), EntryId: entryID}
	if len(out.chain[0].URIs) == 1 {
		m.SpiffeId = out.chain[0].URIs[0].String()
	}
	for _, c := range out.chain {
		m.CertChain = append(m.CertChain, c.Raw)
	}
	return m
}

func entryMessage(e store.Entry) *pb.Entry {
	m := &pb.Entry{
		Id: e.ID, ParentId: e.ParentID.String(), SpiffeId: e.SPIFFEID.String(),
		X509SvidTtlSeconds: int64(e.X509TTL / time.Second), DnsNames: e.DNSNames,
		Admin: e.Admin, Revision: e.Revision, CreatedAt: e.CreatedAt.Unix(),
	}
	for _, sel := range e.Selectors {
		m.Selectors = append(m.Selectors, &pb.Selector{Type: sel.Type, Value: sel.Value})
	}
	for _, td := range e.FederatesWith {
		m.FederatesWith = append(m.FederatesWith, td.Name())
	}
	return m
}
