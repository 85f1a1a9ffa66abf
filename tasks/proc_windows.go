package tasks

import (
	"os"
	"os/exec"
	"syscall"
)

// canSwitchUser is false: Windows has no uid to switch to, so a spec's user: is refused when the
// task file is loaded.
const canSwitchUser = false

// setProcAttr starts the command in a new process group; ra is always nil here (canSwitchUser).
func setProcAttr(cmd *exec.Cmd, _ *runAs) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

// stopGroup terminates the command's process. Windows has no SIGTERM for a console-less child,
// so both a stop and a kill end it at once; processes it started itself are not reached.
func stopGroup(p *os.Process, _ bool) {
	_ = p.Kill()
}

// fileOwner reports no owner: Windows files have SIDs, not uids.
func fileOwner(os.FileInfo) (uid, gid uint32, ok bool) { return 0, 0, false }
