package cli

import (
	"os"

	"github.com/meshfed/meshfed/internal/demo"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spf13/cobra"
)

func init() { register(newDemoCommand) }

func newDemoCommand() *cobra.Command {
	var (
		dir, keyType string
		keep         bool
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole federation story on this machine",
		Long: `Run meshfed's story on one machine, on built-in defaults: two meshes with their
own roots (east.example and west.example) whose workloads cannot verify each
other; a shared root with a name-constrained intermediate per trust domain,
each signed from a CSR so its key never leaves its domain; then real mTLS
handshakes over 127.0.0.1 that fail before and succeed after, and the proof
that one domain's intermediate cannot vouch for the other.

Every line marked ✓ is a check the demo just ran; if any check does not hold,
the demo exits 1. The PKI is written to a temporary directory, removed at the
end unless --keep or --dir is given.`,
		Example: `  meshfed demo
  meshfed demo --dir ./demo-pki     # keep the files to inspect them
  meshfed demo --key-type rsa-4096  # as the Service Mesh Hub VirtualMesh does`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return usagef("%v", err)
			}
			kept := true
			if dir == "" {
				if dir, err = os.MkdirTemp("", "meshfed-demo-"); err != nil {
					return err
				}
				if !keep {
					kept = false
					defer os.RemoveAll(dir)
				}
			}
			_, err = demo.Run(c.Context(), demo.Config{Out: c.OutOrStdout(), Dir: dir, KeyType: kt, Kept: kept})
			return err
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory for the demo's PKI files (kept); default a temporary one")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory")
	keyTypeFlag(c, &keyType)
	return c
}
