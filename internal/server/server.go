// Package server is `meshfed server`: the CA and identity server of one
// trust domain. It verifies a caller's credential (a service-account JWT, a
// one-time join token, or an SVID of this trust domain), derives the identity
// from that credential, and only then signs the caller's CSR; the names in a
// CSR are never trusted. It serves Istio's IstioCertificateService and
// meshfed's own Node API over TLS with its own SVID (agents get X.509- and
// JWT-SVIDs for their workloads there), an Admin API on a unix socket
// restricted by the caller's uid, the SPIFFE bundle endpoint, and Prometheus
// metrics with health checks. It keeps the trust domain's Istio security
// policy (applied on the Admin API, validated before it is stored) and
// pushes it to every agent in the Watch stream.
//
// All durable state is in the store; several servers of one trust domain
// share a Postgres database, each with its own CA and JWT key, and publish
// the union of their roots and JWT keys. The server never logs a private
// key, a token or a JWT, and returns a JWT only as the JWT-SVID it signed for
// its caller.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/adminsock"
	"github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/authority"
	"github.com/meshfed/meshfed/internal/bundleendpoint"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/federation/member"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/logpace"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/shed"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/meshfed/meshfed/internal/supervise"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	istioca "istio.io/api/security/v1alpha1"
)

// MaxRequestBytes bounds every gRPC message the server receives: a CSR with
// its credential is a few KiB; a batch of 100 CSRs fits easily.
const MaxRequestBytes = 1 << 20

// Options are the parts of a server that tests replace.
type Options struct {
	Clock  pki.Clock
	Logger *slog.Logger
	// PollInterval is how often the server looks for changes other servers
	// made to the shared store (default 1s).
	PollInterval time.Duration
}

// Server is one meshfed server process.
type Server struct {
	set   *settings
	log   *slog.Logger
	clock pki.Clock
	poll  time.Duration

	store    *store.Store
	auth     *authority.Authority
	jwt      *credential.JWTVerifier
	tokens   *credential.JoinTokenVerifier
	jwtKey   *jwtSigningKey
	metrics  *metrics
	identity *servingIdentity
	shed     *shed.Limiter // limits.*: turns for signing requests (admitSigning)
	shedLog  *logpace.Pacer[string]

	bundle   atomic.Pointer[spiffebundle.Bundle] // this domain's, as published
	revision atomic.Int64
	changes  *broadcaster
	svids    svidMemo  // SVID credentials verified, per chain and revision
	nodes    nodeCache // node records, per revision (admitNode)
	// lastPrune is when pruneAudit last ran (Unix nanoseconds; 0: never).
	lastPrune atomic.Int64
	fetcher   *fetcher.Refresher // the bundle endpoint peers (federates_with; SIGHUP replaces them)
	member    *member.Member     // nil without federation.virtual_mesh
	vmState   atomic.Pointer[member.State]
	// reportedJWTKeys are the JWT-SVID keys last reported to the
	// VirtualMesh controller (jwtKeysForMembers).
	reportedJWTKeys atomic.Pointer[[]jwtkeys.Key]
	// localGen counts changes to the bundles that are not in the store (a
	// VirtualMesh state); builtGen is the one the published bundle has.
	localGen, builtGen atomic.Int64
	// view counts the bundle and entry sets served: it moves whenever the
	// store's revision or localGen does, and Watch streams send on a move.
	view     atomic.Int64
	watchers watcherSet
	policies policyMemo // the policy messages Watch streams send
	rotateMu sync.Mutex // one rotation step at a time

	grpcLn, adminLn, bundleLn, metricsLn net.Listener
	grpcServer, adminServer              *grpc.Server
	bundleServer                         *bundleendpoint.Server
	metricsServer                        *http.Server

	closeOnce sync.Once
	stopping  chan struct{} // closed when Run begins to stop; ends Watch streams
}

