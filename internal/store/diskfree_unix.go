//go:build unix

package store

import (
	"fmt"
	"syscall"
)

// DiskFree is the number of bytes an unprivileged writer may still use on dir's file system.
func DiskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil //nolint:unconvert // Bsize is int32 on some systems
}
