package server

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/meshfed/meshfed/internal/authority"
	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/procruntime"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// MaxConfigBytes bounds a configuration file: a real one is a few KiB.
const MaxConfigBytes = 256 << 10

// Config is the server's configuration file (YAML), every key documented in
// docs/configuration.md. Flags override it.
type Config struct {
	TrustDomain   string `json:"trust_domain"`
	DataDir       string `json:"data_dir"`
	Listen        string `json:"listen"`
	BundleListen  string `json:"bundle_listen"`
	AdminSocket   string `json:"admin_socket"`
	MetricsListen string `json:"metrics_listen"`
	Datastore     string `json:"datastore"`
	ServerID      string `json:"server_id"`
	// ServerNames are the DNS names and IP addresses put into the server's
	// own serving SVID, so that clients that verify the server by the host
	// they dial (istio-agent does) accept it.
	ServerNames []string `json:"server_names"`

	CA             CAConfig             `json:"ca"`
	SVID           SVIDConfig           `json:"svid"`
	BundleEndpoint BundleEndpointConfig `json:"bundle_endpoint"`
	Admin          AdminConfig          `json:"admin"`
	Credentials    CredentialsConfig    `json:"credentials"`
	Federation     FederationConfig     `json:"federation"`
	Audit          AuditConfig          `json:"audit"`
	// Runtime is the process's garbage collector setting, applied by
	// `meshfed server` (DefaultGCPercent, DefaultMemoryLimit).
	Runtime procruntime.Config `json:"runtime"`
	Limits  LimitsConfig       `json:"limits"`

	LogLevel  string `json:"log_level"`
	LogFormat string `json:"log_format"`
}

// AuditConfig tunes the audit log, one row per issued certificate,
// committed before the certificate is returned.
type AuditConfig struct {
	// CommitDelay is how long a commit may wait for the rows of
	// certificates being signed at that moment, so that they share one
	// commit (one fsync): a duration up to MaxAuditCommitDelay, "" for
	// DefaultAuditCommitDelay, or "off" never to wait. With nothing else
	// being signed a commit never waits.
	CommitDelay string `json:"commit_delay"`
	// Retention is how long a row is kept after the certificate it records
	// expired: a duration, "" for DefaultAuditRetention, or "off" to keep
	// every row for ever. Rows of certificates still valid are always kept.
	Retention string `json:"retention"`
}

// LimitsConfig bounds the work the signing API takes on at once (package
// shed): signing requests beyond max_signing_in_flight wait their turn, up
// to max_signing_queue of them for at most max_queue_wait each, and past
// those bounds are refused at once with UNAVAILABLE, which agents and
// istio-agent meet with backoff. For the integers 0 (or absent) is the
// default and a negative value no bound.
type LimitsConfig struct {
	// MaxSigningInFlight is how many signing requests (CreateCertificate,
	// SignX509SVID, SignJWTSVID, AttestNode) run at once.
	MaxSigningInFlight int `json:"max_signing_in_flight"`
	// MaxSigningQueue is how many wait for a turn at once.
	MaxSigningQueue int `json:"max_signing_queue"`
	// MaxQueueWait bounds one request's wait: a duration, "" for the
	// default, or "off" (then only the caller's deadline bounds it).
	MaxQueueWait string `json:"max_queue_wait"`
	// MaxStreamsPerConnection is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS
	// on the signing API: how many calls one connection has open at once
	// (a client's further calls wait on its side).
	MaxStreamsPerConnection int `json:"max_streams_per_connection"`
}

// CAConfig says where the signing CA comes from.
type CAConfig struct {
	Mode           string            `json:"mode"`
	CACertsDir     string            `json:"cacerts_dir"`
	KeyType        string            `json:"key_type"`
	RootTTL        duration.Duration `json:"root_ttl"`
	ReloadInterval duration.Duration `json:"reload_interval"`
	// AutoRotate (default true) starts a rotation of a self-signed root
	// when it has less than RotateBefore left (default: a sixth of its
	// lifetime) and advances each phase as soon as its condition holds.
	AutoRotate   *bool             `json:"auto_rotate"`
	RotateBefore duration.Duration `json:"rotate_before"`
}

