package store

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
)

// SnapshotStore wraps raft's FileSnapshotStore. That store already checksums a snapshot: it keeps
// a CRC64 of state.bin in meta.json and refuses to open a snapshot that does not match ("CRC
// mismatch"). raft then quietly tries an older snapshot, and fails to start only when none opens.
// The wrapper makes a mismatch the same *CorruptError as a log entry's (passed to OnCorrupt), and
// records write outcomes (and injected faults) in a Health.
type SnapshotStore struct {
	inner     raft.SnapshotStore
	dir       string // where FileSnapshotStore keeps them: <raft dir>/snapshots
	health    *Health
	onCorrupt func(*CorruptError)
}

// NewSnapshotStore wraps inner, a FileSnapshotStore made on raftDir. onCorrupt may be nil.
func NewSnapshotStore(inner raft.SnapshotStore, raftDir string, h *Health, onCorrupt func(*CorruptError)) *SnapshotStore {
	return &SnapshotStore{inner: inner, dir: filepath.Join(raftDir, "snapshots"), health: h, onCorrupt: onCorrupt}
}

var _ raft.SnapshotStore = (*SnapshotStore)(nil)

// Create starts a new snapshot.
func (s *SnapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	err := s.health.injected()
	var sink raft.SnapshotSink
	if err == nil {
		sink, err = s.inner.Create(version, index, term, configuration, configurationIndex, trans)
	}
	if err != nil {
		s.health.Record(OpSnapshot, err)
		return nil, fmt.Errorf("create snapshot in %s: %w", s.dir, err)
	}
	return &sinkRecorder{SnapshotSink: sink, health: s.health}, nil
}

// List is the inner store's.
func (s *SnapshotStore) List() ([]*raft.SnapshotMeta, error) { return s.inner.List() }

// Open opens a snapshot, verified by the inner store's CRC.
func (s *SnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.inner.Open(id)
	if err != nil && strings.Contains(err.Error(), "CRC mismatch") { // FileSnapshotStore's only word for it
		e := &CorruptError{File: filepath.Join(s.dir, id, "state.bin"), Index: s.indexOf(id), What: "snapshot CRC64 does not match meta.json", Err: err}
		if s.onCorrupt != nil {
			s.onCorrupt(e)
		}
		return nil, nil, e
	}
	return meta, rc, err
}

// indexOf is the last index a snapshot covers, from the store's listing (0 if unknown).
func (s *SnapshotStore) indexOf(id string) uint64 {
	metas, _ := s.inner.List()
	for _, m := range metas {
		if m.ID == id {
			return m.Index
		}
	}
	return 0
}

// sinkRecorder records a snapshot write's outcome and fails it while a fault is injected.
type sinkRecorder struct {
	raft.SnapshotSink
	health *Health
	failed bool
}

func (s *sinkRecorder) Write(p []byte) (int, error) {
	if err := s.health.injected(); err != nil {
		s.failed = true
		s.health.Record(OpSnapshot, err)
		return 0, err
	}
	n, err := s.SnapshotSink.Write(p)
	if err != nil {
		s.failed = true
		s.health.Record(OpSnapshot, err)
	}
	return n, err
}

func (s *sinkRecorder) Close() error {
	err := s.SnapshotSink.Close()
	if err != nil || !s.failed {
		s.health.Record(OpSnapshot, err)
	}
	return err
}
