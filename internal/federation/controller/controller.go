// Package controller is the VirtualMesh controller (`meshfed federation
// run`), federation model A: one shared root CA, and for each member trust
// domain (a meshfed server) an intermediate CA with a URI name constraint
// permitting only that trust domain, signed from a CSR the member makes.
//
// It serves the Controller API of proto/meshfed/federation/v1 over TLS with
// a short-lived X.509-SVID spiffe://<VirtualMesh name>/meshfed/federation-
// controller signed directly by the active root (members verify it by chain
// to the shared roots and that ID; no member's name-constrained intermediate
// can issue it). Members join once with a one-time token bound to their trust
// domain, then authenticate every call with their own server SVID
// spiffe://<td>/meshfed/server, which must chain through an intermediate for
// that trust domain to a current root. The Admin API (tokens, status,
// rotation) is on a unix socket open only to allowed uids (SO_PEERCRED).
//
// It rotates the shared root in phases (Phase) that members drive with
// their reports, so that no workload ever meets a certificate its peers do
// not trust yet or no longer trust.
//
// Everything that must survive a restart is in the data directory: the keys
// of the roots it made (0600), and state.json (0600) with the root
// certificates, tokens as SHA-256 hashes, members and their last reports and
// the rotation, written atomically before any change is answered.
// root-cert.pem holds every root members must trust, for an operator to hand
// to a member before its first join.
//
// The controller never sees a member's private key (only CSRs), and never
// logs or returns a private key, and returns a token only once, to the admin
// who created it.
package controller

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/adminsock"
	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/supervise"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

// Defaults.
const (
	DefaultListen          = "127.0.0.1:9443"
	DefaultIntermediateTTL = 30 * 24 * time.Hour
	DefaultServingTTL      = 24 * time.Hour
	DefaultTokenTTL        = time.Hour
	MaxTokenTTL            = 7 * 24 * time.Hour
	DefaultTickInterval    = 10 * time.Second
	DefaultReloadInterval  = 5 * time.Second
)

// MaxRequestBytes bounds every gRPC message the controller receives: a CSR
// (pemfile.MaxCSRBytes at most) with a token, or a report.
const MaxRequestBytes = 256 << 10

// Config configures a controller.
type Config struct {
	// Mesh is the VirtualMesh. Required.
	Mesh *virtualmesh.VirtualMesh
	// MeshFile is the file Mesh was read from. When it is set, Run reads
	// it again every ReloadInterval and applies a changed VirtualMesh
	// without a restart (ReloadMesh).
	MeshFile string
	// ReloadInterval is how often Run looks for a changed MeshFile
	// (DefaultReloadInterval).
	ReloadInterval time.Duration
	// DataDir holds the root keys and the state. Required; made 0700.
	DataDir string
	// Listen is the address of the Controller API (DefaultListen).
	Listen string
	// AdminSocket is the unix socket of the Admin API (<DataDir>/admin.sock).
	AdminSocket string
	// AllowedUIDs may use the admin socket (default: this process's uid
	// and root).
	AllowedUIDs []int
	// IntermediateTTL is the lifetime of members' intermediates
	// (DefaultIntermediateTTL), clipped to the signing root's.
	IntermediateTTL time.Duration
	// ServingTTL is the lifetime of the serving certificate
	// (DefaultServingTTL); it is re-issued at half of it.
	ServingTTL time.Duration
	// TokenTTL is the lifetime of a join token when CreateToken gives none
	// (DefaultTokenTTL).
	TokenTTL time.Duration
	// RotateRootBefore starts a rotation when the active root has less
	// than this left (capped at half the root's lifetime). Zero: never on
	// a schedule, only by RotateRoot.
	RotateRootBefore time.Duration
	// ManualRotation stops phases from advancing by themselves when their
	// condition holds; only RotateRoot advances them.
	ManualRotation bool
	// TickInterval is how often the controller re-issues its serving
	// certificate when due, prunes expired tokens and checks the schedule
	// and the rotation (DefaultTickInterval).
	TickInterval time.Duration
	Clock        pki.Clock
	Logger       *slog.Logger
}

