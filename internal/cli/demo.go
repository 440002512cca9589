package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshfed/meshfed/internal/demo"
	"github.com/spf13/cobra"
)

func init() { register(newDemoCommand) }

func newDemoCommand() *cobra.Command {
	var (
		dir           string
		keep, verbose bool
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole federation story on this machine, with real meshfed processes",
		Long: `Run meshfed's story on one machine, on built-in defaults (a temporary
directory, SQLite, free loopback ports), with real processes: this binary
runs again as a server and an agent for east.example and west.example, and
the demo plays their workloads through the SPIFFE Workload API (reviews in
east, a small HTTPS ratings app in west).

  1. each domain's workload certificate chains to its own root;
  2. the cross-domain mTLS call fails, with the verifier's reason;
  3. model A: a VirtualMesh controller (meshfed federation run) with a shared
     root; the running servers join with tokens written to their token files,
     get intermediates signed from their CSRs, and the call succeeds, with no
     process restarted;
  4. model B: a fresh pair, north.example and south.example, federates
     through bundle endpoints (bundle set, bundle refresh); each side
     verifies the other with the other domain's bundle;
  5. Istio policy at meshfed proxy sidecars, across north and south: with
     PeerAuthentication STRICT and an AuthorizationPolicy allowing only
     reviews, reviews' call goes through (ratings gets X-Forwarded-Client-Cert),
     plaintext is turned away, and another principal with a valid SVID gets
     403; 'meshfed policy explain' says why;
  6. the shared root rotates while reviews keeps calling ratings: every call
     must succeed.

Every line marked ✓ is a check the demo just ran; a step that does not turn
out as told fails the demo (exit 1) and is named. At the end, or on Ctrl-C,
the demo stops every process it started and removes its temporary
directory.`,
		Example: `  meshfed demo
  meshfed demo --verbose          # with the processes' logs on stderr
  meshfed demo --keep             # leave it running, print commands to look at it; Ctrl-C stops it
  meshfed demo --dir ./demo-run   # work in ./demo-run and keep its files (the processes still stop)`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("demo: finding this binary to run it: %w", err)
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if dir == "" {
				if dir, err = os.MkdirTemp("", "meshfed-demo-"); err != nil {
					return err
				}
				defer func() {
					os.RemoveAll(dir)
					fmt.Fprintf(c.OutOrStdout(), "removed %s\n", dir)
				}()
			} else {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return err
				}
				if entries, err := os.ReadDir(dir); err != nil {
					return err
				} else if len(entries) > 0 {
					return usagef("--dir %s is not empty; give a new or empty directory", dir)
				}
			}
			cfg := demo.Config{Out: c.OutOrStdout(), Binary: bin, Dir: dir, Keep: keep}
			if verbose {
				cfg.Logs = c.ErrOrStderr()
			}
			return demo.Run(ctx, cfg)
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "work in this directory and keep its files afterwards (default: a temporary directory, removed)")
	c.Flags().BoolVar(&keep, "keep", false, "leave every process running after the story and print commands to look at it; Ctrl-C stops them")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print the processes' logs (stderr)")
	return c
}
