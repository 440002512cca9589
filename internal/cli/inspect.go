package cli

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/inspect"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func init() { register(newInspectCmd) }

func newInspectCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "inspect",
		Short: "Show the SPIFFE identity in certificates, bundles and TLS endpoints",
		Long: `inspect reads certificates, trust bundles and live TLS endpoints and says what
they mean for SPIFFE identity: each certificate's SPIFFE ID and trust domain,
its name constraints and validity, and whether it conforms to the X.509-SVID
specification, naming the rule it breaks. Given a bundle or a root, it
verifies the chain and prints one verdict.

Nothing here prints a private key.`,
		Example: `  meshfed inspect cert reviews/cert.pem
  meshfed inspect bundle east-bundle.json
  meshfed inspect connect reviews.east.example:443 --bundle east-bundle.json
  meshfed inspect jwt token.jwt --bundle east-bundle.json --audience ratings`,
	}
	c.AddCommand(newInspectCertCmd(), newInspectBundleCmd(), newInspectConnectCmd(), newInspectJWTCmd())
	return c
}

// inspectFlags are the flags the inspect commands share.
type inspectFlags struct {
	output      string
	bundle      string
	root        string
	trustDomain string
	serverName  string
	at          string
	timeout     time.Duration
}

func (f *inspectFlags) addOutput(c *cobra.Command) { outputFlag(c, &f.output) }

func (f *inspectFlags) addTrust(c *cobra.Command) {
	c.Flags().StringVar(&f.bundle, "bundle", "", "verify the chain against this SPIFFE bundle (SPIFFE JSON or PEM)")
	c.Flags().StringVar(&f.root, "root", "", "verify the chain against the CA certificates in this PEM file")
	c.Flags().StringVar(&f.trustDomain, "trust-domain", "", "the trust domain the bundle or root belongs to; an SVID of any other trust domain fails verification")
}

func (f *inspectFlags) addAt(c *cobra.Command) {
	c.Flags().StringVar(&f.at, "at", "", "judge validity at this RFC 3339 time instead of now, e.g. 2030-01-01T00:00:00Z")
}

func (f *inspectFlags) addTimeout(c *cobra.Command) {
	c.Flags().DurationVar(&f.timeout, "timeout", inspect.DefaultTimeout, "give up connecting after this long")
}

// check validates the flags every command has, before any work is done.
func (f *inspectFlags) check(c *cobra.Command) error {
	switch f.output {
	case "text", "table", "", "json", "yaml":
	default:
		return usagef("%s: unknown output format %q; use text, json or yaml", cmdName(c), f.output)
	}
	if c.Flags().Lookup("timeout") != nil && f.timeout <= 0 {
		return usagef("%s: --timeout must be positive, e.g. 5s", cmdName(c))
	}
	if f.bundle != "" && f.root != "" {
		return usagef("%s: give --bundle or --root, not both", cmdName(c))
	}
	return nil
}

// now is the instant validity is judged at: --at, or the current time.
func (f *inspectFlags) now(c *cobra.Command) (time.Time, error) {
	if f.at == "" {
		return time.Now(), nil
	}
	t, err := time.Parse(time.RFC3339, f.at)
	if err != nil {
		return time.Time{}, usagef("%s: --at %q is not an RFC 3339 time such as 2030-01-01T00:00:00Z", cmdName(c), f.at)
	}
	return t, nil
}

// td parses --trust-domain; zero when it is not given.
func (f *inspectFlags) td(c *cobra.Command) (spiffeid.TrustDomain, error) {
	if f.trustDomain == "" {
		return spiffeid.TrustDomain{}, nil
	}
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return td, usagef("%s: --trust-domain %q: %v", cmdName(c), f.trustDomain, err)
	}
	return td, nil
}

// trust loads --bundle or --root; nil when neither is given.
func (f *inspectFlags) trust(c *cobra.Command) (*inspect.Trust, error) {
	td, err := f.td(c)
	if err != nil {
		return nil, err
	}
	switch {
	case f.bundle != "":
		return inspect.LoadBundle(f.bundle, td)
	case f.root != "":
		return inspect.LoadRoots(f.root, td)
	case !td.IsZero():
		return nil, usagef("%s: --trust-domain names the trust domain of --bundle or --root; give one of them", cmdName(c))
	}
	return nil, nil
}

func cmdName(c *cobra.Command) string {
	return strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
}

