package workloadapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/api/agentv1"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/logpace"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Bounds on what a workload sends.
const (
	// maxRequestBytes bounds each message. X.509 requests are empty; a
	// JWT-SVID to validate or a list of audiences is a few KiB.
	maxRequestBytes = 64 << 10
	// maxAudiences and maxAudienceBytes are the server's bounds on the aud
	// claim (server.MaxJWTAudiences, MaxJWTAudienceBytes), checked here so
	// that a workload learns of a bad request from its agent.
	maxAudiences     = 16
	maxAudienceBytes = 2048
)

// Identity is one SVID a workload is entitled to.
type Identity struct {
	// SVID is the certificate chain (leaf first) and its private key.
	SVID *x509svid.SVID
	// FederatesWith are the foreign trust domains whose bundles the
	// workload receives with this SVID.
	FederatesWith []spiffeid.TrustDomain
}

// Source is what the server needs from the agent core.
type Source interface {
	// X509SVIDs returns the current SVIDs, with their keys, of the
	// registration entries whose selectors are all among sel, the default
	// identity first. The server still drops any that expired.
	X509SVIDs(sel []attest.Selector) []Identity
	// Bundles returns this trust domain's bundle (nil until the agent has
	// one) and the bundles of the federated trust domains it knows.
	Bundles() (local *x509bundle.Bundle, federated []*x509bundle.Bundle)
	// Changed returns a channel closed at the next change of SVIDs or
	// bundles. The server calls it before reading X509SVIDs and Bundles, so
	// a change between the two is not missed.
	Changed() <-chan struct{}
	// JWTSVIDs returns a JWT-SVID for audience for each registration entry
	// whose selectors are all among sel (only those whose SPIFFE ID is id,
	// unless id is zero), the default identity first; none if there is no
	// such entry. The server still drops any that expired.
	JWTSVIDs(ctx context.Context, sel []attest.Selector, id spiffeid.ID, audience []string) ([]*jwtsvid.SVID, error)
	// JWTBundles returns this trust domain's JWT bundle (nil until the agent
	// has one) and those of the federated trust domains it knows.
	JWTBundles() (local *jwtbundle.Bundle, federated []*jwtbundle.Bundle)
}

// Attestor identifies callers; *attest.Attestor is one.
type Attestor interface {
	// TransportCredentials are the gRPC server credentials that record
	// each connection's caller.
	TransportCredentials() credentials.TransportCredentials
	// AttestPeer returns the selectors of the caller of the request in ctx.
	AttestPeer(ctx context.Context) ([]attest.Selector, error)
}

// Config configures a Server.
type Config struct {
	// SocketPath is the unix socket to serve on. Its directory is created
	// 0755 if missing; a stale socket file is replaced, a live one refused.
	SocketPath string
	// Source provides SVIDs and bundles. Required.
	Source Source
	// Attestor identifies callers; attest.New with /proc if nil.
	Attestor Attestor
	// Clock decides which SVIDs have expired; time.Now if nil.
	Clock pki.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Policies, when set, is served as meshfed.agent.v1.PolicyDiscovery on
	// the same socket. It defaults to Source when Source is a PolicySource.
	Policies PolicySource
	// JWTCacheSize is how many verified JWT-SVIDs ValidateJWTSVID keeps, so
	// that a token validated again is not verified again (see jwtCache for
	// when a kept token is trusted): 1000 if zero; negative disables the
	// cache. Tokens over 4 KiB are never kept; an entry (the token's
	// SHA-256, its claims, its SPIFFE ID) takes about 1 KiB of heap for a
	// token of one audience and at most about 10 KiB, so the default costs
	// about 1 MiB and at most about 10 MiB.
	JWTCacheSize int
	// Gate, if set, admits each call within its limits, counts it and
	// times it to its first response (the agent's; connections are
	// admitted by the Attestor's handshake).
	Gate *admit.Gate
	// HandshakeTimeout is how long a new connection has to begin HTTP/2
	// (a local client does at once) before it is closed, so that one that
	// never does holds no place of its uid's (admit); DefaultHandshakeTimeout
	// if zero.
	HandshakeTimeout time.Duration
}

