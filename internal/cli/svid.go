package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func init() { register(newSVIDCommand) }

func newSVIDCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "svid",
		Short: "Fetch this workload's SVID over the SPIFFE Workload API",
		Long: `Talk to a SPIFFE Workload API socket (meshfed agent's, or SPIRE agent's) as the
workload running this command: the agent identifies the caller by its process
credentials and hands out the SVIDs registered for it.`,
		Example: `  meshfed svid fetch --socket /run/meshfed/agent.sock
  meshfed svid fetch --socket /run/meshfed/agent.sock --out ./certs
  TOKEN=$(meshfed svid jwt --socket /run/meshfed/agent.sock --audience ratings)
  meshfed svid validate --socket /run/meshfed/agent.sock --audience ratings --token-file token.jwt`,
	}
	var (
		socket, out, format string
		timeout             time.Duration
	)
	fetch := &cobra.Command{
		Use:   "fetch --socket PATH [--out DIR]",
		Short: "Fetch the caller's X.509-SVID (like 'spire-agent api fetch x509')",
		Long: `Fetch the caller's X.509-SVID and trust bundles over the Workload API and print
its SPIFFE ID, expiry and the trust domains of the bundles received. With --out,
write svid.pem (the SVID and its intermediates), svid_key.pem (mode 0600) and
bundle.pem (this trust domain's roots) atomically, plus federated-<td>.pem for
each federated trust domain. The key is never printed.`,
		Example: `  meshfed svid fetch --socket /run/meshfed/agent.sock --out ./certs`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return withWorkloadAPI(c, socket, timeout, func(ctx context.Context, client *workloadapi.Client) error {
				x, err := client.FetchX509Context(ctx)
				if err != nil {
					return fmt.Errorf("workload API at %s: %w", socket, err)
				}
				if len(x.SVIDs) == 0 {
					return fmt.Errorf("workload API at %s returned no SVID", socket)
				}
				svid := x.DefaultSVID()
				var tds []string
				for _, b := range x.Bundles.Bundles() {
					tds = append(tds, b.TrustDomain().Name())
				}
				sort.Strings(tds)
				leaf := svid.Certificates[0]
				type result struct {
					SPIFFEID     string   `json:"spiffe_id"`
					NotAfter     string   `json:"not_after"`
					TrustDomains []string `json:"bundles"`
					Files        []string `json:"files,omitempty"`
				}
				res := result{SPIFFEID: svid.ID.String(), NotAfter: leaf.NotAfter.UTC().Format(time.RFC3339), TrustDomains: tds}
				if out != "" {
					certs, key, err := svid.Marshal()
					if err != nil {
						return err
					}
					files := []pemfile.File{
						{Name: "svid.pem", Data: certs, Mode: pemfile.ModePublic},
						{Name: "svid_key.pem", Data: key, Mode: pemfile.ModeKey},
					}
					for _, b := range x.Bundles.Bundles() {
						name := "federated-" + b.TrustDomain().Name() + ".pem"
						if b.TrustDomain() == svid.ID.TrustDomain() {
							name = "bundle.pem"
						}
						files = append(files, pemfile.File{Name: name, Data: pemfile.EncodeCertificates(b.X509Authorities()...), Mode: pemfile.ModePublic})
					}
					if err := pemfile.WriteFiles(out, files...); err != nil {
						return err
					}
					for _, f := range files {
						res.Files = append(res.Files, f.Name)
					}
				}
				return printData(c.OutOrStdout(), format, res, func(w io.Writer) error {
					fmt.Fprintf(w, "SPIFFE ID:     %s\n", res.SPIFFEID)
					fmt.Fprintf(w, "Expires:       %s (in %s)\n", res.NotAfter, time.Until(leaf.NotAfter).Round(time.Second))
					fmt.Fprintf(w, "Bundles:       %s\n", strings.Join(res.TrustDomains, ", "))
					if out != "" {
						fmt.Fprintf(w, "Wrote:         %s in %s\n", strings.Join(res.Files, ", "), out)
					}
					return nil
				})
			})
		},
	}
	fetch.Flags().StringVar(&socket, "socket", "", "the Workload API unix socket")
	fetch.Flags().StringVar(&out, "out", "", "write svid.pem, svid_key.pem (0600) and bundle.pem into this directory")
	fetch.Flags().Var(newTTL(&timeout, 30*time.Second), "timeout", "give up after this long")
	outputFlag(fetch, &format)
	c.AddCommand(fetch, newSVIDJWT(), newSVIDValidate())
	return c
}

// withWorkloadAPI runs fn with a client of the Workload API at socket,
// within timeout.
func withWorkloadAPI(c *cobra.Command, socket string, timeout time.Duration, fn func(context.Context, *workloadapi.Client) error) error {
	if socket == "" {
		return usagef("give --socket PATH (the agent's Workload API socket)")
	}
	target, err := unixTarget(socket)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context(), timeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(target))
	if err != nil {
		return fmt.Errorf("workload API at %s: %w", socket, err)
	}
	defer client.Close()
	return fn(ctx, client)
}

