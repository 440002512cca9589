package cli

import (
	"context"
	"fmt"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// newAgentHealthcheck is 'meshfed agent healthcheck', for an exec probe.
func newAgentHealthcheck() *cobra.Command {
	var (
		socket  string
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "healthcheck --socket PATH",
		Short: "Exit 0 if the agent's Workload API answers (for liveness probes)",
		Long: `Ask the agent's Workload API for the caller's X.509-SVID, as 'spire-agent
healthcheck' does, and exit 0 if it answers: with an SVID, or with a refusal
because the caller has none (a probe usually runs as a user no entry
matches), which still shows the agent up and attesting its callers.
Anything else (no socket, no answer within --timeout) exits 1 with the
reason. For a container's exec probe; with --metrics-listen the agent also
serves /healthz and /readyz over HTTP.`,
		Example: `  meshfed agent healthcheck --socket /run/meshfed/agent.sock`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return withWorkloadAPI(c, socket, timeout, func(ctx context.Context, client *workloadapi.Client) error {
				_, err := client.FetchX509Context(ctx)
				switch status.Code(err) {
				case codes.OK:
					fmt.Fprintf(c.OutOrStdout(), "agent is healthy: its Workload API at %s answers (with an SVID for this caller)\n", socket)
				case codes.PermissionDenied:
					fmt.Fprintf(c.OutOrStdout(), "agent is healthy: its Workload API at %s answers (no SVID for this caller)\n", socket)
				default:
					return fmt.Errorf("agent is not healthy: its Workload API at %s: %w", socket, err)
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "the agent's Workload API unix socket")
	c.Flags().Var(newTTL(&timeout, 5*time.Second), "timeout", "how long the agent has to answer")
	return c
}

// newServerHealthcheck is 'meshfed server healthcheck', for an exec probe.
func newServerHealthcheck() *cobra.Command {
	var admin adminFlags
	c := &cobra.Command{
		Use:   "healthcheck --admin-socket PATH",
		Short: "Exit 0 if the server answers and publishes a bundle (for liveness probes)",
		Long: `Ask the server on its admin socket for its trust domain's bundle, as
'spire-server healthcheck' checks its server, and exit 0 if it answers with
one holding an X.509 authority: the server is up, its store answers and its
CA is published. Anything else exits 1 with the reason. For a container's
exec probe; the server also serves /healthz and /readyz on metrics_listen.`,
		Example: `  meshfed server healthcheck --admin-socket /var/lib/meshfed/server/admin.sock`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				m, err := client.GetBundle(ctx, &pb.GetBundleRequest{})
				if err != nil {
					return fmt.Errorf("server is not healthy: %w", err)
				}
				td, err := spiffeid.TrustDomainFromString(m.GetTrustDomain())
				if err != nil {
					return fmt.Errorf("server is not healthy: its bundle names trust domain %q: %w", m.GetTrustDomain(), err)
				}
				b, err := bundle.Parse(td, m.GetSpiffeBundle())
				if err != nil {
					return fmt.Errorf("server is not healthy: its bundle: %w", err)
				}
				if len(b.X509Authorities()) == 0 {
					return fmt.Errorf("server is not healthy: the bundle of %s holds no X.509 authority", td)
				}
				fmt.Fprintf(c.OutOrStdout(), "server for %s is healthy: it answers and publishes %d X.509 authorities\n", td, len(b.X509Authorities()))
				return nil
			})
		},
	}
	admin.add(c)
	return c
}
