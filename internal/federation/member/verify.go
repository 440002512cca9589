package member

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Bounds on what the controller sends. A VirtualMesh has one root, two
// during a rotation; its intermediate chain is the intermediate and the
// root. The bounds are far above that and keep path building and parsing
// cheap whatever a faulty controller sends.
const (
	// MaxRoots bounds the roots of one federation state.
	MaxRoots = 16
	// MaxChain bounds the certificates of an intermediate's chain, and of
	// the chain the controller presents in TLS.
	MaxChain = 8
	// MaxCertBytes bounds one DER certificate: an RSA-8192 certificate
	// with many names is under 4 KiB.
	MaxCertBytes = 64 << 10
	// MaxTrustDomains bounds the member trust domains of one VirtualMesh.
	MaxTrustDomains = 4096
	// MaxNameBytes bounds the VirtualMesh's name and rotation phase (a
	// Kubernetes name is at most 253 characters).
	MaxNameBytes = 253
)

// maxStateJWTBytes bounds the JWT-SVID keys of one federation state
// (jwtkeys.MaxTotalBytes; tests lower it).
var maxStateJWTBytes = jwtkeys.MaxTotalBytes

// ControllerPath is the path of the SPIFFE ID a VirtualMesh controller
// presents.
const ControllerPath = "/meshfed/federation-controller"

// ServerPath is the path of the SPIFFE ID a member presents to the
// controller: the meshfed server's own.
const ServerPath = "/meshfed/server"

// stateFromProto checks a FederationState from the controller (or from the
// state file) and converts it.
func stateFromProto(m *pb.FederationState) (*State, error) {
	if m == nil {
		return nil, errors.New("no federation state")
	}
	if len(m.GetName()) > MaxNameBytes || len(m.GetRotationPhase()) > MaxNameBytes {
		return nil, fmt.Errorf("name or rotation phase longer than %d bytes", MaxNameBytes)
	}
	switch n := len(m.GetRoots()); {
	case n == 0:
		return nil, errors.New("no roots")
	case n > MaxRoots:
		return nil, fmt.Errorf("%d roots; at most %d", n, MaxRoots)
	}
	if n := len(m.GetTrustDomains()); n > MaxTrustDomains {
		return nil, fmt.Errorf("%d trust domains; at most %d", n, MaxTrustDomains)
	}
	s := &State{
		Name:                 m.GetName(),
		EnforceAccessControl: m.GetEnforceAccessControl(),
		Phase:                m.GetRotationPhase(),
		Generation:           m.GetGeneration(),
	}
	for i, der := range m.GetRoots() {
		c, err := parseCert(der)
		if err != nil {
			return nil, fmt.Errorf("root %d: %w", i, err)
		}
		if vs := pki.CheckSigningCertificate(c); len(vs) > 0 {
			return nil, &pki.ViolationError{Subject: fmt.Sprintf("root %d (SKID %x)", i, c.SubjectKeyId), Violations: vs}
		}
		s.Roots = append(s.Roots, c)
	}
	for _, r := range s.Roots {
		if bytes.Equal(r.Raw, m.GetSigningRoot()) {
			s.SigningRoot = r
		}
	}
	if s.SigningRoot == nil {
		return nil, errors.New("the signing root is not among the roots")
	}
	for _, name := range m.GetTrustDomains() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("member trust domain %q: %w", name, err)
		}
		s.TrustDomains = append(s.TrustDomains, td)
	}
	total := 0
	if n := len(m.GetJwtAuthorities()); n > len(s.TrustDomains) {
		return nil, fmt.Errorf("JWT authorities of %d trust domains; there are %d members", n, len(s.TrustDomains))
	}
	for _, mk := range m.GetJwtAuthorities() {
		td, err := spiffeid.TrustDomainFromString(mk.GetTrustDomain())
		if err != nil {
			return nil, fmt.Errorf("JWT authorities of trust domain %q: %w", mk.GetTrustDomain(), err)
		}
		if !slices.Contains(s.TrustDomains, td) {
			return nil, fmt.Errorf("JWT authorities of %s, which is not a member", td)
		}
		if _, dup := s.JWTAuthorities[td]; dup {
			return nil, fmt.Errorf("JWT authorities of %s twice", td)
		}
		keys, err := jwtkeys.Parse(mk.GetAuthorities())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", td, err)
		}
		if total += jwtkeys.Size(keys); total > maxStateJWTBytes {
			return nil, fmt.Errorf("JWT authorities of more than %d bytes", maxStateJWTBytes)
		}
		if s.JWTAuthorities == nil {
			s.JWTAuthorities = map[spiffeid.TrustDomain][]jwtkeys.Key{}
		}
		s.JWTAuthorities[td] = keys
	}
	return s, nil
}

