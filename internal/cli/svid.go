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
  meshfed svid fetch --socket /run/meshfed/agent.sock --out ./certs`,
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
		},
	}
	fetch.Flags().StringVar(&socket, "socket", "", "the Workload API unix socket")
	fetch.Flags().StringVar(&out, "out", "", "write svid.pem, svid_key.pem (0600) and bundle.pem into this directory")
	fetch.Flags().Var(newTTL(&timeout, 30*time.Second), "timeout", "give up after this long")
	outputFlag(fetch, &format)
	c.AddCommand(fetch)
	return c
}
