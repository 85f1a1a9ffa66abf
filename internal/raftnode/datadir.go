package raftnode

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// The data dir holds the cluster CA key, the join token, the management credential and every
// task's input and result (in raft's log and snapshots), so it is the agent's user's alone: no
// other user of the host may read, write or enter it (the threat model in DESIGN.md). As ssh
// refuses a private key that others can read, the agent refuses a data dir that others can reach
// rather than fix it silently: the operator who made it so should learn that it was exposed.
// Inside it, the agent runs under umask 0077 (SetPrivateUmask) and fixes at start whatever an
// older release, raft (whose snapshot store makes its files through the umask) or an operator left
// readable.

// ErrDataDirOpen marks a data dir that group or others can reach.
var ErrDataDirOpen = errors.New("data dir is open to other users")

// PrepareDataDir makes a missing data dir 0700, refuses one that group or others can reach, and
// takes every group and other permission bit off what it holds, saying so when it had to.
func PrepareDataDir(dir string, log *slog.Logger) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create data dir: %w", err)
		}
		// MkdirAll's mode goes through the umask: make sure of it.
		return os.Chmod(dir, 0o700)
	case err != nil:
		return fmt.Errorf("data dir: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("data dir %s is not a directory", dir)
	}
	if err := checkDataDirMode(dir, fi.Mode()); err != nil {
		return err
	}
	fixed, err := fixDataDirModes(dir)
	if fixed > 0 {
		log.Warn(fmt.Sprintf("took group and other permissions off %d files and folders in the data dir: other users of this host could read them until now", fixed), "dir", dir)
	}
	return err
}

// checkDataDirMode refuses a data dir whose mode gives group or others any access.
func checkDataDirMode(dir string, mode fs.FileMode) error {
	if !modesApply || mode.Perm()&0o077 == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s has mode %04o, which lets other users of this host read the cluster's secrets; "+
		"run `chmod 700 %s` and start again", ErrDataDirOpen, dir, mode.Perm(), dir)
}

// fixDataDirModes takes the group and other bits off every file and folder under dir (0644 →
// 0600, 0755 → 0700), and returns how many it changed. Symbolic links are left alone: chmod would
// follow them out of the dir.
func fixDataDirModes(dir string) (fixed int, err error) {
	if !modesApply {
		return 0, nil
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // removed while we walk (a temporary file)
				return nil
			}
			return fmt.Errorf("data dir modes: %w", err)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data dir modes: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			if err := os.Chmod(path, perm&^0o077); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("data dir modes: %w", err)
			}
			fixed++
		}
		return nil
	})
	return fixed, err
}