// stateToProto is the inverse of stateFromProto, for the state file.
func stateToProto(s *State) *pb.FederationState {
	m := &pb.FederationState{
		Name:                 s.Name,
		SigningRoot:          s.SigningRoot.Raw,
		EnforceAccessControl: s.EnforceAccessControl,
		RotationPhase:        s.Phase,
		Generation:           s.Generation,
	}
	for _, r := range s.Roots {
		m.Roots = append(m.Roots, r.Raw)
	}
	for _, td := range s.TrustDomains {
		m.TrustDomains = append(m.TrustDomains, td.Name())
		if keys := s.JWTAuthorities[td]; len(keys) > 0 {
			m.JwtAuthorities = append(m.JwtAuthorities, &pb.MemberJWTAuthorities{TrustDomain: td.Name(), Authorities: jwtkeys.ToProto(keys)})
		}
	}
	return m
}

func parseCert(der []byte) (*x509.Certificate, error) {
	if len(der) > MaxCertBytes {
		return nil, fmt.Errorf("certificate of %d bytes; at most %d", len(der), MaxCertBytes)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate does not parse: %w", err)
	}
	return c, nil
}

// intermediate is the CA the member signs with, with what the member needs
// to know about it.
type intermediate struct {
	ca   *pki.CA
	key  crypto.Signer
	root *x509.Certificate // the root it chains to
}

func (in *intermediate) cert() *x509.Certificate { return in.ca.Certificate() }

func (in *intermediate) serial() string { return fmt.Sprintf("%x", in.cert().SerialNumber) }

// checkIntermediate verifies an intermediate for td: key must be its key,
// it must be a CA whose URI SAN is spiffe://<td> and whose URI name
// constraint permits exactly td, valid now, and chain to one of roots.
// prefer is the root to report when it chains to several (cross-signed).
// The CA returned signs with clock.
func checkIntermediate(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate, prefer *x509.Certificate, td spiffeid.TrustDomain, clock pki.Clock) (*intermediate, error) {
	if len(chain) == 0 {
		return nil, errors.New("no intermediate")
	}
	c := chain[0]
	if !samePublicKey(c.PublicKey, key.Public()) {
		return nil, errors.New("the intermediate certifies another key than this member's")
	}
	if vs := pki.CheckSigningCertificate(c); len(vs) > 0 {
		return nil, &pki.ViolationError{Subject: "the intermediate", Violations: vs}
	}
	if len(c.PermittedURIDomains) != 1 || c.PermittedURIDomains[0] != td.Name() || len(c.ExcludedURIDomains) > 0 {
		return nil, fmt.Errorf("the intermediate's URI name constraint permits %q, not exactly %q", c.PermittedURIDomains, td.Name())
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != td.IDString() {
		return nil, fmt.Errorf("the intermediate names %v, not %s", c.URIs, td.IDString())
	}
	// NewCA checks the key against the certificate, the validity of every
	// certificate on the path, path lengths and the URI constraints of the
	// certificates above.
	ca, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: chain, Roots: roots, Clock: clock})
	if err != nil {
		return nil, err
	}
	if got, ok := ca.TrustDomain(); !ok || got != td {
		return nil, fmt.Errorf("the intermediate is limited to %q, not %q", got, td)
	}
	root, err := chainsTo(chain, roots, prefer, clock())
	if err != nil {
		return nil, err
	}
	return &intermediate{ca: ca, key: key, root: root}, nil
}