// New checks cfg, opens the store (applying migrations), loads or makes the
// CA, issues the server's own SVID and binds every listener. It starts no
// goroutine; Run serves.
func New(ctx context.Context, cfg Config, opts Options) (*Server, error) {
	set, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	limiter, err := shed.New(shed.Config{InFlight: set.limits.inFlight, Queued: set.limits.queue, MaxWait: set.limits.queueWait})
	if err != nil {
		return nil, fmt.Errorf("server: limits: %w", err)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if err := os.MkdirAll(set.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data_dir: %w", err)
	}
	s := &Server{set: set, clock: opts.Clock, poll: opts.PollInterval, changes: newBroadcaster(), shed: limiter, shedLog: logpace.New[string](shedLogEvery), stopping: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := s.bind(); err != nil {
		return nil, err
	}
	if set.serverID == "" {
		host, _ := os.Hostname()
		set.serverID = host + ":" + s.grpcLn.Addr().String()
	}
	s.log = opts.Logger.With("trust_domain", set.td.Name(), "server_id", set.serverID)
	// The CA expiry gauge reads s.auth only when scraped, after New.
	s.metrics = newMetrics(func() float64 { return float64(s.auth.CA().NotAfter().Unix()) })
	if s.store, err = store.Open(ctx, store.Config{DSN: set.datastore, DataDir: set.dataDir, Clock: opts.Clock, Logger: s.log,
		AuditCommitDelay: set.commitDelay, OnAuditCommit: s.metrics.observeAuditCommit}); err != nil {
		return nil, err
	}
	if s.auth, err = authority.New(authority.Config{
		TrustDomain: set.td, Mode: set.caMode, DataDir: set.dataDir, CACertsDir: set.caCertsDir,
		KeyType: set.keyType, RootTTL: set.rootTTL, ReloadInterval: set.reloadInterval,
		Clock: opts.Clock, Logger: s.log,
	}); err != nil {
		return nil, err
	}
	if len(set.jwtIssuers) > 0 {
		issuers := make([]credential.Issuer, len(set.jwtIssuers))
		for i, iss := range set.jwtIssuers {
			issuers[i] = credential.Issuer{Issuer: iss.Issuer, JWKSFile: iss.JWKSFile, JWKSURL: iss.JWKSURL, Audiences: iss.Audiences}
		}
		if s.jwt, err = credential.NewJWTVerifier(credential.JWTConfig{TrustDomain: set.td, Issuers: issuers, Clock: opts.Clock}); err != nil {
			return nil, err
		}
	}
	s.tokens = &credential.JoinTokenVerifier{Consumer: tokenConsumer{s.store}, Clock: opts.Clock}
	s.identity = &servingIdentity{s: s}
	if err := s.publishAuthorities(ctx); err != nil {
		return nil, err
	}
	if err := s.loadJWTKey(ctx); err != nil {
		return nil, err
	}
	if err := s.refresh(ctx); err != nil {
		return nil, err
	}
	if err := s.identity.rotate(); err != nil {
		return nil, err
	}
	if err := s.startFederation(); err != nil {
		return nil, err
	}
	if err := s.startVirtualMesh(); err != nil {
		return nil, err
	}
	s.metrics.registry.MustRegister(federationCollector{s},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshfed_server_signing_in_flight",
			Help: "Signing requests running now (at most limits.max_signing_in_flight).",
		}, func() float64 { return float64(s.shed.InFlight()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshfed_server_signing_queued",
			Help: "Signing requests waiting for a turn now (at most limits.max_signing_queue).",
		}, func() float64 { return float64(s.shed.Queued()) }))
	if err := s.serve(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// bind opens every listener first, so a port in use fails the start before
// anything else happens, and port 0 is resolved for the server's name.
func (s *Server) bind() error {
	var err error
	if s.grpcLn, err = net.Listen("tcp", s.set.listen); err != nil {
		return fmt.Errorf("server: listen (signing API): %w", err)
	}
	if s.bundleLn, err = net.Listen("tcp", s.set.bundleListen); err != nil {
		return fmt.Errorf("server: bundle_listen (bundle endpoint): %w", err)
	}
	if s.set.metricsListen != "off" {
		if s.metricsLn, err = net.Listen("tcp", s.set.metricsListen); err != nil {
			return fmt.Errorf("server: metrics_listen: %w", err)
		}
	}
	if s.adminLn, err = adminsock.Listen(s.set.adminSocket); err != nil {
		return err
	}
	// The socket is 0600 unless other uids are allowed; then the file opens
	// to all and SO_PEERCRED is the gate (adminOverSocket).
	for _, uid := range s.set.allowedUIDs {
		if uid != 0 && uid != os.Getuid() {
			if err := os.Chmod(s.set.adminSocket, 0o666); err != nil {
				return fmt.Errorf("server: admin socket: %w", err)
			}
			break
		}
	}
	return nil
}

// SigningTransportOptions are the signing API's gRPC transport, with at most
// streams streams per connection (0: gRPC's bound): everything of its
// server but the credentials and interceptors. bench/issuance's floor
// serves with them too, so that it measures this transport.
func SigningTransportOptions(streams uint32) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		// Requests run on long-lived goroutines whose stacks have already
		// grown to what signing and the store need, instead of a new
		// goroutine per request growing its stack from 8 KiB each time
		// (2-3% of an issuance's CPU); past them gRPC starts goroutines
		// as before.
		grpc.NumStreamWorkers(streamWorkers),
		// No 32 KiB read buffer per connection: the frames are read from
		// the TLS connection, which holds the decrypted record anyway, so
		// a connected agent (idle between renewals, its Watch stream open)
		// costs the server about 30 KiB of heap instead of 65 KiB, for no
		// CPU cost measured (docs/performance.md, "Memory per connected
		// agent").
		grpc.ReadBufferSize(0),
	}
	if streams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(streams))
	}
	// Fixed windows: no bandwidth-estimating PING per renewal (see grpcflow).
	return append(opts, grpcflow.ServerOptions(grpcflow.SigningAPIWindow)...)
}

