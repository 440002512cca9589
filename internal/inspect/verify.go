package inspect

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Trust is what a chain is verified against: the CA certificates of a
// SPIFFE bundle or a root file.
type Trust struct {
	// Source names where the anchors came from, for the verdict.
	Source string
	// TrustDomain is the trust domain the anchors belong to. When set, an
	// SVID of any other trust domain fails verification: a peer is verified
	// only with its own trust domain's bundle. When zero, the anchors are
	// taken to be the bundle of whatever trust domain the leaf names.
	TrustDomain spiffeid.TrustDomain
	// Roots are the X.509 authorities.
	Roots []*x509.Certificate
}

// LoadBundle reads a SPIFFE bundle file, in SPIFFE JSON or PEM, as trust. td
// is the trust domain it belongs to, or zero if the caller does not say.
func LoadBundle(path string, td spiffeid.TrustDomain) (*Trust, error) {
	data, err := pemfile.ReadFile(path, bundle.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	var roots []*x509.Certificate
	if td.IsZero() {
		roots, err = authoritiesOf(data)
	} else {
		var b *spiffebundle.Bundle
		if b, err = bundle.Parse(td, data); err == nil {
			roots = b.X509Authorities()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("inspect: %s: %w", path, err)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("inspect: %s: the bundle holds no X.509 authorities, so it cannot verify a certificate", path)
	}
	if err := checkCAs(path, roots); err != nil {
		return nil, err
	}
	return &Trust{Source: path, TrustDomain: td, Roots: roots}, nil
}

// LoadRoots reads PEM CA certificates as trust. td is the trust domain they
// belong to, or zero if the caller does not say.
func LoadRoots(path string, td spiffeid.TrustDomain) (*Trust, error) {
	certs, err := pemfile.ReadCertificates(path)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	if err := checkCAs(path, certs); err != nil {
		return nil, err
	}
	return &Trust{Source: path, TrustDomain: td, Roots: certs}, nil
}

// checkCAs refuses trust anchors that are not CA certificates: a leaf in a
// bundle is almost always the wrong file.
func checkCAs(path string, certs []*x509.Certificate) error {
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("inspect: %s: certificate %d (%s) is not a CA certificate; trust anchors are the roots (or CAs) that sign chains, not leaves", path, i+1, certName(c))
		}
	}
	return nil
}

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// Now is the instant validity is judged at; time.Now() if zero.
	Now time.Time
	// ServerName is, for a leaf that is not an SVID, the DNS name or IP
	// address it must be valid for. Not checked if empty.
	ServerName string
	// KeyUsages are, for a leaf that is not an SVID, the extended key usages
	// it must allow; any if empty.
	KeyUsages []x509.ExtKeyUsage
}

// Verdict is the outcome of verifying a chain.
type Verdict struct {
	Status      Status   `json:"status"`
	Method      string   `json:"method,omitempty"`  // "X.509-SVID" or "X.509"
	Against     string   `json:"against,omitempty"` // the bundle or root file
	SPIFFEID    string   `json:"spiffe_id,omitempty"`
	TrustDomain string   `json:"trust_domain,omitempty"`
	ServerName  string   `json:"server_name,omitempty"` // the name a non-SVID leaf was verified for
	Chain       []string `json:"chain,omitempty"`       // the verified chain, leaf first, one name each
	Reason      string   `json:"reason,omitempty"`      // why it failed or was not verified
}

// Status is a verdict's outcome.
type Status string

// Verdict outcomes.
const (
	StatusOK          Status = "ok"
	StatusFailed      Status = "failed"
	StatusNotVerified Status = "not_verified"
)

// OK reports whether the chain verified.
func (v Verdict) OK() bool { return v.Status == StatusOK }

// NotVerified is the verdict on a chain nobody asked to verify.
func NotVerified() Verdict {
	return Verdict{
		Status: StatusNotVerified,
		Reason: "no bundle or root was given, so the identities above are only what the peer claims",
	}
}

// Methods of verification.
const (
	MethodSVID = "X.509-SVID"
	MethodX509 = "X.509"
)

// Verify verifies chain (leaf first, then the intermediates as sent) against
// trust. A leaf that carries a spiffe:// URI SAN is verified as an X.509-SVID
// with the bundle of its own trust domain, by pki.VerifyX509SVID: chain,
// validity, every leaf rule of the specification and URI name constraints.
// Any other certificate, a CA included, is verified as plain X.509 (name
// constraints as crypto/x509 applies them), for opts.ServerName if given.
func Verify(chain []*x509.Certificate, trust *Trust, opts VerifyOptions) Verdict {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	v := Verdict{Method: MethodX509, Against: trust.Source}
	if len(chain) == 0 {
		return v.fail(errors.New("no certificates to verify"))
	}
	leaf := chain[0]
	if !hasSPIFFEURI(leaf) || (leaf.BasicConstraintsValid && leaf.IsCA) {
		// A plain certificate, or a CA checked for the path to its root.
		return verifyX509(v, chain, trust, opts, now)
	}
	v.Method = MethodSVID
	id, err := spiffeIDOf(leaf)
	if err != nil {
		return v.fail(fmt.Errorf("the leaf is not an X.509-SVID: %v", err))
	}
	v.SPIFFEID = id.String()
	v.TrustDomain = id.TrustDomain().Name()
	if td := trust.TrustDomain; !td.IsZero() && td != id.TrustDomain() {
		return v.fail(fmt.Errorf("the leaf %s is in trust domain %q but %s is the bundle of trust domain %q; verify a peer only with its own trust domain's bundle",
			id, id.TrustDomain().Name(), trust.Source, td.Name()))
	}
	source := spiffebundle.FromX509Authorities(id.TrustDomain(), trust.Roots)
	_, chains, err := pki.VerifyX509SVID(chain, source, now)
	if err != nil {
		return v.fail(err)
	}
	return v.ok(chains[0])
}

func verifyX509(v Verdict, chain []*x509.Certificate, trust *Trust, opts VerifyOptions, now time.Time) Verdict {
	usages := opts.KeyUsages
	if len(usages) == 0 {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         pool(trust.Roots),
		Intermediates: pool(chain[1:]),
		DNSName:       opts.ServerName,
		CurrentTime:   now,
		KeyUsages:     usages,
	})
	v.ServerName = opts.ServerName
	if err != nil {
		return v.fail(err)
	}
	return v.ok(chains[0])
}

func (v Verdict) ok(chain []*x509.Certificate) Verdict {
	v.Status = StatusOK
	for _, c := range chain {
		v.Chain = append(v.Chain, certName(c))
	}
	return v
}

func (v Verdict) fail(err error) Verdict {
	v.Status = StatusFailed
	v.Reason = err.Error()
	return v
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
