package attest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Listen makes a socket workloads connect to: the directory is created 0755 if missing, a
// socket file nobody answers on is removed, and the socket is made 0777.
func Listen(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("socket directory: %w", err)
		}
		// MkdirAll's mode passes through the umask; callers of every uid
		// must be able to reach the socket; attestation is the gate.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("socket directory: %w", err)
		}
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it or choose another socket path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by a running agent; stop it or choose another socket path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket: %w", err)
	}
	return ln, nil
}