// serve builds the servers on the bound listeners.
func (s *Server) serve() error {
	var err error
	s.grpcServer = grpc.NewServer(append(SigningTransportOptions(s.set.limits.streams),
		grpc.Creds(credentials.NewTLS(s.tlsConfig())),
		grpc.ChainUnaryInterceptor(s.admitSigning, s.adminOverTLS, s.announceIssuance),
	)...)
	istioca.RegisterIstioCertificateServiceServer(s.grpcServer, &istioService{s: s})
	serverv1.RegisterNodeServer(s.grpcServer, &nodeService{s: s})
	serverv1.RegisterAdminServer(s.grpcServer, &adminService{s: s})

	s.adminServer = grpc.NewServer(
		grpc.Creds(adminsock.Credentials()),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ChainUnaryInterceptor(s.adminOverSocket),
	)
	serverv1.RegisterAdminServer(s.adminServer, &adminService{s: s})
	federationv1.RegisterAdminServer(s.adminServer, &rotationAdmin{s: s})

	beCfg := bundleendpoint.Config{
		Listener:    s.bundleLn,
		TrustDomain: s.set.td,
		Bundles:     bundleSource{s},
		Profile:     bundleendpoint.Profile(s.set.profile),
		CertFile:    s.set.webCert,
		KeyFile:     s.set.webKey,
		Logger:      s.log,
		Clock:       s.clock,
		Changes:     s.changes.wait,
	}
	if s.set.profile == ProfileHTTPSSPIFFE {
		beCfg.SVIDSource = s.identity
	}
	if s.bundleServer, err = bundleendpoint.New(beCfg); err != nil {
		return err
	}
	if s.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", s.readyz)
		s.metricsServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	}
	return nil
}

// Addrs are where a server listens.
type Addrs struct {
	Listen, BundleListen, Metrics net.Addr
	AdminSocket                   string
}