// SVIDConfig bounds the lifetimes the server signs.
type SVIDConfig struct {
	DefaultTTL duration.Duration `json:"default_ttl"`
	MaxTTL     duration.Duration `json:"max_ttl"`
	NodeTTL    duration.Duration `json:"node_ttl"`
}

// BundleEndpointConfig configures the SPIFFE bundle endpoint.
type BundleEndpointConfig struct {
	Profile     string            `json:"profile"`
	CertFile    string            `json:"cert_file"`
	KeyFile     string            `json:"key_file"`
	RefreshHint duration.Duration `json:"refresh_hint"`
}

// AdminConfig says who may call the admin API.
type AdminConfig struct {
	// AllowedUIDs may call over the admin socket; default: the server's own
	// uid and root.
	AllowedUIDs []int `json:"allowed_uids"`
	// AdminIDs are SPIFFE IDs whose SVIDs may call the admin API over TLS.
	AdminIDs []string `json:"admin_ids"`
}

// CredentialsConfig configures how callers prove who they are.
type CredentialsConfig struct {
	KubernetesJWT []JWTIssuerConfig `json:"kubernetes_jwt"`
	JoinToken     JoinTokenConfig   `json:"join_token"`
}

// JWTIssuerConfig is one trusted issuer of service-account tokens.
type JWTIssuerConfig struct {
	Issuer    string   `json:"issuer"`
	JWKSFile  string   `json:"jwks_file"`
	JWKSURL   string   `json:"jwks_url"`
	Audiences []string `json:"audiences"`
}

// JoinTokenConfig configures one-time join tokens.
type JoinTokenConfig struct {
	DefaultTTL duration.Duration `json:"default_ttl"`
}

// FederationConfig says which foreign trust domains this server trusts:
// SPIFFE bundle federation (federates_with) and a VirtualMesh membership.
type FederationConfig struct {
	FederatesWith []FederatesWithConfig `json:"federates_with"`
	// WebRootsFile verifies https_web bundle endpoints (PEM); default: the
	// system's roots.
	WebRootsFile string             `json:"https_web_roots_file"`
	VirtualMesh  *VirtualMeshConfig `json:"virtual_mesh"`
}

// FederatesWithConfig is one foreign trust domain whose bundle is fetched
// from its bundle endpoint; the keys are SPIRE's.
type FederatesWithConfig struct {
	TrustDomain           string `json:"trust_domain"`
	BundleEndpointURL     string `json:"bundle_endpoint_url"`
	BundleEndpointProfile string `json:"bundle_endpoint_profile"`
	EndpointSPIFFEID      string `json:"endpoint_spiffe_id"`
}

// VirtualMeshConfig makes this server a member of a VirtualMesh: it joins
// the controller with a one-time token, then signs with an intermediate of
// the shared root, made from a key it keeps.
type VirtualMeshConfig struct {
	Controller       string `json:"controller"`
	ControllerCAFile string `json:"controller_ca_file"`
	JoinTokenFile    string `json:"join_token_file"`
	// Dir holds the intermediate in Istio's cacerts layout; default
	// <data_dir>/virtualmesh.
	Dir string `json:"dir"`
}