func newInspectCertCmd() *cobra.Command {
	var f inspectFlags
	c := &cobra.Command{
		Use:   "cert FILE...",
		Short: "Describe each certificate of a chain and verify it",
		Long: `cert describes every certificate in each PEM file, leaf first: subject and
issuer, SPIFFE ID and trust domain, other names, CA flag and path length, key
usages, URI and DNS name constraints, validity, key, signature and SHA-256
fingerprint, and whether it conforms to the X.509-SVID specification (a leaf
to the rules for SVIDs, a CA to those for signing certificates), naming each
rule it breaks.

With --bundle or --root, each file is verified as a chain: a leaf with a
spiffe:// URI SAN as an X.509-SVID against the bundle of its own trust domain
(with --trust-domain, an SVID of another trust domain fails); any other
certificate, a CA included, as plain X.509 to the given roots, for
--server-name if given. The exit code is 1 if any chain fails.`,
		Example: `  # What is in this SVID?
  meshfed inspect cert reviews/cert.pem

  # Does it verify with east's bundle, and would it tomorrow?
  meshfed inspect cert reviews/cert.pem --bundle east-bundle.json --trust-domain east.example
  meshfed inspect cert reviews/cert.pem --root root/cert.pem --at 2030-01-01T00:00:00Z

  # For scripts
  meshfed inspect cert reviews/cert.pem -o json`,
		Args: minArgs(1, "one or more certificate files"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(c); err != nil {
				return err
			}
			now, err := f.now(c)
			if err != nil {
				return err
			}
			trust, err := f.trust(c)
			if err != nil {
				return err
			}
			var out certOutput
			for _, path := range args {
				chain, err := pemfile.ReadCertificates(path)
				if err != nil {
					return fmt.Errorf("inspect cert: %w", err)
				}
				r := inspect.ChainReport{Source: path, Certificates: inspect.Describe(chain, now)}
				if trust != nil {
					v := inspect.Verify(chain, trust, inspect.VerifyOptions{Now: now, ServerName: f.serverName})
					r.Verdict = &v
				}
				out.Files = append(out.Files, r)
			}
			if err := printData(c.OutOrStdout(), f.output, out, out.writeText); err != nil {
				return err
			}
			return out.failure()
		},
	}
	f.addOutput(c)
	f.addTrust(c)
	c.Flags().StringVar(&f.serverName, "server-name", "", "verify a leaf that is not an SVID for this DNS name or IP address")
	f.addAt(c)
	return c
}

// certOutput is what inspect cert prints: one report per file.
type certOutput struct {
	Files []inspect.ChainReport `json:"files"`
}

func (o certOutput) writeText(w io.Writer) error {
	for i, r := range o.Files {
		if i > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		if err := r.WriteText(w); err != nil {
			return err
		}
	}
	return nil
}

// failure is the error line for chains that did not verify, nil if none.
func (o certOutput) failure() error {
	var failed []inspect.ChainReport
	for _, r := range o.Files {
		if r.Verdict != nil && !r.Verdict.OK() {
			failed = append(failed, r)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	err := fmt.Errorf("inspect cert: %s: verification failed: %s", failed[0].Source, failed[0].Verdict.Reason)
	if len(failed) > 1 {
		files := "files"
		if len(failed) == 2 {
			files = "file"
		}
		err = fmt.Errorf("%w (and %d more %s failed)", err, len(failed)-1, files)
	}
	return err
}

func newInspectBundleCmd() *cobra.Command {
	var f inspectFlags
	var endpointBundle, endpointID string
	c := &cobra.Command{
		Use:   "bundle FILE|URL",
		Short: "Describe a SPIFFE trust bundle from a file or a bundle endpoint",
		Long: `bundle describes a SPIFFE trust bundle, in SPIFFE JSON or PEM: its trust
domain, spiffe_sequence and spiffe_refresh_hint, each X.509 authority (as
'inspect cert' does) and each JWT authority (key ID and key type).

The SPIFFE JSON format does not name its trust domain: give it with
--trust-domain, or it is inferred from the CA certificates' spiffe:// URI SAN
when every one carries one and they agree.

An https:// URL is fetched from a SPIFFE bundle endpoint (at most 1 MiB, within
--timeout). By default the server is authenticated with the system's web roots
(the https_web profile); with --endpoint-bundle and --endpoint-spiffe-id it
must instead present an X.509-SVID of exactly that SPIFFE ID, verified with
that bundle (the https_spiffe profile).`,
		Example: `  meshfed inspect bundle east-bundle.json --trust-domain east.example
  meshfed inspect bundle root/cert.pem -o yaml

  # A federated peer's bundle endpoint (https_web)
  meshfed inspect bundle https://bundle.west.example/ --trust-domain west.example

  # ... and one that authenticates with its SPIFFE ID (https_spiffe)
  meshfed inspect bundle https://spire.west.example:8443/ --trust-domain west.example \
      --endpoint-bundle west-bundle.json --endpoint-spiffe-id spiffe://west.example/spire/server`,
		Args: exactArgs(1, "one bundle file or https:// URL"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(c); err != nil {
				return err
			}
			now, err := f.now(c)
			if err != nil {
				return err
			}
			td, err := f.td(c)
			if err != nil {
				return err
			}
			source := args[0]
			isURL := strings.Contains(source, "://")
			if (endpointBundle != "") != (endpointID != "") {
				return usagef("inspect bundle: --endpoint-bundle and --endpoint-spiffe-id go together (the https_spiffe profile)")
			}
			if !isURL && endpointID != "" {
				return usagef("inspect bundle: --endpoint-bundle and --endpoint-spiffe-id apply only to an https:// URL")
			}
			var data []byte
			if isURL {
				cfg := inspect.FetchConfig{URL: source, Timeout: f.timeout}
				if endpointID != "" {
					id, err := spiffeid.FromString(endpointID)
					if err != nil {
						return usagef("inspect bundle: --endpoint-spiffe-id %q: %v", endpointID, err)
					}
					eb, err := bundle.Read(id.TrustDomain(), endpointBundle)
					if err != nil {
						return fmt.Errorf("inspect bundle: --endpoint-bundle: %w", err)
					}
					cfg.EndpointID, cfg.EndpointBundle = id, eb
				}
				if data, err = inspect.FetchBundle(c.Context(), cfg); err != nil {
					return err
				}
			} else if data, err = pemfile.ReadFile(source, bundle.MaxBytes); err != nil {
				return fmt.Errorf("inspect bundle: %w", err)
			}
			d, err := inspect.DescribeBundle(source, data, td, now)
			if errors.Is(err, inspect.ErrUnknownTrustDomain) {
				return fmt.Errorf("%w; pass --trust-domain", err)
			}
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), f.output, d, d.WriteText)
		},
	}
	f.addOutput(c)
	c.Flags().StringVar(&f.trustDomain, "trust-domain", "", "the trust domain the bundle is for; inferred from its CA certificates if they all name it")
	c.Flags().StringVar(&endpointBundle, "endpoint-bundle", "", "https_spiffe: the bundle that verifies the endpoint server's X.509-SVID")
	c.Flags().StringVar(&endpointID, "endpoint-spiffe-id", "", "https_spiffe: the SPIFFE ID the endpoint server must present")
	f.addTimeout(c)
	f.addAt(c)
	return c
}

