package member

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of Config.
const (
	DefaultClientSVIDTTL  = time.Hour
	DefaultReportInterval = 30 * time.Second
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = time.Minute
	DefaultJitter         = 0.1
	DefaultCallTimeout    = 30 * time.Second
)

// Config configures a Member.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Controller is host:port of the VirtualMesh controller.
	Controller string
	// ControllerCAFile holds the PEM roots that verify the controller at
	// the first join: the shared root, which the controller writes as
	// root-cert.pem in its data directory. After a join the member trusts
	// the roots the controller sends.
	ControllerCAFile string
	// Token is the one-time join token; needed only while Dir holds no
	// usable intermediate, or to join again after the controller dropped
	// this member's record (it was removed from spec.meshes, then added
	// back).
	Token string
	// TokenSource, when set, is asked for the token whenever one is needed,
	// instead of Token, so that a token written after the start is used at
	// the next try. "" means none yet.
	TokenSource func() (string, error)
	// Dir is the member's VirtualMesh directory: the intermediate in
	// Istio's cacerts layout and StateFile.
	Dir string
	// KeyType is the type of the intermediate's key (pki.DefaultKeyType if
	// empty). A new key is made at every renewal.
	KeyType pki.KeyType
	// Address is where this server serves, reported at the join for the
	// controller's status only.
	Address string

	// Clock defaults to time.Now. Timer returns a channel that receives
	// once Clock reaches at (by default a time.Timer of at minus Clock());
	// every wait of the member is one, so a test that injects both drives
	// the member's time without sleeping.
	Clock  pki.Clock
	Timer  func(at time.Time) <-chan time.Time
	Logger *slog.Logger

	// Report is called before each report to the controller: live SVIDs
	// per root and the agents. Nil reports zeros.
	Report func() Report
	// OnState applies a federation state in the server (trust these roots
	// and these member trust domains). It is called by Run first with the
	// state in Dir, then after every change, and after every renewal (the
	// intermediate in Dir changed; the server's authority may reload it).
	// A state is persisted only after OnState accepted it; on an error it
	// is offered again after a backoff.
	OnState func(ctx context.Context, s State) error

	// RenewBefore renews the intermediate when this little of its life is
	// left; zero (the default), or not shorter than its life, renews at
	// half its life. It is renewed at once when the federation signs under
	// another root than the one it chains to.
	RenewBefore time.Duration
	// ClientSVIDTTL is the life of the X.509-SVID the member presents to
	// the controller (DefaultClientSVIDTTL); it is replaced at half life
	// and whenever the intermediate changes.
	ClientSVIDTTL time.Duration
	// ReportInterval is how often the member reports when nothing changes
	// (DefaultReportInterval).
	ReportInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before the member calls the
	// controller again after a failure, doubling from the first to the
	// second (DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// Jitter is the fraction by which every wait (renewal, report,
	// backoff) is shortened at random, in [0, 1); zero means
	// DefaultJitter.
	Jitter float64
	// CallTimeout bounds one call to the controller (DefaultCallTimeout).
	CallTimeout time.Duration
}

// State is a federation state as the controller sends it, verified.
type State struct {
	Name         string              // the VirtualMesh's name
	Roots        []*x509.Certificate // every root to trust now; two during a rotation
	SigningRoot  *x509.Certificate   // the root new intermediates are signed under; one of Roots
	TrustDomains []spiffeid.TrustDomain
	// JWTAuthorities are the JWT-SVID signing keys of the member trust
	// domains that sign JWT-SVIDs (this one's included), as each last
	// reported them.
	JWTAuthorities       map[spiffeid.TrustDomain][]jwtkeys.Key
	EnforceAccessControl bool
	Phase                string // the rotation phase
	Generation           uint64
}

// Report is what the server tells the controller about itself.
type Report struct {
	// LiveSVIDsByRoot counts unexpired X.509-SVIDs the server signed, per
	// root they chain to (the root's subject key ID in hex).
	LiveSVIDsByRoot map[string]int64
	// Agents is how many agents are connected; AgentsCurrent how many of
	// them have received the current bundle.
	Agents, AgentsCurrent int64
	// JWTAuthorities are this trust domain's unexpired JWT-SVID signing
	// keys, which the controller passes on to the other members.
	JWTAuthorities []jwtkeys.Key
}

// Status is what the member knows about its membership.
type Status struct {
	TrustDomain          spiffeid.TrustDomain
	Joined               bool // an intermediate is in use
	Name                 string
	Phase                string
	IntermediateSerial   string // hex
	IntermediateNotAfter time.Time
	RootSubjectKeyID     string // hex; the root the intermediate chains to
	RenewAt              time.Time
	AppliedGeneration    uint64
	LastContact          time.Time // last answer from the controller
	LastError            string
	LastErrorAt          time.Time
}

// Member keeps a server's membership of a VirtualMesh.
type Member struct {
	cfg  Config
	log  *slog.Logger
	rand func() float64 // in [0, 1); tests fix it

	mu          sync.Mutex
	cur         *intermediate
	renewAt     time.Time
	applied     *State // persisted in Dir, and handed to OnState once Run has started
	latest      *State // the newest verified state, applied or not
	lastContact time.Time
	lastErr     string
	lastErrAt   time.Time
}

