package raftnode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/internal/store"
)

// listFSM is a raft.FSM that keeps the commands it applied, in order.
type listFSM struct {
	mu   sync.Mutex
	cmds []string
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, string(l.Data))
	return len(f.cmds)
}

func (f *listFSM) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) { return listSnap(f.list()), nil }

func (f *listFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var cmds []string
	if err := json.NewDecoder(rc).Decode(&cmds); err != nil {
		return err
	}
	f.mu.Lock()
	f.cmds = cmds
	f.mu.Unlock()
	return nil
}

type listSnap []string

func (s listSnap) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (listSnap) Release() {}

// raftOn starts a single-node raft on the stores, bootstrapping it when they hold nothing, and
// waits until it leads.
func raftOn(t *testing.T, fsm raft.FSM, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore) *raft.Raft {
	t.Helper()
	c := raft.DefaultConfig()
	c.LocalID = "n1"
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold, c.SnapshotInterval = 1<<40, time.Hour // only the snapshots the test takes
	c.TrailingLogs = 3
	c.Logger = hclog.NewNullLogger()
	_, trans := raft.NewInmemTransport("n1")
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		t.Fatal(err)
	}
	if !existing {
		cfg := raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: trans.LocalAddr(), Suffrage: raft.Voter}}}
		if err := raft.BootstrapCluster(c, logs, stable, snaps, trans, cfg); err != nil {
			t.Fatal(err)
		}
	}
	r, err := raft.NewRaft(c, fsm, logs, stable, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("single node never led")
		}
		select {
		case <-r.LeaderCh():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return r
}