func newInspectConnectCmd() *cobra.Command {
	var f inspectFlags
	var certFile, keyFile string
	var alpn []string
	c := &cobra.Command{
		Use:   "connect HOST:PORT",
		Short: "Show the chain a TLS server presents, with SPIFFE IDs, and verify it",
		Long: `connect opens a TLS connection to HOST:PORT and shows what openssl s_client
-showcerts would - the chain exactly as the server sent it, the TLS version,
cipher suite, ALPN protocol and whether the session was resumed - with the
SPIFFE ID and trust domain of every certificate and its X.509-SVID
conformance.

The handshake itself never verifies the server, so a broken chain is still
shown. With --bundle or --root the chain is then verified explicitly: an
X.509-SVID against the bundle of its own trust domain (with --trust-domain, an
SVID of another trust domain fails), any other certificate as plain X.509 for
--server-name or the host. Without them the chain is reported as NOT verified.
The exit code is 1 if verification fails.

--cert and --key present a client certificate (such as an SVID) to a server
that asks for one, as a mesh sidecar would.`,
		Example: `  # What does this endpoint present?
  meshfed inspect connect reviews.east.example:15443

  # Verify it as a peer in east.example, presenting our own SVID
  meshfed inspect connect 10.0.3.7:15443 --server-name reviews.east.example \
      --bundle east-bundle.json --trust-domain east.example \
      --cert web/cert.pem --key web/key.pem --alpn istio-peer-exchange,istio`,
		Args: exactArgs(1, "one HOST:PORT"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(c); err != nil {
				return err
			}
			addr := args[0]
			host, _, err := net.SplitHostPort(addr)
			if err != nil || host == "" {
				return usagef("inspect connect: %q is not HOST:PORT", addr)
			}
			if (certFile != "") != (keyFile != "") {
				return usagef("inspect connect: --cert and --key go together")
			}
			now, err := f.now(c)
			if err != nil {
				return err
			}
			trust, err := f.trust(c)
			if err != nil {
				return err
			}
			cfg := inspect.ConnectConfig{Address: addr, ServerName: f.serverName, Timeout: f.timeout, NextProtos: alpn}
			if certFile != "" {
				if cfg.ClientCertificate, err = inspect.LoadClientCertificate(certFile, keyFile); err != nil {
					return err
				}
			}
			conn, err := inspect.Connect(c.Context(), cfg)
			if err != nil {
				return err
			}
			r := inspect.ConnectReport{
				Connection:   *conn,
				Certificates: inspect.Describe(conn.PeerChain, now),
				Verdict:      inspect.NotVerified(),
			}
			if trust != nil {
				name := f.serverName
				if name == "" {
					name = host // a TLS client checks the name it dialled
				}
				r.Verdict = inspect.Verify(conn.PeerChain, trust, inspect.VerifyOptions{
					Now:        now,
					ServerName: name,
					KeyUsages:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
			}
			if err := printData(c.OutOrStdout(), f.output, r, r.WriteText); err != nil {
				return err
			}
			if trust != nil && !r.Verdict.OK() {
				return fmt.Errorf("inspect connect: %s: verification failed: %s", addr, r.Verdict.Reason)
			}
			return nil
		},
	}
	f.addOutput(c)
	f.addTrust(c)
	c.Flags().StringVar(&f.serverName, "server-name", "", "send this SNI, and verify a server certificate that is not an SVID for it (default: the host)")
	c.Flags().StringVar(&certFile, "cert", "", "present the client certificate chain in this PEM file")
	c.Flags().StringVar(&keyFile, "key", "", "the private key of --cert (PEM)")
	c.Flags().StringSliceVar(&alpn, "alpn", nil, "offer these ALPN protocols, e.g. h2,http/1.1")
	f.addTimeout(c)
	f.addAt(c)
	return c
}

func newInspectJWTCmd() *cobra.Command {
	var (
		f        inspectFlags
		audience string
	)
	c := &cobra.Command{
		Use:   "jwt FILE|-",
		Short: "Describe a JWT-SVID (or any JWT) and verify it with a bundle",
		Long: `jwt reads a token in JWS compact form from FILE (or stdin with "-") and says
what it claims, without trusting it: its SPIFFE ID (sub) and trust domain,
audience, issuer, algorithm and key ID, validity by exp and nbf, the names
of its other claims, and whether it conforms to the JWT-SVID specification,
naming the rule it breaks. The token itself is never printed.

With --bundle (SPIFFE bundle JSON holding the JWT authorities of the token's
trust domain, or of --trust-domain) and --audience, it is verified as a
validator would now: signature by the bundle's key under its kid, alg, aud
and exp. The exit code is 1 if it fails.`,
		Example: `  # What does this token claim?
  meshfed inspect jwt token.jwt

  # Would ratings accept it from a workload of east?
  meshfed bundle show --admin-socket east/admin.sock > east-bundle.json
  meshfed inspect jwt token.jwt --bundle east-bundle.json --audience ratings
  echo "$TOKEN" | meshfed inspect jwt - -o json`,
		Args: exactArgs(1, "one token file, or - for stdin"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(c); err != nil {
				return err
			}
			if (f.bundle == "") != (audience == "") {
				return usagef("%s: --bundle and --audience go together: a JWT-SVID is verified for an audience", cmdName(c))
			}
			if f.bundle != "" && f.at != "" {
				return usagef("%s: --at judges the description only; a token is verified as of now, so give it without --bundle", cmdName(c))
			}
			now, err := f.now(c)
			if err != nil {
				return err
			}
			td, err := f.td(c)
			if err != nil {
				return err
			}
			token, err := readTokenArg(c.InOrStdin(), args[0], "inspect jwt:")
			if err != nil {
				return err
			}
			j, err := inspect.DescribeJWT(token, now)
			if err != nil {
				return err
			}
			r := inspect.JWTReport{Source: args[0], Token: j}
			if f.bundle != "" {
				if td.IsZero() {
					if td, err = spiffeid.TrustDomainFromString(j.TrustDomain); err != nil {
						return fmt.Errorf("inspect jwt: the token's sub is no SPIFFE ID, so it names no trust domain whose bundle --bundle would be; give --trust-domain")
					}
				}
				trust, err := inspect.LoadJWTBundle(f.bundle, td)
				if err != nil {
					return err
				}
				v := inspect.VerifyJWT(token, trust, audience)
				r.Verdict = &v
			}
			if err := printData(c.OutOrStdout(), f.output, r, r.WriteText); err != nil {
				return err
			}
			if r.Verdict != nil && !r.Verdict.OK() {
				return fmt.Errorf("inspect jwt: %s does not verify: %s", args[0], r.Verdict.Reason)
			}
			return nil
		},
	}
	f.addOutput(c)
	c.Flags().StringVar(&f.bundle, "bundle", "", "verify the token against the JWT authorities of this SPIFFE bundle (SPIFFE JSON)")
	c.Flags().StringVar(&f.trustDomain, "trust-domain", "", "the trust domain the bundle belongs to (default: the token's)")
	c.Flags().StringVar(&audience, "audience", "", "the audience the verifier identifies with (with --bundle)")
	f.addAt(c)
	return c
}