// New checks cfg and fills in its defaults. It does not touch Dir or the
// network; Start and Run do.
func New(cfg Config) (*Member, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("member: a trust domain is required")
	case cfg.Controller == "":
		return nil, errors.New("member: the controller's address (host:port) is required")
	case cfg.Dir == "":
		return nil, errors.New("member: a directory for the intermediate is required")
	case cfg.Jitter < 0 || cfg.Jitter >= 1:
		return nil, fmt.Errorf("member: jitter %v is outside [0, 1)", cfg.Jitter)
	}
	if cfg.KeyType == "" {
		cfg.KeyType = pki.DefaultKeyType
	}
	if _, err := pki.ParseKeyType(string(cfg.KeyType)); err != nil {
		return nil, fmt.Errorf("member: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Timer == nil {
		clock := cfg.Clock
		cfg.Timer = func(at time.Time) <-chan time.Time { return time.After(at.Sub(clock())) }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	defaultDuration(&cfg.ClientSVIDTTL, DefaultClientSVIDTTL)
	defaultDuration(&cfg.ReportInterval, DefaultReportInterval)
	defaultDuration(&cfg.MinBackoff, DefaultMinBackoff)
	defaultDuration(&cfg.MaxBackoff, DefaultMaxBackoff)
	defaultDuration(&cfg.CallTimeout, DefaultCallTimeout)
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("member: maximum backoff %s is below the minimum %s", cfg.MaxBackoff, cfg.MinBackoff)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = DefaultJitter
	}
	return &Member{cfg: cfg, log: cfg.Logger, rand: mathrand.Float64}, nil
}

func defaultDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// CADir is the directory the server's authority loads its CA from, in
// Istio's cacerts layout. After Start it holds a usable intermediate, and
// every change is an atomic replacement of all its files.
func (m *Member) CADir() string { return m.cfg.Dir }

// Status returns what the member knows now.
func (m *Member) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{
		TrustDomain: m.cfg.TrustDomain,
		LastContact: m.lastContact,
		LastError:   m.lastErr,
		LastErrorAt: m.lastErrAt,
	}
	if m.cur != nil {
		c := m.cur.cert()
		st.Joined = true
		st.IntermediateSerial = m.cur.serial()
		st.IntermediateNotAfter = c.NotAfter
		st.RootSubjectKeyID = fmt.Sprintf("%x", m.cur.root.SubjectKeyId)
		st.RenewAt = m.renewAt
	}
	if m.applied != nil {
		st.Name = m.applied.Name
		st.Phase = m.applied.Phase
		st.AppliedGeneration = m.applied.Generation
	}
	return st
}

// State returns the federation state last applied (at Start: the one in
// Dir, or the join's), and false before Start.
func (m *Member) State() (State, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.applied == nil {
		return State{}, false
	}
	return *m.applied, true
}

// Start makes Dir hold a usable intermediate: the one already there if it
// is valid now, limited to this trust domain and chains to a root it holds;
// otherwise a new one, from a join with the token. Calling it again after
// it succeeded does nothing. The server's authority can load CADir once
// Start has returned.
func (m *Member) Start(ctx context.Context) error {
	m.mu.Lock()
	started := m.cur != nil
	m.mu.Unlock()
	if started {
		return nil
	}
	if err := os.MkdirAll(m.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("member: %w", err)
	}
	in, s, err := loadDir(m.cfg.Dir, m.cfg.TrustDomain, m.cfg.Clock)
	if err == nil {
		m.setIntermediate(in)
		m.setApplied(s)
		m.log.Info("using the VirtualMesh intermediate in the directory", "dir", m.cfg.Dir, "virtual_mesh", s.Name,
			"serial", in.serial(), "root_skid", fmt.Sprintf("%x", in.root.SubjectKeyId),
			"not_after", in.cert().NotAfter.UTC().Format(time.RFC3339))
		return nil
	}
	token, terr := m.token()
	if terr != nil {
		return terr
	}
	if token == "" {
		hint := fmt.Sprintf("create one on the controller with 'meshfed federation token create --trust-domain %s' and start with it", m.cfg.TrustDomain)
		if errors.Is(err, errNoIntermediate) {
			return fmt.Errorf("member: %s holds no VirtualMesh intermediate yet and no join token was given; %s", m.cfg.Dir, hint)
		}
		return fmt.Errorf("member: no usable VirtualMesh intermediate (%w) and no join token was given; %s", err, hint)
	}
	if !errors.Is(err, errNoIntermediate) {
		m.log.Warn("the VirtualMesh intermediate in the directory is not usable; joining with the token", "dir", m.cfg.Dir, "reason", err.Error())
	}
	return m.join(ctx, token)
}

// token is the join token to use now: TokenSource's, or Token.
func (m *Member) token() (string, error) {
	if m.cfg.TokenSource != nil {
		t, err := m.cfg.TokenSource()
		if err != nil {
			return "", fmt.Errorf("member: join token: %w", err)
		}
		return t, nil
	}
	return m.cfg.Token, nil
}

