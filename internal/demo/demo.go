// Package demo tells meshfed's story on one machine: two meshes whose
// workloads cannot verify each other, then a shared root with
// name-constrained intermediates under which they can, and the constraint
// that keeps one domain's intermediate from vouching for the other.
//
// Every claim the story prints is a check it just ran; a check whose outcome
// differs from the story's makes Run fail. The demo writes its PKI (keys 0600)
// into the directory it is given and nowhere else.
package demo

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Config configures a run of the demo.
type Config struct {
	Out     io.Writer   // the story; required
	Dir     string      // where the PKI files go; required
	Clock   pki.Clock   // defaults to time.Now
	KeyType pki.KeyType // defaults to pki.DefaultKeyType
	East    spiffeid.TrustDomain
	West    spiffeid.TrustDomain
	// Kept says Dir outlives the run, so the story ends by pointing at files.
	Kept bool
}

// Check is one claim of the story and whether it held.
type Check struct {
	Claim  string `json:"claim"`
	Detail string `json:"detail,omitempty"`
	OK     bool   `json:"ok"`
}

// Report is what a run established.
type Report struct {
	Checks []Check `json:"checks"`
}

// Failed returns the checks that did not hold.
func (r *Report) Failed() []Check {
	var out []Check
	for _, c := range r.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

type story struct {
	cfg    Config
	report *Report
}

func (s *story) say(format string, args ...any) { fmt.Fprintf(s.cfg.Out, format+"\n", args...) }

// expect records a claim: ok says whether it held, detail says what was seen.
func (s *story) expect(claim string, ok bool, detail string) {
	s.report.Checks = append(s.report.Checks, Check{Claim: claim, Detail: detail, OK: ok})
	mark := "✓"
	if !ok {
		mark = "✗ UNEXPECTED:"
	}
	s.say("  %s %s", mark, claim)
	if detail != "" {
		s.say("      %s", detail)
	}
}

// workload is an SVID and where it was written.
type workload struct {
	svid *x509svid.SVID
	dir  string
}

// Run tells the story and returns what it established. It returns an error
// if the PKI could not be made or any claim did not hold.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Out == nil || cfg.Dir == "" {
		return nil, errors.New("demo: Out and Dir are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.KeyType == "" {
		cfg.KeyType = pki.DefaultKeyType
	}
	if cfg.East.IsZero() {
		cfg.East = spiffeid.RequireTrustDomainFromString("east.example")
	}
	if cfg.West.IsZero() {
		cfg.West = spiffeid.RequireTrustDomainFromString("west.example")
	}
	s := &story{cfg: cfg, report: &Report{}}
	if err := s.run(ctx); err != nil {
		return s.report, err
	}
	if failed := s.report.Failed(); len(failed) > 0 {
		return s.report, fmt.Errorf("demo: %d of %d checks did not hold; first: %s", len(failed), len(s.report.Checks), failed[0].Claim)
	}
	return s.report, nil
}