// Defaults.
const (
	DefaultListen        = "127.0.0.1:8443"
	DefaultBundleListen  = "127.0.0.1:8444"
	DefaultMetricsListen = "127.0.0.1:9988"
	DefaultSVIDTTL       = time.Hour
	DefaultMaxSVIDTTL    = 24 * time.Hour
	DefaultNodeSVIDTTL   = 24 * time.Hour
	DefaultJoinTokenTTL  = time.Hour
	DefaultRefreshHint   = 5 * time.Minute
	// DefaultAuditRetention: see AuditConfig.Retention.
	DefaultAuditRetention = 90 * 24 * time.Hour
	// DefaultAuditCommitDelay: see AuditConfig.CommitDelay and
	// docs/performance.md ("Server: issuance through the gRPC API").
	DefaultAuditCommitDelay = 3 * time.Millisecond
	// DefaultGCPercent and DefaultMemoryLimit are the server process's
	// garbage collector setting unless runtime.gc_percent and
	// runtime.memory_limit, or GOGC and GOMEMLIMIT, say otherwise. An
	// issuance allocates ~40 KB of short-lived garbage (CSR, certificate,
	// TLS records, protobuf) against a live heap of a few MiB, so with Go's
	// default of 100 the collector runs every few dozen issuances.
	DefaultGCPercent   = 400
	DefaultMemoryLimit = 1 << 30
	// MaxAuditCommitDelay bounds audit.commit_delay: every issuance under
	// load may wait that long.
	MaxAuditCommitDelay   = 100 * time.Millisecond
	DefaultReloadInterval = 5 * time.Second
	// The defaults of limits.*: a signing request takes a few hundred
	// microseconds of CPU and a share of an audit commit, so 256 at once
	// keep every core and the group commit busy on any machine, and 4096
	// waiting (a CSR and a goroutine each, ~10 KiB) hold a herd of
	// reconnecting agents to ~40 MiB; a turn that does not come in 5 s is
	// better refused, for the client to back off, than left to time out.
	DefaultMaxSigningInFlight      = 256
	DefaultMaxSigningQueue         = 4096
	DefaultMaxQueueWait            = 5 * time.Second
	DefaultMaxStreamsPerConnection = 128
	ProfileHTTPSSPIFFE             = "https_spiffe"
	ProfileHTTPSWeb                = "https_web"
)