// Addrs returns the bound addresses (useful with port 0).
func (s *Server) Addrs() Addrs {
	a := Addrs{Listen: s.grpcLn.Addr(), BundleListen: s.bundleLn.Addr(), AdminSocket: s.set.adminSocket}
	if s.metricsLn != nil {
		a.Metrics = s.metricsLn.Addr()
	}
	return a
}

// TrustDomain is the trust domain served.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.set.td }

// ReloadCA reads the CA's directory again now (ca.mode cacerts, or the
// VirtualMesh intermediate), as the poll every ca.reload_interval does; a
// refused replacement is logged and the CA in use keeps signing. With a
// self-signed root there is nothing to read.
func (s *Server) ReloadCA() { _, _ = s.auth.Reload() }

// Run serves until ctx is done or a part fails; then it stops every part and
// returns the first failure (nil on a clean stop).
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	run("signing API", func() error { return s.grpcServer.Serve(s.grpcLn) })
	run("admin socket", func() error { return s.adminServer.Serve(s.adminLn) })
	run("bundle endpoint", func() error { return s.bundleServer.Run(ctx) })
	if s.metricsServer != nil {
		run("metrics", func() error {
			if err := s.metricsServer.Serve(s.metricsLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	run("CA reload", func() error { return s.auth.Run(ctx) })
	run("maintenance", func() error { return s.maintain(ctx) })
	if s.fetcher != nil {
		run("bundle federation", func() error { return s.fetcher.Run(ctx) })
	}
	if s.member != nil {
		run("virtual mesh", func() error { return s.runVirtualMesh(ctx) })
	}
	s.log.Info("server started", "listen", s.grpcLn.Addr().String(), "bundle_listen", s.bundleLn.Addr().String(),
		"admin_socket", s.set.adminSocket, "ca_mode", string(s.set.caMode), "datastore", s.store.Backend())

	<-ctx.Done()
	close(s.stopping)
	supervise.StopGRPC(s.grpcServer, 5*time.Second)
	supervise.StopGRPC(s.adminServer, 5*time.Second)
	if s.metricsServer != nil {
		shutdownCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
		s.metricsServer.Shutdown(shutdownCtx)
		c()
	}
	wg.Wait()
	s.Close()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// Close releases what New acquired. Run calls it on its way out.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		for _, ln := range []net.Listener{s.grpcLn, s.bundleLn, s.metricsLn, s.adminLn} {
			if ln != nil {
				ln.Close()
			}
		}
		if s.adminLn != nil {
			os.Remove(s.set.adminSocket)
		}
		if s.store != nil {
			s.store.Close()
		}
	})
}

// maintain re-issues the server's SVID when due, publishes a changed CA and
// notices changes other servers made to the store.
func (s *Server) maintain(ctx context.Context) error {
	t := time.NewTicker(s.poll)
	defer t.Stop()
	caChanged := s.auth.Changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-caChanged:
			if err := s.publishAuthorities(ctx); err != nil {
				s.log.Error("publishing the new CA's roots failed; will retry", "error", err)
			}
			s.tick(ctx)
		case <-t.C:
			s.tick(ctx)
		}
	}
}

// tick does one round of maintenance; tests call it instead of waiting.
func (s *Server) tick(ctx context.Context) {
	if s.identity.due(s.clock()) {
		if err := s.identity.rotate(); err != nil {
			s.log.Error("re-issuing the server SVID failed; will retry", "error", err)
		}
	}
	if err := s.refresh(ctx); err != nil {
		s.log.Error("reading the store failed; will retry", "error", err)
	}
	s.autoRotate(ctx)
	s.retireSelfSignedRoot(ctx)
	s.pruneAudit(ctx)
}

const (
	// auditPruneEvery is how often the audit log (audit.retention) and the
	// expired join tokens are pruned.
	auditPruneEvery = time.Minute
	// auditPruneBatch rows are deleted per statement, so that the writer is
	// never held long; auditPruneBatches of them at most per round.
	auditPruneBatch, auditPruneBatches = 10000, 10
)

