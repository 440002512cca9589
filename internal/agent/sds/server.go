package sds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// The resource names SPIRE's agent uses by default (its default_svid_name,
// default_bundle_name and default_all_bundles_name); ROOTCA and default are
// also Istio's.
const (
	DefaultSVIDName       = "default"
	DefaultBundleName     = "ROOTCA"
	DefaultAllBundlesName = "ALL"
)

const (
	// maxRequestBytes bounds each message a client sends. The first request
	// of an Envoy carries its Node, whose extension list makes it tens of
	// KiB; later ones are a few names.
	maxRequestBytes = 1 << 20
	// maxResourceNames bounds the names one stream may subscribe to. An
	// Envoy asks for one per distinct secret in its configuration: a few.
	maxResourceNames = 4096
)

// Source is what the server needs from the agent core; the agent's *Cache
// is one.
type Source interface {
	// X509SVIDs returns the current SVIDs, with their keys, of the
	// registration entries whose selectors are all among sel, the default
	// identity first. The server still drops any that expired.
	X509SVIDs(sel []attest.Selector) []workloadapi.Identity
	// Bundles returns this trust domain's bundle (nil until the agent has
	// one) and the bundles of the federated trust domains it knows.
	Bundles() (local *x509bundle.Bundle, federated []*x509bundle.Bundle)
	// Changed returns a channel closed at the next change of SVIDs or
	// bundles. The server calls it before reading X509SVIDs and Bundles, so
	// a change between the two is not missed.
	Changed() <-chan struct{}
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
	// SVIDName, BundleName and AllBundlesName name the caller's default
	// certificate, this trust domain's validation context and the SPIFFE
	// validator with every trust domain the caller may verify;
	// DefaultSVIDName, DefaultBundleName and DefaultAllBundlesName if empty.
	SVIDName, BundleName, AllBundlesName string
	// Clock decides which SVIDs have expired; time.Now if nil.
	Clock pki.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Gate, if set, admits each stream and call within its limits, counts
	// it and times it to its first response (the agent's; connections are
	// admitted by the Attestor's handshake).
	Gate *admit.Gate
	// HandshakeTimeout is as workloadapi.Config's (its default if zero).
	HandshakeTimeout time.Duration
}

// Server serves SDS on one unix socket.
type Server struct {
	path     string
	src      Source
	attestor Attestor
	names    aliases
	clock    pki.Clock
	log      *slog.Logger

	ln        *net.UnixListener
	grpc      *grpc.Server
	closeOnce sync.Once
}

// aliases are the configured names of the alias resources.
type aliases struct{ svid, bundle, all string }

// New checks cfg and binds the socket. It starts no goroutine; Run serves.
func New(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("sds: a socket path is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("sds: a source of SVIDs is required")
	}
	names := aliases{
		svid:   cmp.Or(cfg.SVIDName, DefaultSVIDName),
		bundle: cmp.Or(cfg.BundleName, DefaultBundleName),
		all:    cmp.Or(cfg.AllBundlesName, DefaultAllBundlesName),
	}
	if err := names.check(); err != nil {
		return nil, err
	}
	if cfg.Attestor == nil {
		a, err := attest.New(attest.Config{})
		if err != nil {
			return nil, fmt.Errorf("sds: %w", err)
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
		return nil, fmt.Errorf("sds: socket: %w", err)
	}
	s := &Server{
		path:     path,
		src:      cfg.Source,
		attestor: cfg.Attestor,
		names:    names,
		clock:    cfg.Clock,
		log:      cfg.Logger.With("socket", path),
	}
	if s.ln, err = listen(path); err != nil {
		return nil, err
	}
	opts := append([]grpc.ServerOption{
		grpc.Creds(cfg.Attestor.TransportCredentials()),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.ConnectionTimeout(cmp.Or(cfg.HandshakeTimeout, workloadapi.DefaultHandshakeTimeout)),
	}, grpcflow.ServerOptions(maxRequestBytes)...)
	if cfg.Gate != nil {
		opts = append(opts, grpc.UnaryInterceptor(cfg.Gate.UnaryInterceptor), grpc.StreamInterceptor(cfg.Gate.StreamInterceptor))
	}
	s.grpc = grpc.NewServer(opts...)
	secretv3.RegisterSecretDiscoveryServiceServer(s.grpc, &handler{s: s})
	return s, nil
}

// check refuses alias names that could not be told apart from each other,
// from a SPIFFE ID or trust domain ID, or from the wildcard.
func (a aliases) check() error {
	for _, n := range []string{a.svid, a.bundle, a.all} {
		if n == wildcard || strings.HasPrefix(strings.ToLower(n), "spiffe:") {
			return fmt.Errorf("sds: resource name %q is reserved (the wildcard, or a SPIFFE ID); choose another", n)
		}
	}
	if a.svid == a.bundle || a.svid == a.all || a.bundle == a.all {
		return fmt.Errorf("sds: the SVID, bundle and all-bundles resource names must differ (got %q, %q, %q)", a.svid, a.bundle, a.all)
	}
	return nil
}

// Run serves until ctx is done or serving fails, then closes every stream
// (Envoy reconnects) and removes the socket.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	s.log.Info("SDS serving")
	select {
	case <-ctx.Done():
		s.grpc.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("sds: serving %s: %w", s.path, err)
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

// attest identifies the caller of a stream or call.
func (s *Server) attest(ctx context.Context, method string) ([]attest.Selector, *slog.Logger, error) {
	caller, _ := attest.CallerFromContext(ctx)
	log := s.log.With("method", method, "pid", caller.PID, "uid", caller.UID)
	sel, err := s.attestor.AttestPeer(ctx)
	if err != nil {
		log.Warn("SDS caller attestation failed", "error", err)
		return nil, nil, status.Errorf(codes.Unauthenticated, "could not attest the caller: %v", err)
	}
	log.Debug("SDS caller attested", "selectors", len(sel))
	return sel, log, nil
}

// listen makes the socket (see attest.Listen).
func listen(path string) (*net.UnixListener, error) {
	ln, err := attest.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("sds: %w", err)
	}
	return ln, nil
}
