package cli

import (
	"context"
	"fmt"
	"path/filepath"
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

// newServerBackup is 'meshfed server backup'.
func newServerBackup() *cobra.Command {
	var (
		admin adminFlags
		out   string
	)
	c := &cobra.Command{
		Use:   "backup --admin-socket PATH --out DIR",
		Short: "Write what restores this server into a new directory, while it serves",
		Long: `Have the server write, into the new directory --out on its host, every file
of its data directory (the CA and its keys, the JWT key, a VirtualMesh
intermediate; keys stay 0600) and a snapshot of its SQLite database taken
while it serves (SQLite's VACUUM INTO: writers are not held up). The
directory appears whole or not at all. With a Postgres datastore the
database is not included: back it up with pg_dump.

To restore: stop the server, put the backup directory where its data
directory was (or point --data-dir at it), and start it. A step of a root
rotation waits for the copy, so the CA directories are copied as one
phase left them.`,
		Example: `  meshfed server backup --admin-socket east/admin.sock --out /var/backups/meshfed/east-$(date +%F)`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("give --out DIR: a directory that does not exist yet")
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.Backup(ctx, &pb.BackupRequest{OutDir: abs})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "backup of %d files written to %s\n", len(resp.GetFiles()), abs)
				if note := resp.GetDatabaseNote(); note != "" {
					fmt.Fprintf(c.OutOrStdout(), "not included: %s\n", note)
				}
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&out, "out", "", "the directory to create (on the server's host)")
	return c
}
