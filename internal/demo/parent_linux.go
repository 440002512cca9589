package demo

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill cmd if the demo itself dies without
// stopping it (SIGKILL), so that no meshfed process outlives the demo.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
