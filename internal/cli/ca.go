package cli

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func init() { register(newCACommand) }

func newCACommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "ca",
		Short: "Offline PKI: roots, name-constrained intermediates, SVIDs, bundles",
		Long: `Offline certificate authority operations, for setting a federation up by hand,
for air-gapped roots, and for handing an intermediate to a real istiod.

A CA lives in a directory: ca.pem (its certificate), ca.key (its private key,
mode 0600) and, for an intermediate, chain.pem (the intermediate, then the
certificates above it up to the root). Every --ca flag takes such a directory;
Istio's plug-in layout (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)
is read as well. Files are written atomically and existing files are never
replaced without --force. Private keys are never printed.`,
		Example: `  meshfed ca create-root --out root
  meshfed ca create-intermediate --ca root --trust-domain east.example --out east
  meshfed ca issue --ca east --spiffe-id spiffe://east.example/ns/default/sa/reviews --out reviews`,
	}
	c.AddCommand(newCreateRoot(), newCreateIntermediate(), newCSR(), newSignCSR(), newIssue(), newBundleConvert(), newIstioCACerts())
	return c
}

// keyTypeFlag adds --key-type.
func keyTypeFlag(c *cobra.Command, p *string) {
	c.Flags().StringVar(p, "key-type", string(pki.DefaultKeyType), "key algorithm: ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096")
}

func trustDomainArg(s string) (spiffeid.TrustDomain, error) {
	if s == "" {
		return spiffeid.TrustDomain{}, usagef("--trust-domain is required")
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return td, usagef("--trust-domain %q is not a trust domain name (lowercase letters, digits, '.', '-', '_'): %v", s, err)
	}
	return td, nil
}

func required(c *cobra.Command, names ...string) {
	for _, n := range names {
		_ = c.MarkFlagRequired(n)
	}
}

// refuseExisting fails early, before any key is made, when out already holds
// one of names and force is not set. cadir.Write checks again when writing.
func refuseExisting(out string, force bool, names ...string) error {
	if force {
		return nil
	}
	if n, ok := pemfile.Exists(out, names...); ok {
		return fmt.Errorf("%s exists; pass --force to replace it", filepath.Join(out, n))
	}
	return nil
}

// save writes files into dir all-or-nothing and reports each on stdout,
// with the description given for it.
func save(c *cobra.Command, dir string, force bool, files []pemfile.File, describe map[string]string) error {
	if err := cadir.Write(dir, force, files...); err != nil {
		return err
	}
	written(c.OutOrStdout(), dir, files, describe)
	return nil
}

// written reports each written file on stdout.
func written(w io.Writer, dir string, files []pemfile.File, describe map[string]string) {
	for _, f := range files {
		line := "wrote " + filepath.Join(dir, f.Name)
		if f.Mode == pemfile.ModeKey {
			line += " (private key, mode 0600)"
		}
		if d, ok := describe[f.Name]; ok {
			line += "  " + d
		}
		fmt.Fprintln(w, line)
	}
}

func describeCert(kind string, c *x509.Certificate) string {
	s := kind
	if len(c.URIs) == 1 {
		s += " " + c.URIs[0].String()
	} else if sub := c.Subject.String(); sub != "" {
		s += " " + fmt.Sprintf("%q", sub)
	}
	if len(c.PermittedURIDomains) > 0 {
		s += fmt.Sprintf(", limited to trust domain %v", c.PermittedURIDomains)
	}
	return fmt.Sprintf("%s, %s, valid until %s", s, pki.DescribeKey(c.PublicKey), c.NotAfter.UTC().Format(time.RFC3339))
}

