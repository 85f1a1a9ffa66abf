//go:build unix

package raftnode

import "syscall"

// modesApply: Unix permission bits are what keep other users out of the data dir.
const modesApply = true

// SetPrivateUmask makes every file and folder the process creates from now on private to its
// user (0600/0700), whatever mode the code that creates it asks for: raft's snapshot store and
// the libraries under it ask for 0644/0755.
func SetPrivateUmask() { syscall.Umask(0o077) }
