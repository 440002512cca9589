package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFlag adds -o/--output to a command that prints state.
func outputFlag(c *cobra.Command, p *string) {
	c.Flags().StringVarP(p, "output", "o", "text", "output format: text, json or yaml")
}

// printData writes v as JSON or YAML, or calls text for the human form.
func printData(w io.Writer, format string, v any, text func(io.Writer) error) error {
	switch format {
	case "text", "table", "":
		return text(w)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		out, err := yaml.JSONToYAML(raw)
		if err != nil {
			return err
		}
		_, err = w.Write(out)
		return err
	}
	return usagef("unknown output format %q; use text, json or yaml", format)
}

// progress writes a line of progress to stderr.
func progress(c *cobra.Command, format string, args ...any) {
	fmt.Fprintf(c.ErrOrStderr(), format+"\n", args...)
}
