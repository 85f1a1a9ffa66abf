package raftnode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/taskworker/taskworker/internal/store"
)

// Data dirs of earlier releases keep raft's log and stable keys in <raft dir>/raft.db
// (raft-boltdb). migrateBolt moves them into <raft dir>/wal once, at start, before anything
// opens either:
//
//  1. copy every entry (as stored: checksum frames stay valid, the index and term do not
//     change) and the stable keys into a new WAL in <raft dir>/wal.migrating, each append
//     synced;
//  2. sync that dir and rename it to wal, sync the raft dir;
//  3. rename raft.db to raft.db.migrated (kept for the operator to remove), sync the raft dir.
//
// A crash during 1 leaves wal.migrating, which the next start removes before it copies again
// from raft.db; a crash between 2 and 3 leaves wal and raft.db, and wal is complete (it only
// appears by the rename), so the next start does step 3 only.
const (
	boltFile     = "raft.db"
	boltMigrated = "raft.db.migrated"
	walDirName   = "wal"
	walMigrating = "wal.migrating"
)

// migrateStableUint64 and migrateStableBytes are the stable keys raft writes, by how it writes
// them.
var (
	migrateStableUint64 = [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm")}
	migrateStableBytes  = [][]byte{[]byte("LastVoteCand")}
)

// migrateSteps is how far migrateBolt goes: all of it in a node, fewer in the tests that
// stop it midway as a crash would.
type migrateSteps int

const (
	migrateCopy   migrateSteps = 1 // step 1 only
	migrateRename migrateSteps = 2 // steps 1 and 2
	migrateAll    migrateSteps = 3
)

// migrateBolt moves raft.db's log and stable keys into the WAL dir, when raft.db is there; it
// reports how many entries it copied (0 with nothing to do). A raft.db that does not verify is
// a *store.CorruptError and is left as it is.
func migrateBolt(raftDir string, log hclog.Logger, upTo migrateSteps) (int, error) {
	boltPath := filepath.Join(raftDir, boltFile)
	walDir := filepath.Join(raftDir, walDirName)
	tmp := filepath.Join(raftDir, walMigrating)
	if _, err := os.Stat(boltPath); errors.Is(err, fs.ErrNotExist) {
		return 0, os.RemoveAll(tmp) // nothing to move; a stale copy is not needed
	} else if err != nil {
		return 0, err
	}
	n := 0
	if _, err := os.Stat(walDir); errors.Is(err, fs.ErrNotExist) {
		if n, err = copyBolt(boltPath, tmp, log); err != nil {
			return 0, err
		}
		if upTo < migrateRename {
			return n, nil
		}
		if err := os.Rename(tmp, walDir); err != nil {
			return 0, err
		}
		if err := syncDir(raftDir); err != nil {
			return 0, err
		}
	} else if err != nil {
		return 0, err
	}
	if upTo < migrateAll {
		return n, nil
	}
	if err := os.Rename(boltPath, filepath.Join(raftDir, boltMigrated)); err != nil {
		return 0, err
	}
	return n, syncDir(raftDir)
}

// copyBolt copies raft.db into a new WAL in tmp, and syncs it; it returns the entries copied.
func copyBolt(boltPath, tmp string, log hclog.Logger) (int, error) {
	if err := os.RemoveAll(tmp); err != nil {
		return 0, err
	}
	bolt, err := store.OpenBolt(boltPath,
		&bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, store.ErrCorrupt) {
			return 0, err
		}
		return 0, fmt.Errorf("open %s to move it to the write-ahead log (is another node using it?): %w", boltPath, err)
	}
	defer bolt.Close()
	// Every entry is checked before any is copied, as at any start.
	if err := store.NewLogStore(bolt, boltPath, store.NewHealth(), nil).Verify(); err != nil {
		return 0, err
	}
	meta, wl, err := openWAL(tmp, log)
	if err != nil {
		return 0, err
	}
	n, err := copyLog(wl, bolt)
	if err == nil {
		err = copyStable(meta, bolt)
	}
	if cerr := wl.Close(); err == nil {
		err = cerr
	}
	if cerr := meta.closeDB(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(tmp)
	}
	if err != nil {
		return 0, fmt.Errorf("move %s to the write-ahead log: %w", boltPath, err)
	}
	return n, nil
}

// copyLog appends every entry of src to dst, as stored, in batches of about 1 MB.
func copyLog(dst, src raft.LogStore) (int, error) {
	first, err := src.FirstIndex()
	if err != nil {
		return 0, err
	}
	last, err := src.LastIndex()
	if err != nil || last == 0 {
		return 0, err
	}
	var batch []*raft.Log
	size := 0
	for i := first; i <= last; i++ {
		l := new(raft.Log)
		if err := src.GetLog(i, l); err != nil {
			return 0, fmt.Errorf("read entry %d: %w", i, err)
		}
		batch = append(batch, l)
		if size += len(l.Data) + len(l.Extensions); size >= 1<<20 || i == last {
			if err := dst.StoreLogs(batch); err != nil {
				return 0, fmt.Errorf("write entries up to %d: %w", i, err)
			}
			batch, size = batch[:0], 0
		}
	}
	return int(last - first + 1), nil
}

// copyStable copies raft's stable keys, those that are set.
func copyStable(dst raft.StableStore, src *raftboltdb.BoltStore) error {
	for _, k := range migrateStableUint64 {
		v, err := src.GetUint64(k)
		if errors.Is(err, raftboltdb.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		if err := dst.SetUint64(k, v); err != nil {
			return err
		}
	}
	for _, k := range migrateStableBytes {
		v, err := src.Get(k)
		if errors.Is(err, raftboltdb.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		if err := dst.Set(k, v); err != nil {
			return err
		}
	}
	return nil
}
