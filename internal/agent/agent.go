// Package agent is `meshfed agent` in node mode: it attests to its server
// once (a one-time join token), keeps a node SVID (persisted 0600, so a
// restart needs no new token), follows the server's Watch stream for the
// registration entries it serves and the trust bundles, and keeps an
// X.509-SVID for every entry, renewing each at about half its life with
// jitter and backing off on failure. While the server is unreachable it keeps
// what it has until it expires, and it never hands out an expired SVID.
// JWT-SVIDs are signed by the server on demand, validated with the trust
// domain's JWT keys, and kept per entry and audience until half their life.
// The Istio security policy the server pushes in the same stream is served
// to the host's proxies (workloadapi's PolicyDiscovery) and kept in the data
// dir, so a restart serves the last known set until the server answers.
//
// Workload keys are made here and never leave the agent except to the
// workload that owns them, over the agent's local socket. The agent never
// logs a key or a token.
package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ServerPath is the path of the SPIFFE ID a meshfed server presents.
const ServerPath = "/meshfed/server"

// Files in the data directory.
const (
	nodeCertFile    = "node-svid.pem"
	nodeKeyFile     = "node-svid.key"
	bundleFile      = "bundle.pem"
	trustDomainFile = "trust-domain"
)

// Config configures an agent.
type Config struct {
	ServerAddr  string // host:port of the server's signing API
	TrustBundle string // bootstrap: the server's trust domain's bundle (PEM or SPIFFE JSON)
	JoinToken   string // one-time; needed only when the data dir holds no valid node SVID
	// JoinTokenFile, if set, holds the join token instead, and is read again
	// each time the agent must attest: when the server has evicted the node
	// or no longer accepts its SVID, writing a new token there lets it attest
	// again without a restart.
	JoinTokenFile string
	// TokenFile selects sidecar mode: one agent per workload, whose identity
	// the server derives from the service-account token in this file. The
	// file is read again for every attestation (tokens rotate), and the
	// agent serves its own SVID to every local caller.
	TokenFile string
	DataDir   string
	Clock     pki.Clock
	Logger    *slog.Logger
	// MaxBackoff caps the wait between failed renewals (default 30s).
	MaxBackoff time.Duration
	// Rand returns a random number in [0, 1), to spread retries (spread);
	// math/rand/v2's Float64 if nil. Tests fix it.
	Rand func() float64
}

// Agent keeps a node's identity and its workloads' SVIDs.
type Agent struct {
	cfg   Config
	clock pki.Clock
	log   *slog.Logger
	Cache *Cache

	metrics *metrics

	mu       sync.Mutex
	td       spiffeid.TrustDomain
	node     *x509svid.SVID
	nodeNext time.Time // when to renew the node SVID next
	conn     *grpc.ClientConn
	client   pb.NodeClient
	// connGen counts connections, so that a Watch stream ended by a
	// reconnect is reopened at once rather than after a backoff.
	connGen int

	// keptPolicies is the policy revision applyPolicies last kept against
	// a server that reported revision 0 (logged once per revision); only
	// the Watch loop touches it.
	keptPolicies int64

	// refused is the server's reason for refusing the node itself (an
	// ErrorInfo reason of serverv1), empty while it is accepted; Sync then
	// attests again (reattest, refused.go). spentToken is the last join
	// token the agent attested with or the server refused, not tried again.
	// wake makes Run call Sync at once; reconnected wakes the Watch loop
	// from its backoff after connect.
	refused      string
	spentToken   string
	saidNoToken  bool // errNoFreshToken logged since the last try
	reattestNext time.Time
	wake         chan struct{}
	reconnected  chan struct{}
}

