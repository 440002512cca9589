package server

import (
	"context"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

// TestIssuanceAnnouncedOnArrival: a renewal's audit row is announced when
// the request arrives, before its credential is verified; the request's
// first signing takes it and no later one; and whatever the outcome,
// nothing stays announced once the request has returned (an announcement
// left behind would make every commit wait its whole delay).
func TestIssuanceAnnouncedOnArrival(t *testing.T) {
	h := start(t, nil)
	st := h.srv.store
	ctx := context.Background()

	issuing := &grpc.UnaryServerInfo{FullMethod: istioca.IstioCertificateService_CreateCertificate_FullMethodName}
	_, err := h.srv.announceIssuance(ctx, nil, issuing, func(ctx context.Context, _ any) (any, error) {
		if n := st.AnnouncedIssued(); n != 1 {
			t.Errorf("%d rows announced while the request runs, want 1", n)
		}
		if takeAnnounced(ctx) == nil {
			t.Error("the request's first signing found no announced row")
		}
		if takeAnnounced(ctx) != nil {
			t.Error("a second signing of the request took the same announced row")
		}
		return nil, status.Error(codes.Unauthenticated, "refused before signing")
	})
	wantStatus(t, err, codes.Unauthenticated, "refused before signing")
	if n := st.AnnouncedIssued(); n != 0 {
		t.Errorf("%d rows announced after a refused request returned, want 0", n)
	}

	other := &grpc.UnaryServerInfo{FullMethod: pb.Node_FetchBundles_FullMethodName}
	if _, err := h.srv.announceIssuance(ctx, nil, other, func(ctx context.Context, _ any) (any, error) {
		if n := st.AnnouncedIssued(); n != 0 {
			t.Errorf("FetchBundles announced %d rows, want 0", n)
		}
		if takeAnnounced(ctx) != nil {
			t.Error("FetchBundles carries an announced row")
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}

	// Through the API: an issued SVID, a refused credential and a refused
	// CSR leave nothing announced, and only the first is in the audit log.
	client := istioca.NewIstioCertificateServiceClient(h.dial(t, nil))
	_, csrDER := newCSR(t, "spiffe://east.example/ns/default/sa/reviews")
	call := func(token string) error {
		ctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		_, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(csrDER)), ValidityDuration: 3600})
		return err
	}
	if err := call(h.jwt(t, saClaims("default", "reviews", "istio-ca", time.Now().Add(time.Hour)))); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, call(h.jwt(t, saClaims("default", "reviews", "istio-ca", time.Now().Add(-time.Hour)))), codes.Unauthenticated, "expired")
	wantStatus(t, call(h.jwt(t, saClaims("default", "ratings", "istio-ca", time.Now().Add(time.Hour)))), codes.PermissionDenied, "verified identity is spiffe://east.example/ns/default/sa/ratings")
	if n := st.AnnouncedIssued(); n != 0 {
		t.Errorf("%d rows announced after three requests returned, want 0", n)
	}
	rows, err := st.ListIssued(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].SPIFFEID != "spiffe://east.example/ns/default/sa/reviews" {
		t.Errorf("audit log %+v, want the one SVID issued", rows)
	}
}
