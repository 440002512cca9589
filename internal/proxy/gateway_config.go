package proxy

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// GatewaysConfig is the gateways: key of the proxy's configuration: ingress
// listeners that terminate TLS (Istio's Gateway, tls.mode SIMPLE or MUTUAL)
// and egress listeners that originate it (a DestinationRule's tls.mode
// SIMPLE or MUTUAL). Unlike the sidecar's listeners, gateways take their
// certificates from PEM files, not from the agent, so that a root outside the
// mesh (a partner's, or one made with `meshfed ca create-root`) can be used.
type GatewaysConfig struct {
	Ingress []IngressConfig `json:"ingress"`
	Egress  []EgressConfig  `json:"egress"`
	// Clock is read to verify peers and to decide when to look at the
	// certificate files again; nil means time.Now. It is not read from the
	// file.
	Clock func() time.Time `json:"-"`
}

// IngressConfig is one ingress gateway listener. It terminates TLS with the
// certificate in TLS and forwards to the backend of the route whose hosts
// match: by SNI for protocol tcp, by the Host header of each request for
// protocol http.
type IngressConfig struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	// Protocol is tcp (the default) or http.
	Protocol string         `json:"protocol"`
	TLS      ServerTLSFiles `json:"tls"`
	Routes   []IngressRoute `json:"routes"`
}

// ServerTLSFiles is Istio's ServerTLSSettings with file paths: mode SIMPLE
// (server certificate only) or MUTUAL (a client certificate that verifies
// against CACertificates is required as well).
type ServerTLSFiles struct {
	Mode              string `json:"mode"`
	ServerCertificate string `json:"server_certificate"`
	PrivateKey        string `json:"private_key"`
	CACertificates    string `json:"ca_certificates"`
	// SubjectAltNames, in MUTUAL mode, admits only clients whose
	// certificate carries one of these DNS names or URIs.
	SubjectAltNames []string `json:"subject_alt_names"`
}

// IngressRoute sends connections or requests for Hosts to Backend, a
// host:port reached over plain TCP. A host is an exact name, a wildcard
// "*.example.com" (any name ending in ".example.com") or "*" (anything,
// including a client that sends no name).
type IngressRoute struct {
	Hosts   []string `json:"hosts"`
	Backend string   `json:"backend"`
}

// EgressConfig is one egress gateway listener: plaintext from the local app,
// TLS (with a client certificate in MUTUAL mode) to Upstream.
type EgressConfig struct {
	Name     string `json:"name"`
	Listen   string `json:"listen"`
	Upstream string `json:"upstream"`
	// Protocol is tcp (the default) or http; http offers ALPN http/1.1.
	// Either way the whole connection is carried inside TLS.
	Protocol string         `json:"protocol"`
	TLS      ClientTLSFiles `json:"tls"`
}

// ClientTLSFiles is a DestinationRule's ClientTLSSettings with file paths.
// The server is verified against CACertificates (the system roots if
// empty), and must carry one of SubjectAltNames (a DNS name or URI SAN) or,
// if that is empty, the name in SNI (the upstream's host if empty).
type ClientTLSFiles struct {
	Mode              string   `json:"mode"`
	ClientCertificate string   `json:"client_certificate"`
	PrivateKey        string   `json:"private_key"`
	CACertificates    string   `json:"ca_certificates"`
	SNI               string   `json:"sni"`
	SubjectAltNames   []string `json:"subject_alt_names"`
}

// Gateway TLS modes, as Istio spells them.
const (
	gatewayModeSimple = "SIMPLE"
	gatewayModeMutual = "MUTUAL"
)

// Gateway protocols.
const (
	gatewayTCP  = "tcp"
	gatewayHTTP = "http"
)

func (g *GatewaysConfig) empty() bool { return len(g.Ingress)+len(g.Egress) == 0 }

// check validates the gateways; paths are not opened here (New loads them).
func (g *GatewaysConfig) check() error {
	names := map[string]bool{}
	unique := func(kind string, i int, name string) error {
		if name == "" {
			return fmt.Errorf("gateways.%s[%d]: name is required: it labels the access log and metrics", kind, i)
		}
		if names[name] {
			return fmt.Errorf("gateways.%s[%d]: name %q is used by another gateway", kind, i, name)
		}
		names[name] = true
		return nil
	}
	for i, in := range g.Ingress {
		if err := unique("ingress", i, in.Name); err != nil {
			return err
		}
		if err := in.check(); err != nil {
			return fmt.Errorf("gateways.ingress[%d] (%s): %w", i, in.Name, err)
		}
	}
	for i, out := range g.Egress {
		if err := unique("egress", i, out.Name); err != nil {
			return err
		}
		if err := out.check(); err != nil {
			return fmt.Errorf("gateways.egress[%d] (%s): %w", i, out.Name, err)
		}
	}
	return nil
}

