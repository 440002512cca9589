package sds

import (
	"maps"
	"slices"
	"strconv"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DeltaSecrets serves the incremental protocol: a response carries only the
// resources whose version the client does not have, and the names of those
// it holds but may no longer have.
func (h *handler) DeltaSecrets(stream secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	ctx := stream.Context()
	sel, log, err := h.s.attest(ctx, "DeltaSecrets")
	if err != nil {
		return err
	}
	reqs, recvErr := receive(ctx, stream.Recv)
	var (
		sub *subscription // nil until the first request
		// have is what the client holds, name -> version: what it said it
		// had when it connected, then what it was sent. A NACKed version
		// stays here, so it is not sent again until it changes.
		have  = map[string]string{}
		count int
		wake  alarm
	)
	defer wake.stop()
	for {
		changed := h.s.src.Changed()
		if sub != nil {
			v := h.s.view(sel, log)
			rs, missing := sub.resolve(v)
			if resp := deltaResponse(rs, have); resp != nil {
				count++
				resp.Nonce = strconv.Itoa(count)
				if err := stream.Send(resp); err != nil {
					return err
				}
				log.Debug("SDS delta response sent", "nonce", resp.Nonce, "resources", deltaNames(resp.Resources),
					"removed", sample(resp.RemovedResources), "not_available", sample(missing))
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
			if n := req.GetResponseNonce(); n != "" {
				logReply(log, n, "", "", req.GetErrorDetail())
			}
			if sub == nil {
				if len(req.GetInitialResourceVersions()) > maxResourceNames {
					return status.Errorf(codes.InvalidArgument, "%d initial resource versions; at most %d are served on one stream", len(req.GetInitialResourceVersions()), maxResourceNames)
				}
				maps.Copy(have, req.GetInitialResourceVersions())
				// A first request subscribing to nothing is a wildcard.
				sub = &subscription{names: map[string]bool{}, wildcard: len(req.GetResourceNamesSubscribe()) == 0}
			}
			if err := deltaSubscribe(sub, have, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()); err != nil {
				return err
			}
		}
	}
}

// deltaSubscribe applies a request's subscriptions and unsubscriptions. The
// client drops what it unsubscribes from, so it is forgotten from have: a
// later subscription sends it again.
func deltaSubscribe(sub *subscription, have map[string]string, subscribe, unsubscribe []string) error {
	for _, n := range subscribe {
		switch n {
		case wildcard:
			sub.wildcard = true
		case "":
		default:
			sub.names[n] = true
		}
	}
	for _, n := range unsubscribe {
		if n == wildcard {
			sub.wildcard = false
			continue
		}
		delete(sub.names, n)
		delete(have, n)
	}
	if len(sub.names) > maxResourceNames {
		return status.Errorf(codes.InvalidArgument, "%d resource names subscribed; at most %d are served on one stream", len(sub.names), maxResourceNames)
	}
	return nil
}

// deltaResponse returns what the client lacks: the resources of rs whose
// version it does not have, and the names it holds that are not in rs. It
// records them in have, and returns nil when there is nothing to send.
func deltaResponse(rs []*resource, have map[string]string) *discoveryv3.DeltaDiscoveryResponse {
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: secretTypeURL, SystemVersionInfo: setVersion(rs)}
	current := make(map[string]bool, len(rs))
	for _, r := range rs {
		current[r.name] = true
	}
	for _, n := range slices.Sorted(maps.Keys(have)) {
		if !current[n] {
			resp.RemovedResources = append(resp.RemovedResources, n)
			delete(have, n)
		}
	}
	for _, r := range rs {
		if v, ok := have[r.name]; ok && v == r.version {
			continue
		}
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: r.secret})
		have[r.name] = r.version
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
		return nil
	}
	return resp
}

func deltaNames(rs []*discoveryv3.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.GetName()
	}
	return out
}