func newCreateRoot() *cobra.Command {
	var (
		out, keyType, org, cn, tdName string
		ttl                           time.Duration
		force                         bool
	)
	c := &cobra.Command{
		Use:   "create-root --out DIR",
		Short: "Create a self-signed root CA (DIR/ca.pem, DIR/ca.key)",
		Long: `Create a self-signed root CA. The root carries no name constraint: in a
shared-root federation (a VirtualMesh) it vouches for every member trust
domain, each through its own name-constrained intermediate. Give
--trust-domain to make the root of a single trust domain, which then carries
spiffe://<trust-domain> as its URI SAN.`,
		Example: `  meshfed ca create-root --out root
  # the VirtualMesh of the Service Mesh Hub guide: RSA 4096, 356 days
  meshfed ca create-root --out root --key-type rsa-4096 --ttl 356d --org service-mesh-hub`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return usagef("%v", err)
			}
			var td spiffeid.TrustDomain
			if tdName != "" {
				if td, err = trustDomainArg(tdName); err != nil {
					return err
				}
			}
			if err := refuseExisting(out, force, cadir.CertFile, cadir.KeyFile); err != nil {
				return err
			}
			if kt != pki.ECP256 {
				progress(c, "generating %s key…", kt)
			}
			key, err := pki.GenerateKey(kt)
			if err != nil {
				return err
			}
			root, err := pki.CreateRoot(pki.RootRequest{Signer: key, Organization: org, CommonName: cn, TrustDomain: td, TTL: ttl})
			if err != nil {
				return err
			}
			files, err := cadir.Files([]*x509.Certificate{root}, key)
			if err != nil {
				return err
			}
			if err := save(c, out, force, files, map[string]string{cadir.CertFile: describeCert("root CA", root)}); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "directory to write ca.pem and ca.key into (created if missing)")
	keyTypeFlag(c, &keyType)
	c.Flags().Var(newTTL(&ttl, pki.DefaultRootTTL), "ttl", "lifetime, e.g. 8760h, 356d or 10y")
	c.Flags().StringVar(&org, "org", pki.DefaultOrganization, "subject organisation (O)")
	c.Flags().StringVar(&cn, "common-name", "", `subject common name (CN); default "<org> root CA"`)
	c.Flags().StringVar(&tdName, "trust-domain", "", "make the root of this one trust domain (adds its SPIFFE ID as URI SAN)")
	c.Flags().BoolVar(&force, "force", false, "replace an existing CA in --out")
	required(c, "out")
	return c
}

type intermediateFlags struct {
	tdName, org, cn string
	ttl             time.Duration
	pathLen         int
}

func (f *intermediateFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.tdName, "trust-domain", "", "the only trust domain the intermediate may vouch for (URI name constraint)")
	c.Flags().Var(newTTL(&f.ttl, pki.DefaultIntermediateTTL), "ttl", "lifetime, clipped to the signing CA's, e.g. 8760h or 365d")
	c.Flags().IntVar(&f.pathLen, "path-len", 0, "CAs allowed below the intermediate: 0 lets it sign only leaves; -1 removes the limit")
	c.Flags().StringVar(&f.org, "org", pki.DefaultOrganization, "subject organisation (O)")
	c.Flags().StringVar(&f.cn, "common-name", "", `subject common name (CN); default "<trust-domain> intermediate CA"`)
}

func (f *intermediateFlags) request() (pki.IntermediateRequest, error) {
	td, err := trustDomainArg(f.tdName)
	if err != nil {
		return pki.IntermediateRequest{}, err
	}
	if f.pathLen < -1 {
		return pki.IntermediateRequest{}, usagef("--path-len %d: use -1 (unlimited), 0 or more", f.pathLen)
	}
	return pki.IntermediateRequest{TrustDomain: td, TTL: f.ttl, MaxPathLen: f.pathLen, Organization: f.org, CommonName: f.cn}, nil
}

func newCreateIntermediate() *cobra.Command {
	var (
		caDir, out, keyType string
		f                   intermediateFlags
		force               bool
	)
	c := &cobra.Command{
		Use:   "create-intermediate --ca DIR --trust-domain TD --out DIR2",
		Short: "Create a name-constrained intermediate CA for one trust domain",
		Long: `Create an intermediate CA for one trust domain, signed by the CA in --ca. It
carries spiffe://<trust-domain> as its URI SAN and a critical URI name
constraint permitting only that trust domain, so it cannot vouch for any other
even if its key is stolen. Writes DIR2/ca.pem, DIR2/ca.key and DIR2/chain.pem
(the intermediate, then the certificates above it up to the root).

This makes the key here, beside the root. To keep the intermediate's key on the
machine that will use it, run 'meshfed ca csr' there and 'meshfed ca sign-csr'
here instead.`,
		Example: `  meshfed ca create-intermediate --ca root --trust-domain east.example --out east`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return usagef("%v", err)
			}
			if err := refuseExisting(out, force, cadir.CertFile, cadir.KeyFile, cadir.ChainFile); err != nil {
				return err
			}
			ca, err := cadir.Load(caDir, nil)
			if err != nil {
				return err
			}
			key, err := pki.GenerateKey(kt)
			if err != nil {
				return err
			}
			req.PublicKey = key.Public()
			chain, err := ca.SignIntermediate(req)
			if err != nil {
				return err
			}
			files, err := cadir.Files(withRoot(chain, ca), key)
			if err != nil {
				return err
			}
			if err := save(c, out, force, files, map[string]string{cadir.CertFile: describeCert("intermediate CA", chain[0])}); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca", "", "directory of the signing CA (ca.pem, ca.key[, chain.pem])")
	c.Flags().StringVar(&out, "out", "", "directory to write the intermediate into")
	keyTypeFlag(c, &keyType)
	f.add(c)
	c.Flags().BoolVar(&force, "force", false, "replace an existing CA in --out")
	required(c, "ca", "out", "trust-domain")
	return c
}