func (in *IngressConfig) check() error {
	if _, _, err := net.SplitHostPort(in.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if _, err := gatewayProtocol(in.Protocol); err != nil {
		return err
	}
	t := in.TLS
	if err := checkGatewayMode(t.Mode); err != nil {
		return err
	}
	if t.ServerCertificate == "" || t.PrivateKey == "" {
		return fmt.Errorf("tls: server_certificate and private_key are required")
	}
	switch {
	case t.Mode == gatewayModeMutual && t.CACertificates == "":
		return fmt.Errorf("tls: ca_certificates is required in MUTUAL mode: the roots that client certificates must chain to")
	case t.Mode == gatewayModeSimple && t.CACertificates != "":
		return fmt.Errorf("tls: ca_certificates is used only in MUTUAL mode; remove it or set mode: MUTUAL")
	case t.Mode == gatewayModeSimple && len(t.SubjectAltNames) > 0:
		return fmt.Errorf("tls: subject_alt_names is used only in MUTUAL mode; remove it or set mode: MUTUAL")
	}
	if len(in.Routes) == 0 {
		return fmt.Errorf("routes: at least one route is required")
	}
	seen := map[string]bool{}
	for j, r := range in.Routes {
		if len(r.Hosts) == 0 {
			return fmt.Errorf("routes[%d]: hosts is required", j)
		}
		if _, _, err := net.SplitHostPort(r.Backend); err != nil {
			return fmt.Errorf("routes[%d]: backend: %w", j, err)
		}
		for _, h := range r.Hosts {
			p, err := parseHostPattern(h)
			if err != nil {
				return fmt.Errorf("routes[%d]: %w", j, err)
			}
			if seen[p] {
				return fmt.Errorf("routes[%d]: host %q is in an earlier route too", j, h)
			}
			seen[p] = true
		}
	}
	return nil
}

func (out *EgressConfig) check() error {
	if _, _, err := net.SplitHostPort(out.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if _, _, err := net.SplitHostPort(out.Upstream); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	if _, err := gatewayProtocol(out.Protocol); err != nil {
		return err
	}
	t := out.TLS
	if err := checkGatewayMode(t.Mode); err != nil {
		return err
	}
	switch {
	case t.Mode == gatewayModeMutual && (t.ClientCertificate == "" || t.PrivateKey == ""):
		return fmt.Errorf("tls: client_certificate and private_key are required in MUTUAL mode")
	case t.Mode == gatewayModeSimple && (t.ClientCertificate != "" || t.PrivateKey != ""):
		return fmt.Errorf("tls: client_certificate and private_key are used only in MUTUAL mode; remove them or set mode: MUTUAL")
	}
	for _, n := range t.SubjectAltNames {
		if strings.TrimSpace(n) == "" {
			return fmt.Errorf("tls: subject_alt_names holds an empty name")
		}
	}
	return nil
}

func checkGatewayMode(mode string) error {
	switch mode {
	case gatewayModeSimple, gatewayModeMutual:
		return nil
	case "":
		return fmt.Errorf("tls.mode is required: SIMPLE or MUTUAL")
	}
	return fmt.Errorf("tls.mode %q is not supported: use SIMPLE or MUTUAL", mode)
}

func gatewayProtocol(p string) (string, error) {
	switch p {
	case "", gatewayTCP:
		return gatewayTCP, nil
	case gatewayHTTP:
		return gatewayHTTP, nil
	}
	return "", fmt.Errorf("protocol %q is not supported: use tcp or http", p)
}

// parseHostPattern checks a route host and returns it in canonical form
// (lower case, no trailing dot).
func parseHostPattern(h string) (string, error) {
	p := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
	if p == "*" {
		return p, nil
	}
	name := strings.TrimPrefix(p, "*.")
	if name == "" || strings.Contains(name, "*") {
		return "", fmt.Errorf("host %q: want a DNS name, *.domain or *", h)
	}
	if len(name) > 253 {
		return "", fmt.Errorf("host %q: longer than 253 bytes", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("host %q: label %q is not a DNS label", h, label)
		}
		for _, c := range label {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return "", fmt.Errorf("host %q: %q is not allowed in a DNS name", h, c)
			}
		}
	}
	return p, nil
}

// resolve makes the file paths of every gateway absolute, relative to dir
// (the configuration file's directory).
func (g *GatewaysConfig) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range g.Ingress {
		t := &g.Ingress[i].TLS
		abs(&t.ServerCertificate)
		abs(&t.PrivateKey)
		abs(&t.CACertificates)
	}
	for i := range g.Egress {
		t := &g.Egress[i].TLS
		abs(&t.ClientCertificate)
		abs(&t.PrivateKey)
		abs(&t.CACertificates)
	}
}