func newSVIDJWT() *cobra.Command {
	var (
		socket, format string
		audiences      []string
		timeout        time.Duration
	)
	c := &cobra.Command{
		Use:   "jwt --socket PATH --audience AUD",
		Short: "Fetch a JWT-SVID for an audience (like 'spire-agent api fetch jwt')",
		Long: `Fetch a JWT-SVID of the caller for the given audiences over the Workload API
and print the token alone on stdout, for a script to pass on (it is a bearer
credential: keep it out of logs). -o json adds its SPIFFE ID and expiry.`,
		Example: `  TOKEN=$(meshfed svid jwt --socket /run/meshfed/agent.sock --audience ratings)
  curl -H "Authorization: Bearer $TOKEN" https://ratings.west.example/`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if len(audiences) == 0 {
				return usagef("give --audience AUD (repeatable): whom the token is for")
			}
			return withWorkloadAPI(c, socket, timeout, func(ctx context.Context, client *workloadapi.Client) error {
				svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audiences[0], ExtraAudiences: audiences[1:]})
				if err != nil {
					return fmt.Errorf("workload API at %s: %w", socket, err)
				}
				res := map[string]any{"spiffe_id": svid.ID.String(), "expires": svid.Expiry.UTC().Format(time.RFC3339), "audience": svid.Audience, "token": svid.Marshal()}
				return printData(c.OutOrStdout(), format, res, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, svid.Marshal())
					return err
				})
			})
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "the Workload API unix socket")
	c.Flags().StringSliceVar(&audiences, "audience", nil, "audience of the token (repeatable)")
	c.Flags().Var(newTTL(&timeout, 30*time.Second), "timeout", "give up after this long")
	outputFlag(c, &format)
	return c
}

func newSVIDValidate() *cobra.Command {
	var (
		socket, format, tokenFile, audience string
		timeout                             time.Duration
	)
	c := &cobra.Command{
		Use:   "validate --socket PATH --audience AUD --token-file FILE",
		Short: "Validate a JWT-SVID with the agent (like 'spire-agent api validate jwt')",
		Long: `Ask the agent to validate a JWT-SVID for an audience, with the JWT bundles the
caller would get (its own trust domain's and those its entries federate
with), and print its SPIFFE ID, expiry and audience (-o json: every claim).
The token is read from a file (or stdin with "-"), not a flag, so that it
does not show in the process list.
A token that does not validate exits 1 with the agent's reason.`,
		Example: `  meshfed svid validate --socket /run/meshfed/agent.sock --audience ratings --token-file token.jwt
  echo "$TOKEN" | meshfed svid validate --socket /run/meshfed/agent.sock --audience ratings --token-file -`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if audience == "" || tokenFile == "" {
				return usagef("give --audience AUD and --token-file FILE (- for stdin)")
			}
			token, err := readTokenArg(c.InOrStdin(), tokenFile, "--token-file")
			if err != nil {
				return err
			}
			return withWorkloadAPI(c, socket, timeout, func(ctx context.Context, client *workloadapi.Client) error {
				svid, err := client.ValidateJWTSVID(ctx, token, audience)
				if err != nil {
					return fmt.Errorf("the token does not validate for %q: %w", audience, err)
				}
				res := map[string]any{"spiffe_id": svid.ID.String(), "claims": svid.Claims}
				return printData(c.OutOrStdout(), format, res, func(w io.Writer) error {
					fmt.Fprintf(w, "SPIFFE ID:     %s\n", svid.ID)
					fmt.Fprintf(w, "Expires:       %s\n", svid.Expiry.UTC().Format(time.RFC3339))
					fmt.Fprintf(w, "Audience:      %s\n", strings.Join(svid.Audience, ", "))
					return nil
				})
			})
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "the Workload API unix socket")
	c.Flags().StringVar(&audience, "audience", "", "the audience the token must be for")
	c.Flags().StringVar(&tokenFile, "token-file", "", `file holding the token ("-": stdin)`)
	c.Flags().Var(newTTL(&timeout, 30*time.Second), "timeout", "give up after this long")
	outputFlag(c, &format)
	return c
}

// maxTokenArgBytes bounds a token read by 'svid validate' and 'inspect jwt'.
const maxTokenArgBytes = 16 << 10

// readTokenArg reads a token from path, or from stdin for "-", bounded
// and trimmed; label names where it came from in errors ("--token-file").
func readTokenArg(stdin io.Reader, path, label string) (string, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, maxTokenArgBytes+1))
		if err == nil && len(data) > maxTokenArgBytes {
			err = fmt.Errorf("more than %d bytes: not a JWT-SVID", maxTokenArgBytes)
		}
	} else {
		data, err = pemfile.ReadFile(path, maxTokenArgBytes)
	}
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", label, path, err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("%s %s is empty", label, path)
	}
	return token, nil
}
