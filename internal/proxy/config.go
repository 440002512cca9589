package proxy

import (
	"fmt"
	"net"
	"strconv"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"sigs.k8s.io/yaml"
)

// MaxConfigBytes bounds the sidecar's configuration file: a few hundred
// listeners fit many times over.
const MaxConfigBytes = 256 << 10

// FileConfig is `meshfed proxy --config proxy.yaml`. Unknown keys are an
// error. The file names no key material: certificates and bundles come from
// the agent's Workload API socket.
type FileConfig struct {
	WorkloadAPISocket string            `json:"workload_api_socket"`
	Namespace         string            `json:"namespace"`
	Labels            map[string]string `json:"labels"`
	// Policies is a directory of Istio security YAML; PeerAuthentication
	// in it sets each inbound port's mTLS mode (PERMISSIVE without it).
	Policies      string           `json:"policies"`
	Inbound       []InboundConfig  `json:"inbound"`
	Outbound      []OutboundConfig `json:"outbound"`
	Limits        LimitsConfig     `json:"limits"`
	MetricsListen string           `json:"metrics_listen"`
	LogLevel      string           `json:"log_level"`
	LogFormat     string           `json:"log_format"`
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
}

// LimitsConfig bounds what peers can hold. Zero means the default.
type LimitsConfig struct {
	MaxConnections   int               `json:"max_connections"`
	IdleTimeout      duration.Duration `json:"idle_timeout"`
	HandshakeTimeout duration.Duration `json:"handshake_timeout"`
	DrainTimeout     duration.Duration `json:"drain_timeout"`
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
	return c, nil
}

func (c *FileConfig) check() error {
	if c.WorkloadAPISocket == "" {
		return fmt.Errorf("workload_api_socket is required: the agent's Workload API socket")
	}
	if len(c.Inbound)+len(c.Outbound) == 0 {
		return fmt.Errorf("no inbound or outbound listeners: add at least one")
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
	}
	return nil
}

// inboundPort is the policy port of in: Port, or the port of ForwardTo.
func inboundPort(in InboundConfig) (uint32, error) {
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
