package pemfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dirNames lists dir, so a test can prove no temporary file was left.
func dirNames(t *testing.T, dir string) []string {
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

// wantFile fails unless path holds data with exactly mode.
func wantFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != data {
		t.Errorf("%s holds %q, want %q", filepath.Base(path), got, data)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != mode {
		t.Errorf("%s has mode %v, want %v", filepath.Base(path), fi.Mode(), mode)
	}
}

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name    string
		old     string // content before, "" for none
		oldMode os.FileMode
		mode    os.FileMode
	}{
		{"new key", "", 0, ModeKey},
		{"new certificate", "", 0, ModePublic},
		{"key replaces a public file", "old", 0o644, ModeKey},
		{"certificate replaces a key", "old", 0o600, ModePublic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "file.pem")
			if tt.old != "" {
				if err := os.WriteFile(path, []byte(tt.old), tt.oldMode); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(path, []byte("new"), tt.mode); err != nil {
				t.Fatal(err)
			}
			wantFile(t, path, "new", tt.mode)
			if got := dirNames(t, dir); !slices.Equal(got, []string{"file.pem"}) {
				t.Errorf("directory holds %q, want only file.pem", got)
			}
		})
	}
}

func TestWriteFileFails(t *testing.T) {
	dir := t.TempDir()
	t.Run("missing directory", func(t *testing.T) {
		err := WriteFile(filepath.Join(dir, "no", "file.pem"), []byte("x"), ModeKey)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want ErrNotExist", err)
		}
	})
	t.Run("target is a directory", func(t *testing.T) {
		if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		err := WriteFile(filepath.Join(dir, "sub"), []byte("x"), ModeKey)
		if err == nil || !strings.HasPrefix(err.Error(), "pemfile: rename ") {
			t.Fatalf("got %v, want a rename error", err)
		}
		if got := dirNames(t, dir); !slices.Equal(got, []string{"sub"}) {
			t.Errorf("directory holds %q, want only sub", got)
		}
	})
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("old cert"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := WriteFiles(dir,
		File{Name: "key.pem", Data: []byte("key"), Mode: ModeKey},
		File{Name: "cert.pem", Data: []byte("cert"), Mode: ModePublic},
	)
	if err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "key.pem"), "key", ModeKey)
	wantFile(t, filepath.Join(dir, "cert.pem"), "cert", ModePublic)
	if got := dirNames(t, dir); !slices.Equal(got, []string{"cert.pem", "key.pem"}) {
		t.Errorf("directory holds %q", got)
	}

	t.Run("creates the directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "b")
		if err := WriteFiles(dir, File{Name: "x.pem", Data: []byte("x"), Mode: ModePublic}); err != nil {
			t.Fatal(err)
		}
		wantFile(t, filepath.Join(dir, "x.pem"), "x", ModePublic)
	})
}

// TestWriteFilesAllOrNothing proves that when one target cannot be written,
// none of the new contents is in place and nothing temporary remains.
func TestWriteFilesAllOrNothing(t *testing.T) {
	files := []File{
		{Name: "a.pem", Data: []byte("new a"), Mode: ModePublic},
		{Name: "b.pem", Data: []byte("new b"), Mode: ModeKey},
		{Name: "c.pem", Data: []byte("new c"), Mode: ModePublic},
	}
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) // b.pem is the target that fails
		failAt  int                            // fail the nth rename (1-based); 0 for never
		wantErr string
	}{
		{
			name: "target is a directory",
			setup: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "b.pem"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "b.pem is a directory; nothing was written",
		},
		{
			name:    "rename fails half-way",
			setup:   func(t *testing.T, dir string) {},
			failAt:  2,
			wantErr: "injected; the files written before it were put back",
		},
		{
			name:    "last rename fails",
			setup:   func(t *testing.T, dir string) {},
			failAt:  3,
			wantErr: "injected; the files written before it were put back",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			// a.pem exists with old content; c.pem does not exist.
			if err := os.WriteFile(filepath.Join(dir, "a.pem"), []byte("old a"), 0o644); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir)
			before := dirNames(t, dir)
			if tt.failAt > 0 {
				n := 0
				rename = func(from, to string) error {
					if n++; n == tt.failAt {
						return errors.New("injected")
					}
					return os.Rename(from, to)
				}
				t.Cleanup(func() { rename = os.Rename })
			}

			err := WriteFiles(dir, files...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
			wantFile(t, filepath.Join(dir, "a.pem"), "old a", 0o644)
			if _, err := os.Stat(filepath.Join(dir, "c.pem")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("c.pem exists after a failed WriteFiles: %v", err)
			}
			if got := dirNames(t, dir); !slices.Equal(got, before) {
				t.Errorf("directory holds %q, want %q as before", got, before)
			}
		})
	}
}

func TestExists(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "b.pem"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		names  []string
		want   string
		wantOK bool
	}{
		{[]string{"a.pem", "b.pem", "c.pem"}, "b.pem", true},
		{[]string{"a.pem", "c.pem"}, "", false},
		{nil, "", false},
	}
	for _, tt := range tests {
		got, ok := Exists(dir, tt.names...)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Exists(%q) = %q, %v; want %q, %v", tt.names, got, ok, tt.want, tt.wantOK)
		}
	}
}
