package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The server refuses the node itself, not one call, when it has evicted it
// ('meshfed node evict'), banned it, or no longer takes the node SVID the
// agent presents (the node renewed or attested again elsewhere since). The
// agent then attests again: in sidecar mode with its service-account token;
// in node mode with a join token it has not used yet (JoinTokenFile is read
// again for it). Meanwhile it renews nothing and keeps serving the SVIDs that
// are still valid, as while the server is unreachable.

// nodeRefusal returns the reason when err is the server refusing the node
// itself, else "".
func nodeRefusal(err error) string {
	if err == nil {
		return ""
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return ""
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != pb.ErrorDomain {
			continue
		}
		switch r := info.GetReason(); r {
		case pb.ReasonNodeNotAttested, pb.ReasonNodeBanned, pb.ReasonNodeSVIDSuperseded:
			return r
		}
	}
	return ""
}

// noteRefusal records err, from a call on connection gen (nodeClient), if
// it is the server refusing the node, and wakes Run to attest again. A
// refusal on an earlier connection is of an SVID the agent has left (a call
// still in flight when it reconnected with its renewed SVID, which the
// server then took as the node's): it says nothing of the current one.
func (a *Agent) noteRefusal(err error, gen int) {
	reason := nodeRefusal(err)
	if reason == "" {
		return
	}
	a.mu.Lock()
	if gen != a.connGen {
		a.mu.Unlock()
		a.log.Debug("a refusal of the node SVID the agent left; ignored", "reason", reason)
		return
	}
	first := a.refused == ""
	a.refused = reason
	a.mu.Unlock()
	if first {
		a.log.Error("the server refuses this node; attesting again, and serving the SVIDs still valid meanwhile", "node", a.NodeID().String(), "reason", reason, "error", err)
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Refused returns the server's reason for refusing this node (a
// serverv1.Reason...), or "" while it accepts it.
func (a *Agent) Refused() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refused
}

// joinToken is the join token to attest with: JoinTokenFile's, read now,
// else JoinToken.
func (a *Agent) joinToken() (string, error) {
	if a.cfg.JoinTokenFile == "" {
		return a.cfg.JoinToken, nil
	}
	data, err := pemfile.ReadFile(a.cfg.JoinTokenFile, MaxTokenFileBytes)
	if err != nil {
		return "", fmt.Errorf("agent: join token file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// errNoFreshToken: the agent has no join token it has not used. Finding
// that out reads a file and asks the server nothing, so Sync looks again
// every tokenPoll rather than backing off.
var errNoFreshToken = errors.New("no unused join token")

// tokenPoll is how often a refused agent without a fresh join token looks
// for one.
const tokenPoll = time.Second

// reattest attests again after the server refused the node, and
// reconnects. A join token the agent has attested with, or that the server
// refused, is not tried again: the error then says what to do.
func (a *Agent) reattest(ctx context.Context) error {
	token := ""
	if a.cfg.TokenFile == "" {
		t, err := a.joinToken()
		if err != nil {
			return err
		}
		a.mu.Lock()
		reason, spent := a.refused, t == "" || t == a.spentToken
		a.mu.Unlock()
		if spent {
			where := "restart the agent with --join-token"
			if a.cfg.JoinTokenFile != "" {
				where = "write it to " + a.cfg.JoinTokenFile + " (read again at each try)"
			}
			first := ""
			if reason == pb.ReasonNodeBanned {
				first = "lift the ban with 'meshfed node evict --spiffe-id " + a.NodeID().String() + "' on the server, then "
			}
			return fmt.Errorf("agent: the server refuses this node (%s) and the agent has no join token it has not used: %smake one with 'meshfed token create --spiffe-id %s' and %s: %w", reason, first, a.NodeID(), where, errNoFreshToken)
		}
		token = t
	}
	if err := a.attest(ctx, token); err != nil {
		if c := status.Code(err); token != "" && (c == codes.Unauthenticated || c == codes.PermissionDenied) {
			a.mu.Lock()
			a.spentToken = token
			a.mu.Unlock()
		}
		return err
	}
	a.mu.Lock()
	a.refused, a.saidNoToken = "", false
	a.mu.Unlock()
	a.log.Info("attested again; the server accepts this node", "node", a.NodeID().String())
	return a.connect()
}