// withRoot appends the CA's first root to chain unless chain ends in it.
func withRoot(chain []*x509.Certificate, ca *pki.CA) []*x509.Certificate {
	roots := ca.Roots()
	if chain[len(chain)-1].Equal(roots[0]) {
		return chain
	}
	return append(chain, roots[0])
}

func newCSR() *cobra.Command {
	var (
		out, keyType, tdName string
		force                bool
	)
	c := &cobra.Command{
		Use:   "csr --trust-domain TD --out DIR",
		Short: "Make an intermediate's key and a CSR for it (the key stays here)",
		Long: `Make a private key for an intermediate CA and a certificate signing request
for it. The key is written to DIR/ca.key (mode 0600) and never leaves this
machine; send DIR/ca.csr to whoever holds the root, who runs
'meshfed ca sign-csr'. Copy the ca.pem and chain.pem that come back into DIR
and it is a working CA.`,
		Example: `  # on the member
  meshfed ca csr --trust-domain east.example --out east
  # on the root's machine
  meshfed ca sign-csr --ca root --csr east/ca.csr --trust-domain east.example --out east`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			td, err := trustDomainArg(tdName)
			if err != nil {
				return err
			}
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return usagef("%v", err)
			}
			key, err := pki.GenerateKey(kt)
			if err != nil {
				return err
			}
			// The CSR names the trust domain so that a signer given another
			// one refuses it; the signer still decides, from its own flag.
			der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{URIs: []*url.URL{td.ID().URL()}}, key)
			if err != nil {
				return fmt.Errorf("csr: %w", err)
			}
			k, err := pemfile.EncodePrivateKey(key)
			if err != nil {
				return err
			}
			files := []pemfile.File{
				{Name: cadir.KeyFile, Data: k, Mode: pemfile.ModeKey},
				{Name: cadir.CSRFile, Data: pemfile.EncodeCSR(der), Mode: pemfile.ModePublic},
			}
			if err := save(c, out, force, files, map[string]string{cadir.CSRFile: fmt.Sprintf("CSR for an intermediate of %s (%s)", td, pki.DescribeKey(key.Public()))}); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "directory to write ca.key and ca.csr into")
	c.Flags().StringVar(&tdName, "trust-domain", "", "trust domain the intermediate is for")
	keyTypeFlag(c, &keyType)
	c.Flags().BoolVar(&force, "force", false, "replace an existing key or CSR in --out")
	required(c, "out", "trust-domain")
	return c
}