// pruneAudit deletes, once every auditPruneEvery, the join tokens that
// expired (used or not: an expired token attests nothing) and the audit
// rows of certificates that expired more than audit.retention ago.
func (s *Server) pruneAudit(ctx context.Context) {
	now := s.clock()
	last := s.lastPrune.Load()
	if (last != 0 && now.Sub(time.Unix(0, last)) < auditPruneEvery) || !s.lastPrune.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	if n, err := s.store.PruneJoinTokens(ctx, now); err != nil {
		s.log.Error("pruning expired join tokens failed; will retry", "error", err)
	} else if n > 0 {
		s.log.Debug("expired join tokens pruned", "tokens", n)
	}
	if s.set.auditRetention == 0 {
		return
	}
	before := now.Add(-s.set.auditRetention)
	var total int64
	for range auditPruneBatches {
		start := time.Now()
		n, err := s.store.PruneIssued(ctx, before, auditPruneBatch)
		s.metrics.observeStore("prune_issued", start)
		if err != nil {
			s.log.Error("pruning the audit log failed; will retry", "error", err)
			break
		}
		total += n
		if n < auditPruneBatch {
			break
		}
	}
	if total > 0 {
		s.metrics.auditPruned.Add(float64(total))
		s.log.Info("audit log pruned", "rows", total, "expired_before", before.UTC().Format(time.RFC3339))
	}
}

// publishAuthorities records the roots of the CA in use in the shared store,
// so every server of the domain publishes them.
func (s *Server) publishAuthorities(ctx context.Context) error {
	if s.set.caMode == authority.ModeVirtualMesh && s.auth.FromCACerts() {
		// The shared roots come and go with the VirtualMesh state (a
		// retired root must leave the bundle), not with the store.
		return nil
	}
	defer s.metrics.observeStore("add_x509_authority", time.Now())
	roots := s.auth.CA().Roots()
	for _, r := range roots {
		if err := s.store.AddX509Authority(ctx, store.X509Authority{DER: r.Raw, NotAfter: r.NotAfter, ServerID: s.set.serverID}); err != nil {
			return err
		}
	}
	if s.set.caMode != authority.ModeCACerts {
		return nil
	}
	// In cacerts mode the operator's root-cert.pem says which roots to
	// trust: one this server published that it no longer lists has been
	// retired by the operator (who keeps both listed while certificates
	// under the old one live). Other servers' roots are theirs to retire.
	auths, err := s.store.LocalAuthorities(ctx)
	if err != nil {
		return err
	}
	for _, a := range auths.X509 {
		if a.ServerID != s.set.serverID || slices.ContainsFunc(roots, func(r *x509.Certificate) bool { return string(r.Raw) == string(a.DER) }) {
			continue
		}
		if err := s.store.RemoveX509Authority(ctx, a.DER); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		s.log.Info("a root no longer in the cacerts directory's root-cert.pem left the bundle", "dir", s.set.caCertsDir)
	}
	return nil
}

// refresh rebuilds the published bundle when the store's revision moved,
// and wakes every watcher.
func (s *Server) refresh(ctx context.Context) error {
	start := time.Now()
	rev, err := s.store.Revision(ctx)
	s.metrics.observeStore("revision", start)
	if err != nil {
		return err
	}
	gen := s.localGen.Load()
	if rev == s.revision.Load() && gen == s.builtGen.Load() && s.bundle.Load() != nil {
		return nil
	}
	b, err := s.buildBundle(ctx)
	if err != nil {
		return err
	}
	s.bundle.Store(b)
	s.revision.Store(rev)
	s.builtGen.Store(gen)
	s.view.Add(1)
	s.changes.broadcast()
	return nil
}

// changed is called after this server wrote to the store.
func (s *Server) changed(ctx context.Context) {
	if err := s.refresh(ctx); err != nil {
		s.log.Error("reading the store failed; will retry", "error", err)
	}
}

