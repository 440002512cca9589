package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	serverv1 "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

// issued is a signed SVID with the CA that signed it.
type issued struct {
	chain []*x509.Certificate // leaf, intermediates (no root)
	roots []*x509.Certificate
}

// issuingMethods are the signing API's methods that renew an SVID, the
// calls a server under load receives over and over: announceIssuance
// announces their audit row as soon as they arrive.
var issuingMethods = map[string]bool{
	istioca.IstioCertificateService_CreateCertificate_FullMethodName: true,
	serverv1.Node_SignX509SVID_FullMethodName:                        true,
}

// announced is the audit row announceIssuance announced for a request, for
// its first signSVID to take.
type announced struct {
	audit *store.IssuedExpectation
	taken atomic.Bool
}

type announcedKey struct{}

// announceIssuance announces the audit row of an issuing request
// (store.ExpectIssued) before its credential is verified, so that a commit
// of the audit log starting meanwhile waits for it too: on a busy server a
// JWT's verification is about a third of a renewal, and without it a commit
// waited only for the requests already signing. The announcement is
// withdrawn when the request returns without having recorded a row.
func (s *Server) announceIssuance(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !issuingMethods[info.FullMethod] {
		return handler(ctx, req)
	}
	a := &announced{audit: s.store.ExpectIssued()}
	defer a.audit.Withdraw()
	return handler(context.WithValue(ctx, announcedKey{}, a), req)
}

// takeAnnounced returns the row announced for ctx's request unless an
// earlier signSVID of the request took it (a request may ask for several
// SVIDs), or nil.
func takeAnnounced(ctx context.Context) *store.IssuedExpectation {
	a, ok := ctx.Value(announcedKey{}).(*announced)
	if !ok || !a.taken.CompareAndSwap(false, true) {
		return nil
	}
	return a.audit
}

// signSVID signs csr for the identity ident was verified to hold. The CSR
// proves possession of its key and may name that same identity or none; the
// identity itself comes only from ident. renews is set when a node renews
// its own SVID (one lineage: oneLineage) presenting the SVID of that serial:
// the audit row then records the new SVID in the node's record too, if the
// record still admits the one presented (store.Issued.RenewsNode). The
// returned error is a gRPC status.
func (s *Server) signSVID(ctx context.Context, ident credential.Identity, csr *x509.CertificateRequest, ttl time.Duration, dns []string, renews string) (*issued, error) {
	start := time.Now()
	kind := string(ident.Kind)
	// A commit of the audit log starting while this is signed may wait for
	// its row (store.Config.AuditCommitDelay): announced when the request
	// arrived (announceIssuance), or now.
	audit := takeAnnounced(ctx)
	if audit == nil {
		audit = s.store.ExpectIssued()
	}
	defer audit.Withdraw()
	pub, err := pki.CheckCSR(csr)
	if err != nil {
		s.metrics.observeIssue(kind, "invalid", start)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := pki.CheckCSRIdentity(csr, ident.ID); err != nil {
		s.metrics.observeIssue(kind, "denied", start)
		s.log.Warn("CSR asked for another identity; refused", "credential", kind, "caller", ident.Caller, "identity", ident.ID.String(), "error", err)
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	switch {
	case ttl <= 0:
		ttl = s.set.defaultTTL
	case ttl > s.set.maxTTL:
		ttl = s.set.maxTTL
	}
	ca := s.auth.CA()
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: ident.ID, PublicKey: pub, TTL: ttl, DNSNames: dns})
	if err != nil {
		s.metrics.observeIssue(kind, "error", start)
		s.log.Error("signing failed", "identity", ident.ID.String(), "error", err)
		var ve *pki.ViolationError
		if errors.As(err, &ve) {
			return nil, status.Error(codes.Internal, "server: the signed certificate failed re-verification")
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	chain = withoutRoot(chain, ca)
	leaf := chain[0]
	storeStart := time.Now()
	err = audit.Record(ctx, store.Issued{
		Serial:         fmt.Sprintf("%x", leaf.SerialNumber),
		SPIFFEID:       ident.ID.String(),
		CredentialKind: kind,
		Caller:         ident.Caller,
		ServerID:       s.set.serverID,
		IssuedAt:       s.clock(),
		NotAfter:       leaf.NotAfter,
		RootKeyID:      hex.EncodeToString(ca.RootKeyID()),
		RenewsNode:     renews,
	})
	s.metrics.observeStore("record_issued", storeStart)
	if renews != "" && nodeRefusal(err) {
		s.metrics.observeIssue(kind, "denied", start)
		return nil, s.nodeRefused(ident.ID, renews, err)
	}
	if err != nil {
		// An SVID that is not in the audit log is not handed out.
		s.metrics.observeIssue(kind, "error", start)
		s.log.Error("recording the issued certificate failed; not returning it", "identity", ident.ID.String(), "error", err)
		return nil, status.Error(codes.Unavailable, "server: the audit log is unavailable; retry")
	}
	s.metrics.observeIssue(kind, "ok", start)
	// Each issuance is a row of the audit log (meshfed audit list); the log
	// line is for debugging, as SPIRE's "Signed X509 SVID" is.
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("issued X.509-SVID", "spiffe_id", ident.ID.String(), "credential", kind, "caller", ident.Caller,
			"serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &issued{chain: chain, roots: ca.Roots()}, nil
}

// credentialError turns a credential failure into Unauthenticated with the
// verifier's reason, which never contains the credential itself, or into
// Unavailable when the credential could not be checked (an issuer's JWKS or
// the store down), so that callers such as istio-agent retry.
func (s *Server) credentialError(kind credential.Kind, err error) error {
	var ce *credential.Error
	if errors.As(err, &ce) && ce.Unavailable {
		s.metrics.observeIssue(string(kind), "unavailable", time.Now())
		s.log.Error("credential could not be checked", "credential", string(kind), "error", err, "cause", errors.Unwrap(err))
		return status.Error(codes.Unavailable, err.Error())
	}
	s.metrics.observeIssue(string(kind), "unauthenticated", time.Now())
	s.log.Warn("credential refused", "credential", string(kind), "error", err, "cause", errors.Unwrap(err))
	return status.Error(codes.Unauthenticated, err.Error())
}

// parseCSR parses a DER CSR from a request.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, status.Error(codes.InvalidArgument, "server: no CSR in the request")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: CSR does not parse: %v", err)
	}
	return csr, nil
}
