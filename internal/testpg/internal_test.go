package testpg

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFindBinariesMissing pins the failure (not a skip) and its message when
// Postgres is not installed.
func TestFindBinariesMissing(t *testing.T) {
	saved := binGlob
	t.Cleanup(func() { binGlob = saved })
	binGlob = filepath.Join(t.TempDir(), "*", "bin")
	_, _, err := findBinaries()
	if err == nil || err.Error() != "postgres not installed: run ./scripts/test, which installs it" {
		t.Fatalf("findBinaries() error = %v, want the not-installed message", err)
	}
}

// TestFindBinariesNewest: with several major versions, the newest is used.
func TestFindBinariesNewest(t *testing.T) {
	saved := binGlob
	t.Cleanup(func() { binGlob = saved })
	root := t.TempDir()
	for _, v := range []string{"9", "15", "13"} {
		dir := filepath.Join(root, v, "bin")
		mustExec(t, filepath.Join(dir, "initdb"))
		mustExec(t, filepath.Join(dir, "postgres"))
	}
	binGlob = filepath.Join(root, "*", "bin")
	bin, version, err := findBinaries()
	if err != nil || version != "15" || bin != filepath.Join(root, "15", "bin") {
		t.Fatalf("findBinaries() = %q, %q, %v; want %q, 15", bin, version, err, filepath.Join(root, "15", "bin"))
	}
}

func mustExec(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}
