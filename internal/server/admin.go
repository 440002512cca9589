package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/adminsock"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const adminPrefix = "/" + "meshfed.server.v1.Admin/"

// adminOverSocket lets only allowed uids call the admin socket.
func (s *Server) adminOverSocket(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	uid, ok := adminsock.CallerUID(ctx)
	if !ok || !adminsock.UIDAllowed(s.set.allowedUIDs, uid) {
		s.log.Warn("admin call refused", "method", info.FullMethod, "uid", uid)
		return nil, status.Errorf(codes.PermissionDenied, "server: uid %d may not use the admin socket (admin.allowed_uids)", uid)
	}
	return handler(ctx, req)
}

// adminOverTLS lets only admin SVIDs call the Admin service on the TLS port.
func (s *Server) adminOverTLS(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, adminPrefix) {
		return handler(ctx, req)
	}
	id, _, ok := peerSVID(ctx)
	if !ok || !slices.Contains(s.set.adminIDs, id) {
		s.log.Warn("admin call refused", "method", info.FullMethod, "peer", id.String())
		return nil, status.Error(codes.PermissionDenied, "server: the admin API needs an admin SVID (admin.admin_ids) or the admin socket")
	}
	if _, err := s.callerSVID(ctx, ""); err != nil {
		s.log.Warn("admin call refused", "method", info.FullMethod, "peer", id.String(), "error", err)
		return nil, err
	}
	return handler(ctx, req)
}

// adminService manages join tokens, entries and bundles.
type adminService struct {
	pb.UnimplementedAdminServer
	s *Server
}

func (a *adminService) CreateJoinToken(ctx context.Context, req *pb.CreateJoinTokenRequest) (*pb.CreateJoinTokenResponse, error) {
	s := a.s
	id, err := s.localID(req.GetSpiffeId(), "spiffe_id")
	if err != nil {
		return nil, err
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if ttl <= 0 {
		ttl = s.set.tokenTTL
	}
	token, hash, err := credential.NewJoinToken()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	exp := s.clock().Add(ttl)
	if err := s.store.CreateJoinToken(ctx, store.JoinToken{Hash: hash, SPIFFEID: id, ExpiresAt: exp}); err != nil {
		return nil, storeStatus(err)
	}
	s.log.Info("join token created", "spiffe_id", id.String(), "token", credential.JoinTokenID(hash), "expires_at", exp.UTC().Format(time.RFC3339))
	return &pb.CreateJoinTokenResponse{Token: token, ExpiresAt: exp.Unix(), Id: credential.JoinTokenID(hash)}, nil
}

func (a *adminService) ListJoinTokens(ctx context.Context, req *pb.ListJoinTokensRequest) (*pb.ListJoinTokensResponse, error) {
	var id spiffeid.ID
	if req.GetSpiffeId() != "" {
		var err error
		if id, err = a.s.localID(req.GetSpiffeId(), "spiffe_id"); err != nil {
			return nil, err
		}
	}
	tokens, err := a.s.store.ListJoinTokens(ctx, id, a.s.clock())
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.ListJoinTokensResponse{}
	for _, t := range tokens {
		resp.Tokens = append(resp.Tokens, &pb.JoinTokenInfo{Id: credential.JoinTokenID(t.Hash), SpiffeId: t.SPIFFEID.String(), CreatedAt: t.CreatedAt.Unix(), ExpiresAt: t.ExpiresAt.Unix()})
	}
	return resp, nil
}

func (a *adminService) RevokeJoinTokens(ctx context.Context, req *pb.RevokeJoinTokensRequest) (*pb.RevokeJoinTokensResponse, error) {
	id, err := a.s.localID(req.GetSpiffeId(), "spiffe_id")
	if err != nil {
		return nil, err
	}
	var prefix []byte
	if tid := req.GetId(); tid != "" {
		digits, ok := strings.CutPrefix(tid, "sha256:")
		if prefix, err = hex.DecodeString(digits); !ok || err != nil || len(prefix) < 4 || len(prefix) > 32 {
			return nil, status.Errorf(codes.InvalidArgument, "server: token id %q: want sha256: and 8 to 64 hex digits, as 'meshfed token list' shows", tid)
		}
	}
	n, err := a.s.store.RevokeJoinTokens(ctx, id, prefix)
	if err != nil {
		return nil, storeStatus(err)
	}
	if n == 0 {
		what := "no unused join token"
		if req.GetId() != "" {
			what = "no unused join token " + req.GetId()
		}
		return nil, status.Errorf(codes.NotFound, "server: %s for %s", what, id)
	}
	a.s.log.Info("join tokens revoked", "spiffe_id", id.String(), "tokens", n, "token", req.GetId())
	return &pb.RevokeJoinTokensResponse{Revoked: n}, nil
}

// entryFromMessage checks an entry of the admin API (all but its ID,
// creation time and revision) and turns it into the store's. The error is a
// gRPC status.
func (s *Server) entryFromMessage(m *pb.Entry) (store.Entry, error) {
	if m == nil {
		return store.Entry{}, status.Error(codes.InvalidArgument, "server: no entry")
	}
	e := store.Entry{DNSNames: m.GetDnsNames(), Admin: m.GetAdmin(), X509TTL: time.Duration(m.GetX509SvidTtlSeconds()) * time.Second}
	var err error
	if e.ParentID, err = s.localID(m.GetParentId(), "parent_id"); err != nil {
		return e, err
	}
	if e.SPIFFEID, err = s.localID(m.GetSpiffeId(), "spiffe_id"); err != nil {
		return e, err
	}
	if len(m.GetSelectors()) == 0 {
		return e, status.Error(codes.InvalidArgument, "server: an entry needs at least one selector, e.g. unix:uid:1000")
	}
	for _, sel := range m.GetSelectors() {
		if sel.GetType() == "" || sel.GetValue() == "" {
			return e, status.Errorf(codes.InvalidArgument, "server: selector %q:%q: want type:value, e.g. unix:uid:1000", sel.GetType(), sel.GetValue())
		}
		e.Selectors = append(e.Selectors, store.Selector{Type: sel.GetType(), Value: sel.GetValue()})
	}
	if e.X509TTL < 0 || e.X509TTL > s.set.maxTTL {
		return e, status.Errorf(codes.InvalidArgument, "server: x509_svid_ttl %s: use 0 (server default) up to svid.max_ttl %s", e.X509TTL, s.set.maxTTL)
	}
	for _, name := range m.GetFederatesWith() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return e, status.Errorf(codes.InvalidArgument, "server: federates_with %q: %v", name, err)
		}
		if td == s.set.td {
			return e, status.Errorf(codes.InvalidArgument, "server: federates_with %q is this server's own trust domain", name)
		}
		e.FederatesWith = append(e.FederatesWith, td)
	}
	return e, nil
}

