package raftnode

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
	"go.etcd.io/bbolt"

	"github.com/taskworker/taskworker/internal/store"
)

// raft's log lives in <raft dir>/wal: hashicorp/raft-wal's segment files, which take one fsync
// per append (bbolt, under raft-boltdb, takes two), and wal-meta.db, a small bbolt file in
// raft-wal's layout that lists the segments and holds raft's stable keys (term and vote).

// walSegmentSize is the size of each segment file. raft-wal preallocates a segment when it
// starts one, so a small data dir (a test's tmpfs, a small volume) must hold one, and a full
// disk fails at the next segment, not at the next append. A rotation costs a few fsyncs (the
// seal, the meta file's commit, the new file's directory entry), a few a second at most under
// load.
var walSegmentSize = 4 << 20

// walMetaFile is raft-wal's name for the meta file.
const walMetaFile = "wal-meta.db"

// The buckets and key of raft-wal's meta file (its metadb package's).
var (
	walMetaBucket   = []byte("wal-meta")
	walStableBucket = []byte("stable")
	walMetaKey      = []byte("m")
)

// walMeta is raft-wal's MetaStore and raft's StableStore, on the meta file. It is opened once
// and outlives the WAL instances walLog opens on it (their Close leaves it open); closeDB
// closes it. Unlike raft-wal's own, it opens the file with a lock timeout, so a second node on
// the same data dir fails instead of waiting for ever, and it repairs a segment sealed without
// its record (Load).
type walMeta struct {
	path string
	db   *bbolt.DB
	// failCommit, when set, fails CommitState (tests: a full disk during a segment rotation).
	failCommit func() error
}

// openWALMeta opens dir's meta file, creating it (in a temporary file renamed into place, as
// raft-wal does) when it is missing.
func openWALMeta(dir string) (*walMeta, error) {
	path := filepath.Join(dir, walMetaFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := initWALMeta(dir, path); err != nil {
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
	} else if err != nil {
		return nil, err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	m := &walMeta{path: path, db: db}
	if err := db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(walMetaBucket) == nil || tx.Bucket(walStableBucket) == nil {
			return errors.New("a bucket is missing")
		}
		return nil
	}); err != nil {
		_ = db.Close()
		return nil, err
	}
	return m, nil
}

func initWALMeta(dir, path string) error {
	tmp := path + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	db, err := bbolt.Open(tmp, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucket(walMetaBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucket(walStableBucket)
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// Load reads the list of segments. A tail segment that is sealed in its file but not in the
// list is recorded sealed, with an empty segment after it, before the list is returned.
// raft-wal seals a full segment in the append that fills it and records that in the meta file
// afterwards, in the background; if that record fails (a full disk) or the process dies before
// it, raft-wal reopens the sealed file as its tail and fails every later append ("segment is
// sealed").
func (m *walMeta) Load(dir string) (types.PersistentState, error) {
	var st types.PersistentState
	err := m.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(walMetaBucket).Get(walMetaKey)
		if raw == nil {
			return nil
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("%w: %s does not decode: %v", types.ErrCorrupt, m.path, err)
		}
		return nil
	})
	if err != nil || len(st.Segments) == 0 {
		return st, err
	}
	tail := &st.Segments[len(st.Segments)-1]
	if !tail.SealTime.IsZero() {
		return st, nil
	}
	sw, err := segment.NewFiler(dir, walfs.New()).RecoverTail(*tail)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil // raft-wal creates it
	}
	if err != nil {
		return st, err
	}
	sealed, indexStart, err := sw.Sealed()
	last := sw.LastIndex()
	if cerr := sw.Close(); err == nil {
		err = cerr
	}
	if err != nil || !sealed {
		return st, err
	}
	now := time.Now()
	tail.SealTime, tail.MaxIndex, tail.IndexStart = now, last, indexStart
	st.Segments = append(st.Segments, types.SegmentInfo{
		ID: st.NextSegmentID, BaseIndex: last + 1, MinIndex: last + 1,
		SizeLimit: tail.SizeLimit, Codec: tail.Codec, CreateTime: now,
	})
	st.NextSegmentID++
	if err := m.CommitState(st); err != nil {
		return st, fmt.Errorf("record the sealed segment %d: %w", tail.ID, err)
	}
	return st, nil
}

// CommitState replaces the list of segments, durably.
func (m *walMeta) CommitState(st types.PersistentState) error {
	if m.failCommit != nil {
		if err := m.failCommit(); err != nil {
			return err
		}
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return m.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(walMetaBucket).Put(walMetaKey, raw) })
}

// GetStable reads a stable key; nil when it is not set.
func (m *walMeta) GetStable(k []byte) ([]byte, error) {
	var v []byte
	err := m.db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(walStableBucket).Get(k); b != nil {
			v = append([]byte{}, b...)
		}
		return nil
	})
	return v, err
}

// SetStable writes a stable key durably; nil deletes it.
func (m *walMeta) SetStable(k, v []byte) error {
	return m.db.Update(func(tx *bbolt.Tx) error {
		if v == nil {
			return tx.Bucket(walStableBucket).Delete(k)
		}
		return tx.Bucket(walStableBucket).Put(k, v)
	})
}

// Close leaves the file open: it is a WAL instance's, and walLog may open another.
func (m *walMeta) Close() error { return nil }

// closeDB closes the meta file.
func (m *walMeta) closeDB() error { return m.db.Close() }

// raft.StableStore, with raft-wal's encoding (numbers little endian).

