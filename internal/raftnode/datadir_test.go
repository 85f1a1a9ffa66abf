package raftnode

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDataDirOpenToOthersIsRefusedAndModesInsideAreFixed(t *testing.T) {
	if !modesApply {
		t.Skip("permission bits do not keep users out on this platform")
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := PrepareDataDir(dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("a missing data dir: %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("a missing data dir is made %04o, want 0700", fi.Mode().Perm())
	}

	for _, mode := range []fs.FileMode{0o755, 0o750, 0o701, 0o710, 0o707} {
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		err := PrepareDataDir(dir, slog.New(slog.DiscardHandler))
		if !errors.Is(err, ErrDataDirOpen) || !strings.Contains(err.Error(), "chmod 700 "+dir) || strings.Contains(err.Error(), "\n") {
			t.Errorf("mode %04o: %v, want one line naming the dir and `chmod 700 %s`", mode, err, dir)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}

	// What an older release, raft's snapshot store or an operator left readable.
	snap := filepath.Join(dir, "raft", "snapshots", "2-10-123")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	// Past the umask, which may be 0077 for the whole process (SetPrivateUmask).
	for d := snap; d != dir; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]fs.FileMode{
		filepath.Join(snap, "state.bin"):          0o644,
		filepath.Join(dir, "raft-id"):             0o644,
		filepath.Join(dir, "gossip-peers.json"):   0o666,
		filepath.Join(dir, "tasklogs", "x.jsonl"): 0o640,
		filepath.Join(dir, "script.sh"):           0o755,
	}
	for p, mode := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the test's umask
			t.Fatal(err)
		}
		if d := filepath.Dir(p); d != dir {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(outside, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	if err := PrepareDataDir(dir, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
		t.Fatal(err)
	}
	// 5 files and 4 folders (raft, raft/snapshots, the snapshot and tasklogs; the data dir is 0700).
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "off 9 files and folders") {
		t.Errorf("the fix is not reported, or miscounted: %s", log.String())
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %04o after start: group or others can reach it", p, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "script.sh")); fi.Mode().Perm() != 0o700 {
		t.Errorf("an executable keeps its owner's bits: %04o, want 0700", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o644 {
		t.Errorf("a file outside the data dir, behind a link, was changed to %04o", fi.Mode().Perm())
	}
}