func applyAll(t *testing.T, r *raft.Raft, prefix string, n int) []string {
	t.Helper()
	var cmds []string
	for i := 0; i < n; i++ {
		c := fmt.Sprintf("%s-%d", prefix, i)
		if err := r.Apply([]byte(c), 10*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	return cmds
}

// boltState is what raft left in raft.db: every entry as stored, and the stable keys.
type boltState struct {
	first, last uint64
	logs        []raft.Log
	term        uint64
	voteTerm    uint64
	voteCand    []byte
}

func readStores(t *testing.T, logs raft.LogStore, stable raft.StableStore) boltState {
	t.Helper()
	var s boltState
	var err error
	if s.first, err = logs.FirstIndex(); err != nil {
		t.Fatal(err)
	}
	if s.last, err = logs.LastIndex(); err != nil {
		t.Fatal(err)
	}
	for i := s.first; i <= s.last && s.last > 0; i++ {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		l.AppendedAt = l.AppendedAt.UTC().Round(0)
		s.logs = append(s.logs, l)
	}
	if s.term, err = stable.GetUint64([]byte("CurrentTerm")); err != nil {
		t.Fatal(err)
	}
	if s.voteTerm, err = stable.GetUint64([]byte("LastVoteTerm")); err != nil {
		t.Fatal(err)
	}
	if s.voteCand, err = stable.Get([]byte("LastVoteCand")); err != nil {
		t.Fatal(err)
	}
	return s
}

// oldReleaseDir makes a raft dir as the previous release wrote it: raft-boltdb's raft.db
// (entries in the checksum frame), file snapshots, a single-node raft that applied commands,
// took a snapshot (so the log no longer starts at 1) and applied more. It returns the dir, the
// commands applied and what raft.db holds.
func oldReleaseDir(t *testing.T) (string, []string, boltState) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bolt, err := store.OpenBolt(filepath.Join(dir, boltFile), &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	h := store.NewHealth()
	logs, stable := store.NewLogStore(bolt, "raft.db", h, nil), store.NewStableStore(bolt, "raft.db", h, nil)
	f := &listFSM{}
	r := raftOn(t, f, logs, stable, snaps)
	cmds := applyAll(t, r, "before-snapshot", 20)
	if err := r.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	cmds = append(cmds, applyAll(t, r, "after-snapshot", 15)...)
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if got := f.list(); !reflect.DeepEqual(got, cmds) {
		t.Fatalf("FSM before the move = %v", got)
	}
	// What raft.db holds, read raw (the frames as stored).
	want := readStores(t, bolt, bolt)
	if want.first <= 1 || want.last < want.first+15 || want.term == 0 || len(want.voteCand) == 0 {
		t.Fatalf("raft.db holds entries %d-%d, term %d, vote %q: want a compacted log, a term and a vote",
			want.first, want.last, want.term, want.voteCand)
	}
	if err := bolt.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, cmds, want
}

// checkMigrated opens the WAL in dir, checks it holds exactly want, starts raft on it, checks
// the FSM comes back with cmds and takes one more command, and that the files are as a
// finished move leaves them.
func checkMigrated(t *testing.T, dir string, cmds []string, want boltState) {
	t.Helper()
	for name, exists := range map[string]bool{walDirName: true, boltMigrated: true, boltFile: false, walMigrating: false} {
		if _, err := os.Stat(filepath.Join(dir, name)); (err == nil) != exists {
			t.Errorf("%s exists: %t, want %t", name, err == nil, exists)
		}
	}
	meta, wl, err := openWAL(filepath.Join(dir, walDirName), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer meta.closeDB()
	defer wl.Close()
	if got := readStores(t, wl, meta); !reflect.DeepEqual(got, want) {
		t.Fatalf("the WAL holds\n%+v\nraft.db held\n%+v", got, want)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	h := store.NewHealth()
	f := &listFSM{}
	r := raftOn(t, f, store.NewLogStore(wl, "wal", h, nil), store.NewStableStore(meta, "wal-meta.db", h, nil), snaps)
	defer func() { _ = r.Shutdown().Error() }()
	// The FSM is the snapshot and the log replayed: every command, in order.
	if err := r.Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if got := f.list(); !reflect.DeepEqual(got, cmds) {
		t.Fatalf("FSM after the move =\n%v\nwant\n%v", got, cmds)
	}
	if term, _ := meta.GetUint64([]byte("CurrentTerm")); term < want.term {
		t.Errorf("term after restart %d < %d before the move", term, want.term)
	}
	more := applyAll(t, r, "after-move", 3)
	if got := f.list(); !reflect.DeepEqual(got, append(append([]string(nil), cmds...), more...)) {
		t.Errorf("FSM after more commands = %v", got)
	}
}

func TestRaftDBOfAnEarlierReleaseMovesToTheWAL(t *testing.T) {
	dir, cmds, want := oldReleaseDir(t)
	n, err := migrateBolt(dir, hclog.NewNullLogger(), migrateAll)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want.logs) {
		t.Errorf("moved %d entries, raft.db held %d", n, len(want.logs))
	}
	checkMigrated(t, dir, cmds, want)
	// Done once: the next start has nothing to move.
	if n, err := migrateBolt(dir, hclog.NewNullLogger(), migrateAll); n != 0 || err != nil {
		t.Errorf("second move = %d, %v; want nothing to do", n, err)
	}
}

// A crash during the move, at each step, leaves a dir the next start moves correctly.
func TestMoveToTheWALInterruptedAtEachStepCompletesOnTheNextStart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash func(t *testing.T, dir string)
	}{
		{"while copying", func(t *testing.T, dir string) {
			// A partial copy: the first batch of entries is in, the stable keys are not.
			meta, wl, err := openWAL(filepath.Join(dir, walMigrating), hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, boltFile)})
			if err != nil {
				t.Fatal(err)
			}
			first, _ := bolt.FirstIndex()
			var l raft.Log
			if err := bolt.GetLog(first, &l); err != nil {
				t.Fatal(err)
			}
			if err := wl.StoreLogs([]*raft.Log{&l}); err != nil {
				t.Fatal(err)
			}
			_ = bolt.Close()
			_ = wl.Close()
			_ = meta.closeDB()
		}},
		{"after the copy", func(t *testing.T, dir string) {
			if _, err := migrateBolt(dir, hclog.NewNullLogger(), migrateCopy); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, walMigrating)); err != nil {
				t.Fatalf("no copy in progress: %v", err)
			}
		}},
		{"after the rename of the copy", func(t *testing.T, dir string) {
			if _, err := migrateBolt(dir, hclog.NewNullLogger(), migrateRename); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, boltFile)); err != nil {
				t.Fatalf("raft.db was moved aside: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, cmds, want := oldReleaseDir(t)
			tc.crash(t, dir)
			if _, err := migrateBolt(dir, hclog.NewNullLogger(), migrateAll); err != nil {
				t.Fatal(err)
			}
			checkMigrated(t, dir, cmds, want)
		})
	}
}