// buildBundle makes this trust domain's bundle: every unexpired X.509 and
// JWT authority any server of the domain published, plus the CA in use's
// roots.
func (s *Server) buildBundle(ctx context.Context) (*spiffebundle.Bundle, error) {
	start := time.Now()
	auths, err := s.store.LocalAuthorities(ctx)
	s.metrics.observeStore("local_authorities", start)
	if err != nil {
		return nil, err
	}
	b := spiffebundle.New(s.set.td)
	now := s.clock()
	for _, a := range auths.X509 {
		if now.After(a.NotAfter) {
			continue
		}
		c, err := x509.ParseCertificate(a.DER)
		if err != nil {
			s.log.Error("skipping an unparsable X.509 authority in the store", "server_id", a.ServerID, "error", err)
			continue
		}
		b.AddX509Authority(c)
	}
	roots := s.auth.CA().Roots()
	if vm := s.vmState.Load(); vm != nil {
		// A VirtualMesh member trusts the roots the controller says, and
		// only those: a retired root leaves with the state that drops it,
		// even if the cacerts files still carry it.
		roots = vm.Roots
		if !s.auth.FromCACerts() {
			roots = slices.Concat(roots, s.auth.CA().Roots())
		}
	}
	for _, r := range roots {
		b.AddX509Authority(r)
	}
	for _, a := range auths.JWT {
		if now.After(a.NotAfter) {
			continue
		}
		key, err := x509.ParsePKIXPublicKey(a.PublicKeyDER)
		if err == nil {
			err = b.AddJWTAuthority(a.KeyID, key)
		}
		if err != nil {
			s.log.Error("skipping an unusable JWT authority in the store", "server_id", a.ServerID, "kid", a.KeyID, "error", err)
		}
	}
	b.SetSequenceNumber(auths.Sequence)
	b.SetRefreshHint(s.set.refreshHint)
	return b, nil
}

// localRoots returns the X.509 authorities of this trust domain.
func (s *Server) localRoots(context.Context) []*x509.Certificate {
	if b := s.bundle.Load(); b != nil {
		return b.X509Authorities()
	}
	return s.auth.CA().Roots()
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		http.Error(w, "store unreachable", http.StatusServiceUnavailable)
		return
	}
	if !s.clock().Before(s.auth.CA().NotAfter()) {
		http.Error(w, "CA expired", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// bundleSource serves the published bundle to the bundle endpoint.
type bundleSource struct{ s *Server }

func (b bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != b.s.set.td {
		return nil, fmt.Errorf("server: no bundle for trust domain %q", td)
	}
	if bundle := b.s.bundle.Load(); bundle != nil {
		return bundle, nil
	}
	return nil, errors.New("server: bundle not built yet")
}

// tokenConsumer adapts the store to credential.TokenConsumer.
type tokenConsumer struct{ st *store.Store }

func (t tokenConsumer) ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (spiffeid.ID, error) {
	tok, err := t.st.ConsumeJoinToken(ctx, hash, now)
	if errors.Is(err, store.ErrTokenInvalid) {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", credential.ErrTokenRejected, err)
	}
	if err != nil {
		return spiffeid.ID{}, err
	}
	return tok.SPIFFEID, nil
}

// broadcaster wakes every waiter at once: wait returns a channel closed at
// the next broadcast.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{ch: make(chan struct{})} }

func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcaster) broadcast() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
}

// watcherSet tracks the Watch streams and the view each last received, so
// a rotation can tell whether every agent has the current bundle.
type watcherSet struct {
	mu   sync.Mutex
	next uint64
	last map[uint64]int64
}

func (w *watcherSet) add() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		w.last = map[uint64]int64{}
	}
	w.next++
	w.last[w.next] = -1
	return w.next
}

func (w *watcherSet) sent(id uint64, view int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last[id] = view
}

func (w *watcherSet) remove(id uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.last, id)
}

// counts returns how many streams there are, and how many have been sent
// view.
func (w *watcherSet) counts(view int64) (all, current int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range w.last {
		all++
		if v == view {
			current++
		}
	}
	return all, current
}