// Controller is one VirtualMesh controller.
type Controller struct {
	cfg      Config
	name     string // metadata.name, which no reload changes
	id       spiffeid.ID
	log      *slog.Logger
	clock    pki.Clock
	dnsNames []string
	ips      []net.IP

	mu      sync.Mutex
	st      *state        // current; replaced whole by update
	roots   map[int]*root // by number
	changed chan struct{} // closed when the FederationState changes

	serving atomic.Pointer[servingCert]

	// vm is the VirtualMesh in use; a reload replaces it while holding mu,
	// together with the state that follows it.
	vm atomic.Pointer[virtualmesh.VirtualMesh]
	// meshSeen is the digest of MeshFile last read, good or bad, so that
	// a refused file is reported once rather than at every poll, and
	// meshErr why it was refused. reloadMu serializes ReloadMesh.
	reloadMu sync.Mutex
	meshSeen [sha256.Size]byte
	meshErr  error
	// refused is meshErr's text for Status, "" when the file in use is
	// the one on disk (atomic: Status holds mu, which ReloadMesh takes
	// inside reloadMu).
	refused atomic.Pointer[string]

	ln, adminLn             net.Listener
	grpcServer, adminServer *grpc.Server
	stopping                chan struct{}
	closeOnce               sync.Once
}

// New checks cfg, binds both listeners, loads the state (or makes the first
// root) and issues the serving certificate. It starts no goroutine; Run
// serves.
func New(cfg Config) (*Controller, error) {
	if cfg.Mesh == nil {
		return nil, errors.New("federation controller: no VirtualMesh")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("federation controller: no data dir")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.DataDir, socketFile)
	}
	if len(cfg.AllowedUIDs) == 0 {
		cfg.AllowedUIDs = []int{os.Getuid(), 0}
	}
	for _, d := range []struct {
		p   *time.Duration
		def time.Duration
	}{{&cfg.IntermediateTTL, DefaultIntermediateTTL}, {&cfg.ServingTTL, DefaultServingTTL}, {&cfg.TokenTTL, DefaultTokenTTL}, {&cfg.TickInterval, DefaultTickInterval}, {&cfg.ReloadInterval, DefaultReloadInterval}} {
		if *d.p == 0 {
			*d.p = d.def
		}
		if *d.p < 0 {
			return nil, fmt.Errorf("federation controller: negative duration %s", *d.p)
		}
	}
	if cfg.TokenTTL > MaxTokenTTL {
		return nil, fmt.Errorf("federation controller: token TTL %s is longer than %s", cfg.TokenTTL, MaxTokenTTL)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	vm := cfg.Mesh
	c := &Controller{
		cfg:      cfg,
		name:     vm.Name,
		id:       vm.ControllerID(),
		log:      cfg.Logger.With("virtual_mesh", vm.Name),
		clock:    cfg.Clock,
		roots:    map[int]*root{},
		changed:  make(chan struct{}),
		stopping: make(chan struct{}),
	}
	c.vm.Store(vm)
	if cfg.MeshFile != "" {
		data, err := pemfile.ReadFile(cfg.MeshFile, virtualmesh.MaxBytes)
		if err != nil {
			return nil, fmt.Errorf("federation controller: %w", err)
		}
		c.meshSeen = sha256.Sum256(data)
	}
	c.dnsNames, c.ips = servingNames(cfg.Listen)
	if err := ensureDir(cfg.DataDir); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	var err error
	if c.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("federation controller: listen: %w", err)
	}
	if c.adminLn, err = adminsock.Listen(cfg.AdminSocket); err != nil {
		return nil, fmt.Errorf("federation controller: %w", err)
	}
	if err := c.loadOrCreate(); err != nil {
		return nil, err
	}
	if err := c.writeRootCerts(); err != nil {
		return nil, err
	}
	signing := c.st.signing().Number
	ca, err := c.rootCA(signing)
	if err != nil {
		return nil, err
	}
	if err := c.issueServing(ca, signing); err != nil {
		return nil, err
	}
	c.serve()
	if vm.AutoRestartPods {
		c.log.Info("autoRestartPods is accepted and ignored: meshfed servers and agents take up new intermediates and roots without restarting anything")
	}
	ok = true
	return c, nil
}