func (a *adminService) CreateEntry(ctx context.Context, req *pb.CreateEntryRequest) (*pb.Entry, error) {
	s := a.s
	e, err := s.entryFromMessage(req.GetEntry())
	if err != nil {
		return nil, err
	}
	created, err := s.store.CreateEntry(ctx, e)
	if err != nil {
		return nil, storeStatus(err)
	}
	s.log.Info("entry created", "id", created.ID, "spiffe_id", created.SPIFFEID.String(), "parent_id", created.ParentID.String())
	s.changed(ctx)
	return entryMessage(created), nil
}

func (a *adminService) UpdateEntry(ctx context.Context, req *pb.UpdateEntryRequest) (*pb.Entry, error) {
	s := a.s
	e, err := s.entryFromMessage(req.GetEntry())
	if err != nil {
		return nil, err
	}
	e.ID = req.GetEntry().GetId()
	updated, err := s.store.UpdateEntry(ctx, e, req.GetIfRevision())
	if err != nil {
		return nil, storeStatus(err)
	}
	s.log.Info("entry updated", "id", updated.ID, "spiffe_id", updated.SPIFFEID.String(), "parent_id", updated.ParentID.String(), "revision", updated.Revision)
	s.changed(ctx)
	return entryMessage(updated), nil
}

func (a *adminService) GetEntry(ctx context.Context, req *pb.GetEntryRequest) (*pb.Entry, error) {
	e, err := a.s.store.GetEntry(ctx, req.GetId())
	if err != nil {
		return nil, storeStatus(err)
	}
	return entryMessage(e), nil
}

func (a *adminService) ListEntries(ctx context.Context, req *pb.ListEntriesRequest) (*pb.ListEntriesResponse, error) {
	var f store.EntryFilter
	if req.GetParentId() != "" {
		id, err := spiffeid.FromString(req.GetParentId())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "server: parent_id: %v", err)
		}
		f.ParentID = &id
	}
	if req.GetSpiffeId() != "" {
		id, err := spiffeid.FromString(req.GetSpiffeId())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "server: spiffe_id: %v", err)
		}
		f.SPIFFEID = &id
	}
	es, err := a.s.store.ListEntries(ctx, f)
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.ListEntriesResponse{}
	for _, e := range es {
		resp.Entries = append(resp.Entries, entryMessage(e))
	}
	return resp, nil
}