func newSignCSR() *cobra.Command {
	var (
		caDir, csrPath, out string
		f                   intermediateFlags
		force               bool
	)
	c := &cobra.Command{
		Use:   "sign-csr --ca DIR --csr FILE --trust-domain TD --out DIR2",
		Short: "Sign an intermediate's CSR with a name constraint for one trust domain",
		Long: `Sign a CSR made by 'meshfed ca csr' as an intermediate CA for --trust-domain.
Only the CSR's public key is used, after its signature proves the requester
holds the private key; the trust domain comes from this command, never from
the CSR. Writes DIR2/ca.pem and DIR2/chain.pem. If DIR2 already holds the
requester's ca.key (the usual case when both run on one machine), the key is
checked against the new certificate.`,
		Example: `  meshfed ca sign-csr --ca root --csr east/ca.csr --trust-domain east.example --out east`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			if err := refuseExisting(out, force, cadir.CertFile, cadir.ChainFile); err != nil {
				return err
			}
			csr, err := pemfile.ReadCSR(csrPath)
			if err != nil {
				return err
			}
			ca, err := cadir.Load(caDir, nil)
			if err != nil {
				return err
			}
			chain, err := ca.SignIntermediateFromCSR(csr, req)
			if err != nil {
				return fmt.Errorf("%s: %w", csrPath, err)
			}
			chain = withRoot(chain, ca)
			var key crypto.Signer
			if _, ok := pemfile.Exists(out, cadir.KeyFile); ok {
				key, err = pemfile.ReadPrivateKey(filepath.Join(out, cadir.KeyFile))
				if err != nil {
					return err
				}
				if _, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: chain}); err != nil {
					return fmt.Errorf("%s does not belong to the signed CSR: %w", filepath.Join(out, cadir.KeyFile), err)
				}
			}
			files, err := cadir.Files(chain, nil)
			if err != nil {
				return err
			}
			if err := save(c, out, force, files, map[string]string{cadir.CertFile: describeCert("intermediate CA", chain[0])}); err != nil {
				return err
			}
			if key == nil {
				progress(c, "copy %s and %s next to the ca.key made with the CSR", cadir.CertFile, cadir.ChainFile)
			}
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca", "", "directory of the signing CA")
	c.Flags().StringVar(&csrPath, "csr", "", "the CSR file (PEM)")
	c.Flags().StringVar(&out, "out", "", "directory to write ca.pem and chain.pem into")
	f.add(c)
	c.Flags().BoolVar(&force, "force", false, "replace an existing certificate in --out")
	required(c, "ca", "csr", "out", "trust-domain")
	return c
}

// Files written by 'ca issue'.
const (
	issueCertFile   = "cert.pem"
	issueKeyFile    = "key.pem"
	issueBundleFile = "bundle.pem"
)

func newIssue() *cobra.Command {
	var (
		caDir, out, idStr, keyType, csrPath, cn string
		sans                                    []string
		ttl                                     time.Duration
		force                                   bool
	)
	c := &cobra.Command{
		Use:   "issue --ca DIR (--spiffe-id ID | --san NAME) --out DIR3",
		Short: "Issue an X.509-SVID or a TLS leaf certificate",
		Long: `Issue a certificate from the CA in --ca and write DIR3/cert.pem (the leaf, then
the CA's intermediates), DIR3/key.pem (mode 0600) and DIR3/bundle.pem (the
root, to verify it with).

With --spiffe-id it is an X.509-SVID: exactly one URI SAN, CA false,
digitalSignature (and keyEncipherment for RSA), serverAuth and clientAuth; an
ID outside the CA's trust domain is refused. --san adds DNS names to it.
Without --spiffe-id it is a plain TLS leaf for the --san names (DNS names or
IP addresses), as for a gateway.

With --csr the CSR's key is certified instead of a new one (no key.pem is
written); the CSR may name the same SPIFFE ID or none, never another.`,
		Example: `  meshfed ca issue --ca east --spiffe-id spiffe://east.example/ns/default/sa/reviews --out reviews
  # a gateway certificate, as 'step certificate create --profile leaf --san' makes
  meshfed ca issue --ca root --san helloworld.zufar.io --ttl 8760h --key-type rsa-2048 --out gateway`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if idStr == "" && len(sans) == 0 {
				return usagef("give --spiffe-id for an SVID or --san for a TLS leaf")
			}
			var id spiffeid.ID
			if idStr != "" {
				var err error
				if id, err = spiffeid.FromString(idStr); err != nil {
					return usagef("--spiffe-id %q is not a SPIFFE ID (spiffe://<trust-domain>/<path>): %v", idStr, err)
				}
			}
			var dns []string
			var ips []net.IP
			for _, s := range sans {
				if ip := net.ParseIP(s); ip != nil {
					ips = append(ips, ip)
				} else {
					dns = append(dns, s)
				}
			}
			if !id.IsZero() && len(ips) > 0 {
				return usagef("--san %s: an SVID carries DNS names besides its SPIFFE ID, not IP addresses", ips[0])
			}
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return usagef("%v", err)
			}
			if err := refuseExisting(out, force, issueCertFile, issueKeyFile, issueBundleFile); err != nil {
				return err
			}
			ca, err := cadir.Load(caDir, nil)
			if err != nil {
				return err
			}
			var csr *x509.CertificateRequest
			var key crypto.Signer
			var pub crypto.PublicKey
			if csrPath != "" {
				if csr, err = pemfile.ReadCSR(csrPath); err != nil {
					return err
				}
				if pub, err = pki.CheckCSR(csr); err != nil {
					return fmt.Errorf("%s: %w", csrPath, err)
				}
				if !id.IsZero() {
					if err := pki.CheckCSRIdentity(csr, id); err != nil {
						return fmt.Errorf("%s: %w", csrPath, err)
					}
				}
			} else {
				if key, err = pki.GenerateKey(kt); err != nil {
					return err
				}
				pub = key.Public()
			}
			var chain []*x509.Certificate
			kind := "TLS leaf"
			if !id.IsZero() {
				kind = "X.509-SVID"
				chain, err = ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: pub, TTL: ttl, DNSNames: dns})
			} else {
				chain, err = ca.SignLeaf(pki.LeafRequest{PublicKey: pub, CommonName: cn, DNSNames: dns, IPAddresses: ips, TTL: ttl})
			}
			if err != nil {
				return err
			}
			// The leaf's chain ends below the root: peers hold the root.
			if n := len(chain); n > 1 && chain[n-1].Equal(ca.Roots()[0]) {
				chain = chain[:n-1]
			}
			files := []pemfile.File{
				{Name: issueCertFile, Data: pemfile.EncodeCertificates(chain...), Mode: pemfile.ModePublic},
				{Name: issueBundleFile, Data: pemfile.EncodeCertificates(ca.Roots()...), Mode: pemfile.ModePublic},
			}
			if key != nil {
				k, err := pemfile.EncodePrivateKey(key)
				if err != nil {
					return err
				}
				files = append(files, pemfile.File{Name: issueKeyFile, Data: k, Mode: pemfile.ModeKey})
			}
			if err := save(c, out, force, files, map[string]string{issueCertFile: describeCert(kind, chain[0])}); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca", "", "directory of the issuing CA")
	c.Flags().StringVar(&out, "out", "", "directory to write cert.pem, key.pem and bundle.pem into")
	c.Flags().StringVar(&idStr, "spiffe-id", "", "SPIFFE ID of the workload, e.g. spiffe://east.example/ns/default/sa/reviews")
	c.Flags().StringSliceVar(&sans, "san", nil, "DNS name or IP address (repeatable); with --spiffe-id, extra DNS names")
	c.Flags().StringVar(&cn, "common-name", "", "subject CN of a TLS leaf (default: the first DNS name)")
	c.Flags().Var(newTTL(&ttl, 0), "ttl", "lifetime, clipped to the CA's (default 1h for an SVID, 90d for a TLS leaf)")
	keyTypeFlag(c, &keyType)
	c.Flags().StringVar(&csrPath, "csr", "", "certify the key of this CSR instead of making one")
	c.Flags().BoolVar(&force, "force", false, "replace existing files in --out")
	required(c, "ca", "out")
	return c
}