func (s *story) run(ctx context.Context) error {
	east, west := s.cfg.East, s.cfg.West
	reviewsID := spiffeid.RequireFromPath(east, "/ns/default/sa/reviews")
	ratingsID := spiffeid.RequireFromPath(west, "/ns/default/sa/ratings")

	s.say("meshfed demo: identity federation between two meshes, on one machine")
	s.say("")

	// Act 1: two meshes, two roots.
	s.say("1. Two meshes, each with its own CA and trust domain")
	eastRoot, err := s.root("separate/"+east.Name()+"/root", east)
	if err != nil {
		return err
	}
	westRoot, err := s.root("separate/"+west.Name()+"/root", west)
	if err != nil {
		return err
	}
	reviews, err := s.issue(eastRoot, reviewsID, "separate/"+east.Name()+"/reviews")
	if err != nil {
		return err
	}
	ratings, err := s.issue(westRoot, ratingsID, "separate/"+west.Name()+"/ratings")
	if err != nil {
		return err
	}
	s.say("   %s: root %q issued %s", east, eastRoot.Certificate().Subject.CommonName, reviewsID)
	s.say("   %s: root %q issued %s", west, westRoot.Certificate().Subject.CommonName, ratingsID)
	onlyEast := x509bundle.NewSet(x509bundle.FromX509Authorities(east, eastRoot.Roots()))
	_, _, err = pki.VerifyX509SVID(reviews.svid.Certificates, onlyEast, s.cfg.Clock())
	s.expect(fmt.Sprintf("reviews' certificate verifies with %s's root", east), err == nil, errText(err))
	eastRootForWest := x509bundle.NewSet(x509bundle.FromX509Authorities(west, eastRoot.Roots()))
	_, _, err = pki.VerifyX509SVID(ratings.svid.Certificates, eastRootForWest, s.cfg.Clock())
	s.expect(fmt.Sprintf("ratings' certificate does NOT verify with %s's root (different roots)", east), err != nil, errText(err))
	err = s.handshake(ctx, reviews.svid, ratings.svid, onlyEast, x509bundle.NewSet(x509bundle.FromX509Authorities(west, westRoot.Roots())))
	s.expect("mTLS from reviews to ratings over 127.0.0.1 fails", err != nil, errText(err))

	// Act 2: a shared root with name-constrained intermediates.
	s.say("\n2. A shared root with one name-constrained intermediate per trust domain (the VirtualMesh)")
	shared, err := s.root("shared/root", spiffeid.TrustDomain{})
	if err != nil {
		return err
	}
	s.say("   shared root %q (%s), no name constraint", shared.Certificate().Subject.CommonName, pki.DescribeKey(shared.Certificate().PublicKey))
	eastCA, err := s.intermediateFromCSR(shared, east)
	if err != nil {
		return err
	}
	westCA, err := s.intermediateFromCSR(shared, west)
	if err != nil {
		return err
	}
	reviews, err = s.issue(eastCA, reviewsID, "shared/"+east.Name()+"/reviews")
	if err != nil {
		return err
	}
	ratings, err = s.issue(westCA, ratingsID, "shared/"+west.Name()+"/ratings")
	if err != nil {
		return err
	}
	s.say("   reviews' chain: %s -> %q -> %q", reviewsID, eastCA.Certificate().Subject.CommonName, shared.Certificate().Subject.CommonName)

	// Act 3: both verify, each with its own trust domain's bundle.
	s.say("\n3. Each side verifies the other with the bundle of the peer's own trust domain")
	bundles := x509bundle.NewSet(
		x509bundle.FromX509Authorities(east, shared.Roots()),
		x509bundle.FromX509Authorities(west, shared.Roots()),
	)
	id, chains, err := pki.VerifyX509SVID(ratings.svid.Certificates, bundles, s.cfg.Clock())
	s.expect(fmt.Sprintf("ratings' certificate verifies for %s", east), err == nil && id == ratingsID, chainText(chains, err))
	id, chains, err = pki.VerifyX509SVID(reviews.svid.Certificates, bundles, s.cfg.Clock())
	s.expect(fmt.Sprintf("reviews' certificate verifies for %s", west), err == nil && id == reviewsID, chainText(chains, err))
	err = s.handshake(ctx, reviews.svid, ratings.svid, bundles, bundles)
	s.expect("mTLS from reviews to ratings over 127.0.0.1 succeeds, each side naming the other", err == nil,
		orText(err, fmt.Sprintf("server saw %s; client checked the server is %s (secure naming)", reviewsID, ratingsID)))

	// Act 4: the name constraint.
	s.say("\n4. %s's intermediate cannot vouch for %s", east, west)
	impostorID := spiffeid.RequireFromPath(west, "/ns/default/sa/ratings")
	key, err := pki.GenerateKey(s.cfg.KeyType)
	if err != nil {
		return err
	}
	_, err = eastCA.SignX509SVID(pki.SVIDRequest{ID: impostorID, PublicKey: key.Public()})
	s.expect(fmt.Sprintf("%s's CA refuses to sign %s", east, impostorID), err != nil, errText(err))
	forged, err := forge(eastCA, impostorID, key, s.cfg.Clock())
	if err != nil {
		return err
	}
	chain := append([]*x509.Certificate{forged}, eastCA.Chain()...)
	_, _, err = x509svid.Verify(chain, bundles, x509svid.WithTime(s.cfg.Clock()))
	s.expect(fmt.Sprintf("a certificate for %s forged with %s's stolen intermediate key is rejected", impostorID, east),
		err != nil && strings.Contains(err.Error(), "not authorized to sign for this name"), errText(err))

	if failed := len(s.report.Failed()); failed > 0 {
		s.say("\n%d of %d checks did NOT hold.", failed, len(s.report.Checks))
	} else {
		s.say("\nAll %d checks held.", len(s.report.Checks))
	}
	if !s.cfg.Kept {
		s.say("Run 'meshfed demo --dir DIR' to keep the certificates and look closer.")
		return ctx.Err()
	}
	s.say("Look closer:")
	s.say("  meshfed inspect cert %s", filepath.Join(s.cfg.Dir, "shared", east.Name(), "reviews", "cert.pem"))
	s.say("  openssl verify -CAfile %s -untrusted %s %s",
		filepath.Join(s.cfg.Dir, "shared/root/ca.pem"), filepath.Join(s.cfg.Dir, "shared", east.Name(), "ca", "ca.pem"),
		filepath.Join(s.cfg.Dir, "shared", east.Name(), "reviews", "cert.pem"))
	return ctx.Err()
}