func (a *adminService) DeleteEntry(ctx context.Context, req *pb.DeleteEntryRequest) (*pb.DeleteEntryResponse, error) {
	if err := a.s.store.DeleteEntry(ctx, req.GetId()); err != nil {
		return nil, storeStatus(err)
	}
	a.s.log.Info("entry deleted", "id", req.GetId())
	a.s.changed(ctx)
	return &pb.DeleteEntryResponse{}, nil
}

func (a *adminService) GetBundle(context.Context, *pb.GetBundleRequest) (*pb.Bundle, error) {
	return a.s.localBundle()
}

func (a *adminService) ListFederatedBundles(ctx context.Context, _ *pb.ListFederatedBundlesRequest) (*pb.ListFederatedBundlesResponse, error) {
	_, fed, err := a.s.bundles(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.ListFederatedBundlesResponse{Bundles: fed, Peers: a.s.peerMessages()}, nil
}

func (a *adminService) SetFederatedBundle(ctx context.Context, req *pb.Bundle) (*pb.Bundle, error) {
	s := a.s
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: trust_domain %q: %v", req.GetTrustDomain(), err)
	}
	if td == s.set.td {
		return nil, status.Errorf(codes.InvalidArgument, "server: %q is this server's own trust domain; its bundle comes from its CA", td)
	}
	b, err := bundle.Parse(td, req.GetSpiffeBundle())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	data, err := b.Marshal()
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.store.SetFederatedBundle(ctx, td, data); err != nil {
		return nil, storeStatus(err)
	}
	s.log.Info("federated bundle set", "federated_trust_domain", td.Name(), "x509_authorities", len(b.X509Authorities()))
	s.changed(ctx)
	seq, _ := b.SequenceNumber()
	return &pb.Bundle{TrustDomain: td.Name(), SpiffeBundle: data, Sequence: seq}, nil
}

func (a *adminService) DeleteFederatedBundle(ctx context.Context, req *pb.DeleteFederatedBundleRequest) (*pb.DeleteFederatedBundleResponse, error) {
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: trust_domain %q: %v", req.GetTrustDomain(), err)
	}
	if err := a.s.store.DeleteFederatedBundle(ctx, td); err != nil {
		return nil, storeStatus(err)
	}
	a.s.changed(ctx)
	return &pb.DeleteFederatedBundleResponse{}, nil
}

func (a *adminService) ListIssued(ctx context.Context, req *pb.ListIssuedRequest) (*pb.ListIssuedResponse, error) {
	f := store.AuditFilter{SPIFFEID: req.GetSpiffeId(), Limit: int(req.GetLimit())}
	if req.GetSince() > 0 {
		f.Since = time.Unix(req.GetSince(), 0)
	}
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 1000
	}
	rows, err := a.s.store.ListIssued(ctx, f)
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.ListIssuedResponse{}
	for _, r := range rows {
		resp.Issued = append(resp.Issued, &pb.Issued{
			Serial: r.Serial, SpiffeId: r.SPIFFEID, CredentialKind: r.CredentialKind, Caller: r.Caller,
			ServerId: r.ServerID, IssuedAt: r.IssuedAt.Unix(), NotAfter: r.NotAfter.Unix(), RootKeyId: r.RootKeyID,
		})
	}
	return resp, nil
}

func (a *adminService) ListNodes(ctx context.Context, _ *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	nodes, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.ListNodesResponse{}
	for _, n := range nodes {
		resp.Nodes = append(resp.Nodes, nodeMessage(n))
	}
	return resp, nil
}

// localID parses a SPIFFE ID that must be in this trust domain.
func (s *Server) localID(v, field string) (spiffeid.ID, error) {
	if v == "" {
		return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "server: %s is required", field)
	}
	id, err := spiffeid.FromString(v)
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "server: %s %q is not a SPIFFE ID: %v", field, v, err)
	}
	if id.TrustDomain() != s.set.td {
		return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "server: %s %s is not in this server's trust domain %q", field, id, s.set.td)
	}
	return id, nil
}

// storeStatus maps store errors to gRPC codes at this edge.
func storeStatus(err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrStale):
		return status.Error(codes.Aborted, err.Error())
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("server: store: %v", err))
}