func newBundleConvert() *cobra.Command {
	var (
		in, caDir, out, tdName, format string
		seq                            int64
		hint                           time.Duration
	)
	c := &cobra.Command{
		Use:   "bundle (--in FILE | --ca DIR) --trust-domain TD [--format spiffe|pem]",
		Short: "Convert between PEM CA certificates and a SPIFFE trust bundle (JSON)",
		Long: `Convert a trust bundle between PEM (concatenated CA certificates, what Istio's
root-cert.pem and most tools hold) and the SPIFFE bundle format (a JWK Set with
"use": "x509-svid" keys, spiffe_sequence and spiffe_refresh_hint, what SPIFFE
bundle endpoints serve and 'spire-server bundle set -format spiffe' reads).
The input format is detected; the output format defaults to the other one.
--ca DIR takes the roots of a CA directory as input.`,
		Example: `  meshfed ca bundle --ca root --trust-domain east.example --out east-bundle.json
  meshfed ca bundle --in east-bundle.json --trust-domain east.example --format pem`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			td, err := trustDomainArg(tdName)
			if err != nil {
				return err
			}
			if (in == "") == (caDir == "") {
				return usagef("give exactly one of --in FILE or --ca DIR")
			}
			var b *spiffebundle.Bundle
			inFormat := bundle.FormatPEM
			if in != "" {
				data, err := pemfile.ReadFile(in, bundle.MaxBytes)
				if err != nil {
					return err
				}
				inFormat = bundle.Detect(data)
				if b, err = bundle.Parse(td, data); err != nil {
					return fmt.Errorf("%s: %w", in, err)
				}
			} else {
				ca, err := cadir.Load(caDir, nil)
				if err != nil {
					return err
				}
				if b, err = bundle.FromCertificates(td, ca.Roots()); err != nil {
					return err
				}
			}
			outFormat := bundle.FormatSPIFFE
			if inFormat == bundle.FormatSPIFFE {
				outFormat = bundle.FormatPEM
			}
			if format != "" {
				if outFormat, err = bundle.ParseFormat(format); err != nil {
					return usagef("%v", err)
				}
			}
			opts := bundle.Options{RefreshHint: hint}
			if c.Flags().Changed("sequence") {
				if seq < 0 {
					return usagef("--sequence must not be negative")
				}
				s := uint64(seq)
				opts.Sequence = &s
			}
			opts.Apply(b)
			data, err := bundle.Marshal(b, outFormat)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = c.OutOrStdout().Write(data)
				return err
			}
			if err := pemfile.WriteFile(out, data, pemfile.ModePublic); err != nil {
				return err
			}
			progress(c, "wrote %s (%s bundle for %s, %d X.509 authorities)", out, outFormat, td, len(b.X509Authorities()))
			return nil
		},
	}
	c.Flags().StringVar(&in, "in", "", "bundle file to convert (PEM or SPIFFE JSON)")
	c.Flags().StringVar(&caDir, "ca", "", "take the roots of this CA directory")
	c.Flags().StringVar(&out, "out", "", "file to write (default: stdout)")
	c.Flags().StringVar(&tdName, "trust-domain", "", "trust domain the bundle belongs to")
	c.Flags().StringVar(&format, "format", "", "output format: spiffe or pem (default: the one the input is not)")
	c.Flags().Int64Var(&seq, "sequence", 0, "set spiffe_sequence")
	c.Flags().Var(newTTL(&hint, 0), "refresh-hint", "set spiffe_refresh_hint, e.g. 5m")
	required(c, "trust-domain")
	return c
}