// loadOrCreate reads the state, or makes the first root and a new state.
func (c *Controller) loadOrCreate() error {
	now := c.clock()
	dir := c.cfg.DataDir
	vm := c.mesh()
	st, found, err := loadState(dir)
	if err != nil {
		return err
	}
	if !found {
		var r *root
		var rec rootRecord
		if f := vm.Root.Files; f != nil {
			r, rec, err = rootFromFiles(f, 1, now)
		} else {
			r, rec, err = newRoot(dir, c.name, 1, *vm.Root.Generated, now)
		}
		if err != nil {
			return err
		}
		c.roots[r.number] = r
		c.st = &state{
			Version: stateVersion, Name: c.name, Generation: 1, Phase: PhaseStable, PhaseGeneration: 1,
			Roots: []rootRecord{rec}, TrustDomains: trustDomainNames(vm), EnforceAccessControl: vm.EnforceAccessControl,
			Members: map[string]*memberRecord{},
		}
		if err := c.st.save(dir); err != nil {
			return err
		}
		c.log.Info("VirtualMesh created", "root", r.skid, "root_subject", r.cert.Subject.String(),
			"root_not_after", r.cert.NotAfter.UTC().Format(time.RFC3339), "data_dir", dir)
		return nil
	}
	if st.Name != c.name {
		return fmt.Errorf("federation controller: data dir %s belongs to VirtualMesh %q, not %q; give another --data-dir", dir, st.Name, c.name)
	}
	if st.signing() == nil {
		return fmt.Errorf("federation controller: state file in %s has no active root; restore it from a backup", dir)
	}
	for _, rec := range st.Roots {
		r, err := loadRoot(dir, rec, now)
		if err != nil {
			return err
		}
		c.roots[r.number] = r
	}
	c.st = st
	// The VirtualMesh may have changed while the controller was down.
	return c.update(func(next *state) error {
		if !c.follow(next, vm) {
			return errNoChange
		}
		return nil
	})
}

// serve builds the gRPC servers on the bound listeners.
func (c *Controller) serve() {
	c.grpcServer = grpc.NewServer(
		grpc.Creds(c.transportCredentials()),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ChainUnaryInterceptor(c.authenticateUnary),
		grpc.ChainStreamInterceptor(c.authenticateStream),
	)
	pb.RegisterControllerServer(c.grpcServer, &controllerService{c: c})
	c.adminServer = grpc.NewServer(
		grpc.Creds(adminsock.Credentials()),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ChainUnaryInterceptor(c.adminOnly),
	)
	pb.RegisterAdminServer(c.adminServer, &adminService{c: c})
}

// Addr is the address of the Controller API (useful with port 0).
func (c *Controller) Addr() net.Addr { return c.ln.Addr() }

// AdminSocket is the path of the admin socket.
func (c *Controller) AdminSocket() string { return c.cfg.AdminSocket }

// RootCertFile is the PEM file of every root members must trust now.
func (c *Controller) RootCertFile() string { return filepath.Join(c.cfg.DataDir, rootCertFile) }

// ID is the SPIFFE ID the controller serves with.
func (c *Controller) ID() spiffeid.ID { return c.id }

// Run serves until ctx is done or a part fails; then it stops every part and
// returns the first failure (nil on a clean stop).
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Go(func() {
			if err := f(); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("federation controller: %s: %w", name, err)
				cancel()
			}
		})
	}
	run("controller API", func() error { return c.grpcServer.Serve(c.ln) })
	run("admin socket", func() error { return c.adminServer.Serve(c.adminLn) })
	run("maintenance", func() error { return c.maintain(ctx) })
	if c.cfg.MeshFile != "" {
		run("VirtualMesh file", func() error { return c.watchMesh(ctx) })
	}
	c.log.Info("federation controller started", "listen", c.ln.Addr().String(), "admin_socket", c.cfg.AdminSocket,
		"spiffe_id", c.id.String(), "root_certs", c.RootCertFile(), "members", strings.Join(trustDomainNames(c.mesh()), ","))

	<-ctx.Done()
	close(c.stopping)
	supervise.StopGRPC(c.grpcServer, 5*time.Second)
	supervise.StopGRPC(c.adminServer, 5*time.Second)
	wg.Wait()
	c.Close()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// Close releases the listeners; Run calls it on its way out. It is for a
// controller whose Run is never called.
func (c *Controller) Close() {
	c.closeOnce.Do(func() {
		if c.ln != nil {
			c.ln.Close()
		}
		if c.adminLn != nil {
			c.adminLn.Close()
			os.Remove(c.cfg.AdminSocket)
		}
	})
}

// maintain runs tick on every TickInterval.
func (c *Controller) maintain(ctx context.Context) error {
	return supervise.Every(ctx, c.cfg.TickInterval, c.tick)
}

// tick does one round of maintenance; tests call it instead of waiting.
func (c *Controller) tick() {
	now := c.clock()
	c.mu.Lock()
	if err := c.update(func(next *state) error {
		if !next.prune(now) {
			return errNoChange
		}
		return nil
	}); err != nil {
		c.log.Error("pruning expired tokens and intermediates failed; will retry", "error", err)
	}
	signing := c.st.signing()
	if servingDue(c.serving.Load(), signing.Number, now) {
		c.reissueServing()
	}
	due := c.st.Phase == PhaseStable && rotationDue(c.roots[signing.Number].cert.NotBefore, c.roots[signing.Number].cert.NotAfter, now, c.cfg.RotateRootBefore)
	c.autoAdvance(now)
	c.mu.Unlock()
	if due {
		if err := c.startRotation("schedule"); err != nil {
			c.log.Error("the scheduled rotation of the shared root did not start; will retry", "error", err)
		}
	}
}

