//go:build unix

package limits

import "syscall"

// fileLimit is the process's RLIMIT_NOFILE soft limit, or 1024 when it cannot be read.
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 {
		return uint64(rl.Cur) //nolint:unconvert // Cur is int64 on some systems
	}
	return 1024
}
