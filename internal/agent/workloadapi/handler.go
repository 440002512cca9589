package workloadapi

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// The spec's security header: every call carries it, so that a Workload API
// socket cannot be reached by a browser or proxy tricked into forwarding.
const (
	headerKey   = "workload.spiffe.io"
	headerValue = "true"
)

var (
	errHeader     = status.Error(codes.InvalidArgument, "security header missing")
	errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")
	errNoBundle   = status.Error(codes.Unavailable, "the agent has no trust bundle yet; retry")
)

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(headerKey); len(v) != 1 || v[0] != headerValue {
		return errHeader
	}
	return nil
}

func unaryHeaderCheck(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func streamHeaderCheck(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

// handler implements the Workload API service; the header was checked by
// the interceptors before any method runs.
type handler struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

func (h *handler) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	sel, err := h.s.attest(stream.Context(), "FetchX509SVID")
	if err != nil {
		return err
	}
	return watch(stream.Context(), h.s, func() (*workload.X509SVIDResponse, time.Time, error) {
		return h.s.x509SVIDResponse(sel)
	}, stream.Send)
}

func (h *handler) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	sel, err := h.s.attest(stream.Context(), "FetchX509Bundles")
	if err != nil {
		return err
	}
	return watch(stream.Context(), h.s, func() (*workload.X509BundlesResponse, time.Time, error) {
		return h.s.x509BundlesResponse(sel)
	}, stream.Send)
}

func (h *handler) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	aud := req.GetAudience()
	if len(aud) == 0 || len(aud) > maxAudiences {
		return nil, status.Errorf(codes.InvalidArgument, "audience: give 1 to %d values, not %d", maxAudiences, len(aud))
	}
	for i, a := range aud {
		if a == "" || len(a) > maxAudienceBytes {
			return nil, status.Errorf(codes.InvalidArgument, "audience %d is empty or longer than %d bytes", i+1, maxAudienceBytes)
		}
	}
	var id spiffeid.ID
	if req.GetSpiffeId() != "" {
		var err error
		if id, err = spiffeid.FromString(req.GetSpiffeId()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id: %v", err)
		}
	}
	sel, err := h.s.attest(ctx, "FetchJWTSVID")
	if err != nil {
		return nil, err
	}
	svids, err := h.s.src.JWTSVIDs(ctx, sel, id, aud)
	if err != nil {
		h.s.log.Warn("could not get a JWT-SVID for a workload", "error", err)
		return nil, status.Errorf(codes.Unavailable, "could not get a JWT-SVID: %v; retry", err)
	}
	now := h.s.clock()
	resp := &workload.JWTSVIDResponse{}
	hints := map[string]bool{}
	for _, svid := range svids {
		if svid == nil || !now.Before(svid.Expiry) || (svid.Hint != "" && hints[svid.Hint]) {
			continue
		}
		hints[svid.Hint] = true
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: svid.ID.String(), Svid: svid.Marshal(), Hint: svid.Hint})
	}
	if len(resp.Svids) == 0 {
		return nil, h.s.noIdentity(sel)
	}
	return resp, nil
}

func (h *handler) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	sel, err := h.s.attest(stream.Context(), "FetchJWTBundles")
	if err != nil {
		return err
	}
	return watch(stream.Context(), h.s, func() (*workload.JWTBundlesResponse, time.Time, error) {
		return h.s.jwtBundlesResponse(sel)
	}, stream.Send)
}

// ValidateJWTSVID validates with go-spiffe's jwtsvid.ParseAndValidate, which
// checks exp, nbf and iat against the system clock (not Config.Clock), using
// the JWT bundles the caller would get from FetchJWTBundles (this trust
// domain's even if it has no identity). A token this server verified before
// may be answered from the jwtCache, with the same decision.
func (h *handler) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	token, audience := req.GetSvid(), req.GetAudience()
	if audience == "" || token == "" {
		return nil, status.Error(codes.InvalidArgument, "audience and svid are required")
	}
	sel, err := h.s.attest(ctx, "ValidateJWTSVID")
	if err != nil {
		return nil, err
	}
	// Before the bundles are read, so that a cached verification ends with
	// any change after them.
	changed := h.s.src.Changed()
	ids, _ := h.s.current(sel)
	local, federated := h.s.src.JWTBundles()
	if local == nil {
		return nil, errNoBundle
	}
	set := jwtbundle.NewSet(local)
	for _, b := range trusted(local.TrustDomain(), federations(ids), federated) {
		set.Add(b)
	}
	sum, cacheable := h.s.jwtCache.cacheable(token)
	if cacheable {
		if resp, hit, err := h.s.jwtCache.lookup(sum, set, audience); hit {
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, err.Error())
			}
			return resp, nil
		}
	}
	// The tokens agents and SPIRE issue are validated in one pass; any
	// other, and any refusal, by go-spiffe's jwtsvid (see quickValidate).
	quick, ok := quickValidate(token, set, audience, time.Now())
	id, all := quick.id, quick.all
	if !ok {
		svid, err := jwtsvid.ParseAndValidate(token, set, []string{audience})
		if err != nil {
			// The reason names claims, keys and trust domains, never the token.
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		id, all = svid.ID, svid.Claims
	}
	claims, err := structpb.NewStruct(all)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "jwtsvid: claims: %v", err)
	}
	resp := &workload.ValidateJWTSVIDResponse{SpiffeId: id.String(), Claims: claims}
	if cacheable && ok {
		h.s.jwtCache.add(sum, changed, quick, resp)
	}
	return resp, nil
}

