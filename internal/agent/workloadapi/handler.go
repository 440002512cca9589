package workloadapi

import (
	"context"
	"slices"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
	errNoJWT      = status.Error(codes.Unimplemented, "JWT-SVIDs are not served by this agent yet (the server has no JWT signing key); use the X.509-SVID profile")
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

func (h *handler) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return nil, errNoJWT
}

func (h *handler) FetchJWTBundles(*workload.JWTBundlesRequest, grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return errNoJWT
}

func (h *handler) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return nil, errNoJWT
}

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
	ids, expiry := s.current(sel)
	if len(ids) == 0 {
		return nil, time.Time{}, errNoIdentity
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
		certs, key, err := svid.MarshalRaw()
		if err != nil {
			s.log.Error("an SVID could not be encoded; not sending it", "spiffe_id", svid.ID.String(), "error", err)
			continue
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      rawBundle(bundle),
			Hint:        svid.Hint,
		})
		federates = append(federates, id.FederatesWith...)
	}
	if len(resp.Svids) == 0 {
		return nil, time.Time{}, errNoIdentity
	}
	resp.FederatedBundles = federatedBundles(local.TrustDomain(), federates, federated)
	return resp, expiry, nil
}

func (s *Server) x509BundlesResponse(sel []attest.Selector) (*workload.X509BundlesResponse, time.Time, error) {
	ids, expiry := s.current(sel)
	if len(ids) == 0 {
		return nil, time.Time{}, errNoIdentity
	}
	local, federated := s.src.Bundles()
	if local == nil || local.Empty() {
		return nil, time.Time{}, errNoBundle
	}
	var federates []spiffeid.TrustDomain
	for _, id := range ids {
		federates = append(federates, id.FederatesWith...)
	}
	bundles := federatedBundles(local.TrustDomain(), federates, federated)
	if bundles == nil {
		bundles = map[string][]byte{}
	}
	bundles[local.TrustDomain().IDString()] = rawBundle(local)
	return &workload.X509BundlesResponse{Bundles: bundles}, expiry, nil
}

// federatedBundles returns the bundles of the trust domains in tds other
// than local, keyed by trust domain ID ("spiffe://west.example"); a domain
// whose bundle the agent does not have yet is left out.
func federatedBundles(local spiffeid.TrustDomain, tds []spiffeid.TrustDomain, federated []*x509bundle.Bundle) map[string][]byte {
	var out map[string][]byte
	for _, b := range federated {
		td := b.TrustDomain()
		if td == local || !slices.Contains(tds, td) || b.Empty() {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.IDString()] = rawBundle(b)
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

// rawBundle is a bundle as the Workload API carries it: the authorities'
// DER, concatenated.
func rawBundle(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw...)
	}
	return out
}
