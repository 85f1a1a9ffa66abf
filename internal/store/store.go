// Package store wraps raft's stores (the log and stable store, the file snapshot store) so that
// a node knows when its disk fails it and when what it reads back is not what it
// wrote. It owns: the checksum frame of every raft log entry, the corruption error (CorruptError)
// that stops a node, the record of the last storage error and success (Health) that node health
// reads, the probe of the data dir, a test hook that makes writes fail, and the atomic replacement
// of a small file in the data dir (WriteFileAtomic). It knows nothing of the FSM, gossip or HTTP.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// ErrCorrupt marks every CorruptError, for errors.Is.
var ErrCorrupt = errors.New("corrupt raft data")

// CorruptError is stored raft data that does not read back as written: a log entry whose checksum
// does not match, a snapshot whose CRC does not, a log store that cannot be opened. The node
// cannot go on from it (raft would panic, or serve a state other replicas never had), so it stops
// with this one error, which says how to recover.
type CorruptError struct {
	File  string // the damaged file
	Index uint64 // the raft index of the damaged entry or snapshot; 0 when not known (the whole file)
	What  string // what is wrong, e.g. "checksum mismatch"
	Err   error  // the underlying error, if any
}

func (e *CorruptError) Error() string {
	at := ""
	if e.Index != 0 {
		at = fmt.Sprintf(" at index %d", e.Index)
	}
	detail := e.What
	if e.Err != nil {
		detail += ": " + e.Err.Error()
	}
	return fmt.Sprintf("corrupt raft data in %s%s (%s); this node cannot continue: to recover, "+
		"stop it, wipe its data dir (%s) and start it again with --join to any member: it rejoins as a new member and "+
		"receives the cluster's state from the leader",
		e.File, at, detail, dataDirOf(e.File))
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// dataDirOf guesses the data dir from a file in <data-dir>/raft/..., for the recovery hint.
func dataDirOf(file string) string {
	for dir := filepath.Dir(file); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		if filepath.Base(dir) == "raft" {
			return filepath.Dir(dir)
		}
	}
	return filepath.Dir(file)
}

// OpenBolt opens the raft-boltdb store at path. Structural damage that bbolt reports by
// panicking ("assertion failed: Page expected to be ...") or by an error (a truncated or garbage
// file) becomes a *CorruptError; a lock held by another process stays the bbolt timeout it is.
func OpenBolt(path string, opts *bbolt.Options) (st *raftboltdb.BoltStore, err error) {
	defer func() {
		if r := recover(); r != nil {
			st, err = nil, &CorruptError{File: path, What: "bbolt cannot open it", Err: fmt.Errorf("%v", r)}
		}
	}()
	st, err = raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: opts})
	switch {
	case err == nil:
		return st, nil
	case errors.Is(err, bbolt.ErrTimeout):
		return nil, err
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EIO):
		return nil, err // the disk, not the file
	}
	return nil, &CorruptError{File: path, What: "bbolt cannot open it", Err: err}
}

// Channels of Health: each kind of write is judged by its own latest outcome.
const (
	OpLog      = "raft log append"
	OpStable   = "raft stable store"
	OpSnapshot = "raft snapshot"
	OpProbe    = "data dir probe"
)

// Health records, per kind of write, the latest failure and success, and holds the test hook that
// makes writes fail. A node is healthy when no kind's latest outcome is a failure. It is safe for
// concurrent use.
type Health struct {
	mu      sync.Mutex
	failing map[string]opFailure // by Op*: the failure not yet followed by a success
	inject  error
	changed chan struct{} // closed and replaced on every change of Healthy
}

type opFailure struct {
	err error
	at  time.Time
}

// NewHealth returns a healthy record.
func NewHealth() *Health {
	return &Health{failing: map[string]opFailure{}, changed: make(chan struct{})}
}

// Inject makes every write through the wrappers (and the probe) fail with err from now on, as a
// full or failed disk would; nil clears it. A test hook: faults are deterministic this way.
func (h *Health) Inject(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inject = err
}

// injected is the injected fault, if any.
func (h *Health) injected() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inject
}

// Record notes the outcome of one write of kind op.
func (h *Health) Record(op string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	before := len(h.failing) == 0
	if err != nil {
		h.failing[op] = opFailure{err: err, at: time.Now()}
	} else {
		delete(h.failing, op)
	}
	if after := len(h.failing) == 0; after != before {
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// ClearSnapshot forgets a snapshot failure once the probe shows the disk writable again:
// snapshots are minutes apart, and the next one succeeding is the evidence raft gives otherwise.
func (h *Health) clearIfFailing(op string) {
	h.mu.Lock()
	_, failing := h.failing[op]
	h.mu.Unlock()
	if failing {
		h.Record(op, nil)
	}
}

// Healthy reports whether the latest write of every kind succeeded, and otherwise why not (the
// oldest unresolved failure first).
func (h *Health) Healthy() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.failing) == 0 {
		return true, ""
	}
	var (
		op    string
		first opFailure
	)
	for k, f := range h.failing {
		if op == "" || f.at.Before(first.at) || (f.at.Equal(first.at) && k < op) {
			op, first = k, f
		}
	}
	return false, fmt.Sprintf("storage cannot persist: %s failed: %v", op, first.err)
}

// Changed is closed when Healthy's verdict next changes.
func (h *Health) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

// probeFile is the name of the probe's scratch file in the data dir.
const probeFile = ".taskworker-probe"

// Probe writes, syncs and removes a small file in dir (when there is one), as raft's stores would write, and records
// the outcome (OpProbe). A probe that succeeds also clears a snapshot failure (see
// clearIfFailing). It answers whether dir took the write.
func (h *Health) Probe(dir string) error {
	err := h.injected()
	if err == nil && dir != "" { // no data dir (in-memory stores): only an injected fault counts
		err = probe(dir)
	}
	h.Record(OpProbe, err)
	if err == nil {
		h.clearIfFailing(OpSnapshot)
	}
	return err
}

func probe(dir string) error {
	p := filepath.Join(dir, probeFile)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("probe %s: %w", dir, err)
	}
	_, err = f.Write([]byte("taskworker storage probe\n"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(p); err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("probe %s: %w", dir, err)
	}
	return nil
}