// A raft.db that does not verify is not moved: the node stops naming it, and raft.db stays.
func TestCorruptRaftDBIsNotMoved(t *testing.T) {
	dir, _, want := oldReleaseDir(t)
	db := filepath.Join(dir, boltFile)
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	last := want.logs[len(want.logs)-1].Data
	i := bytes.LastIndex(b, last[len(last)-8:])
	if i < 0 {
		t.Fatal("the last entry's bytes are not in raft.db")
	}
	b[i] ^= 1
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = migrateBolt(dir, hclog.NewNullLogger(), migrateAll)
	var ce *store.CorruptError
	if !errors.As(err, &ce) || ce.File != db {
		t.Fatalf("move of a damaged raft.db = %v, want a CorruptError naming it", err)
	}
	if _, err := os.Stat(db); err != nil {
		t.Errorf("raft.db after a refused move: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, walDirName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a WAL was made from a damaged raft.db: %v", err)
	}
}

// smallSegments makes raft-wal start a new segment every few entries, for the test.
func smallSegments(t *testing.T) {
	old := walSegmentSize
	walSegmentSize = 4096
	t.Cleanup(func() { walSegmentSize = old })
}

func entry(i uint64) *raft.Log {
	return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, 700)}
}

// appendUntil appends entries from next until one fails, at most n; it returns the next index
// to append and the failure.
func appendUntil(l raft.LogStore, next uint64, n int) (uint64, error) {
	for ; n > 0; n-- {
		if err := l.StoreLogs([]*raft.Log{entry(next)}); err != nil {
			return next, err
		}
		next++
	}
	return next, nil
}

func checkEntries(t *testing.T, l raft.LogStore, last uint64) {
	t.Helper()
	if got, _ := l.LastIndex(); got != last {
		t.Fatalf("last index %d, want %d", got, last)
	}
	for i := uint64(1); i <= last; i++ {
		var got raft.Log
		if err := l.GetLog(i, &got); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if want := entry(i); got.Index != i || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("entry %d reads back as index %d, %d bytes", i, got.Index, len(got.Data))
		}
	}
}

