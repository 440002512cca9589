//go:build !linux

package demo

import "os/exec"

// dieWithParent does nothing here: only Linux kills a child when its parent
// dies; the demo still stops every process it started when it ends.
func dieWithParent(*exec.Cmd) {}
