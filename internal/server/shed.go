package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/shed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

// signingMethods are the signing API's calls that sign (and verify a
// credential): the work limits.* bounds (admitSigning).
var signingMethods = map[string]bool{
	istioca.IstioCertificateService_CreateCertificate_FullMethodName: true,
	serverv1.Node_SignX509SVID_FullMethodName:                        true,
	serverv1.Node_SignJWTSVID_FullMethodName:                         true,
	serverv1.Node_AttestNode_FullMethodName:                          true,
}

// admitSigning gives each signing request its turn within limits.* (the
// first interceptor: a request waiting for its turn has cost nothing but its
// arrival) and refuses it with UNAVAILABLE, for the client to back off, when
// too many already wait or its turn does not come within
// limits.max_queue_wait.
func (s *Server) admitSigning(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !signingMethods[info.FullMethod] {
		return handler(ctx, req)
	}
	release, err := s.shed.Acquire(ctx)
	if err != nil {
		return nil, s.shedError(err)
	}
	defer release()
	return handler(ctx, req)
}

// shedError is the status of a request shed.Acquire refused, counted.
func (s *Server) shedError(err error) error {
	var reason, limit, msg string
	switch {
	case errors.Is(err, shed.ErrQueueFull):
		reason, limit = "queue_full", "limits.max_signing_queue"
		msg = fmt.Sprintf("server: overloaded: as many signing requests wait for a turn as limits.max_signing_queue allows (%d); retry with backoff", s.set.limits.queue)
	case errors.Is(err, shed.ErrWaitedTooLong):
		reason, limit = "waited", "limits.max_queue_wait"
		msg = fmt.Sprintf("server: overloaded: no turn to sign within limits.max_queue_wait (%s); retry with backoff", s.set.limits.queueWait)
	default:
		return status.FromContextError(err).Err()
	}
	s.metrics.shed.WithLabelValues(reason).Inc()
	// One line per reason every shedLogEvery, not one per refusal: a
	// server shedding load refuses thousands a second.
	if missed, ok := s.shedLog.Allow(reason, s.clock()); ok {
		s.log.Warn("shedding load: refusing signing requests (UNAVAILABLE; clients back off)", "reason", reason, "limit", limit,
			"in_flight", s.shed.InFlight(), "queued", s.shed.Queued(), "refused_since_last_line", missed)
	}
	return status.Error(codes.Unavailable, msg)
}

// shedLogEvery paces the server's log line about shedding load, per reason.
const shedLogEvery = 30 * time.Second
