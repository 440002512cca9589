// Package policyclient is a proxy's side of the policy its trust domain's
// server pushes, as istiod pushes policy to its proxies: it watches the
// agent's meshfed.agent.v1.PolicyDiscovery service on the agent's unix
// socket (the Workload API socket), reconnects with backoff when the agent
// goes away, and hands every new snapshot to the proxy parsed.
//
// Each document is parsed with policy.Parse under the file name
// "server:<namespace>/<name>" (errors and explanations name it so), with its
// creation time on the server as its creationTimestamp, since Istio lets the
// oldest policy win. A snapshot whose documents do not all parse, or do not
// build a policy.Set together, is never handed over: the proxy keeps
// enforcing the last good set, and the reason is logged. The package only
// reads policy; it never sends the agent anything but the request.
package policyclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/meshfed/meshfed/internal/api/agentv1"
	"github.com/meshfed/meshfed/internal/policy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Defaults of Config.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// MaxSnapshotBytes bounds one snapshot received from the agent: the server
// stores at most 2 MiB of policy YAML, which fits with room to spare.
const MaxSnapshotBytes = 4 << 20

// Config configures a Client.
type Config struct {
	// SocketPath is the agent's unix socket (its --socket, the Workload
	// API's). Required.
	SocketPath string
	// Logger receives reconnects and refused snapshots; discarding if nil.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before reconnecting: it
	// starts at MinBackoff, doubles on each failure up to MaxBackoff, and
	// starts over once a snapshot arrives.
	MinBackoff, MaxBackoff time.Duration
}

// Client watches one agent's policy.
type Client struct {
	cfg    Config
	target string
}

// New checks cfg and fills in its defaults. It connects to nothing; Watch
// does.
func New(cfg Config) (*Client, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("policyclient: the agent's socket path is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("policyclient: maximum backoff %s is below the minimum %s", cfg.MaxBackoff, cfg.MinBackoff)
	}
	path, err := filepath.Abs(cfg.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("policyclient: socket: %w", err)
	}
	// "unix://" and an absolute path: with a relative one gRPC would read
	// its first directory as the authority.
	return &Client{cfg: cfg, target: "unix://" + path}, nil
}

// Watch follows the agent's policy until ctx is done, then returns nil. It
// calls fn with the parsed documents and the revision of each snapshot that
// differs from the last one seen (the first one always), on Watch's own
// goroutine, one call at a time; the documents are fn's to keep. It returns
// an error only for arguments it cannot use.
func Watch(ctx context.Context, socketPath string, fn func(docs []policy.Document, revision int64)) error {
	c, err := New(Config{SocketPath: socketPath, Logger: slog.Default()})
	if err != nil {
		return err
	}
	return c.Watch(ctx, fn)
}

// Watch is the package's Watch with this client's Config.
func (c *Client) Watch(ctx context.Context, fn func(docs []policy.Document, revision int64)) error {
	if fn == nil {
		return errors.New("policyclient: Watch needs a function to call")
	}
	conn, err := grpc.NewClient(c.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxSnapshotBytes)),
		// gRPC's own reconnect backoff (up to 2 minutes by default) would
		// outlast ours after a long agent outage.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: c.cfg.MinBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: c.cfg.MaxBackoff,
		}}),
	)
	if err != nil {
		return fmt.Errorf("policyclient: %w", err)
	}
	defer conn.Close()
	client := agentv1.NewPolicyDiscoveryClient(conn)
	// The Workload API's security header: the agent refuses calls without it.
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	w := &watcher{c: c, fn: fn}
	wait := c.cfg.MinBackoff
	for {
		received, err := w.once(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if received {
			wait = c.cfg.MinBackoff
		}
		c.cfg.Logger.Warn("policy stream from the agent ended; reconnecting", "socket", c.cfg.SocketPath, "error", err, "in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(wait*2, c.cfg.MaxBackoff)
	}
}

// watcher is one Watch call's state across reconnects.
type watcher struct {
	c    *Client
	fn   func([]policy.Document, int64)
	last *agentv1.PolicySnapshot // the last snapshot seen, good or not
}

// once runs one stream until it fails; it reports whether any snapshot
// arrived.
func (w *watcher) once(ctx context.Context, client agentv1.PolicyDiscoveryClient) (bool, error) {
	stream, err := client.WatchPolicies(ctx, &agentv1.WatchPoliciesRequest{})
	if err != nil {
		return false, err
	}
	received := false
	for {
		snap, err := stream.Recv()
		if err != nil {
			return received, err
		}
		received = true
		if w.last != nil && proto.Equal(w.last, snap) {
			continue // the same set again, after a reconnect
		}
		w.last = snap
		docs, err := Documents(snap)
		if err != nil {
			w.c.cfg.Logger.Error("refusing a policy snapshot from the agent; keeping the last good one", "revision", snap.GetRevision(), "error", err)
			continue
		}
		w.fn(docs, snap.GetRevision())
	}
}

// SourceFile is the file name a pushed document is parsed under.
func SourceFile(namespace, name string) string { return "server:" + namespace + "/" + name }

// Documents parses a snapshot: each document on its own, with its creation
// time on the server, and all of them checked to build a policy.Set.
func Documents(snap *agentv1.PolicySnapshot) ([]policy.Document, error) {
	docs := make([]policy.Document, 0, len(snap.GetPolicies()))
	for _, p := range snap.GetPolicies() {
		file := SourceFile(p.GetNamespace(), p.GetName())
		parsed, err := policy.Parse(file, p.GetYaml())
		if err != nil {
			return nil, err
		}
		if len(parsed) != 1 || string(parsed[0].Kind) != p.GetKind() || parsed[0].Namespace != p.GetNamespace() || parsed[0].Name != p.GetName() {
			return nil, fmt.Errorf("policyclient: %s: the document is not one %s named %s/%s", file, p.GetKind(), p.GetNamespace(), p.GetName())
		}
		d := parsed[0]
		if ms := p.GetCreatedAtMs(); ms > 0 {
			d.Created = time.UnixMilli(ms).UTC()
		}
		docs = append(docs, d)
	}
	if _, err := policy.NewSet(docs); err != nil {
		return nil, err
	}
	return docs, nil
}
