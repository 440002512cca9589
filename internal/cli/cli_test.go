package cli

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command a user can reach says what it is for and shows an example.
func TestEveryCommandExplainsItself(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%q lacks Short, Long or Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewRoot())
}

func TestReferenceIsUpToDate(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteReference(&buf); err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, buf.Bytes()) {
		t.Error("docs/cli.md is stale: run 'go run ./cmd/meshfed reference > docs/cli.md'")
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ca", "create-root"}, `required flag(s) "out" not set`},
		{[]string{"ca", "create-root", "--out", t.TempDir(), "--key-type", "dsa"}, `unknown key type "dsa"`},
		{[]string{"ca", "issue", "--ca", "x", "--out", "y"}, "give --spiffe-id for an SVID or --san for a TLS leaf"},
		{[]string{"ca", "create-intermediate", "--ca", "x", "--out", "y", "--trust-domain", "East Example"}, "is not a trust domain name"},
		{[]string{"ca", "create-root", "--out", "x", "--ttl", "forever"}, "invalid duration"},
		{[]string{"ca", "nope"}, `unknown command "nope" for "meshfed ca"`},
		{[]string{"nope"}, `unknown command "nope" for "meshfed"`},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(tc.args, nil, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("meshfed %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, stderr.String(), tc.want)
		}
	}
}
