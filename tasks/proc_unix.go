//go:build unix

package tasks

import (
	"os"
	"os/exec"
	"syscall"
)

// canSwitchUser: a root agent may run a command as another user (a spec's user:).
const canSwitchUser = true

// setProcAttr puts the command in a process group of its own, so stopGroup reaches everything it
// starts, and runs it as ra when ra is set.
func setProcAttr(cmd *exec.Cmd, ra *runAs) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if ra != nil {
		// Groups replaces the agent's supplementary groups.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: ra.uid, Gid: ra.gid, Groups: ra.groups}
	}
}

// stopGroup sends SIGTERM, or SIGKILL when kill is set, to the process group p leads.
func stopGroup(p *os.Process, kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = syscall.Kill(-p.Pid, sig)
}

// fileOwner returns the uid and gid owning a file; ok is false when fi does not say.
func fileOwner(fi os.FileInfo) (uid, gid uint32, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return st.Uid, st.Gid, true
}