// noIdentity is errNoIdentity, for a caller with selectors sel that no
// entry matches; it logs the selectors, as SPIRE's agent does ("No identity
// issued"), since they are what an operator's entry must name, at most
// once per uid every noIdentityLogEvery.
func (s *Server) noIdentity(sel []attest.Selector) error {
	key := ""
	for _, x := range sel {
		if x.Type == "unix" && strings.HasPrefix(x.Value, "uid:") {
			key = x.Value
			break
		}
	}
	if missed, ok := s.noIDLog.Allow(key, s.clock()); ok {
		names := make([]string, len(sel))
		for i, x := range sel {
			names[i] = x.String()
		}
		s.log.Warn("no identity issued: no registration entry's selectors are all among the caller's", "selectors", strings.Join(names, ","), "left_out_since_last_line", missed)
	}
	return errNoIdentity
}

// noIdentityLogEvery paces noIdentity's log line, per uid.
const noIdentityLogEvery = 30 * time.Second

// attest identifies the caller of a request.
func (s *Server) attest(ctx context.Context, method string) ([]attest.Selector, error) {
	caller, _ := attest.CallerFromContext(ctx)
	sel, err := s.attestor.AttestPeer(ctx)
	if err != nil {
		s.log.Warn("workload attestation failed", "method", method, "pid", caller.PID, "uid", caller.UID, "error", err)
		return nil, status.Errorf(codes.Unauthenticated, "could not attest the caller: %v", err)
	}
	s.log.Debug("workload attested", "method", method, "pid", caller.PID, "uid", caller.UID, "selectors", len(sel))
	return sel, nil
}

