//go:build !linux

package integration

import "os/exec"

// dieWithTest does nothing where the kernel cannot tie a child's life to
// its parent's.
func dieWithTest(*exec.Cmd) {}
