//go:build unix

package pemfile

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteModeIgnoresUmask proves the modes are exact whatever the umask: a
// key is never more open than 0600, nor a certificate less readable than
// 0644. The umask is process-wide, so this test does not run in parallel.
func TestWriteModeIgnoresUmask(t *testing.T) {
	for _, umask := range []int{0, 0o022, 0o077} {
		t.Run(fmt.Sprintf("umask %04o", umask), func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			dir := t.TempDir()
			for _, mode := range []os.FileMode{ModeKey, ModePublic} {
				path := filepath.Join(dir, fmt.Sprintf("single-%o.pem", mode))
				if err := WriteFile(path, []byte("x"), mode); err != nil {
					t.Fatal(err)
				}
				wantFile(t, path, "x", mode)
			}
			err := WriteFiles(dir,
				File{Name: "key.pem", Data: []byte("k"), Mode: ModeKey},
				File{Name: "cert.pem", Data: []byte("c"), Mode: ModePublic},
			)
			if err != nil {
				t.Fatal(err)
			}
			wantFile(t, filepath.Join(dir, "key.pem"), "k", ModeKey)
			wantFile(t, filepath.Join(dir, "cert.pem"), "c", ModePublic)
		})
	}
}
