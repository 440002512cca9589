package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults for lifetimes and names.
const (
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 365 * 24 * time.Hour
	DefaultSVIDTTL         = time.Hour
	DefaultLeafTTL         = 90 * 24 * time.Hour
	DefaultOrganization    = "meshfed"

	// Backdate is how far before "now" a new certificate becomes valid, so
	// that a peer whose clock is slightly behind still accepts it.
	Backdate = 30 * time.Second
)

// Clock returns the current time. Tests inject a fixed one.
type Clock func() time.Time

// RootRequest describes a self-signed root CA.
type RootRequest struct {
	Signer       crypto.Signer        // the root's key; the caller owns it
	Organization string               // subject O; DefaultOrganization if empty
	CommonName   string               // subject CN; "<O> root CA" if empty
	TrustDomain  spiffeid.TrustDomain // if set, the root carries spiffe://<td> as its URI SAN
	TTL          time.Duration        // DefaultRootTTL if zero
	Now          time.Time            // time.Now() if zero
}

// CreateRoot makes a self-signed root CA certificate. The root carries no
// name constraint: in a shared-root federation it vouches for many trust
// domains, each through its own constrained intermediate.
func CreateRoot(req RootRequest) (*x509.Certificate, error) {
	if req.Signer == nil {
		return nil, errors.New("pki: root: no signer")
	}
	if err := checkPublicKey(req.Signer.Public()); err != nil {
		return nil, fmt.Errorf("pki: root: %w", err)
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = DefaultRootTTL
	}
	if ttl < 0 {
		return nil, fmt.Errorf("pki: root: negative TTL %s", ttl)
	}
	org := req.Organization
	if org == "" {
		org = DefaultOrganization
	}
	cn := req.CommonName
	if cn == "" {
		cn = org + " root CA"
	}
	serial, err := NewSerial(now)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{org}, CommonName: cn},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
	}
	if !req.TrustDomain.IsZero() {
		tmpl.URIs = []*url.URL{req.TrustDomain.ID().URL()}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, req.Signer.Public(), req.Signer)
	if err != nil {
		return nil, fmt.Errorf("pki: root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: root: parse what was signed: %w", err)
	}
	if vs := CheckSigningCertificate(cert); len(vs) > 0 {
		return nil, &ViolationError{Subject: "new root", Violations: vs}
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("pki: root: self-signature does not verify: %w", err)
	}
	return cert, nil
}

// CAConfig describes an existing CA to sign with.
type CAConfig struct {
	// Signer holds the CA's private key. The CA never exports it.
	Signer crypto.Signer
	// Chain is the CA's certificate followed by the certificates above it.
	// If it ends in a self-signed root and Roots is empty, that root is the
	// trust anchor.
	Chain []*x509.Certificate
	// Roots are the trust anchors the chain must verify to. Optional when
	// Chain ends in a self-signed certificate.
	Roots []*x509.Certificate
	// Clock defaults to time.Now.
	Clock Clock
}

// CA signs certificates with a CA certificate and a signer it does not own.
// It is safe for concurrent use.
type CA struct {
	signer crypto.Signer
	cert   *x509.Certificate
	chain  []*x509.Certificate // cert, then intermediates above it (no root)
	roots  []*x509.Certificate
	path   []*x509.Certificate // cert, intermediates and the root it verified to
	anchor *x509.CertPool      // just cert: what each issued leaf is verified against
	td     spiffeid.TrustDomain
	clock  Clock
}