// DefaultHandshakeTimeout is Config.HandshakeTimeout's default (gRPC's own
// is 120 s, for clients across a network).
const DefaultHandshakeTimeout = 10 * time.Second

// Server serves the Workload API on one unix socket.
type Server struct {
	path     string
	src      Source
	attestor Attestor
	clock    pki.Clock
	log      *slog.Logger
	jwtCache *jwtCache // nil if disabled
	noIDLog  *logpace.Pacer[string]
	encoded  x509Encodings

	ln        *net.UnixListener
	grpc      *grpc.Server
	closeOnce sync.Once
}

// New checks cfg and binds the socket. It starts no goroutine; Run serves.
func New(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("workloadapi: a socket path is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("workloadapi: a source of SVIDs is required")
	}
	if cfg.Attestor == nil {
		a, err := attest.New(attest.Config{})
		if err != nil {
			return nil, fmt.Errorf("workloadapi: %w", err)
		}
		cfg.Attestor = a
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	path, err := filepath.Abs(cfg.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: socket: %w", err)
	}
	s := &Server{
		path:     path,
		src:      cfg.Source,
		attestor: cfg.Attestor,
		clock:    cfg.Clock,
		log:      cfg.Logger.With("socket", path),
		jwtCache: newJWTCache(cfg.JWTCacheSize),
		noIDLog:  logpace.New[string](noIdentityLogEvery),
	}
	if s.ln, err = listen(path); err != nil {
		return nil, err
	}
	unary := []grpc.UnaryServerInterceptor{unaryHeaderCheck}
	stream := []grpc.StreamServerInterceptor{streamHeaderCheck}
	if cfg.Gate != nil {
		unary = append(unary, cfg.Gate.UnaryInterceptor)
		stream = append(stream, cfg.Gate.StreamInterceptor)
	}
	s.grpc = grpc.NewServer(append(transportOptions(cfg.Attestor),
		grpc.ConnectionTimeout(cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	)...)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, &handler{s: s})
	if cfg.Policies == nil {
		cfg.Policies, _ = cfg.Source.(PolicySource)
	}
	if cfg.Policies != nil {
		agentv1.RegisterPolicyDiscoveryServer(s.grpc, &policyHandler{s: s, src: cfg.Policies})
	}
	return s, nil
}

// streamWorkers is how many goroutines serve the Workload API's calls and
// are kept between them, their stacks already grown to what a call needs
// (a new goroutine per call grew its stack from 8 KiB each time, about 6%
// of a new token's validation); a stream held open keeps its worker, and
// past them gRPC starts a goroutine per call as before.
const streamWorkers = 32

// transportOptions are the Workload API server's gRPC transport: the
// attestor's credentials, the bound on a request, long-lived stream
// workers, and flow-control windows fixed at twice that bound, so that a
// call costs no bandwidth-estimating PING (see grpcflow). The benchmarks'
// ceilings are served with the same.
func transportOptions(a Attestor) []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.Creds(a.TransportCredentials()),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.NumStreamWorkers(streamWorkers),
	}, grpcflow.ServerOptions(2*maxRequestBytes)...)
}

// Run serves until ctx is done or serving fails, then closes every stream
// (workloads reconnect) and removes the socket.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	s.log.Info("workload API serving")
	select {
	case <-ctx.Done():
		s.grpc.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("workloadapi: serving %s: %w", s.path, err)
	}
}

// Close stops serving and removes the socket. Run calls it on its way out;
// call it only if Run is never called.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.grpc.Stop()
		s.ln.Close() // removes the socket file it created
	})
}

// listen makes the socket (see attest.Listen).
func listen(path string) (*net.UnixListener, error) {
	ln, err := attest.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	return ln, nil
}
