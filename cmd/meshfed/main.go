// Command meshfed federates workload identity across service meshes. This
// file only wires the command tree; behaviour lives in internal/.
package main

import (
	"os"

	"github.com/meshfed/meshfed/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
