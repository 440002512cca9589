package attest

import (
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// The kernel ties a /proc/<pid> handle to the process it was opened for:
// after that process is gone, reads through the handle fail, so the pid being
// given to another process cannot make the handle show the newcomer. attest
// relies on this.
func TestProcHandleDiesWithProcess(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep(1) to start: %v", err)
	}
	pid := int32(cmd.Process.Pid)
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := a.openProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dir)
	if _, err := readStartTime(dir, pid); err != nil {
		t.Fatalf("while it runs: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait() // reaped: the pid is free for reuse
	if _, err := readStartTime(dir, pid); err == nil {
		t.Fatal("read stat through the handle of a reaped process")
	}
	if _, err := readExe(dir, pid, make([]byte, 256)); err == nil {
		t.Fatal("read exe through the handle of a reaped process")
	}
}
