package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"strings"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/pemfile"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

// istioService is Istio's CA API, as istio-agent calls it: a PEM CSR, the
// pod's service-account token as "authorization: Bearer …", and a chain
// back (leaf first, root last).
type istioService struct {
	istioca.UnimplementedIstioCertificateServiceServer
	s *Server
}

func (i *istioService) CreateCertificate(ctx context.Context, req *istioca.IstioCertificateRequest) (*istioca.IstioCertificateResponse, error) {
	s := i.s
	ident, err := s.authenticateIstio(ctx)
	if err != nil {
		return nil, err
	}
	csr, err := pemfile.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := s.signSVID(ctx, ident, csr, time.Duration(req.GetValidityDuration())*time.Second, nil, "")
	if err != nil {
		return nil, err
	}
	resp := &istioca.IstioCertificateResponse{}
	for _, c := range out.chain {
		resp.CertChain = append(resp.CertChain, string(pemfile.EncodeCertificates(c)))
	}
	resp.CertChain = append(resp.CertChain, string(pemfile.EncodeCertificates(out.roots[0])))
	return resp, nil
}

// authenticateIstio verifies the bearer JWT, or else the caller's SVID (an
// agent renewing with its current certificate).
func (s *Server) authenticateIstio(ctx context.Context) (credential.Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		token, ok := strings.CutPrefix(vals[0], "Bearer ")
		if !ok {
			return credential.Identity{}, s.credentialError(credential.KindKubernetesJWT, errAuthHeader)
		}
		if s.jwt == nil {
			return credential.Identity{}, s.credentialError(credential.KindKubernetesJWT, errNoJWTIssuers)
		}
		ident, err := s.jwt.Verify(ctx, strings.TrimSpace(token))
		if err != nil {
			return credential.Identity{}, s.credentialError(credential.KindKubernetesJWT, err)
		}
		return ident, nil
	}
	if ident, ok, err := s.svidCredential(ctx); ok {
		return ident, err
	}
	return credential.Identity{}, s.credentialError(credential.KindKubernetesJWT, errNoCredential)
}

type serverError string

func (e serverError) Error() string { return string(e) }

const (
	errAuthHeader   = serverError(`server: the authorization metadata must be "Bearer <service-account token>"`)
	errNoJWTIssuers = serverError("server: no JWT issuer is configured (credentials.kubernetes_jwt); this server cannot accept service-account tokens")
	errNoCredential = serverError("server: no credential: send a service-account token as 'authorization: Bearer …' or present an SVID of this trust domain")
	errNoNodeSVID   = "server: present this trust domain's SVID (the node SVID from AttestNode)"
)

// svidCredential verifies the SVID the caller presented in the handshake as
// a renewal credential. ok is false when none was presented; a refusal is
// counted as an issuance refused.
func (s *Server) svidCredential(ctx context.Context) (credential.Identity, bool, error) {
	ident, ok, err := s.verifiedSVID(ctx)
	if err != nil {
		return ident, ok, s.credentialError(credential.KindSVID, err)
	}
	return ident, ok, nil
}

// verifiedSVID verifies, now, the SVID the caller presented in the
// handshake: the handshake verified it then, but a gRPC connection lives
// for hours, so each call checks it again (cheaply: svidMemo keeps a chain
// verified at this store revision, while it is valid). A connection whose
// SVID has since expired, or no longer chains to this domain's roots, can
// make no more calls. ok is false when no SVID was presented.
func (s *Server) verifiedSVID(ctx context.Context) (credential.Identity, bool, error) {
	_, chain, ok := peerSVID(ctx)
	if !ok {
		return credential.Identity{}, false, nil
	}
	rev := s.revision.Load()
	if ident, ok := s.svids.get(chain, rev, s.clock()); ok {
		return ident, true, nil
	}
	v := credential.SVIDVerifier{TrustDomain: s.set.td, Bundle: s.localBundleSource(), Clock: s.clock}
	ident, err := v.Verify(chain)
	if err != nil {
		return credential.Identity{}, true, err
	}
	s.svids.put(chain, rev, ident)
	return ident, true, nil
}

// callerSVID is the caller's SVID, verified now (verifiedSVID), for the
// calls that sign nothing; missing is the refusal when none was presented.
// The error is a gRPC status.
func (s *Server) callerSVID(ctx context.Context, missing string) (credential.Identity, error) {
	ident, ok, err := s.verifiedSVID(ctx)
	switch {
	case !ok:
		return ident, status.Error(codes.Unauthenticated, missing)
	case err != nil:
		return ident, status.Errorf(codes.Unauthenticated, "%v; reconnect with a current SVID", err)
	}
	return ident, nil
}

// svidMemo remembers SVID chains that verified, so that a connection making
// many calls pays for the chain's signatures once. An entry counts only for
// the store revision it was verified at (a bundle change re-verifies) and
// only while the leaf is within its validity period.
type svidMemo struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]memoEntry
}

type memoEntry struct {
	rev       int64
	ident     credential.Identity
	notBefore time.Time
	notAfter  time.Time
}

// maxMemo bounds the memo; past it the memo starts again empty.
const maxMemo = 10000

func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	copy(k[:], h.Sum(nil))
	return k
}

func (m *svidMemo) get(chain []*x509.Certificate, rev int64, now time.Time) (credential.Identity, bool) {
	k := chainKey(chain)
	m.mu.Lock()
	e, ok := m.m[k]
	m.mu.Unlock()
	if !ok || e.rev != rev || now.Before(e.notBefore) || now.After(e.notAfter) {
		return credential.Identity{}, false
	}
	return e.ident, true
}

func (m *svidMemo) put(chain []*x509.Certificate, rev int64, ident credential.Identity) {
	k := chainKey(chain)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil || len(m.m) >= maxMemo {
		m.m = make(map[[sha256.Size]byte]memoEntry)
	}
	m.m[k] = memoEntry{rev: rev, ident: ident, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
}
