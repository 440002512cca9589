// Package cli builds meshfed's command tree: one file per command group,
// each turning flags into calls on the internal packages that do the work.
// Results go to stdout, progress and errors to stderr; a command fails with
// exit code 1 and one line that names what was wrong and what to do.
//
// Nothing here prints a private key, a token or a secret.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X .../cli.Version=...".
var Version = "dev"

// Main runs the meshfed command line and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		var ue usageError
		fmt.Fprintln(stderr, "meshfed: "+err.Error())
		if errors.As(err, &ue) || isCobraUsageError(err) {
			return 2
		}
		return 1
	}
	return 0
}

// isCobraUsageError recognises the usage errors cobra makes itself, which it
// does not type: missing required flags, unknown commands.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"required flag(s)", "unknown command", "unknown flag", "unknown shorthand flag", "if any flags in the group"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// usageError marks errors in how a command was invoked (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// NewRoot returns the root command with every command group attached.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "meshfed",
		Short: "Federate workload identity across service meshes",
		Long: `meshfed makes workloads in separate meshes - each with its own CA and SPIFFE
trust domain - verify each other's certificates, by a shared root with
name-constrained per-domain intermediates or by exchanging SPIFFE trust
bundles, and enforces Istio's security policy on the traffic between them.`,
		Example: `  # See the whole story on this machine
  meshfed demo

  # Make a root, an intermediate for one trust domain, and a workload SVID
  meshfed ca create-root --out root
  meshfed ca create-intermediate --ca root --trust-domain east.example --out east
  meshfed ca issue --ca east --spiffe-id spiffe://east.example/ns/default/sa/reviews --out reviews
  meshfed inspect cert reviews/cert.pem`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	for _, add := range commandGroups {
		group := add()
		if group.HasSubCommands() && group.RunE == nil {
			group.Args = unknownSubcommand
			group.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		}
		root.AddCommand(group)
	}
	return root
}

// unknownSubcommand makes "meshfed ca nope" a usage error: cobra checks
// unknown subcommands only on the root.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q (see '%s --help')", args[0], c.CommandPath(), c.CommandPath())
	}
	return nil
}

// commandGroups is filled by each command group's file in its init function,
// so that adding a group touches only its own file.
var commandGroups []func() *cobra.Command

func register(f func() *cobra.Command) { commandGroups = append(commandGroups, f) }

// exactArgs is cobra.ExactArgs with a usage error naming the command.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s (see '%s --help')", c.CommandPath(), what, c.CommandPath())
		}
		return nil
	}
}

// minArgs requires at least n arguments.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("%s takes %s (see '%s --help')", c.CommandPath(), what, c.CommandPath())
		}
		return nil
	}
}