// chainsTo returns the root chain[0] verifies to: prefer if it verifies to
// it, else the first.
func chainsTo(chain, roots []*x509.Certificate, prefer *x509.Certificate, now time.Time) (*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	rp := x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         rp,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if r := ch[len(ch)-1]; prefer != nil && r.Equal(prefer) {
			return r, nil
		}
	}
	return chains[0][len(chains[0])-1], nil
}

// checkResponse verifies an IntermediateResponse before anything in it is
// used: the state must be well formed, and the intermediate must certify
// key (the one just made for this request), be limited to td, and chain to
// the state's signing root.
func checkResponse(resp *pb.IntermediateResponse, td spiffeid.TrustDomain, key crypto.Signer, clock pki.Clock) (*intermediate, *State, error) {
	st, err := stateFromProto(resp.GetState())
	if err != nil {
		return nil, nil, fmt.Errorf("member: the controller's federation state is refused: %w", err)
	}
	ders := resp.GetCertChain()
	switch n := len(ders); {
	case n == 0:
		return nil, nil, errors.New("member: the controller sent no intermediate")
	case n > MaxChain:
		return nil, nil, fmt.Errorf("member: the controller sent a chain of %d certificates; at most %d", n, MaxChain)
	}
	chain := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if chain[i], err = parseCert(der); err != nil {
			return nil, nil, fmt.Errorf("member: the controller's chain, certificate %d: %w", i, err)
		}
	}
	in, err := checkIntermediate(chain, key, st.Roots, st.SigningRoot, td, clock)
	if err != nil {
		return nil, nil, fmt.Errorf("member: the intermediate from the controller is refused: %w", err)
	}
	if !in.root.Equal(st.SigningRoot) {
		return nil, nil, fmt.Errorf("member: the intermediate from the controller is refused: it chains to root %x, but the federation signs under %x", in.root.SubjectKeyId, st.SigningRoot.SubjectKeyId)
	}
	return in, st, nil
}

// verifyController checks the certificate chain the controller presents:
// an X.509-SVID whose path is ControllerPath (in whatever trust domain the
// controller is named), verifying to one of roots.
func verifyController(chain, roots []*x509.Certificate, now time.Time) error {
	switch n := len(chain); {
	case n == 0:
		return errors.New("member: the controller presented no certificate")
	case n > MaxChain:
		return fmt.Errorf("member: the controller presented %d certificates; at most %d", n, MaxChain)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return fmt.Errorf("member: the controller's certificate is not an X.509-SVID: %w", err)
	}
	if id.Path() != ControllerPath {
		return fmt.Errorf("member: the controller presented %s; a VirtualMesh controller's SPIFFE ID has the path %s", id, ControllerPath)
	}
	_, chains, err := pki.VerifyX509SVID(chain, anyTrustDomain(roots), now)
	if err != nil {
		return fmt.Errorf("member: the controller's certificate does not verify to the federation's roots: %w", err)
	}
	// Only the controller holds a root's key; a member holds an
	// intermediate, under which it could issue itself any path in its own
	// trust domain. So the controller's certificate must be signed by a
	// root itself.
	for _, c := range chains {
		if len(c) == 2 {
			return nil
		}
	}
	return fmt.Errorf("member: %s is not signed by a shared root directly (its chain passes through an intermediate, which a member could have issued); refusing it as the controller", id)
}

// anyTrustDomain is an x509bundle.Source that offers the same roots for
// every trust domain: the shared root vouches for them all.
type anyTrustDomain []*x509.Certificate

func (r anyTrustDomain) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, r), nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// sameState reports whether two states say the same thing.
func sameState(a, b *State) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Name != b.Name || a.EnforceAccessControl != b.EnforceAccessControl || a.Phase != b.Phase ||
		a.Generation != b.Generation || !a.SigningRoot.Equal(b.SigningRoot) || !sameCerts(a.Roots, b.Roots) ||
		len(a.TrustDomains) != len(b.TrustDomains) {
		return false
	}
	for i := range a.TrustDomains {
		if a.TrustDomains[i] != b.TrustDomains[i] {
			return false
		}
	}
	return maps.EqualFunc(a.JWTAuthorities, b.JWTAuthorities, jwtkeys.Equal)
}
