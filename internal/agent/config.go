package agent

import (
	"fmt"

	"github.com/meshfed/meshfed/internal/pemfile"
	"sigs.k8s.io/yaml"
)

// MaxConfigBytes bounds the agent's configuration file.
const MaxConfigBytes = 256 << 10

// FileConfig is `meshfed agent --config agent.yaml`; flags override it.
// Every key is in docs/configuration.md. A join token is never put in the
// file itself: join_token_file names a file holding it.
type FileConfig struct {
	Server        string         `json:"server"`
	TrustBundle   string         `json:"trust_bundle"`
	JoinTokenFile string         `json:"join_token_file"`
	TokenFile     string         `json:"token_file"`
	DataDir       string         `json:"data_dir"`
	Socket        string         `json:"socket"`
	SDSSocket     string         `json:"sds_socket"`
	MetricsListen string         `json:"metrics_listen"`
	LogLevel      string         `json:"log_level"`
	LogFormat     string         `json:"log_format"`
	Files         FileMode       `json:"files"`
	Rotation      RotationConfig `json:"rotation"`
	Runtime       RuntimeConfig  `json:"runtime"`
	Limits        LimitsConfig   `json:"limits"`
}

// LimitsConfig bounds what workloads may hold of the agent's sockets (see
// package admit): 0 or absent is the default, a negative value no bound.
type LimitsConfig struct {
	MaxConnections       int `json:"max_connections"`
	MaxConnectionsPerUID int `json:"max_connections_per_uid"`
	MaxCalls             int `json:"max_calls"`
	MaxCallsPerUID       int `json:"max_calls_per_uid"`
}

// FileMode configures the agent's file mode.
type FileMode struct {
	Dir       string   `json:"dir"`
	Selectors []string `json:"selectors"`
	Exec      string   `json:"exec"`
}

// RotationConfig tunes renewal.
type RotationConfig struct {
	MaxBackoff string `json:"max_backoff"`
}

// LoadConfig reads an agent configuration file; unknown keys are an error.
func LoadConfig(path string) (FileConfig, error) {
	data, err := pemfile.ReadFile(path, MaxConfigBytes)
	if err != nil {
		return FileConfig{}, fmt.Errorf("agent: config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses YAML agent configuration; name is used in errors.
func ParseConfig(name string, data []byte) (FileConfig, error) {
	if len(data) > MaxConfigBytes {
		return FileConfig{}, fmt.Errorf("agent: config %s: larger than %d bytes", name, MaxConfigBytes)
	}
	var c FileConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return FileConfig{}, fmt.Errorf("agent: config %s: %w", name, err)
	}
	return c, nil
}