func (m *walMeta) Set(k, v []byte) error        { return m.SetStable(k, v) }
func (m *walMeta) Get(k []byte) ([]byte, error) { return m.GetStable(k) }
func (m *walMeta) SetUint64(k []byte, v uint64) error {
	return m.SetStable(k, binary.LittleEndian.AppendUint64(nil, v))
}

func (m *walMeta) GetUint64(k []byte) (uint64, error) {
	v, err := m.GetStable(k)
	switch {
	case err != nil:
		return 0, err
	case len(v) == 0:
		return 0, nil
	case len(v) != 8:
		return 0, fmt.Errorf("stable key %q holds %d bytes, not a number", k, len(v))
	}
	return binary.LittleEndian.Uint64(v), nil
}

var (
	_ types.MetaStore  = (*walMeta)(nil)
	_ raft.StableStore = (*walMeta)(nil)
)

// walLog is raft's log store on raft-wal. When an append fails because raft-wal could not
// start its next segment (its background rotation failed: a full disk), raft-wal would fail
// every append from then on; walLog then opens the WAL again (which records the sealed segment
// and starts the next: walMeta.Load) and retries, at each append until that succeeds. Readers
// keep the old instance until a new one is open.
type walLog struct {
	dir  string
	meta *walMeta
	log  hclog.Logger

	mu sync.RWMutex
	w  *wal.WAL
	// After a failed reopen, appends fail with its error until retryAt, rather than read the
	// tail segment again on each of raft's retries while the disk is still full.
	retryAt time.Time
	failed  error
}

// reopenBackoff is how long after a failed reopen the next append tries again.
const reopenBackoff = 250 * time.Millisecond

// openWALLog opens (or creates) the WAL in dir on meta.
func openWALLog(dir string, meta *walMeta, log hclog.Logger) (*walLog, error) {
	l := &walLog{dir: dir, meta: meta, log: log}
	w, err := l.open()
	if err != nil {
		return nil, err
	}
	l.w = w
	return l, nil
}

func (l *walLog) open() (*wal.WAL, error) {
	return wal.Open(l.dir, wal.WithMetaStore(l.meta), wal.WithSegmentSize(walSegmentSize), wal.WithLogger(l.log))
}

func (l *walLog) cur() (*wal.WAL, func()) {
	l.mu.RLock()
	return l.w, l.mu.RUnlock
}

// FirstIndex is the first index stored, 0 when none is.
func (l *walLog) FirstIndex() (uint64, error) {
	w, done := l.cur()
	defer done()
	return w.FirstIndex()
}

// LastIndex is the last index stored, 0 when none is.
func (l *walLog) LastIndex() (uint64, error) {
	w, done := l.cur()
	defer done()
	return w.LastIndex()
}

// GetLog reads the entry at index.
func (l *walLog) GetLog(index uint64, log *raft.Log) error {
	w, done := l.cur()
	defer done()
	return w.GetLog(index, log)
}

// StoreLog stores one entry.
func (l *walLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

// StoreLogs appends entries, durably (one fsync).
func (l *walLog) StoreLogs(logs []*raft.Log) error {
	w, done := l.cur()
	err := w.StoreLogs(logs)
	done()
	if !errors.Is(err, wal.ErrSealed) {
		return err
	}
	if err := l.reopen(w); err != nil {
		return fmt.Errorf("append after a failed segment rotation: %w", err)
	}
	w, done = l.cur()
	defer done()
	return w.StoreLogs(logs)
}

// reopen replaces the WAL instance stuck returned ErrSealed with a new one, unless another
// caller did already.
func (l *walLog) reopen(stuck *wal.WAL) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != stuck {
		return nil
	}
	if time.Now().Before(l.retryAt) {
		return l.failed
	}
	w, err := l.open()
	if err != nil {
		l.retryAt, l.failed = time.Now().Add(reopenBackoff), err
		return err
	}
	l.log.Warn("reopened the write-ahead log after a failed segment rotation")
	l.w = w
	return stuck.Close()
}

// DeleteRange removes the entries from min to max, a prefix or a suffix of the log.
func (l *walLog) DeleteRange(min, max uint64) error {
	w, done := l.cur()
	defer done()
	return w.DeleteRange(min, max)
}

// IsMonotonic tells raft that the log takes no gaps: after a snapshot is installed raft
// empties it rather than leave a gap before the next append.
func (l *walLog) IsMonotonic() bool { return true }

// Close closes the WAL; the meta file stays open (closeDB).
func (l *walLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Close()
}

var _ raft.MonotonicLogStore = (*walLog)(nil)

// openWAL opens the meta file and the log in dir, which it creates when missing. Damage is a
// *store.CorruptError; a lock held by another process, or a disk that refuses (full, read-only,
// failing), stays the error it is.
func openWAL(dir string, log hclog.Logger) (_ *walMeta, _ *walLog, err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt's assertions on a damaged page
			err = &store.CorruptError{File: dir, What: "the write-ahead log cannot be read", Err: fmt.Errorf("%v", r)}
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", dir, err)
	}
	meta, err := openWALMeta(dir)
	if err != nil {
		return nil, nil, walOpenError(filepath.Join(dir, walMetaFile), "bbolt cannot open it", err)
	}
	l, err := openWALLog(dir, meta, log)
	if err != nil {
		_ = meta.closeDB()
		return nil, nil, walOpenError(dir, "the write-ahead log cannot be opened", err)
	}
	return meta, l, nil
}

func walOpenError(file, what string, err error) error {
	switch {
	case errors.Is(err, bbolt.ErrTimeout):
		return err
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EROFS),
		errors.Is(err, syscall.EIO), errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return err // the disk or the process, not the files
	}
	return &store.CorruptError{File: file, What: what, Err: err}
}

// syncDir makes a directory's entries (a rename, a new file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