// join spends the token for a first intermediate, over TLS that verifies the
// controller with ControllerCAFile.
func (m *Member) join(ctx context.Context, token string) error {
	if m.cfg.ControllerCAFile == "" {
		return errors.New("member: the first join needs the controller's CA file (root-cert.pem in the controller's data directory)")
	}
	roots, err := pemfile.ReadCertificates(m.cfg.ControllerCAFile)
	if err != nil {
		return fmt.Errorf("member: controller CA file: %w", err)
	}
	in, s, err := m.joinWith(ctx, token, func() []*x509.Certificate { return roots })
	if err != nil {
		return err
	}
	now := m.clock()
	if err := writeDir(m.cfg.Dir, in, s); err != nil {
		return err
	}
	m.setIntermediate(in)
	m.setApplied(s)
	m.contact(now)
	m.log.Info("joined the VirtualMesh", "virtual_mesh", s.Name, "controller", m.cfg.Controller, "dir", m.cfg.Dir,
		"serial", in.serial(), "root_skid", fmt.Sprintf("%x", in.root.SubjectKeyId),
		"not_after", in.cert().NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// rejoin joins again with the token there is now, verifying the controller
// against the roots the member trusts now and those of ControllerCAFile,
// and writes the new intermediate with the state applied (the caller
// applies the new one).
func (m *Member) rejoin(ctx context.Context) (*intermediate, *State, error) {
	token, err := m.token()
	if err != nil {
		return nil, nil, err
	}
	if token == "" {
		return nil, nil, errors.New("member: no join token")
	}
	roots := m.controllerRoots()
	if m.cfg.ControllerCAFile != "" {
		// After a rotation it missed, the member's roots are stale; the
		// operator may hand it the controller's root-cert.pem again.
		if more, err := pemfile.ReadCertificates(m.cfg.ControllerCAFile); err == nil {
			roots = append(slices.Clip(roots), more...)
		}
	}
	in, s, err := m.joinWith(ctx, token, func() []*x509.Certificate { return roots })
	if err != nil {
		return nil, nil, err
	}
	applied, _ := m.states()
	if err := writeDir(m.cfg.Dir, in, applied); err != nil {
		return nil, nil, err
	}
	return in, s, nil
}

// joinWith spends token for an intermediate for a new key, over TLS that
// verifies the controller against roots, and checks what comes back. It
// writes nothing.
func (m *Member) joinWith(ctx context.Context, token string, roots func() []*x509.Certificate) (*intermediate, *State, error) {
	key, csr, err := m.newCSR()
	if err != nil {
		return nil, nil, err
	}
	conn, err := m.dial(roots, nil)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	resp, err := pb.NewControllerClient(conn).Join(cctx, &pb.JoinRequest{
		Token:       token,
		TrustDomain: m.cfg.TrustDomain.Name(),
		Csr:         csr,
		Address:     m.cfg.Address,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("member: join at %s failed: %w", m.cfg.Controller, err)
	}
	return checkResponse(resp, m.cfg.TrustDomain, key, m.cfg.Clock)
}

// newCSR makes a new key for an intermediate and a CSR for it. The CSR names
// the trust domain, as `meshfed ca csr` does; the controller decides from
// the token or the caller's SVID anyway.
func (m *Member) newCSR() (crypto.Signer, []byte, error) {
	key, err := pki.GenerateKey(m.cfg.KeyType)
	if err != nil {
		return nil, nil, fmt.Errorf("member: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{m.cfg.TrustDomain.ID().URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("member: CSR: %w", err)
	}
	return key, der, nil
}

func (m *Member) clock() time.Time { return m.cfg.Clock() }

func (m *Member) current() *intermediate {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

func (m *Member) setIntermediate(in *intermediate) {
	at := renewAt(in.cert(), m.cfg.RenewBefore, m.cfg.Jitter, m.rand())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur = in
	m.renewAt = at
}

func (m *Member) renewTime() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.renewAt
}

// setApplied records s as applied; it is the newest state too unless a
// newer one was seen.
func (m *Member) setApplied(s *State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.applied = s
	if m.latest == nil || s.Generation >= m.latest.Generation {
		m.latest = s
	}
}

func (m *Member) setLatest(s *State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.latest = s
}

func (m *Member) states() (applied, latest *State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied, m.latest
}

// controllerRoots are the roots that verify the controller after the join.
func (m *Member) controllerRoots() []*x509.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.latest.Roots
}

func (m *Member) contact(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastContact = now
}

// failed records err for Status and logs it.
func (m *Member) failed(msg string, err error) {
	m.mu.Lock()
	m.lastErr = err.Error()
	m.lastErrAt = m.clock()
	m.mu.Unlock()
	m.log.Warn(msg, "error", err.Error())
}

func (m *Member) onState(ctx context.Context, s *State) error {
	if m.cfg.OnState == nil {
		return nil
	}
	return m.cfg.OnState(ctx, *s)
}
