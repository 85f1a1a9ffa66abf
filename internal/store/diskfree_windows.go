package store

import (
	"fmt"

	"golang.org/x/sys/windows"
)

// DiskFree is the number of bytes the calling user may still use on dir's volume.
func DiskFree(dir string) (uint64, error) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, fmt.Errorf("disk free %s: %w", dir, err)
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, fmt.Errorf("disk free %s: %w", dir, err)
	}
	return avail, nil
}