// update applies f to a copy of the state and saves the copy before it
// becomes the state, so that nothing is answered that is not on disk, and
// a failure leaves the state as it was. A change of the FederationState
// wakes the watchers. c.mu must be held.
func (c *Controller) update(f func(next *state) error) error {
	next := c.st.clone()
	if err := f(next); errors.Is(err, errNoChange) {
		return nil
	} else if err != nil {
		return err
	}
	if err := next.save(c.cfg.DataDir); err != nil {
		return err
	}
	gen := c.st.Generation
	c.st = next
	if next.Generation != gen {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return nil
}

// errNoChange tells update that f changed nothing worth saving.
var errNoChange = errors.New("no change")

// rootCA is a CA signing with root number n. c.mu must be held.
func (c *Controller) rootCA(n int) (*pki.CA, error) {
	r := c.roots[n]
	if r == nil {
		return nil, fmt.Errorf("federation controller: root %d is not loaded", n)
	}
	return pki.NewCA(pki.CAConfig{Signer: r.signer, Chain: []*x509.Certificate{r.cert}, Clock: c.clock})
}

// currentRoots are the certificates of every root in the state, in order.
// c.mu must be held.
func (c *Controller) currentRoots() []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(c.st.Roots))
	for _, rec := range c.st.Roots {
		out = append(out, c.roots[rec.Number].cert)
	}
	return out
}

// skids maps root numbers to subject key IDs. c.mu must be held.
func (c *Controller) skids() map[int]string {
	out := make(map[int]string, len(c.roots))
	for n, r := range c.roots {
		out[n] = r.skid
	}
	return out
}

// writeRootCerts writes root-cert.pem: every root members must trust.
func (c *Controller) writeRootCerts() error {
	data := pemfile.EncodeCertificates(c.currentRoots()...)
	if err := pemfile.WriteFile(c.RootCertFile(), data, pemfile.ModePublic); err != nil {
		return fmt.Errorf("federation controller: %w", err)
	}
	return nil
}

// reissueServing issues the serving certificate under the signing root,
// logging a failure (the old certificate stays until it works). c.mu must
// be held.
func (c *Controller) reissueServing() {
	n := c.st.signing().Number
	ca, err := c.rootCA(n)
	if err == nil {
		err = c.issueServing(ca, n)
	}
	if err != nil {
		c.log.Error("re-issuing the serving certificate failed; will retry", "error", err)
	}
}