// New prepares an agent; Run attests (if needed) and serves.
func New(cfg Config) (*Agent, error) {
	if cfg.ServerAddr == "" || cfg.DataDir == "" {
		return nil, errors.New("agent: --server and --data-dir are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Rand == nil {
		cfg.Rand = mrand.Float64
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	a := &Agent{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, Cache: newCache(cfg.Clock),
		wake: make(chan struct{}, 1), reconnected: make(chan struct{}, 1)}
	a.Cache.spread = a.spread
	a.metrics = newMetrics(a)
	a.Cache.fetchJWT = a.JWTSVID
	return a, nil
}

// Start loads the trust bundle and the node SVID, attesting with the join
// token when there is no usable node SVID, and connects to the server.
func (a *Agent) Start(ctx context.Context) error {
	a.loadPolicies()
	roots, err := a.loadRoots()
	if err != nil {
		return err
	}
	a.Cache.setBootstrapRoots(roots)
	if td, err := os.ReadFile(filepath.Join(a.cfg.DataDir, trustDomainFile)); err == nil {
		if a.td, err = spiffeid.TrustDomainFromString(string(td)); err != nil {
			return fmt.Errorf("agent: %s: %w", trustDomainFile, err)
		}
		a.Cache.setTrustDomain(a.td, roots)
	}
	node, err := a.loadNodeSVID()
	if err != nil {
		a.log.Info("no usable node SVID in the data dir; attesting", "reason", err.Error())
	}
	if a.cfg.TokenFile != "" {
		// Sidecar mode always proves itself with the current token.
		if err := a.attest(ctx, ""); err != nil {
			return err
		}
		return a.connect()
	}
	if node == nil {
		token, err := a.joinToken()
		if err != nil {
			return err
		}
		if token == "" {
			return fmt.Errorf("agent: %s holds no valid node SVID and no --join-token was given; make one with 'meshfed token create'", a.cfg.DataDir)
		}
		if err := a.attest(ctx, token); err != nil {
			return err
		}
	} else {
		a.setNode(node)
	}
	return a.connect()
}

// loadRoots reads the persisted bundle (kept up to date from the server), or
// the bootstrap trust bundle.
func (a *Agent) loadRoots() ([]*x509.Certificate, error) {
	if certs, err := pemfile.ReadCertificates(filepath.Join(a.cfg.DataDir, bundleFile)); err == nil {
		return certs, nil
	}
	if a.cfg.TrustBundle == "" {
		return nil, errors.New("agent: --trust-bundle is required on first start (the server's trust domain bundle)")
	}
	data, err := pemfile.ReadFile(a.cfg.TrustBundle, bundle.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("agent: --trust-bundle: %w", err)
	}
	if bundle.Detect(data) == bundle.FormatPEM {
		certs, err := pemfile.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("agent: --trust-bundle %s: %w", a.cfg.TrustBundle, err)
		}
		return certs, nil
	}
	// SPIFFE JSON does not name its trust domain; any name parses it.
	b, err := bundle.Parse(spiffeid.RequireTrustDomainFromString("bootstrap.invalid"), data)
	if err != nil {
		return nil, fmt.Errorf("agent: --trust-bundle %s: %w", a.cfg.TrustBundle, err)
	}
	return b.X509Authorities(), nil
}

func (a *Agent) loadNodeSVID() (*x509svid.SVID, error) {
	svid, err := x509svid.Load(filepath.Join(a.cfg.DataDir, nodeCertFile), filepath.Join(a.cfg.DataDir, nodeKeyFile))
	if err != nil {
		return nil, err
	}
	if !a.clock().Before(svid.Certificates[0].NotAfter) {
		return nil, fmt.Errorf("node SVID expired at %s", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
	if !a.td.IsZero() && svid.ID.TrustDomain() != a.td {
		return nil, fmt.Errorf("node SVID is for %s, not %s", svid.ID.TrustDomain(), a.td)
	}
	return svid, nil
}

func (a *Agent) setNode(svid *x509svid.SVID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.node = svid
	a.td = svid.ID.TrustDomain()
	a.nodeNext = renewAt(svid.Certificates[0], a.clock(), jitter())
}

// NodeID is the node's SPIFFE ID (zero before attestation).
func (a *Agent) NodeID() spiffeid.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == nil {
		return spiffeid.ID{}
	}
	return a.node.ID
}

// attest trades the join token (in sidecar mode, the service-account token
// file's) for a node SVID, over TLS that verifies the server with the
// bootstrap bundle.
func (a *Agent) attest(ctx context.Context, joinToken string) error {
	conn, err := a.dial(false)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer conn.Close()
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	req := &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: joinToken}, Csr: csr}
	if a.cfg.TokenFile != "" {
		token, err := a.readToken()
		if err != nil {
			return err
		}
		req.Credential = &pb.AttestNodeRequest_Jwt{Jwt: token}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := pb.NewNodeClient(conn).AttestNode(ctx, req)
	if err != nil {
		return fmt.Errorf("agent: attestation refused by %s: %w", a.cfg.ServerAddr, err)
	}
	svid, err := a.svidFrom(resp.GetSvid(), key)
	if err != nil {
		return err
	}
	if prev := a.NodeID(); !prev.IsZero() && a.cfg.TokenFile != "" && svid.ID != prev {
		return fmt.Errorf("agent: the token in %s now grants %s, but this sidecar serves %s; restart it to change identity", a.cfg.TokenFile, svid.ID, prev)
	}
	if err := a.persistNode(svid); err != nil {
		return err
	}
	a.setNode(svid)
	if b := resp.GetBundle(); b != nil {
		if err := a.applyLocalBundle(b); err != nil {
			return err
		}
	}
	if a.cfg.TokenFile != "" {
		a.Cache.setSidecar(svid)
	}
	if joinToken != "" {
		a.mu.Lock()
		a.spentToken = joinToken
		a.mu.Unlock()
	}
	a.log.Info("attested", "node", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// MaxTokenFileBytes bounds the service-account token file.
const MaxTokenFileBytes = 16 << 10

// readToken reads the service-account token file afresh.
func (a *Agent) readToken() (string, error) {
	data, err := pemfile.ReadFile(a.cfg.TokenFile, MaxTokenFileBytes)
	if err != nil {
		return "", fmt.Errorf("agent: token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("agent: token file %s is empty", a.cfg.TokenFile)
	}
	return token, nil
}

// svidFrom checks a signed SVID against the current bundle and pairs it with
// its key.
func (a *Agent) svidFrom(m *pb.X509SVID, key crypto.Signer) (*x509svid.SVID, error) {
	var chain []*x509.Certificate
	for _, der := range m.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("agent: the server sent a certificate that does not parse: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("agent: the server sent no certificate")
	}
	id, _, err := pki.VerifyX509SVID(chain, a.Cache.localSource(chain), a.clock())
	if err != nil {
		return nil, fmt.Errorf("agent: the SVID the server sent does not verify: %w", err)
	}
	if !samePublicKey(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("agent: the server certified another key")
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func (a *Agent) persistNode(svid *x509svid.SVID) error {
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return pemfile.WriteFiles(a.cfg.DataDir,
		pemfile.File{Name: nodeCertFile, Data: certs, Mode: pemfile.ModePublic},
		pemfile.File{Name: nodeKeyFile, Data: key, Mode: pemfile.ModeKey},
		pemfile.File{Name: trustDomainFile, Data: []byte(svid.ID.TrustDomain().Name()), Mode: pemfile.ModePublic},
	)
}

// tlsConfig verifies the server on every handshake (resumed ones too): its
// chain against the current bundle and its SPIFFE ID. With withClient the
// node SVID is presented.
func (a *Agent) tlsConfig(withClient bool) *tls.Config {
	conf := &tls.Config{
		MinVersion:         tlspolicy.MinVersion,
		CipherSuites:       tlspolicy.CipherSuites(),
		InsecureSkipVerify: true, // replaced by VerifyConnection below, which checks chain and SPIFFE ID
		VerifyConnection: func(cs tls.ConnectionState) error {
			return a.verifyServer(cs.PeerCertificates)
		},
	}
	if withClient {
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			a.mu.Lock()
			node := a.node
			a.mu.Unlock()
			if node == nil {
				return &tls.Certificate{}, nil
			}
			raw := make([][]byte, len(node.Certificates))
			for i, c := range node.Certificates {
				raw[i] = c.Raw
			}
			return &tls.Certificate{Certificate: raw, PrivateKey: node.PrivateKey, Leaf: node.Certificates[0]}, nil
		}
	}
	return conf
}

func (a *Agent) verifyServer(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("agent: the server presented no certificate")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return fmt.Errorf("agent: the server's certificate is not an SVID: %w", err)
	}
	if id.Path() != ServerPath {
		return fmt.Errorf("agent: the server presented %s, not a meshfed server's SVID (%s)", id, ServerPath)
	}
	a.mu.Lock()
	td := a.td
	a.mu.Unlock()
	if !td.IsZero() && id.TrustDomain() != td {
		return fmt.Errorf("agent: the server is in trust domain %s, this node is in %s", id.TrustDomain(), td)
	}
	if _, _, err := pki.VerifyX509SVID(chain, a.Cache.localSource(chain), a.clock()); err != nil {
		return fmt.Errorf("agent: the server's SVID does not verify with the trust bundle: %w", err)
	}
	return nil
}

// dial opens a connection to the server; withSVID presents the node SVID.
// Its windows are fixed, so that a renewal costs no bandwidth-estimating
// PING (see grpcflow).
func (a *Agent) dial(withSVID bool) (*grpc.ClientConn, error) {
	return grpc.NewClient(a.cfg.ServerAddr, append(grpcflow.DialOptions(grpcflow.SigningAPIWindow),
		grpc.WithTransportCredentials(credentials.NewTLS(a.tlsConfig(withSVID))))...)
}

// connect opens a new connection to the server, which presents the node
// SVID held now, and closes the previous one. A TLS connection keeps the
// certificate of its handshake for its whole life, so after renewing the node
// SVID the agent reconnects: else the server would go on seeing the old SVID
// on the old connection until it expired, and refuse it.
func (a *Agent) connect() error {
	conn, err := a.dial(true)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.mu.Lock()
	old := a.conn
	a.conn, a.client = conn, pb.NewNodeClient(conn)
	a.connGen++
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	select {
	case a.reconnected <- struct{}{}:
	default:
	}
	return nil
}

// nodeClient returns the client of the current connection, and its number.
func (a *Agent) nodeClient() (pb.NodeClient, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.client, a.connGen
}

// Close releases the connection to the server.
func (a *Agent) Close() error {
	a.mu.Lock()
	conn := a.conn
	a.conn = nil
	a.mu.Unlock()
	if conn != nil {
		return conn.Close()
	}
	return nil
}

// applyLocalBundle installs this trust domain's bundle and persists it, so a
// restart trusts the roots the server rotated to.
func (a *Agent) applyLocalBundle(m *pb.Bundle) error {
	td, err := spiffeid.TrustDomainFromString(m.GetTrustDomain())
	if err != nil {
		return fmt.Errorf("agent: bundle: %w", err)
	}
	a.mu.Lock()
	mine := a.td
	a.mu.Unlock()
	if !mine.IsZero() && td != mine {
		return fmt.Errorf("agent: the server sent the bundle of %s as this node's, which is in %s", td, mine)
	}
	b, err := bundle.Parse(td, m.GetSpiffeBundle())
	if err != nil {
		return fmt.Errorf("agent: bundle from the server: %w", err)
	}
	if err := pemfile.WriteFile(filepath.Join(a.cfg.DataDir, bundleFile), pemfile.EncodeCertificates(b.X509Authorities()...), pemfile.ModePublic); err != nil {
		return err
	}
	a.Cache.setLocalBundle(b)
	return nil
}

// Run follows the server and keeps SVIDs fresh until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watch(ctx)
	}()
	for {
		next := a.Sync(ctx)
		wait := next.Sub(a.clock())
		if wait < 0 {
			wait = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait()
			return nil
		case <-a.Cache.entriesChanged():
			t.Stop()
		case <-a.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// watch keeps a Watch stream open, reconnecting with backoff.
func (a *Agent) watch(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		client, gen := a.nodeClient()
		err := a.watchOnce(ctx, client)
		if ctx.Err() != nil {
			return
		}
		a.noteRefusal(err, gen)
		if _, now := a.nodeClient(); now != gen {
			backoff = time.Second
			continue // the agent reconnected with a renewed node SVID
		}
		// Refused, the same SVID would be refused again: only the
		// connection attesting again makes (reattest) is worth a try.
		var retry <-chan time.Time
		if a.Refused() == "" {
			wait := a.spread(backoff)
			a.log.Warn("watch stream ended; reconnecting", "error", err, "in", wait.String())
			retry = time.After(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.reconnected:
			backoff = time.Second
			continue
		case <-retry:
		}
		backoff = min(backoff*2, a.cfg.MaxBackoff)
	}
}

func (a *Agent) watchOnce(ctx context.Context, client pb.NodeClient) error {
	stream, err := client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		return err
	}
	for {
		snap, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := a.Apply(snap); err != nil {
			a.log.Error("ignoring a snapshot from the server", "error", err)
		}
	}
}

// Apply installs a snapshot from the server: bundles, entries and the
// policies for the proxies.
func (a *Agent) Apply(snap *pb.WatchResponse) error {
	if b := snap.GetBundle(); b != nil {
		if err := a.applyLocalBundle(b); err != nil {
			return err
		}
	}
	fed := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	var meshWide []spiffeid.TrustDomain
	for _, m := range snap.GetFederated() {
		td, err := spiffeid.TrustDomainFromString(m.GetTrustDomain())
		if err != nil {
			continue
		}
		b, err := bundle.Parse(td, m.GetSpiffeBundle())
		if err != nil {
			a.log.Error("ignoring a federated bundle that does not parse", "federated_trust_domain", td.Name(), "error", err)
			continue
		}
		fed[td] = b
		if m.GetAllWorkloads() {
			meshWide = append(meshWide, td)
		}
	}
	a.Cache.setFederated(fed, meshWide)
	a.Cache.setEntries(snap.GetEntries())
	a.applyPolicies(snap)
	if root := snap.GetSigningRootKeyId(); len(root) > 0 {
		a.renewOtherRoots(root)
	}
	return nil
}

// rootSwitchSpread spreads the renewals a change of signing root brings
// forward, so that a fleet of agents does not ask for all its SVIDs in the
// same instant.
const rootSwitchSpread = 5 * time.Second

// renewOtherRoots renews soon what chains to a root the server no longer
// signs under: after a rotation, or once the server signs with a
// VirtualMesh intermediate, an SVID under the old root keeps working here
// but not for peers that trust only the new one.
func (a *Agent) renewOtherRoots(root []byte) {
	at := a.clock().Add(time.Duration(float64(rootSwitchSpread) * (jitter() + 0.1) * 5))
	n := a.Cache.renewOtherRoots(root, at)
	a.mu.Lock()
	if a.node != nil && otherRoot(a.node.Certificates, root) && a.nodeNext.After(at) {
		a.nodeNext = at
		n++
	}
	a.mu.Unlock()
	if n > 0 {
		a.log.Info("the server signs under another root; renewing the SVIDs under the old one", "svids", n, "by", at.UTC().Format(time.RFC3339))
	}
}

// Sync renews what is due (the node SVID, and each entry's SVID) and returns
// when it should run next. Tests call it with a fixed clock.
func (a *Agent) Sync(ctx context.Context) time.Time {
	now := a.clock()
	next := now.Add(time.Hour)
	if a.Refused() != "" {
		// Nothing renews while the server refuses the node.
		a.mu.Lock()
		due := !now.Before(a.reattestNext)
		a.mu.Unlock()
		if due {
			err := a.reattest(ctx)
			wait := a.spread(a.cfg.MaxBackoff)
			switch {
			case errors.Is(err, errNoFreshToken):
				// Logged once per token; the file is looked at again soon.
				wait = tokenPoll
				a.mu.Lock()
				first := !a.saidNoToken
				a.saidNoToken = true
				a.mu.Unlock()
				if first {
					a.log.Error("cannot attest again; serving the SVIDs still valid", "error", err)
				}
			case err != nil:
				a.metrics.renewal("node", err)
				a.log.Warn("attesting again failed; serving the SVIDs still valid, and retrying", "error", err, "in", wait.String())
				a.mu.Lock()
				a.saidNoToken = false
				a.mu.Unlock()
			default:
				a.metrics.renewal("node", nil)
			}
			if err != nil {
				a.mu.Lock()
				a.reattestNext = now.Add(wait)
				a.mu.Unlock()
			}
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.refused != "" {
			return a.reattestNext
		}
		return now
	}
	a.mu.Lock()
	hasNode := a.node != nil
	nodeDue := hasNode && !now.Before(a.nodeNext)
	nodeNext := a.nodeNext
	a.mu.Unlock()
	if nodeDue {
		_, gen := a.nodeClient()
		err := a.renewNode(ctx)
		a.metrics.renewal("node", err)
		a.noteRefusal(err, gen)
		if err != nil {
			a.log.Warn("renewing the node SVID failed; will retry", "error", err)
			a.mu.Lock()
			a.nodeNext = now.Add(a.spread(a.cfg.MaxBackoff))
			nodeNext = a.nodeNext
			a.mu.Unlock()
		} else {
			a.mu.Lock()
			nodeNext = a.nodeNext
			a.mu.Unlock()
		}
	}
	if hasNode && nodeNext.Before(next) {
		next = nodeNext
	}
	due := a.Cache.due(now)
	if len(due) > 0 {
		a.renewEntries(ctx, due)
	}
	if t := a.Cache.nextDue(); !t.IsZero() && t.Before(next) {
		next = t
	}
	return next
}

func (a *Agent) renewNode(ctx context.Context) error {
	if a.cfg.TokenFile != "" {
		if err := a.attest(ctx, ""); err != nil {
			return err
		}
		return a.connect()
	}
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, _ := a.nodeClient()
	resp, err := client.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: csr}}})
	if err != nil {
		return err
	}
	if len(resp.GetSvids()) != 1 {
		return fmt.Errorf("agent: the server answered %d SVIDs for one request", len(resp.GetSvids()))
	}
	svid, err := a.svidFrom(resp.GetSvids()[0], key)
	if err != nil {
		return err
	}
	if svid.ID != a.NodeID() {
		return fmt.Errorf("agent: renewal returned %s, not this node's %s", svid.ID, a.NodeID())
	}
	if err := a.persistNode(svid); err != nil {
		return err
	}
	a.setNode(svid)
	a.log.Info("node SVID renewed", "node", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	return a.connect()
}

// renewEntries signs new SVIDs for the due entries in one call.
func (a *Agent) renewEntries(ctx context.Context, ids []string) {
	keys := make(map[string]crypto.Signer, len(ids))
	req := &pb.SignX509SVIDRequest{}
	for _, id := range ids {
		key, csr, err := newCSR()
		if err != nil {
			a.Cache.failed(id, a.clock(), a.cfg.MaxBackoff, err)
			continue
		}
		keys[id] = key
		req.Requests = append(req.Requests, &pb.SVIDRequest{EntryId: id, Csr: csr})
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, gen := a.nodeClient()
	resp, err := client.SignX509SVID(ctx, req)
	now := a.clock()
	if err != nil {
		a.noteRefusal(err, gen)
		a.metrics.renewals.WithLabelValues("workload", "error").Add(float64(len(ids)))
		for _, id := range ids {
			a.Cache.failed(id, now, a.cfg.MaxBackoff, err)
		}
		a.log.Warn("renewing workload SVIDs failed; serving what is still valid", "entries", len(ids), "error", err)
		return
	}
	for _, m := range resp.GetSvids() {
		key, ok := keys[m.GetEntryId()]
		if !ok {
			continue
		}
		svid, err := a.svidFrom(m, key)
		a.metrics.renewal("workload", err)
		if err != nil {
			a.Cache.failed(m.GetEntryId(), now, a.cfg.MaxBackoff, err)
			continue
		}
		a.Cache.setSVID(m.GetEntryId(), svid, renewAt(svid.Certificates[0], now, jitter()))
		a.log.Info("workload SVID issued", "entry", m.GetEntryId(), "spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
}

// JWTSVID returns a JWT-SVID of the entry for audience: the one kept for
// that entry and audience while it is less than half through its life, else
// one the server signs now, which is validated with this trust domain's JWT
// keys before it is kept and returned. It never returns an expired one.
func (a *Agent) JWTSVID(ctx context.Context, entryID string, audience []string) (*jwtsvid.SVID, error) {
	if svid := a.Cache.cachedJWTSVID(entryID, audience, a.clock()); svid != nil {
		return svid, nil
	}
	want, ok := a.Cache.entrySPIFFEID(entryID)
	if !ok {
		return nil, fmt.Errorf("agent: no entry %q", entryID)
	}
	client, gen := a.nodeClient()
	if client == nil {
		return nil, errors.New("agent: not connected to a server yet")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if err != nil {
		a.noteRefusal(err, gen)
		return nil, fmt.Errorf("agent: the server signed no JWT-SVID for entry %s: %w", entryID, err)
	}
	keys := a.Cache.localJWTBundle()
	if keys == nil {
		return nil, errors.New("agent: no JWT keys of this trust domain yet to check a JWT-SVID with")
	}
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), keys, audience)
	if err != nil {
		return nil, fmt.Errorf("agent: the JWT-SVID the server sent for entry %s does not validate: %w", entryID, err)
	}
	if svid.ID.String() != want {
		return nil, fmt.Errorf("agent: the server sent a JWT-SVID for %s, not for entry %s's %s", svid.ID, entryID, want)
	}
	now := a.clock()
	if !now.Before(svid.Expiry) {
		return nil, fmt.Errorf("agent: the JWT-SVID the server sent for entry %s expired at %s", entryID, svid.Expiry.Format(time.RFC3339))
	}
	a.Cache.keepJWTSVID(entryID, audience, svid, now)
	return svid, nil
}

// renewAt is when to renew a certificate received at now: at half its
// lifetime, moved by frac (within ±10% of the lifetime) so a fleet does not
// renew in step. The lifetime counts from now when the CA backdated
// NotBefore (for clock skew), so a short-lived SVID is not already half
// spent when it arrives, which would renew it again at once, forever.
func renewAt(c *x509.Certificate, now time.Time, frac float64) time.Time {
	start := c.NotBefore
	if now.After(start) && now.Before(c.NotAfter) {
		start = now
	}
	life := c.NotAfter.Sub(start)
	return start.Add(time.Duration(float64(life) * (0.5 + frac)))
}

// spread is how long to wait before retrying after a failure whose backoff
// is d: between half of d and d, at random ("equal jitter"), so that agents
// that failed together (a server outage, a partition, the server shedding
// load) do not all try again in the same instant, and a retry still waits at
// least half of its backoff.
func (a *Agent) spread(d time.Duration) time.Duration {
	return d/2 + time.Duration(a.cfg.Rand()*float64(d/2))
}

// jitter is a random fraction in [-0.1, 0.1).
func jitter() float64 {
	n, err := rand.Int(rand.Reader, big.NewInt(2000))
	if err != nil {
		return 0
	}
	return float64(n.Int64()-1000) / 10000
}

func newCSR() (crypto.Signer, []byte, error) {
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: CSR: %w", err)
	}
	return key, der, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
