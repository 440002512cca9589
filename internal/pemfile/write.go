package pemfile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Modes for files meshfed writes.
const (
	ModeKey    os.FileMode = 0o600 // private keys: owner only
	ModePublic os.FileMode = 0o644 // certificates, bundles, CSRs
)

// rename is os.Rename; tests replace it to make a rename fail half-way.
var rename = os.Rename

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
	return SyncDir(filepath.Dir(path))
}

// WriteFiles writes a set of files into dir (created 0755 if missing) so that
// either all of them are replaced or none is. Every file is first written and
// synced under a temporary name; only when all of them are on disk are they
// renamed into place. A target that is a directory is refused before any
// rename. If a rename still fails, the files already renamed are put back as
// they were (from hard links taken just before; on a file system without
// hard links a file that existed cannot be put back). No temporary file is
// left behind.
func WriteFiles(dir string, files ...File) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pemfile: %w", err)
	}
	for _, f := range files {
		target := filepath.Join(dir, f.Name)
		if fi, err := os.Lstat(target); err == nil && fi.IsDir() {
			return fmt.Errorf("pemfile: %s is a directory; nothing was written", target)
		}
	}
	var temps []string
	var olds []old
	cleanup := func() {
		for _, t := range temps {
			os.Remove(t)
		}
		for _, o := range olds {
			if o.backup != "" {
				os.Remove(o.backup)
			}
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
	for _, f := range files {
		o, err := keepOld(filepath.Join(dir, f.Name))
		if err != nil {
			cleanup()
			return err
		}
		olds = append(olds, o)
	}
	for i, f := range files {
		if err := rename(temps[i], filepath.Join(dir, f.Name)); err != nil {
			for j := i - 1; j >= 0; j-- {
				olds[j].restore(filepath.Join(dir, files[j].Name))
			}
			cleanup()
			SyncDir(dir)
			return fmt.Errorf("pemfile: %w; the files written before it were put back", err)
		}
	}
	cleanup()
	return SyncDir(dir)
}

// old is what a target of WriteFiles was before it was replaced.
type old struct {
	existed bool
	backup  string // a hard link to the old version; "" if none could be made
}

// keepOld hard-links path, if it exists, to a temporary name beside it.
func keepOld(path string) (old, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return old{}, nil
	}
	for range 10 {
		name := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.old-%016x", filepath.Base(path), rand.Uint64()))
		err := os.Link(path, name)
		if err == nil {
			return old{existed: true, backup: name}, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return old{existed: true}, nil // no hard links here
		}
	}
	return old{}, fmt.Errorf("pemfile: cannot pick a backup name beside %s", path)
}

// restore undoes the rename of a new version onto path.
func (o old) restore(path string) {
	switch {
	case !o.existed:
		os.Remove(path)
	case o.backup != "":
		os.Rename(o.backup, path)
	}
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

// SyncDir syncs a directory, so that the names in it survive a crash.
func SyncDir(dir string) error {
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