func newIstioCACerts() *cobra.Command {
	var (
		caDir, out, keyType string
		f                   intermediateFlags
		force               bool
	)
	c := &cobra.Command{
		Use:   "istio-cacerts --ca DIR --out DIR2 [--trust-domain TD]",
		Short: "Write an intermediate in Istio's plug-in CA layout (cacerts)",
		Long: `Write ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem, the files
istiod reads from its cacerts secret, so a real istiod signs with an
intermediate of this federation.

With --trust-domain, a new name-constrained intermediate for that trust domain
is signed by --ca. Without it, --ca must already be an intermediate and is
rewritten in Istio's layout. Load the result with:
  kubectl create secret generic cacerts -n istio-system --from-file=DIR2`,
		Example: `  meshfed ca istio-cacerts --ca root --trust-domain east.example --out east-cacerts`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			names := []string{cadir.IstioCertFile, cadir.IstioKeyFile, cadir.IstioChainFile, cadir.IstioRootFile}
			if err := refuseExisting(out, force, names...); err != nil {
				return err
			}
			ca, err := cadir.Load(caDir, nil)
			if err != nil {
				return err
			}
			var chain []*x509.Certificate
			var key crypto.Signer
			if f.tdName != "" {
				req, err := f.request()
				if err != nil {
					return err
				}
				kt, err := pki.ParseKeyType(keyType)
				if err != nil {
					return usagef("%v", err)
				}
				if key, err = pki.GenerateKey(kt); err != nil {
					return err
				}
				req.PublicKey = key.Public()
				if chain, err = ca.SignIntermediate(req); err != nil {
					return err
				}
			} else {
				if len(ca.Chain()) == 1 && ca.Roots()[0].Equal(ca.Certificate()) {
					return usagef("%s is a root; give --trust-domain to sign a new intermediate for Istio from it (istiod should not hold the root key)", caDir)
				}
				chain, key = ca.Chain(), ca.Signer()
			}
			files, err := cadir.IstioFiles(chain, ca.Roots(), key)
			if err != nil {
				return err
			}
			if err := save(c, out, force, files, map[string]string{cadir.IstioCertFile: describeCert("intermediate CA", chain[0])}); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().StringVar(&caDir, "ca", "", "directory of the signing CA (or, without --trust-domain, the intermediate to convert)")
	c.Flags().StringVar(&out, "out", "", "directory to write the four cacerts files into")
	keyTypeFlag(c, &keyType)
	f.add(c)
	c.Flags().BoolVar(&force, "force", false, "replace existing files in --out")
	required(c, "ca", "out")
	return c
}
