// Package e2e runs the real meshfed binary as a user would and checks what
// it makes with independent tools: OpenSSL, and Go's own crypto/x509.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/testpg"
)

var meshfedBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshfed-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meshfedBin = filepath.Join(dir, "meshfed")
	build := exec.Command("go", "build", "-o", meshfedBin, "../cmd/meshfed")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building meshfed:", err)
		os.Exit(1)
	}
	code := testpg.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what one run of a command produced.
type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, dir, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		code = ee.ExitCode()
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// meshfed runs the binary and fails the test unless it exits 0.
func meshfed(t *testing.T, dir string, args ...string) result {
	t.Helper()
	r := run(t, dir, meshfedBin, args...)
	if r.code != 0 {
		t.Fatalf("meshfed %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// meshfedFails runs the binary and fails the test unless it exits non-zero
// with exactly one line on stderr containing every want.
func meshfedFails(t *testing.T, dir string, args []string, wants ...string) result {
	t.Helper()
	r := run(t, dir, meshfedBin, args...)
	if r.code == 0 {
		t.Fatalf("meshfed %s: exit 0, want failure\nstdout: %s", strings.Join(args, " "), r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 1 {
		t.Errorf("meshfed %s: want one error line, got %d:\n%s", strings.Join(args, " "), len(lines), r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("meshfed %s: stderr %q does not contain %q", strings.Join(args, " "), r.stderr, w)
		}
	}
	return r
}

func opensslPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not installed: run ./scripts/test, which installs it, or apt-get install openssl")
	}
	return p
}

// openssl runs openssl and returns its combined output and exit code.
func openssl(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	r := run(t, dir, opensslPath(t), args...)
	return r.stdout + r.stderr, r.code
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