// startRotation makes the next root and publishes it beside the active one.
// The key is made without holding the lock (an RSA key takes seconds).
func (c *Controller) startRotation(by string) error {
	now := c.clock()
	c.mu.Lock()
	if c.st.Phase != PhaseStable {
		c.mu.Unlock()
		return fmt.Errorf("a rotation is already in phase %s", c.st.Phase)
	}
	n := 0
	for _, rec := range c.st.Roots {
		n = max(n, rec.Number)
	}
	n++
	vm := c.mesh()
	tmpl := nextRootTemplate(vm, c.roots[c.st.signing().Number].cert)
	current := c.currentRoots()
	retired := slices.Clone(c.st.RetiredRoots)
	c.mu.Unlock()

	source := "files"
	r, rec, err := nextRootFromFiles(vm, current, retired, n, now)
	if err == nil && r == nil {
		source = "generated"
		r, rec, err = newRoot(c.cfg.DataDir, c.name, n, tmpl, now)
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.Phase != PhaseStable {
		removeRootKey(c.cfg.DataDir, rec)
		return fmt.Errorf("a rotation started meanwhile; it is in phase %s", c.st.Phase)
	}
	if err := c.update(func(next *state) error { next.startRotation(rec); return nil }); err != nil {
		removeRootKey(c.cfg.DataDir, rec)
		return err
	}
	c.roots[n] = r
	if err := c.writeRootCerts(); err != nil {
		c.log.Error("writing root-cert.pem failed", "error", err)
	}
	c.log.Info("root rotation started: new root published beside the active one", "by", by, "source", source, "phase", string(PhasePublishing),
		"generation", c.st.Generation, "new_root", r.skid, "new_root_subject", r.cert.Subject.String(),
		"new_root_not_after", r.cert.NotAfter.UTC().Format(time.RFC3339))
	c.autoAdvance(now)
	return nil
}

// advance moves the rotation to its next phase; forced lists what it did
// not wait for. c.mu must be held.
func (c *Controller) advance(forced []string) error {
	from := c.st.Phase
	var dropped []rootRecord
	if err := c.update(func(next *state) error { dropped = next.advance(); return nil }); err != nil {
		return err
	}
	for _, rec := range dropped {
		delete(c.roots, rec.Number)
		if err := removeRootKey(c.cfg.DataDir, rec); err != nil {
			c.log.Error("removing a retired root's key failed; remove it by hand", "root", rec.Number, "error", err)
		}
	}
	if err := c.writeRootCerts(); err != nil {
		c.log.Error("writing root-cert.pem failed", "error", err)
	}
	if servingDue(c.serving.Load(), c.st.signing().Number, c.clock()) {
		c.reissueServing()
	}
	attrs := []any{"from", string(from), "to", string(c.st.Phase), "generation", c.st.Generation,
		"signing_root", c.roots[c.st.signing().Number].skid}
	if len(forced) > 0 {
		c.log.Warn("rotation phase forced forward", append(attrs, "not_waited_for", strings.Join(forced, "; "))...)
	} else {
		c.log.Info("rotation phase changed", attrs...)
	}
	return nil
}

// autoAdvance advances the rotation for as long as each phase's condition
// holds, unless rotation is manual. c.mu must be held.
func (c *Controller) autoAdvance(now time.Time) {
	if c.cfg.ManualRotation {
		return
	}
	for c.st.Phase != PhaseStable && len(c.st.waitingFor(c.skids(), now)) == 0 {
		if err := c.advance(nil); err != nil {
			c.log.Error("advancing the rotation failed; will retry", "error", err)
			return
		}
	}
}

// federationState is what members are sent. c.mu must be held.
func (c *Controller) federationState() *pb.FederationState {
	st := c.st
	m := &pb.FederationState{
		Name:                 st.Name,
		SigningRoot:          st.signing().Cert,
		TrustDomains:         slices.Clone(st.TrustDomains),
		EnforceAccessControl: st.EnforceAccessControl,
		RotationPhase:        string(st.Phase),
		Generation:           st.Generation,
	}
	for _, r := range st.Roots {
		m.Roots = append(m.Roots, r.Cert)
	}
	for _, td := range slices.Sorted(maps.Keys(st.Members)) {
		mr := st.Members[td]
		if len(mr.JWTAuthorities) == 0 {
			continue
		}
		keys := &pb.MemberJWTAuthorities{TrustDomain: td}
		for _, a := range mr.JWTAuthorities {
			keys.Authorities = append(keys.Authorities, &pb.JWTAuthority{KeyId: a.KeyID, PublicKey: a.PublicKey, ExpiresAt: a.ExpiresAt})
		}
		m.JwtAuthorities = append(m.JwtAuthorities, keys)
	}
	return m
}

// status is the Admin API's view. c.mu must be held.
func (c *Controller) status() *pb.StatusResponse {
	st := c.st
	resp := &pb.StatusResponse{
		Name:          st.Name,
		RotationPhase: string(st.Phase),
		WaitingFor:    strings.Join(st.waitingFor(c.skids(), c.clock()), "; "),
		Generation:    st.Generation,
	}
	if r := c.refused.Load(); r != nil {
		resp.ConfigError = *r
	}
	for _, rec := range st.Roots {
		r := c.roots[rec.Number]
		resp.Roots = append(resp.Roots, &pb.RootStatus{
			Certificate: r.cert.Raw, SubjectKeyId: r.skid, ExpiresAt: r.cert.NotAfter.Unix(), State: string(rec.State),
		})
	}
	for _, mesh := range c.mesh().Meshes {
		ms := &pb.MemberStatus{TrustDomain: mesh.TrustDomain.Name(), Address: mesh.Address}
		if m := st.Members[mesh.TrustDomain.Name()]; m != nil {
			ms.Joined = true
			if m.Address != "" {
				ms.Address = m.Address
			}
			ms.LastContact = m.LastContact.Unix()
			if cur := m.current(); cur != nil {
				ms.IntermediateSerial = cur.Serial
				ms.IntermediateExpiresAt = cur.NotAfter.Unix()
				ms.RootSubjectKeyId = cur.Root
			}
			for _, a := range m.JWTAuthorities {
				ms.JwtKeyIds = append(ms.JwtKeyIds, a.KeyID)
			}
			if r := m.Report; r != nil {
				ms.AppliedGeneration = r.AppliedGeneration
				ms.LiveSvidsByRoot = maps.Clone(r.LiveSVIDsByRoot)
				ms.Agents = r.Agents
				ms.AgentsCurrent = r.AgentsCurrent
			}
		}
		resp.Members = append(resp.Members, ms)
	}
	return resp
}