// watch sends build's response, then again each time the source changes or
// the time build returned (the first expiry among what was sent) passes,
// skipping responses equal to the last one sent, until the client leaves or
// build fails.
func watch[T proto.Message](ctx context.Context, s *Server, build func() (T, time.Time, error), send func(T) error) error {
	var last T
	sent := false
	for {
		changed := s.src.Changed()
		resp, expiry, err := build()
		if err != nil {
			return err
		}
		if !sent || !proto.Equal(resp, last) {
			if err := send(resp); err != nil {
				return err
			}
			last, sent = resp, true
		}
		// Wake just after the expiry, when the clock says it has passed.
		timer := time.NewTimer(max(expiry.Sub(s.clock()), 0) + time.Millisecond)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// current returns the caller's identities whose SVIDs have not expired and
// the earliest expiry among them.
func (s *Server) current(sel []attest.Selector) ([]Identity, time.Time) {
	now := s.clock()
	var ids []Identity
	var expiry time.Time
	for _, id := range s.src.X509SVIDs(sel) {
		if id.SVID == nil || len(id.SVID.Certificates) == 0 || id.SVID.PrivateKey == nil {
			s.log.Error("the agent's source returned an incomplete SVID; skipped")
			continue
		}
		notAfter := id.SVID.Certificates[0].NotAfter
		if now.After(notAfter) {
			continue
		}
		if expiry.IsZero() || notAfter.Before(expiry) {
			expiry = notAfter
		}
		ids = append(ids, id)
	}
	return ids, expiry
}

func (s *Server) x509SVIDResponse(sel []attest.Selector) (*workload.X509SVIDResponse, time.Time, error) {
	s.encoded.since(s.src.Changed())
	ids, expiry := s.current(sel)
	if len(ids) == 0 {
		return nil, time.Time{}, s.noIdentity(sel)
	}
	local, federated := s.src.Bundles()
	if local == nil || local.Empty() {
		return nil, time.Time{}, errNoBundle
	}
	resp := &workload.X509SVIDResponse{}
	hints := map[string]bool{}
	var federates []spiffeid.TrustDomain
	for _, id := range ids {
		svid := id.SVID
		if svid.Hint != "" && hints[svid.Hint] {
			// The spec: hints are unique in a response; the first wins.
			s.log.Warn("two SVIDs for one workload share a hint; sending the first", "hint", svid.Hint, "spiffe_id", svid.ID.String())
			continue
		}
		hints[svid.Hint] = true
		bundle := bundleFor(svid.ID.TrustDomain(), local, federated)
		if bundle == nil {
			s.log.Warn("no bundle for the trust domain of an SVID; not sending it", "spiffe_id", svid.ID.String())
			continue
		}
		certs, key, err := s.encoded.svid(svid)
		if err != nil {
			s.log.Error("an SVID could not be encoded; not sending it", "spiffe_id", svid.ID.String(), "error", err)
			continue
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      s.encoded.bundle(bundle),
			Hint:        svid.Hint,
		})
		federates = append(federates, id.FederatesWith...)
	}
	if len(resp.Svids) == 0 {
		return nil, time.Time{}, s.noIdentity(sel)
	}
	resp.FederatedBundles = s.federatedBundles(local.TrustDomain(), federates, federated)
	return resp, expiry, nil
}

func (s *Server) x509BundlesResponse(sel []attest.Selector) (*workload.X509BundlesResponse, time.Time, error) {
	s.encoded.since(s.src.Changed())
	ids, expiry := s.current(sel)
	if len(ids) == 0 {
		return nil, time.Time{}, s.noIdentity(sel)
	}
	local, federated := s.src.Bundles()
	if local == nil || local.Empty() {
		return nil, time.Time{}, errNoBundle
	}
	bundles := s.federatedBundles(local.TrustDomain(), federations(ids), federated)
	if bundles == nil {
		bundles = map[string][]byte{}
	}
	bundles[local.TrustDomain().IDString()] = s.encoded.bundle(local)
	return &workload.X509BundlesResponse{Bundles: bundles}, expiry, nil
}

// jwtBundlesResponse is this trust domain's JWT bundle, even if it has no
// key yet, and those of the trust domains the caller's entries federate
// with, as JWK Sets keyed by trust domain ID.
func (s *Server) jwtBundlesResponse(sel []attest.Selector) (*workload.JWTBundlesResponse, time.Time, error) {
	ids, expiry := s.current(sel)
	if len(ids) == 0 {
		return nil, time.Time{}, s.noIdentity(sel)
	}
	local, federated := s.src.JWTBundles()
	if local == nil {
		return nil, time.Time{}, errNoBundle
	}
	resp := &workload.JWTBundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range append([]*jwtbundle.Bundle{local}, trusted(local.TrustDomain(), federations(ids), federated)...) {
		doc, err := jwks(b)
		if err != nil {
			return nil, time.Time{}, status.Errorf(codes.Internal, "the JWT bundle of %s does not encode: %v", b.TrustDomain(), err)
		}
		resp.Bundles[b.TrustDomain().IDString()] = doc
	}
	return resp, expiry, nil
}

// federations are the trust domains the identities federate with.
func federations(ids []Identity) []spiffeid.TrustDomain {
	var tds []spiffeid.TrustDomain
	for _, id := range ids {
		tds = append(tds, id.FederatesWith...)
	}
	return tds
}

// trusted returns the JWT bundles, with keys, of the trust domains in tds
// other than local.
func trusted(local spiffeid.TrustDomain, tds []spiffeid.TrustDomain, federated []*jwtbundle.Bundle) []*jwtbundle.Bundle {
	var out []*jwtbundle.Bundle
	for _, b := range federated {
		if td := b.TrustDomain(); td != local && slices.Contains(tds, td) && !b.Empty() {
			out = append(out, b)
		}
	}
	return out
}

// jwks encodes a JWT bundle as a JWK Set, keys ordered by key ID so that an
// unchanged bundle encodes the same and is not resent.
func jwks(b *jwtbundle.Bundle) ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for kid, key := range b.JWTAuthorities() {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: key, KeyID: kid})
	}
	slices.SortFunc(set.Keys, func(a, b jose.JSONWebKey) int { return strings.Compare(a.KeyID, b.KeyID) })
	return json.Marshal(set)
}

// federatedBundles returns the bundles of the trust domains in tds other
// than local, keyed by trust domain ID ("spiffe://west.example"); a domain
// whose bundle the agent does not have yet is left out.
func (s *Server) federatedBundles(local spiffeid.TrustDomain, tds []spiffeid.TrustDomain, federated []*x509bundle.Bundle) map[string][]byte {
	var out map[string][]byte
	for _, b := range federated {
		td := b.TrustDomain()
		if td == local || !slices.Contains(tds, td) || b.Empty() {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.IDString()] = s.encoded.bundle(b)
	}
	return out
}

func bundleFor(td spiffeid.TrustDomain, local *x509bundle.Bundle, federated []*x509bundle.Bundle) *x509bundle.Bundle {
	if local.TrustDomain() == td {
		return local
	}
	for _, b := range federated {
		if b.TrustDomain() == td && !b.Empty() {
			return b
		}
	}
	return nil
}
