package workloadapi

import (
	"github.com/meshfed/meshfed/internal/api/agentv1"
	"google.golang.org/grpc"
)

// PolicySource is what the PolicyDiscovery service serves from; the agent's
// cache is one.
type PolicySource interface {
	// Policies returns the current policy snapshot, nil while the agent has
	// none (it has not heard from its server, and kept none from before a
	// restart). The snapshot is shared: callers must not modify it, and a
	// change comes as a new snapshot, never as a change to this one.
	Policies() *agentv1.PolicySnapshot
	// PoliciesChanged returns a channel closed at the next change of the
	// snapshot. The server calls it before Policies, so a change between
	// the two is not missed.
	PoliciesChanged() <-chan struct{}
}

// policyHandler serves meshfed.agent.v1.PolicyDiscovery; the security
// header was checked by the interceptors before any method runs.
type policyHandler struct {
	agentv1.UnimplementedPolicyDiscoveryServer
	s   *Server
	src PolicySource
}

// WatchPolicies refuses a caller the attestor cannot identify, as every
// Workload API call does; any caller it identifies may read the policy,
// which is not secret. It sends the snapshot as soon as the agent has one,
// then each new one, until the caller leaves or the server stops.
func (h *policyHandler) WatchPolicies(_ *agentv1.WatchPoliciesRequest, stream grpc.ServerStreamingServer[agentv1.PolicySnapshot]) error {
	ctx := stream.Context()
	if _, err := h.s.attest(ctx, "WatchPolicies"); err != nil {
		return err
	}
	var last *agentv1.PolicySnapshot
	for {
		changed := h.src.PoliciesChanged()
		if snap := h.src.Policies(); snap != nil && snap != last {
			if err := stream.Send(snap); err != nil {
				return err
			}
			last = snap
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