// NewCA checks cfg and returns a CA. It refuses a signer that does not match
// the certificate, a certificate that is not a CA, a chain that does not
// verify to a root, and a CA that has expired.
func NewCA(cfg CAConfig) (*CA, error) {
	if cfg.Signer == nil {
		return nil, errors.New("pki: CA: no signer")
	}
	if len(cfg.Chain) == 0 {
		return nil, errors.New("pki: CA: no certificate")
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	cert := cfg.Chain[0]
	if !samePublicKey(cfg.Signer.Public(), cert.PublicKey) {
		return nil, errors.New("pki: CA: the private key does not belong to the CA certificate")
	}
	if vs := CheckSigningCertificate(cert); len(vs) > 0 {
		return nil, &ViolationError{Subject: "CA certificate " + caName(cert), Violations: vs}
	}
	rest := cfg.Chain[1:]
	roots := cfg.Roots
	if len(roots) == 0 {
		last := cfg.Chain[len(cfg.Chain)-1]
		if !isSelfSigned(last) {
			return nil, fmt.Errorf("pki: CA: chain ends in %q, which is not a self-signed root; append the root or give the roots separately", caName(last))
		}
		roots = []*x509.Certificate{last}
	}
	// Drop a root that the chain carries at its end: it is an anchor, not an
	// intermediate.
	var intermediates []*x509.Certificate
	for _, c := range rest {
		if !containsCert(roots, c) {
			intermediates = append(intermediates, c)
		}
	}
	now := clock()
	// Check the validity of what was given before path building, whose
	// error would not say which certificate to rotate.
	for _, c := range cfg.Chain {
		if err := checkValidity(c, now); err != nil {
			return nil, err
		}
	}
	var path []*x509.Certificate
	if containsCert(roots, cert) {
		path = []*x509.Certificate{cert}
	} else {
		chains, err := cert.Verify(x509.VerifyOptions{
			Roots:         pool(roots),
			Intermediates: pool(intermediates),
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err != nil {
			return nil, fmt.Errorf("pki: CA: certificate does not verify to its root: %w", err)
		}
		path = chains[0]
	}
	for i, c := range path {
		if err := checkValidity(c, now); err != nil {
			return nil, err
		}
		// Path validation does not count the certificate being verified
		// against the path lengths above it, but a leaf's verifier will.
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && i > c.MaxPathLen {
			return nil, fmt.Errorf("pki: CA: %q has path length %d, which does not allow the %d CA certificate(s) below it; nothing this CA signs would verify", caName(c), c.MaxPathLen, i)
		}
	}
	if len(cert.URIs) == 1 {
		if err := CheckURIConstraints(cert.URIs[0], path[1:]); err != nil {
			return nil, err
		}
	}
	chain := []*x509.Certificate{cert}
	if len(path) > 2 {
		chain = append(chain, path[1:len(path)-1]...)
	}
	return &CA{
		signer: cfg.Signer,
		cert:   cert,
		chain:  chain,
		roots:  roots,
		path:   path,
		anchor: pool([]*x509.Certificate{cert}),
		td:     caTrustDomain(path),
		clock:  clock,
	}, nil
}

// checkValidity refuses a CA certificate that is not valid at now.
func checkValidity(c *x509.Certificate, now time.Time) error {
	if now.After(c.NotAfter) {
		return fmt.Errorf("pki: CA: %q expired at %s; rotate it", caName(c), c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("pki: CA: %q is not valid until %s", caName(c), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// caTrustDomain returns the trust domain a CA is limited to: the single host
// its (or an issuer's) URI name constraint permits, or failing that its own
// SPIFFE ID's trust domain. It is zero for an unconstrained shared root, and
// for a constraint with a leading period, which permits every domain below
// it rather than one trust domain (go-spiffe would parse ".example" as one).
func caTrustDomain(path []*x509.Certificate) spiffeid.TrustDomain {
	for _, c := range path {
		if len(c.PermittedURIDomains) == 1 && !strings.HasPrefix(c.PermittedURIDomains[0], ".") {
			if td, err := spiffeid.TrustDomainFromString(c.PermittedURIDomains[0]); err == nil {
				return td
			}
		}
	}
	if len(path[0].URIs) == 1 {
		if id, err := spiffeid.FromURI(path[0].URIs[0]); err == nil {
			return id.TrustDomain()
		}
	}
	return spiffeid.TrustDomain{}
}

// Certificate returns the CA's own certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Chain returns the CA certificate and the intermediates above it, without
// the root: what follows a leaf in the chain the leaf's owner presents.
func (ca *CA) Chain() []*x509.Certificate { return append([]*x509.Certificate(nil), ca.chain...) }

// RootKeyID returns the subject key ID of the root the CA's chain ends at:
// the authority key ID of the chain's top certificate, or its own subject key
// ID when the CA is the root. A rotation counts dependents by it.
func (ca *CA) RootKeyID() []byte {
	top := ca.chain[len(ca.chain)-1]
	if len(top.AuthorityKeyId) == 0 || bytes.Equal(top.RawSubject, top.RawIssuer) && bytes.Equal(top.AuthorityKeyId, top.SubjectKeyId) {
		return top.SubjectKeyId
	}
	return top.AuthorityKeyId
}

// Roots returns the trust anchors the CA verifies to.
func (ca *CA) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), ca.roots...) }

// TrustDomain returns the trust domain the CA is limited to, and false for an
// unconstrained root that may sign for any.
func (ca *CA) TrustDomain() (spiffeid.TrustDomain, bool) { return ca.td, !ca.td.IsZero() }

// NotAfter returns when the first certificate on the CA's path expires; no
// certificate it signs outlives it.
func (ca *CA) NotAfter() time.Time {
	t := ca.path[0].NotAfter
	for _, c := range ca.path[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// Signer returns the CA's signer, for callers such as a TLS server that
// present the CA's own key. It is the caller's key, not a copy.
func (ca *CA) Signer() crypto.Signer { return ca.signer }

// IntermediateRequest describes an intermediate CA for one trust domain.
type IntermediateRequest struct {
	PublicKey    crypto.PublicKey
	TrustDomain  spiffeid.TrustDomain // required: the only trust domain it may vouch for
	Organization string               // subject O; DefaultOrganization if empty
	CommonName   string               // subject CN; "<td> intermediate CA" if empty
	TTL          time.Duration        // DefaultIntermediateTTL if zero; clipped to the CA
	// MaxPathLen is the basic-constraints path length: 0 (the default) lets
	// it sign only leaves; n > 0 allows n more CAs below it; -1 removes the
	// limit.
	MaxPathLen int
}

// SignIntermediate signs an intermediate CA for one trust domain. It carries
// spiffe://<td> as its URI SAN and a critical URI name constraint permitting
// only <td>. The result is the intermediate followed by this CA's chain.
func (ca *CA) SignIntermediate(req IntermediateRequest) ([]*x509.Certificate, error) {
	if req.TrustDomain.IsZero() {
		return nil, errors.New("pki: intermediate: a trust domain is required")
	}
	if td, ok := ca.TrustDomain(); ok && td != req.TrustDomain {
		return nil, fmt.Errorf("pki: intermediate: this CA is limited to trust domain %q and cannot vouch for %q", td, req.TrustDomain)
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: intermediate: %w", err)
	}
	if req.MaxPathLen < -1 {
		return nil, fmt.Errorf("pki: intermediate: path length %d; use -1 (unlimited), 0 or more", req.MaxPathLen)
	}
	// Path validation checks the path lengths above a CA only when that CA
	// signs something, so the re-verification below cannot see this.
	for i, c := range ca.path {
		// The new CA and the i CAs below path[i] would all sit under it.
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && i+1 > c.MaxPathLen {
			return nil, fmt.Errorf("pki: intermediate: %q has path length %d, so it allows no further CA below this one; sign the intermediate with a CA higher up", caName(c), c.MaxPathLen)
		}
	}
	org := req.Organization
	if org == "" {
		org = DefaultOrganization
	}
	cn := req.CommonName
	if cn == "" {
		cn = req.TrustDomain.Name() + " intermediate CA"
	}
	tmpl := &x509.Certificate{
		Subject:                     pkix.Name{Organization: []string{org}, CommonName: cn},
		URIs:                        []*url.URL{req.TrustDomain.ID().URL()},
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  req.MaxPathLen,
		MaxPathLenZero:              req.MaxPathLen == 0,
		PermittedURIDomains:         []string{req.TrustDomain.Name()},
		PermittedDNSDomainsCritical: true, // marks the whole name constraints extension critical
	}
	chain, err := ca.sign(tmpl, req.PublicKey, req.TTL, DefaultIntermediateTTL)
	if err != nil {
		return nil, fmt.Errorf("pki: intermediate for %q: %w", req.TrustDomain, err)
	}
	c := chain[0]
	if vs := CheckSigningCertificate(c); len(vs) > 0 {
		return nil, &ViolationError{Subject: "new intermediate", Violations: vs}
	}
	if len(c.PermittedURIDomains) != 1 || c.PermittedURIDomains[0] != req.TrustDomain.Name() {
		return nil, fmt.Errorf("pki: intermediate for %q: name constraint did not survive encoding", req.TrustDomain)
	}
	if err := ca.verifyCA(c); err != nil {
		return nil, err
	}
	return chain, nil
}

// SignIntermediateFromCSR signs an intermediate whose key stays with its
// owner: only the CSR's public key is used, after its self-signature proves
// the requester holds the private key. Every name in the CSR is ignored; the
// trust domain comes from req.
func (ca *CA) SignIntermediateFromCSR(csr *x509.CertificateRequest, req IntermediateRequest) ([]*x509.Certificate, error) {
	if req.TrustDomain.IsZero() {
		return nil, errors.New("pki: intermediate: a trust domain is required")
	}
	pub, err := CheckCSR(csr)
	if err != nil {
		return nil, err
	}
	switch {
	case len(csr.URIs) > 1:
		return nil, fmt.Errorf("pki: CSR asks for %d URI SANs; an intermediate carries exactly one, spiffe://<trust domain>", len(csr.URIs))
	case len(csr.URIs) == 1 && csr.URIs[0].String() != req.TrustDomain.IDString():
		return nil, fmt.Errorf("pki: CSR asks for %s, but the intermediate is for %s", csr.URIs[0], req.TrustDomain.IDString())
	}
	req.PublicKey = pub
	return ca.SignIntermediate(req)
}

// SVIDRequest describes an X.509-SVID.
type SVIDRequest struct {
	ID        spiffeid.ID      // the identity, derived by the caller from a verified credential
	PublicKey crypto.PublicKey // the workload's key
	TTL       time.Duration    // DefaultSVIDTTL if zero; clipped to the CA
	DNSNames  []string         // optional additional DNS SANs (X509-SVID §2 allows them)
	// IPAddresses are optional IP SANs, for a server that clients verify by
	// the address they dial (istio-agent does this with its CA).
	IPAddresses []net.IP
	Subject     pkix.Name // optional; empty by default, as Istio issues them
}

// SignX509SVID signs an X.509-SVID. The result is the leaf followed by this
// CA's chain (without the root).
func (ca *CA) SignX509SVID(req SVIDRequest) ([]*x509.Certificate, error) {
	if req.ID.IsZero() {
		return nil, errors.New("pki: SVID: a SPIFFE ID is required")
	}
	if req.ID.Path() == "" {
		return nil, fmt.Errorf("pki: SVID: %s has no path; a workload's SPIFFE ID names the workload (X509-SVID §3.1)", req.ID)
	}
	if td, ok := ca.TrustDomain(); ok && td != req.ID.TrustDomain() {
		return nil, fmt.Errorf("pki: SVID: %s is outside trust domain %q, the only one this CA may sign for", req.ID, td)
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: SVID: %w", err)
	}
	for _, n := range req.DNSNames {
		if err := checkDNSName(n); err != nil {
			return nil, fmt.Errorf("pki: SVID: %w", err)
		}
	}
	tmpl := &x509.Certificate{
		Subject:               req.Subject,
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		KeyUsage:              leafKeyUsage(req.PublicKey),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	chain, err := ca.sign(tmpl, req.PublicKey, req.TTL, DefaultSVIDTTL)
	if err != nil {
		return nil, fmt.Errorf("pki: SVID for %s: %w", req.ID, err)
	}
	if err := ca.verifySVID(chain, req.ID); err != nil {
		return nil, err
	}
	return chain, nil
}

// SignX509SVIDFromCSR signs an X.509-SVID for req.ID with the public key of a
// CSR, after checking the CSR's signature. The CSR may leave the URI SAN out
// or name exactly req.ID; a CSR asking for any other identity is refused.
// Other names in the CSR are ignored.
func (ca *CA) SignX509SVIDFromCSR(csr *x509.CertificateRequest, req SVIDRequest) ([]*x509.Certificate, error) {
	pub, err := CheckCSR(csr)
	if err != nil {
		return nil, err
	}
	if err := CheckCSRIdentity(csr, req.ID); err != nil {
		return nil, err
	}
	req.PublicKey = pub
	return ca.SignX509SVID(req)
}

// LeafRequest describes a plain TLS certificate, such as a gateway's.
type LeafRequest struct {
	PublicKey   crypto.PublicKey
	CommonName  string
	DNSNames    []string
	IPAddresses []net.IP
	TTL         time.Duration // DefaultLeafTTL if zero; clipped to the CA
}

// SignLeaf signs a TLS leaf certificate named by DNS names and IP addresses
// (at least one), usable as a server and as a client certificate.
func (ca *CA) SignLeaf(req LeafRequest) ([]*x509.Certificate, error) {
	if len(req.DNSNames) == 0 && len(req.IPAddresses) == 0 {
		return nil, errors.New("pki: leaf: give at least one DNS name or IP address")
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: leaf: %w", err)
	}
	for _, n := range req.DNSNames {
		if err := checkDNSName(n); err != nil {
			return nil, fmt.Errorf("pki: leaf: %w", err)
		}
	}
	cn := req.CommonName
	if cn == "" && len(req.DNSNames) > 0 {
		cn = req.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		KeyUsage:              leafKeyUsage(req.PublicKey),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	chain, err := ca.sign(tmpl, req.PublicKey, req.TTL, DefaultLeafTTL)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf: %w", err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:       ca.anchor,
		CurrentTime: ca.clock(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("pki: leaf: what was signed does not verify: %w", err)
	}
	return chain, nil
}

// sign fills serial and validity, signs, and parses the result back.
func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, ttl, defaultTTL time.Duration) ([]*x509.Certificate, error) {
	if ttl == 0 {
		ttl = defaultTTL
	}
	if ttl < 0 {
		return nil, fmt.Errorf("negative TTL %s", ttl)
	}
	now := ca.clock()
	notAfter := ca.NotAfter()
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("the issuing CA expired at %s; rotate it", notAfter.UTC().Format(time.RFC3339))
	}
	for _, c := range ca.path {
		if now.Before(c.NotBefore) {
			return nil, fmt.Errorf("the issuing CA %q is not valid until %s; check the clock", caName(c), c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	if want := now.Add(ttl); want.Before(notAfter) {
		notAfter = want
	}
	notBefore := now.Add(-Backdate)
	if nb := ca.cert.NotBefore; notBefore.Before(nb) {
		notBefore = nb
	}
	serial, err := NewSerial(now)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = notBefore
	tmpl.NotAfter = notAfter
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse what was signed: %w", err)
	}
	return append([]*x509.Certificate{cert}, ca.chain...), nil
}

// verifySVID re-verifies a freshly signed SVID with go-spiffe's verifier
// against this CA as the anchor, then the rules go-spiffe leaves out.
func (ca *CA) verifySVID(chain []*x509.Certificate, want spiffeid.ID) error {
	leaf := chain[0]
	bundle := x509bundle.FromX509Authorities(want.TrustDomain(), []*x509.Certificate{ca.cert})
	id, _, err := x509svid.Verify(chain[:1], bundle, x509svid.WithTime(ca.clock()))
	if err != nil {
		return fmt.Errorf("pki: SVID for %s: what was signed does not verify: %w", want, err)
	}
	if id != want {
		return fmt.Errorf("pki: SVID: signed %s, wanted %s", id, want)
	}
	if vs := CheckX509SVID(leaf); len(vs) > 0 {
		return &ViolationError{Subject: "new SVID " + want.String(), Violations: vs}
	}
	if err := CheckURIConstraints(leaf.URIs[0], ca.path); err != nil {
		return err
	}
	return nil
}

// verifyCA re-verifies a freshly signed intermediate against this CA.
func (ca *CA) verifyCA(c *x509.Certificate) error {
	if _, err := c.Verify(x509.VerifyOptions{
		Roots:       ca.anchor,
		CurrentTime: ca.clock(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("pki: intermediate: what was signed does not verify: %w", err)
	}
	return CheckURIConstraints(c.URIs[0], ca.path)
}

// CheckCSR verifies a CSR's self-signature, which proves the requester holds
// the private key, checks its public key is acceptable, and returns it.
func CheckCSR(csr *x509.CertificateRequest) (crypto.PublicKey, error) {
	if csr == nil {
		return nil, errors.New("pki: no CSR")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: CSR signature does not verify, so the requester has not proved it holds the key: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: CSR: %w", err)
	}
	return csr.PublicKey, nil
}

// CheckCSRIdentity refuses a CSR whose URI SANs ask for anything but id.
// A CSR without URI SANs is accepted: the identity comes from the caller.
func CheckCSRIdentity(csr *x509.CertificateRequest, id spiffeid.ID) error {
	switch len(csr.URIs) {
	case 0:
		return nil
	case 1:
		if csr.URIs[0].String() == id.String() {
			return nil
		}
		return fmt.Errorf("pki: CSR asks for %s, but the verified identity is %s", csr.URIs[0], id)
	}
	return fmt.Errorf("pki: CSR asks for %d URI SANs; an SVID has exactly one", len(csr.URIs))
}

func leafKeyUsage(pub crypto.PublicKey) x509.KeyUsage {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}

// checkDNSName accepts a host name of letters, digits and hyphens in dot-
// separated labels (RFC 1123), optionally with "*." in front. Empty labels
// (leading, trailing or doubled dots) are refused: crypto/x509 cannot parse
// them under a name constraint, and no TLS client matches them.
func checkDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("DNS name %q is empty or longer than 253 characters", n)
	}
	if ip := net.ParseIP(n); ip != nil {
		return fmt.Errorf("%q is an IP address, not a DNS name", n)
	}
	host := strings.TrimPrefix(n, "*.")
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("DNS name %q has an empty label or one longer than 63 characters", n)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("DNS name %q has a label that begins or ends with a hyphen", n)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("DNS name %q has invalid character %q", n, c)
			}
		}
	}
	return nil
}

// NewSerial returns a positive 128-bit serial number for a certificate
// issued at now: the time in milliseconds since the Unix epoch (48 bits,
// big-endian) followed by 80 bits from crypto/rand. The random part is more
// than the 64 bits of CSPRNG output the CA/Browser Forum asks of a serial,
// so a serial stays unpredictable; the time prefix makes one CA's serials
// increase, so the audit log's index on them (a B-tree) grows at its end
// instead of touching a random page per certificate, which on SQLite made
// each audit row cost twice the CPU (BenchmarkInsertIssuedSerials).
func NewSerial(now time.Time) (*big.Int, error) {
	var b [16]byte
	ms := max(now.UnixMilli(), 0)
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	for {
		if _, err := rand.Read(b[6:]); err != nil {
			return nil, fmt.Errorf("pki: serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func containsCert(set []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