// raft-wal starts a new segment in the background after the append that fills one; when that
// fails (the meta file cannot be written: a full disk), raft-wal fails every later append.
// Appends fail while the disk does, and succeed again by themselves once it takes writes; no
// entry is lost, and the same holds across a restart from that state (a crash there).
func TestFailedSegmentRotationRecoversWhenTheDiskDoes(t *testing.T) {
	smallSegments(t)
	dir := filepath.Join(t.TempDir(), "wal")
	meta, wl, err := openWAL(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var full error
	meta.failCommit = func() error { mu.Lock(); defer mu.Unlock(); return full }
	setFull := func(err error) { mu.Lock(); full = err; mu.Unlock() }

	next, err := appendUntil(wl, 1, 20) // several segments
	if err != nil {
		t.Fatal(err)
	}
	setFull(errors.New("no space left on device (injected)"))
	next, err = appendUntil(wl, next, 50)
	if err == nil {
		t.Fatal("50 appends with the meta file unwritable all succeeded: no segment was started")
	}
	t.Logf("append %d failed: %v", next, err)
	if _, err := appendUntil(wl, next, 1); err == nil {
		t.Fatal("an append succeeded while the meta file was still unwritable")
	}
	checkEntries(t, wl, next-1) // reads go on meanwhile
	setFull(nil)
	// The next append retries at most reopenBackoff after the last failed one.
	if localcluster.Until(10*time.Second, 20*time.Millisecond, func() bool {
		_, err = appendUntil(wl, next, 1)
		return err == nil
	}) != nil {
		t.Fatalf("append once the disk takes writes again: %v", err)
	}
	if next, err = appendUntil(wl, next+1, 20); err != nil {
		t.Fatalf("append once the disk takes writes again: %v", err)
	}
	checkEntries(t, wl, next-1)

	// The same failure, then the process ends there: the next start records the sealed segment.
	setFull(errors.New("no space left on device (injected)"))
	next, err = appendUntil(wl, next, 50)
	if err == nil {
		t.Fatal("no append failed")
	}
	setFull(nil)
	_ = wl.Close()
	_ = meta.closeDB()
	meta, wl, err = openWAL(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer meta.closeDB()
	defer wl.Close()
	checkEntries(t, wl, next-1)
	if next, err = appendUntil(wl, next, 20); err != nil {
		t.Fatalf("append after a restart from a segment sealed without its record: %v", err)
	}
	checkEntries(t, wl, next-1)
}

// The WAL's files are private to the agent's user under the agent's umask, and a second opener
// of the same dir fails instead of waiting for ever.
func TestWALIsLockedToOneOpener(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	meta, wl, err := openWAL(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer meta.closeDB()
	defer wl.Close()
	done := make(chan error, 1)
	go func() {
		m2, w2, err := openWAL(dir, hclog.NewNullLogger())
		if err == nil {
			_ = w2.Close()
			_ = m2.closeDB()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, bbolt.ErrTimeout) {
			t.Fatalf("second open of a WAL in use = %v, want bbolt's lock timeout", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("second open of a WAL in use still waits after 60 s")
	}
}

// A damaged meta file is a CorruptError naming it, not a panic.
func TestDamagedWALMetaIsCorruptNotAPanic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	meta, wl, err := openWAL(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appendUntil(wl, 1, 5); err != nil {
		t.Fatal(err)
	}
	_ = wl.Close()
	_ = meta.closeDB()
	path := filepath.Join(dir, walMetaFile)
	for name, damage := range map[string]func() error{
		"truncated": func() error { return os.Truncate(path, 1000) },
		"garbage":   func() error { return os.WriteFile(path, bytes.Repeat([]byte("not a bolt db "), 3000), 0o600) },
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		_, _, err := openWAL(dir, hclog.NewNullLogger())
		var ce *store.CorruptError
		if !errors.As(err, &ce) || ce.File != path {
			t.Errorf("%s meta file: open = %v, want a CorruptError naming %s", name, err, path)
		}
	}
}

// A follower cut off while the leader compacts its log past the follower's last entry catches up
// through a snapshot, then takes appends again. raft-wal takes no gap between entries, so raft
// must empty the follower's log after the snapshot (it does only for a store that says it is
// monotonic, through every wrapper), or every later append fails. The follower keeps more
// trailing entries than the others, so that raft's other way, compacting only what the
// snapshot covers minus those, would leave a gap. Segments are small, so that compaction
// removes whole segments: raft-wal still reads entries compacted away inside a segment it
// keeps, and raft would send those instead of the snapshot.
func TestFollowerBehindACompactedLogCatchesUpThroughASnapshotOnTheWAL(t *testing.T) {
	old := walSegmentSize
	walSegmentSize = 1024
	t.Cleanup(func() { walSegmentSize = old })
	type member struct {
		id    raft.ServerID
		trans *raft.InmemTransport
		fsm   *listFSM
		raft  *raft.Raft
	}
	var ms []*member
	for _, id := range []raft.ServerID{"a", "b", "c"} {
		dir := filepath.Join(t.TempDir(), "raft")
		meta, wl, err := openWAL(filepath.Join(dir, walDirName), hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = wl.Close(); _ = meta.closeDB() })
		h := store.NewHealth()
		logs, err := raft.NewLogCache(logCacheEntries, store.NewLogStore(wl, "wal", h, nil))
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		_, trans := raft.NewInmemTransport(raft.ServerAddress(id))
		c := raft.DefaultConfig()
		c.LocalID = id
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
		c.CommitTimeout = 5 * time.Millisecond
		c.SnapshotThreshold, c.SnapshotInterval, c.TrailingLogs = 1<<40, time.Hour, 1000
		c.Logger = hclog.NewNullLogger()
		m := &member{id: id, trans: trans, fsm: &listFSM{}}
		if id == "a" {
			cfg := raft.Configuration{Servers: []raft.Server{
				{ID: "a", Address: "a", Suffrage: raft.Voter}, {ID: "b", Address: "b", Suffrage: raft.Voter}, {ID: "c", Address: "c", Suffrage: raft.Voter}}}
			if err := raft.BootstrapCluster(c, logs, store.NewStableStore(meta, "meta", h, nil), snaps, trans, cfg); err != nil {
				t.Fatal(err)
			}
		}
		if !logs.IsMonotonic() {
			t.Fatal("the log store, as raft sees it, does not say it takes no gaps")
		}
		if m.raft, err = raft.NewRaft(c, m.fsm, logs, store.NewStableStore(meta, "meta", h, nil), snaps, trans); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.raft.Shutdown().Error() })
		ms = append(ms, m)
	}
	for _, a := range ms {
		for _, b := range ms {
			if a != b {
				a.trans.Connect(raft.ServerAddress(b.id), b.trans)
			}
		}
	}
	leader := func() *member {
		var l *member
		if localcluster.Until(30*time.Second, 10*time.Millisecond, func() bool {
			for _, m := range ms {
				if m.raft.State() == raft.Leader {
					l = m
				}
			}
			return l != nil
		}) != nil {
			t.Fatal("no leader")
		}
		return l
	}
	l := leader()
	cmds := applyAll(t, l.raft, "first", 10)
	var behind *member
	for _, m := range ms {
		if m != l {
			behind = m
		}
	}
	waitApplied := func(m *member, n int) {
		t.Helper()
		if localcluster.Until(30*time.Second, 10*time.Millisecond, func() bool { return len(m.fsm.list()) >= n }) != nil {
			t.Fatalf("%s applied %d of %d commands", m.id, len(m.fsm.list()), n)
		}
	}
	waitApplied(behind, len(cmds))
	// Cut it off; the other two go on, snapshot and compact past it.
	behind.trans.DisconnectAll()
	for _, m := range ms {
		if m != behind {
			m.trans.Disconnect(raft.ServerAddress(behind.id))
			rc := m.raft.ReloadableConfig()
			rc.TrailingLogs = 5
			if err := m.raft.ReloadConfig(rc); err != nil {
				t.Fatal(err)
			}
		}
	}
	l = leader()
	if l == behind {
		t.Fatal("the cut-off member leads")
	}
	cmds = append(cmds, applyAll(t, l.raft, "second", 40)...)
	for _, m := range ms { // both: either may lead once the third is back
		if m != behind {
			waitApplied(m, len(cmds))
			if err := m.raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmds = append(cmds, applyAll(t, l.raft, "third", 10)...)
	for _, a := range ms {
		for _, b := range ms {
			if a != b {
				a.trans.Connect(raft.ServerAddress(b.id), b.trans)
			}
		}
	}
	waitApplied(behind, len(cmds))
	cmds = append(cmds, applyAll(t, leader().raft, "fourth", 10)...)
	waitApplied(behind, len(cmds))
	if st := behind.raft.Stats(); st["last_snapshot_index"] == "0" {
		t.Fatalf("%s caught up without a snapshot (%v): the test proves nothing", behind.id, st)
	}
	if got := behind.fsm.list(); !reflect.DeepEqual(got, cmds) {
		t.Fatalf("%s applied\n%v\nwant\n%v", behind.id, got, cmds)
	}
}
