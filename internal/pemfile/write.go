package pemfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Modes for files meshfed writes.
const (
	ModeKey    os.FileMode = 0o600 // private keys: owner only
	ModePublic os.FileMode = 0o644 // certificates, bundles, CSRs
)

// File is one file of a set written together by WriteFiles.
type File struct {
	Name string // path relative to the directory given to WriteFiles
	Data []byte
	Mode os.FileMode
}

// WriteFile atomically replaces path with data at the given mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pemfile: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// WriteFiles writes a set of files into dir (created 0755 if missing). Every
// file is first written and synced under a temporary name; only when all of
// them are on disk are they renamed into place. A failure before the renames
// leaves dir as it was.
func WriteFiles(dir string, files ...File) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pemfile: %w", err)
	}
	temps := make([]string, 0, len(files))
	cleanup := func() {
		for _, t := range temps {
			os.Remove(t)
		}
	}
	for _, f := range files {
		tmp, err := writeTemp(filepath.Join(dir, f.Name), f.Data, f.Mode)
		if err != nil {
			cleanup()
			return err
		}
		temps = append(temps, tmp)
	}
	for i, f := range files {
		if err := os.Rename(temps[i], filepath.Join(dir, f.Name)); err != nil {
			cleanup()
			return fmt.Errorf("pemfile: %w", err)
		}
	}
	return syncDir(dir)
}

// Exists reports whether any of names exists in dir, returning the first one.
func Exists(dir string, names ...string) (string, bool) {
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
			return n, true
		}
	}
	return "", false
}

func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("pemfile: %w", err)
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", fmt.Errorf("pemfile: write %s: %w", path, err)
	}
	// CreateTemp makes the file 0600, so a key is never readable by others,
	// not even for the moment before Chmod.
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("pemfile: write %s: %w", path, err)
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("pemfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("pemfile: sync %s: %w", dir, err)
	}
	return nil
}
