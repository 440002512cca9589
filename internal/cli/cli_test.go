package cli

import (
	"bytes"
	"os"
	"path/filepath"
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

// TestReadTokenArg: 'svid validate' reads its token from a file or stdin,
// trimmed, and refuses an empty or oversized one before it asks the agent.
func TestReadTokenArg(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token.jwt")
	if err := os.WriteFile(file, []byte("  a.b.c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readTokenArg(nil, file, "--token-file"); err != nil || got != "a.b.c" {
		t.Errorf("from a file: %q, %v", got, err)
	}
	if got, err := readTokenArg(strings.NewReader("x.y.z\n"), "-", "--token-file"); err != nil || got != "x.y.z" {
		t.Errorf("from stdin: %q, %v", got, err)
	}
	if _, err := readTokenArg(strings.NewReader(" \n"), "-", "--token-file"); err == nil || err.Error() != "--token-file - is empty" {
		t.Errorf("empty: %v", err)
	}
	if _, err := readTokenArg(strings.NewReader(strings.Repeat("a", maxTokenArgBytes+1)), "-", "--token-file"); err == nil || !strings.Contains(err.Error(), "more than 16384 bytes") {
		t.Errorf("oversized stdin: %v", err)
	}
	big := filepath.Join(dir, "big.jwt")
	if err := os.WriteFile(big, []byte(strings.Repeat("a", maxTokenArgBytes+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readTokenArg(nil, big, "--token-file"); err == nil || !strings.HasPrefix(err.Error(), "--token-file "+big+": ") {
		t.Errorf("oversized file: %v", err)
	}
}
