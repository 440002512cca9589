package sds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/meshfed/meshfed/internal/pki"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxLoggedDetail bounds how much of a client's NACK message is logged.
const maxLoggedDetail = 1024

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// handler implements the SDS service.
type handler struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	s *Server
}

// FetchSecrets answers one request with the current resources. A caller
// with no identity gets PermissionDenied, since it cannot wait for one.
func (h *handler) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	sel, log, err := h.s.attest(ctx, "FetchSecrets")
	if err != nil {
		return nil, err
	}
	if err := checkType(req.GetTypeUrl()); err != nil {
		return nil, err
	}
	sub, err := sotwSubscription(nil, req.GetResourceNames())
	if err != nil {
		return nil, err
	}
	v := h.s.view(sel, log)
	if len(v.ids) == 0 {
		log.Info("no registration entry gives the SDS caller an SVID; nothing served")
		return nil, errNoIdentity
	}
	rs, missing := sub.resolve(v)
	resp := sotwResponse(rs)
	log.Debug("SDS fetch answered", "version", resp.VersionInfo, "resources", resourceNames(rs), "not_available", sample(missing))
	return resp, nil
}

// StreamSecrets serves the state-of-the-world protocol: every response
// holds all the subscribed resources the caller may have, and one is sent
// after the first request and whenever that set changes.
func (h *handler) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx := stream.Context()
	sel, log, err := h.s.attest(ctx, "StreamSecrets")
	if err != nil {
		return err
	}
	reqs, recvErr := receive(ctx, stream.Recv)
	var (
		sub            *subscription // nil until the first request
		sent           bool
		version, nonce string // of the last response sent
		count          int
		wake           alarm
	)
	defer wake.stop()
	for {
		changed := h.s.src.Changed()
		if sub != nil {
			v := h.s.view(sel, log)
			rs, missing := sub.resolve(v)
			// A response equal to the last is not sent again, whether it
			// was ACKed or NACKed: only a change sends a new one.
			if resp := sotwResponse(rs); !sent || resp.VersionInfo != version {
				count++
				resp.Nonce = strconv.Itoa(count)
				if err := stream.Send(resp); err != nil {
					return err
				}
				sent, version, nonce = true, resp.VersionInfo, resp.Nonce
				log.Debug("SDS response sent", "version", version, "nonce", nonce, "resources", resourceNames(rs), "not_available", sample(missing))
			}
			wake.set(h.s.clock, v.expiry)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			return endOfStream(err)
		case <-changed:
		case <-wake.c():
		case req := <-reqs:
			if err := checkType(req.GetTypeUrl()); err != nil {
				return err
			}
			if sent && req.GetResponseNonce() != nonce {
				// A reply to an older response, written before the client
				// saw the latest: the latest's reply will follow.
				log.Debug("stale SDS request ignored", "nonce", req.GetResponseNonce(), "latest", nonce)
				continue
			}
			if sent {
				logReply(log, nonce, version, req.GetVersionInfo(), req.GetErrorDetail())
			}
			if sub, err = sotwSubscription(sub, req.GetResourceNames()); err != nil {
				return err
			}
		}
	}
}

// sotwSubscription is the subscription of a state-of-the-world request
// naming names; prev is the stream's current one, nil on its first request.
func sotwSubscription(prev *subscription, names []string) (*subscription, error) {
	if len(names) > maxResourceNames {
		return nil, status.Errorf(codes.InvalidArgument, "%d resource names requested; at most %d are served on one stream", len(names), maxResourceNames)
	}
	sub := &subscription{names: map[string]bool{}}
	// A first request naming nothing is a wildcard, and stays one while
	// the client keeps naming nothing.
	sub.legacy = len(names) == 0 && (prev == nil || prev.legacy)
	sub.wildcard = sub.legacy
	for _, n := range names {
		switch n {
		case wildcard:
			sub.wildcard = true
		case "":
		default:
			sub.names[n] = true
		}
	}
	return sub, nil
}

func sotwResponse(rs []*resource) *discoveryv3.DiscoveryResponse {
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: secretTypeURL, VersionInfo: setVersion(rs)}
	for _, r := range rs {
		resp.Resources = append(resp.Resources, r.secret)
	}
	return resp
}

// checkType refuses a request for anything but secrets. An empty type is
// the service's own.
func checkType(typeURL string) error {
	if typeURL != "" && typeURL != secretTypeURL {
		return status.Errorf(codes.InvalidArgument, "type_url %q is not served here; the Secret Discovery Service serves only %s", truncate(typeURL), secretTypeURL)
	}
	return nil
}

// logReply logs the client's reply to the response with nonce: an ACK, or a
// NACK with the client's reason.
func logReply(log *slog.Logger, nonce, version, applied string, detail *rpcstatus.Status) {
	if detail == nil {
		log.Debug("SDS response applied (ACK)", "nonce", nonce, "version", applied)
		return
	}
	log.Warn("the SDS client rejected secrets (NACK); they are not resent until they change",
		"nonce", nonce, "rejected_version", version, "applied_version", truncate(applied),
		"code", codes.Code(detail.GetCode()).String(), "message", truncate(detail.GetMessage()))
}

// maxLoggedNames bounds how many of the names a client asked for are
// logged at once.
const maxLoggedNames = 16

// sample bounds a list of names the client chose before it is logged.
func sample(names []string) []string {
	out := make([]string, 0, min(len(names), maxLoggedNames+1))
	for i, n := range names {
		if i == maxLoggedNames {
			out = append(out, fmt.Sprintf("(%d more)", len(names)-i))
			break
		}
		out = append(out, truncate(n))
	}
	return out
}

// truncate bounds a string the client chose before it is logged or echoed.
func truncate(s string) string {
	if len(s) <= maxLoggedDetail {
		return s
	}
	return strings.ToValidUTF8(s[:maxLoggedDetail], "") + "…"
}

// receive reads a stream's requests into a channel until the stream ends,
// so that the handler can wait for requests and changes at once. The
// goroutine ends when Recv fails, which it does when the handler returns.
func receive[T any](ctx context.Context, recv func() (T, error)) (<-chan T, <-chan error) {
	reqs := make(chan T)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs, errc
}

// endOfStream is what a handler returns when Recv failed: nothing when the
// client closed its side or went away.
func endOfStream(err error) error {
	if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}

// alarm wakes a stream just after the earliest expiry among the SVIDs it may
// have sent, when the clock says it has passed.
type alarm struct{ t *time.Timer }

func (a *alarm) set(clock pki.Clock, at time.Time) {
	a.stop()
	if !at.IsZero() {
		a.t = time.NewTimer(max(at.Sub(clock()), 0) + time.Millisecond)
	}
}

func (a *alarm) c() <-chan time.Time {
	if a.t == nil {
		return nil
	}
	return a.t.C
}

func (a *alarm) stop() {
	if a.t != nil {
		a.t.Stop()
		a.t = nil
	}
}
