package inspect

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// ConnectConfig says where and how to connect.
type ConnectConfig struct {
	Address string // HOST:PORT
	// ServerName is sent as SNI; the host of Address if empty, unless that
	// is an IP address.
	ServerName string
	// Timeout bounds the TCP connect and the TLS handshake together;
	// DefaultTimeout if zero.
	Timeout time.Duration
	// ClientCertificate is presented if the server asks for one; none if nil.
	ClientCertificate *tls.Certificate
	// NextProtos are offered with ALPN.
	NextProtos []string
}

// Connection is what a TLS handshake showed.
type Connection struct {
	Address           string              `json:"address"`
	ServerName        string              `json:"server_name,omitempty"` // the SNI sent
	Version           string              `json:"tls_version"`
	CipherSuite       string              `json:"cipher_suite"`
	ALPN              string              `json:"alpn,omitempty"`
	Resumed           bool                `json:"resumed"`
	ClientCertificate ClientCertStatus    `json:"client_certificate"`
	ClientID          string              `json:"client_certificate_name,omitempty"` // what was sent: SPIFFE ID or subject
	PeerChain         []*x509.Certificate `json:"-"`                                 // as the server sent it, leaf first
}

// ClientCertStatus says whether the server asked for a client certificate
// and whether one was sent.
type ClientCertStatus string

// Client certificate outcomes.
const (
	ClientCertNotRequested ClientCertStatus = "not requested"
	ClientCertSent         ClientCertStatus = "sent"
	ClientCertNoneSent     ClientCertStatus = "requested, none sent"
)

// Connect dials cfg.Address, completes a TLS handshake and records the
// server's chain exactly as sent. The handshake does not verify the server:
// verification is the caller's explicit next step (see Verify), so that a
// chain that would fail is still shown. In TLS 1.3 a server that rejects the
// client certificate says so only after the handshake, which Connect does not
// wait for.
func Connect(ctx context.Context, cfg ConnectConfig) (*Connection, error) {
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("inspect: %q is not HOST:PORT: %w", cfg.Address, err)
	}
	serverName := cfg.ServerName
	if serverName == "" && net.ParseIP(host) == nil {
		serverName = host
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	conn := &Connection{Address: cfg.Address, ServerName: serverName, ClientCertificate: ClientCertNotRequested}
	tlsConf := &tls.Config{
		ServerName: serverName,
		NextProtos: cfg.NextProtos,
		// Verification happens after the handshake, against the trust the
		// user chose; here the chain is only recorded.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			conn.PeerChain = cs.PeerCertificates
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cfg.ClientCertificate == nil {
				conn.ClientCertificate = ClientCertNoneSent
				return &tls.Certificate{}, nil
			}
			conn.ClientCertificate = ClientCertSent
			conn.ClientID = certName(cfg.ClientCertificate.Leaf)
			return cfg.ClientCertificate, nil
		},
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := &tls.Dialer{NetDialer: &net.Dialer{}, Config: tlsConf}
	c, err := d.DialContext(ctx, "tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("inspect: connect %s: %w", cfg.Address, err)
	}
	defer c.Close()
	cs := c.(*tls.Conn).ConnectionState()
	conn.Version = tls.VersionName(cs.Version)
	conn.CipherSuite = tls.CipherSuiteName(cs.CipherSuite)
	conn.ALPN = cs.NegotiatedProtocol
	conn.Resumed = cs.DidResume
	if len(conn.PeerChain) == 0 {
		return nil, fmt.Errorf("inspect: connect %s: the server sent no certificate", cfg.Address)
	}
	return conn, nil
}

// LoadClientCertificate reads a client certificate chain and its private key
// from PEM files and checks that they belong together. The key is only ever
// handed to the TLS handshake.
func LoadClientCertificate(certPath, keyPath string) (*tls.Certificate, error) {
	chain, err := pemfile.ReadCertificates(certPath)
	if err != nil {
		return nil, fmt.Errorf("inspect: client certificate: %w", err)
	}
	key, err := pemfile.ReadPrivateKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("inspect: client key: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, fmt.Errorf("inspect: the private key in %s does not belong to the certificate in %s", keyPath, certPath)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}