// root makes a root CA (for one trust domain, or shared when td is zero).
func (s *story) root(rel string, td spiffeid.TrustDomain) (*pki.CA, error) {
	key, err := pki.GenerateKey(s.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	cn := "shared root CA"
	if !td.IsZero() {
		cn = td.Name() + " root CA"
	}
	cert, err := pki.CreateRoot(pki.RootRequest{Signer: key, CommonName: cn, TrustDomain: td, Now: s.cfg.Clock()})
	if err != nil {
		return nil, err
	}
	if err := s.writeCA(rel, []*x509.Certificate{cert}, key); err != nil {
		return nil, err
	}
	return pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{cert}, Clock: s.cfg.Clock})
}

// intermediateFromCSR plays both sides of the CSR flow: the member makes its
// key and CSR, the root's owner signs only the CSR.
func (s *story) intermediateFromCSR(root *pki.CA, td spiffeid.TrustDomain) (*pki.CA, error) {
	key, err := pki.GenerateKey(s.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{td.ID().URL()}}, key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	chain, err := root.SignIntermediateFromCSR(csr, pki.IntermediateRequest{TrustDomain: td})
	if err != nil {
		return nil, err
	}
	chain = append(chain, root.Roots()...)
	if err := s.writeCA("shared/"+td.Name()+"/ca", chain, key); err != nil {
		return nil, err
	}
	s.say("   %s made its intermediate key and a CSR; the root signed it with URI name constraint %q (the key never left %s)",
		td, chain[0].PermittedURIDomains[0], td)
	return pki.NewCA(pki.CAConfig{Signer: key, Chain: chain, Clock: s.cfg.Clock})
}

func (s *story) issue(ca *pki.CA, id spiffeid.ID, rel string) (*workload, error) {
	key, err := pki.GenerateKey(s.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		return nil, err
	}
	if n := len(chain); n > 1 && chain[n-1].Equal(ca.Roots()[0]) {
		chain = chain[:n-1]
	}
	k, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.cfg.Dir, rel)
	if err := pemfile.WriteFiles(dir,
		pemfile.File{Name: "cert.pem", Data: pemfile.EncodeCertificates(chain...), Mode: pemfile.ModePublic},
		pemfile.File{Name: "key.pem", Data: k, Mode: pemfile.ModeKey},
		pemfile.File{Name: "bundle.pem", Data: pemfile.EncodeCertificates(ca.Roots()...), Mode: pemfile.ModePublic},
	); err != nil {
		return nil, err
	}
	return &workload{svid: &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, dir: dir}, nil
}

func (s *story) writeCA(rel string, chain []*x509.Certificate, key crypto.Signer) error {
	files, err := cadir.Files(chain, key)
	if err != nil {
		return err
	}
	return cadir.Write(filepath.Join(s.cfg.Dir, rel), true, files...)
}

// handshake runs a real mTLS handshake over loopback: the client presents
// client and accepts only server's ID; the server accepts only client's ID.
func (s *story) handshake(ctx context.Context, client, server *x509svid.SVID, clientBundles, serverBundles x509bundle.Source) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	serverConf := tlsconfig.MTLSServerConfig(server, serverBundles, tlsconfig.AuthorizeID(client.ID))
	serverErr := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverConf)
		err = tc.HandshakeContext(ctx)
		if err == nil {
			// Read the client's confirmation so both sides finish.
			_, err = tc.Write([]byte("ok"))
		}
		serverErr <- err
	}()
	clientConf := tlsconfig.MTLSClientConfig(client, clientBundles, tlsconfig.AuthorizeID(server.ID))
	d := tls.Dialer{Config: clientConf}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	var clientErr error
	if err != nil {
		clientErr = err
	} else {
		buf := make([]byte, 2)
		_, clientErr = io.ReadFull(conn, buf)
		conn.Close()
	}
	srvErr := <-serverErr
	switch {
	case clientErr != nil:
		return fmt.Errorf("client: %w", clientErr)
	case srvErr != nil:
		return fmt.Errorf("server: %w", srvErr)
	}
	return nil
}

// forge signs a leaf for id with ca's key directly, bypassing every check
// the CA makes: what an attacker holding a stolen intermediate key could do.
func forge(ca *pki.CA, id spiffeid.ID, key crypto.Signer, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), key.Public(), ca.Signer())
	if err != nil {
		return nil, fmt.Errorf("demo: forge: %w", err)
	}
	return x509.ParseCertificate(der)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func orText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func chainText(chains [][]*x509.Certificate, err error) string {
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, c := range chains[0] {
		if len(c.URIs) == 1 {
			names = append(names, c.URIs[0].String())
		} else {
			names = append(names, fmt.Sprintf("%q", c.Subject.CommonName))
		}
	}
	return "chain: " + strings.Join(names, " -> ")
}
