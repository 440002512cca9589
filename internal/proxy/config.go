package proxy

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"sigs.k8s.io/yaml"
)

// MaxConfigBytes bounds the sidecar's configuration file: a few hundred
// listeners fit many times over.
const MaxConfigBytes = 256 << 10

// FileConfig is `meshfed proxy --config proxy.yaml`. Unknown keys are an
// error. The sidecar's certificates and bundles come from the agent's
// Workload API socket; only gateways name certificate files (paths relative
// to the file's directory).
type FileConfig struct {
	WorkloadAPISocket string            `json:"workload_api_socket"`
	Namespace         string            `json:"namespace"`
	Labels            map[string]string `json:"labels"`
	// Policies is a directory of Istio security YAML; PeerAuthentication
	// in it sets each inbound port's mTLS mode (PERMISSIVE without it).
	Policies string `json:"policies"`
	// RootNamespace is the namespace whose policies apply mesh-wide
	// (Istio's meshConfig.rootNamespace); default istio-system.
	RootNamespace string `json:"root_namespace"`
	// ServerPolicies takes the policies `meshfed policy apply` stored on
	// the trust domain's server, streamed by the agent; default true.
	ServerPolicies *bool            `json:"server_policies"`
	Inbound        []InboundConfig  `json:"inbound"`
	Outbound       []OutboundConfig `json:"outbound"`
	Limits         LimitsConfig     `json:"limits"`
	MetricsListen  string           `json:"metrics_listen"`
	LogLevel       string           `json:"log_level"`
	LogFormat      string           `json:"log_format"`
	Gateways       GatewaysConfig   `json:"gateways"`
}

// InboundConfig is one inbound listener: it terminates mTLS (or plaintext,
// as the port's mode says) and forwards to the local app.
type InboundConfig struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	// Port is the app's port as policies name it (portLevelMtls); it
	// defaults to the port of ForwardTo.
	Port      uint32 `json:"port"`
	ForwardTo string `json:"forward_to"`
	// AllowedIDs admits only these peers: exact SPIFFE IDs or
	// "spiffe://<td>/*". Empty admits any peer the bundles verify.
	AllowedIDs []string `json:"allowed_ids"`
	// Protocol is "tcp" (the default: AuthorizationPolicy's TCP subset per
	// connection) or "http" (HTTP/1.1 and, over TLS, h2: JWT
	// RequestAuthentication and the whole AuthorizationPolicy per request,
	// X-Forwarded-Client-Cert to the app).
	Protocol string `json:"protocol"`
}

// Protocols of an inbound or outbound listener.
const (
	ProtocolTCP  = "tcp"
	ProtocolHTTP = "http"
)

func checkProtocol(p string) error {
	switch p {
	case "", ProtocolTCP, ProtocolHTTP:
		return nil
	}
	return fmt.Errorf("protocol %q: use %q or %q", p, ProtocolTCP, ProtocolHTTP)
}

// OutboundConfig is one outbound listener: plaintext from the local app,
// mTLS to Upstream, which must present one of AllowedIDs (secure naming for
// Service).
type OutboundConfig struct {
	Name       string   `json:"name"`
	Listen     string   `json:"listen"`
	Service    string   `json:"service"`
	Upstream   string   `json:"upstream"`
	AllowedIDs []string `json:"allowed_ids"`
	// Protocol is "tcp" (the default) or "http": the app's bytes are
	// tunnelled either way; "http" offers ALPN "http/1.1" so that an
	// inbound HTTP listener reads them as HTTP/1.1.
	Protocol string `json:"protocol"`
}

// LimitsConfig bounds what peers can hold. Zero means the default.
type LimitsConfig struct {
	MaxConnections   int               `json:"max_connections"`
	IdleTimeout      duration.Duration `json:"idle_timeout"`
	HandshakeTimeout duration.Duration `json:"handshake_timeout"`
	DrainTimeout     duration.Duration `json:"drain_timeout"`
	// MaxConnectionDuration, if set, bounds how long a connection is used:
	// Istio's DestinationRule connectionPool.tcp.maxConnectionDuration.
	MaxConnectionDuration duration.Duration `json:"max_connection_duration"`
}

// LoadConfig reads and checks a sidecar configuration file.
func LoadConfig(path string) (FileConfig, error) {
	data, err := pemfile.ReadFile(path, MaxConfigBytes)
	if err != nil {
		return FileConfig{}, fmt.Errorf("proxy: config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses YAML sidecar configuration strictly and checks it;
// name is used in errors.
func ParseConfig(name string, data []byte) (FileConfig, error) {
	if len(data) > MaxConfigBytes {
		return FileConfig{}, fmt.Errorf("proxy: config %s: larger than %d bytes", name, MaxConfigBytes)
	}
	var c FileConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return FileConfig{}, fmt.Errorf("proxy: config %s: %w", name, err)
	}
	if err := c.check(); err != nil {
		return FileConfig{}, fmt.Errorf("proxy: config %s: %w", name, err)
	}
	c.Gateways.resolve(filepath.Dir(name))
	return c, nil
}

func (c *FileConfig) check() error {
	if c.WorkloadAPISocket == "" && len(c.Inbound)+len(c.Outbound) > 0 {
		return fmt.Errorf("workload_api_socket is required: the agent's Workload API socket")
	}
	if len(c.Inbound)+len(c.Outbound) == 0 && c.Gateways.empty() {
		return fmt.Errorf("no inbound or outbound listeners or gateways: add at least one")
	}
	if c.Limits.MaxConnections < 0 {
		return fmt.Errorf("limits.max_connections is negative")
	}
	for i, in := range c.Inbound {
		if in.Listen == "" || in.ForwardTo == "" {
			return fmt.Errorf("inbound[%d]: listen and forward_to are required", i)
		}
		if _, _, err := net.SplitHostPort(in.ForwardTo); err != nil {
			return fmt.Errorf("inbound[%d]: forward_to: %w", i, err)
		}
		if _, err := allowList(in.AllowedIDs); err != nil {
			return fmt.Errorf("inbound[%d]: allowed_ids: %w", i, err)
		}
		if err := checkProtocol(in.Protocol); err != nil {
			return fmt.Errorf("inbound[%d]: %w", i, err)
		}
	}
	for i, out := range c.Outbound {
		if out.Listen == "" || out.Service == "" || out.Upstream == "" {
			return fmt.Errorf("outbound[%d]: listen, service and upstream are required", i)
		}
		if len(out.AllowedIDs) == 0 {
			return fmt.Errorf("outbound[%d]: allowed_ids is required: the SPIFFE IDs allowed to run service %q (secure naming)", i, out.Service)
		}
		if _, err := NewSecureNaming(map[string][]string{out.Service: out.AllowedIDs}); err != nil {
			return fmt.Errorf("outbound[%d]: %w", i, err)
		}
		if err := checkProtocol(out.Protocol); err != nil {
			return fmt.Errorf("outbound[%d]: %w", i, err)
		}
	}
	return c.Gateways.check()
}

// InboundPort is the port policies are asked about for in: Port, or the
// port of ForwardTo.
func InboundPort(in InboundConfig) (uint32, error) {
	if in.Port != 0 {
		return in.Port, nil
	}
	_, p, err := net.SplitHostPort(in.ForwardTo)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("forward_to port %q: %w", p, err)
	}
	return uint32(n), nil
}