// LoadConfig reads a YAML configuration file. Unknown keys are an error, so
// a misspelt key never silently falls back to its default.
func LoadConfig(path string) (Config, error) {
	data, err := pemfile.ReadFile(path, MaxConfigBytes)
	if err != nil {
		return Config{}, fmt.Errorf("server: config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses YAML configuration; name is used in errors.
func ParseConfig(name string, data []byte) (Config, error) {
	if len(data) > MaxConfigBytes {
		return Config{}, fmt.Errorf("server: config %s: larger than %d bytes", name, MaxConfigBytes)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("server: config %s: %w", name, err)
	}
	return c, nil
}

// settings is Config validated and with defaults filled in.
type settings struct {
	td             spiffeid.TrustDomain
	dataDir        string
	listen         string
	bundleListen   string
	adminSocket    string
	metricsListen  string
	datastore      string
	serverID       string
	dnsNames       []string
	ips            []net.IP
	caMode         authority.Mode
	caCertsDir     string
	keyType        pki.KeyType
	rootTTL        time.Duration
	reloadInterval time.Duration
	autoRotate     bool
	rotateBefore   time.Duration
	defaultTTL     time.Duration
	maxTTL         time.Duration
	nodeTTL        time.Duration
	tokenTTL       time.Duration
	profile        string
	webCert        string
	webKey         string
	refreshHint    time.Duration
	allowedUIDs    []int
	adminIDs       []spiffeid.ID
	jwtIssuers     []JWTIssuerConfig
	federation     federationSettings
	commitDelay    time.Duration
	auditRetention time.Duration // 0: keep every row
	limits         limitSettings
}

// limitSettings are limits.* with defaults filled in.
type limitSettings struct {
	inFlight, queue int           // negative: no bound
	queueWait       time.Duration // 0: no bound
	streams         uint32        // 0: gRPC's (no bound)
}

// validate fills in defaults and refuses contradictions, naming the key.
func (c Config) validate() (*settings, error) {
	s := &settings{}
	var err error
	if c.TrustDomain == "" {
		return nil, errors.New("server: trust_domain (--trust-domain) is required")
	}
	if s.td, err = spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return nil, fmt.Errorf("server: trust_domain %q: %w", c.TrustDomain, err)
	}
	if c.DataDir == "" {
		return nil, errors.New("server: data_dir (--data-dir) is required: the CA key and the SQLite store live there")
	}
	if s.dataDir, err = filepath.Abs(c.DataDir); err != nil {
		return nil, fmt.Errorf("server: data_dir: %w", err)
	}
	s.listen = or(c.Listen, DefaultListen)
	s.bundleListen = or(c.BundleListen, DefaultBundleListen)
	s.adminSocket = or(c.AdminSocket, filepath.Join(s.dataDir, "admin.sock"))
	s.metricsListen = or(c.MetricsListen, DefaultMetricsListen)
	if procruntime.IsOff(s.metricsListen) {
		s.metricsListen = "off" // YAML makes an unquoted off false
	}
	s.datastore = c.Datastore
	s.serverID = c.ServerID
	names := c.ServerNames
	if len(names) == 0 {
		names = []string{"localhost", "127.0.0.1", "::1"}
		if host, _, err := net.SplitHostPort(s.listen); err == nil && host != "" && net.ParseIP(host) == nil && host != "localhost" {
			names = append(names, host)
		}
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			s.ips = append(s.ips, ip)
		} else {
			s.dnsNames = append(s.dnsNames, n)
		}
	}
	switch c.CA.Mode {
	case "", string(authority.ModeSelfSigned):
		s.caMode = authority.ModeSelfSigned
		if c.CA.CACertsDir != "" {
			return nil, errors.New("server: ca.cacerts_dir is set but ca.mode is self-signed; set ca.mode: cacerts")
		}
	case string(authority.ModeCACerts):
		s.caMode = authority.ModeCACerts
		if c.CA.CACertsDir == "" {
			return nil, errors.New("server: ca.mode cacerts needs ca.cacerts_dir (--cacerts-dir)")
		}
		s.caCertsDir = c.CA.CACertsDir
	default:
		return nil, fmt.Errorf("server: ca.mode %q: use self-signed or cacerts", c.CA.Mode)
	}
	if s.keyType, err = pki.ParseKeyType(or(c.CA.KeyType, string(pki.DefaultKeyType))); err != nil {
		return nil, fmt.Errorf("server: ca.key_type: %w", err)
	}
	s.rootTTL = orDur(c.CA.RootTTL, pki.DefaultRootTTL)
	s.reloadInterval = orDur(c.CA.ReloadInterval, DefaultReloadInterval)
	s.autoRotate = c.CA.AutoRotate == nil || *c.CA.AutoRotate
	s.rotateBefore = time.Duration(c.CA.RotateBefore)
	if s.rotateBefore < 0 || s.rotateBefore >= s.rootTTL {
		return nil, fmt.Errorf("server: ca.rotate_before %s must be positive and less than ca.root_ttl %s", s.rotateBefore, s.rootTTL)
	}
	s.defaultTTL = orDur(c.SVID.DefaultTTL, DefaultSVIDTTL)
	s.maxTTL = orDur(c.SVID.MaxTTL, DefaultMaxSVIDTTL)
	s.nodeTTL = orDur(c.SVID.NodeTTL, DefaultNodeSVIDTTL)
	if s.defaultTTL > s.maxTTL {
		return nil, fmt.Errorf("server: svid.default_ttl %s exceeds svid.max_ttl %s", s.defaultTTL, s.maxTTL)
	}
	s.tokenTTL = orDur(c.Credentials.JoinToken.DefaultTTL, DefaultJoinTokenTTL)
	switch c.BundleEndpoint.Profile {
	case "", ProfileHTTPSSPIFFE:
		s.profile = ProfileHTTPSSPIFFE
		if c.BundleEndpoint.CertFile != "" || c.BundleEndpoint.KeyFile != "" {
			return nil, errors.New("server: bundle_endpoint.cert_file/key_file are for the https_web profile; set bundle_endpoint.profile: https_web")
		}
	case ProfileHTTPSWeb:
		s.profile = ProfileHTTPSWeb
		if c.BundleEndpoint.CertFile == "" || c.BundleEndpoint.KeyFile == "" {
			return nil, errors.New("server: bundle_endpoint profile https_web needs cert_file and key_file")
		}
		s.webCert, s.webKey = c.BundleEndpoint.CertFile, c.BundleEndpoint.KeyFile
	default:
		return nil, fmt.Errorf("server: bundle_endpoint.profile %q: use https_spiffe or https_web", c.BundleEndpoint.Profile)
	}
	s.refreshHint = orDur(c.BundleEndpoint.RefreshHint, DefaultRefreshHint)
	s.allowedUIDs = c.Admin.AllowedUIDs
	if len(s.allowedUIDs) == 0 {
		s.allowedUIDs = []int{0}
		if uid := os.Getuid(); uid != 0 {
			s.allowedUIDs = append(s.allowedUIDs, uid)
		}
	}
	for _, id := range c.Admin.AdminIDs {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return nil, fmt.Errorf("server: admin.admin_ids: %q: %w", id, err)
		}
		if sid.TrustDomain() != s.td {
			return nil, fmt.Errorf("server: admin.admin_ids: %s is not in trust domain %s", sid, s.td)
		}
		s.adminIDs = append(s.adminIDs, sid)
	}
	for i, iss := range c.Credentials.KubernetesJWT {
		if iss.Issuer == "" {
			return nil, fmt.Errorf("server: credentials.kubernetes_jwt[%d]: issuer is required", i)
		}
		if (iss.JWKSFile == "") == (iss.JWKSURL == "") {
			return nil, fmt.Errorf("server: credentials.kubernetes_jwt[%d] (%s): give exactly one of jwks_file or jwks_url", i, iss.Issuer)
		}
		if len(iss.Audiences) == 0 {
			return nil, fmt.Errorf("server: credentials.kubernetes_jwt[%d] (%s): audiences is required (istio-agent sends \"istio-ca\")", i, iss.Issuer)
		}
	}
	s.jwtIssuers = c.Credentials.KubernetesJWT
	switch d := c.Audit.CommitDelay; {
	case d == "":
		s.commitDelay = DefaultAuditCommitDelay
	case procruntime.IsOff(d):
	default:
		if s.commitDelay, err = duration.Parse(d); err != nil || s.commitDelay > MaxAuditCommitDelay {
			return nil, fmt.Errorf("server: audit.commit_delay %q: use a duration up to %s, or off to commit at once", d, MaxAuditCommitDelay)
		}
	}
	switch r := c.Audit.Retention; {
	case r == "":
		s.auditRetention = DefaultAuditRetention
	case procruntime.IsOff(r):
	default:
		if s.auditRetention, err = duration.Parse(r); err != nil || s.auditRetention <= 0 {
			return nil, fmt.Errorf("server: audit.retention %q: use a positive duration such as 90d (how long a row outlives its certificate), or off to keep every row", r)
		}
	}
	if s.limits, err = c.Limits.validate(); err != nil {
		return nil, err
	}
	if s.federation, err = c.Federation.validate(s.td, s.dataDir); err != nil {
		return nil, err
	}
	if s.federation.vm != nil {
		if s.caMode != authority.ModeSelfSigned {
			return nil, errors.New("server: federation.virtual_mesh needs ca.mode self-signed (the default): the server signs with its own root until the VirtualMesh intermediate arrives")
		}
		s.caMode, s.caCertsDir = authority.ModeVirtualMesh, s.federation.vmDir
	}
	return s, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func orDur(v duration.Duration, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return time.Duration(v)
}

// validate fills in the defaults of limits.*.
func (c LimitsConfig) validate() (limitSettings, error) {
	l := limitSettings{
		inFlight: cmp.Or(c.MaxSigningInFlight, DefaultMaxSigningInFlight),
		queue:    cmp.Or(c.MaxSigningQueue, DefaultMaxSigningQueue),
	}
	switch w := c.MaxQueueWait; {
	case w == "":
		l.queueWait = DefaultMaxQueueWait
	case procruntime.IsOff(w):
	default:
		d, err := duration.Parse(w)
		if err != nil || d <= 0 {
			return l, fmt.Errorf("server: limits.max_queue_wait %q: use a positive duration such as 5s, or off to let only the caller's deadline bound the wait", w)
		}
		l.queueWait = d
	}
	switch n := c.MaxStreamsPerConnection; {
	case n == 0:
		l.streams = DefaultMaxStreamsPerConnection
	case n > 0:
		l.streams = uint32(min(n, math.MaxUint32))
	}
	return l, nil
}
