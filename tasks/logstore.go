package tasks

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// DefaultLogBytes is the per-task bound of a LogStore opened with 0.
const DefaultLogBytes = 1 << 20

// DefaultOutputBytes is the bound on all the output a LogStore holds, when none is given.
const DefaultOutputBytes = 1 << 30

// subscriberBuffer is how far a Subscribe reader may fall behind before it is dropped.
const subscriberBuffer = 1024

// ErrLogStoreClosed is returned by Append after Close.
var ErrLogStoreClosed = errors.New("log store closed")

// LogLine is one line of a task's output.
type LogLine struct {
	TS      time.Time `json:"ts"`
	Attempt int       `json:"attempt"`
	Node    string    `json:"node"`
	Stream  string    `json:"stream"`
	Level   string    `json:"level"` // "" for stdout and stderr lines
	Line    string    `json:"line"`
}

// LogStore keeps the output of the runs of this node in one bbolt file, output.db in its
// directory; it survives restarts and is not replicated. Output is bounded per task (past the
// bound a task keeps its newest half) and in all (past it, the output of the tasks written to
// least recently goes first: finished tasks, oldest first, before a running one). One file
// rather than a file per task keeps a node with a million finished tasks to one descriptor and
// one directory entry, and evicting the oldest output is a walk of an index, not of a directory.
//
// Appends do not wait for the disk: a line goes to a queue that readers see at once, and one
// writer commits what queued in a single transaction (group commit), so a task printing fast pays
// one fsync per batch of lines, not per line. A crash loses at most the lines of the transaction
// in flight, as the per-task files it replaces lost what the page cache held.
//
// Output written by older releases, one JSON-lines file per task in the same directory, is still
// read (before the task's newer lines), listed and deleted; it is never rewritten.
type LogStore struct {
	dir        string
	db         *bbolt.DB
	maxBytes   int64 // per task
	maxTotal   int64 // all tasks
	kick       chan struct{}
	writerDone chan struct{}
	mu         sync.Mutex // guards everything below and orders appends, reads and subscriptions
	seq        uint64     // the last sequence number given to a line (global, so it orders tasks too)
	pending    []pendingLine
	inFlight   []pendingLine // taken by the writer, not yet committed
	writeErr   error         // the writer's last failure, returned by the next Append
	committed  *sync.Cond    // on mu: broadcast after every commit
	subs       map[string]map[chan LogLine]struct{}
	closed     bool
}

type pendingLine struct {
	task string
	seq  uint64
	data []byte // JSON of the line
	line LogLine
}

// LogStoreOptions bound a LogStore; zero values take the defaults.
type LogStoreOptions struct {
	MaxBytesPerTask int64 // DefaultLogBytes
	MaxTotalBytes   int64 // DefaultOutputBytes
}

// Buckets of output.db. lines/<task> maps a line's sequence number to its JSON; meta maps a task
// to its byte count and last sequence number; recent maps (last sequence number, task) to
// nothing, the eviction order; total holds the byte count of all tasks.
var (
	bucketLines  = []byte("lines")
	bucketMeta   = []byte("meta")
	bucketRecent = []byte("recent")
	bucketTotal  = []byte("total")
	keyTotal     = []byte("bytes")
	keySeq       = []byte("seq")
)

// OpenLogStore opens (creating it if needed) the store in dir with a per-task bound of
// maxBytesPerTask (DefaultLogBytes if 0) and the default total bound.
func OpenLogStore(dir string, maxBytesPerTask int64) (*LogStore, error) {
	return OpenLogStoreWith(dir, LogStoreOptions{MaxBytesPerTask: maxBytesPerTask})
}

// OpenLogStoreWith opens (creating it if needed) the store in dir.
func OpenLogStoreWith(dir string, o LogStoreOptions) (*LogStore, error) {
	if o.MaxBytesPerTask <= 0 {
		o.MaxBytesPerTask = DefaultLogBytes
	}
	if o.MaxTotalBytes <= 0 {
		o.MaxTotalBytes = DefaultOutputBytes
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	// Leftovers of a trim of an older release interrupted by a crash.
	tmps, err := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	for _, t := range tmps {
		if err := os.Remove(t); err != nil {
			return nil, fmt.Errorf("open log store: %w", err)
		}
	}
	db, err := bbolt.Open(filepath.Join(dir, "output.db"), 0o640, &bbolt.Options{Timeout: 5 * time.Second,
		NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	s := &LogStore{dir: dir, db: db, maxBytes: o.MaxBytesPerTask, maxTotal: o.MaxTotalBytes,
		kick: make(chan struct{}, 1), writerDone: make(chan struct{}), subs: make(map[string]map[chan LogLine]struct{})}
	s.committed = sync.NewCond(&s.mu)
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketLines, bucketMeta, bucketRecent, bucketTotal} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if v := tx.Bucket(bucketTotal).Get(keySeq); len(v) == 8 {
			s.seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open log store: %w", err)
	}
	go s.writer()
	return s, nil
}

func checkTaskID(taskID string) error {
	if taskID == "" || taskID[0] == '.' || !filepath.IsLocal(taskID) || filepath.Base(taskID) != taskID {
		return fmt.Errorf("invalid task id %q", taskID)
	}
	return nil
}

// legacyPath is where an older release kept the task's output.
func (s *LogStore) legacyPath(taskID string) string {
	return filepath.Join(s.dir, taskID+".jsonl")
}

// Append adds l to the task's log and hands it to the task's subscribers. It returns before the
// line is on disk; an error of an earlier write is returned by the next Append.
func (s *LogStore) Append(taskID string, l LogLine) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	data, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("append log of task %s: %w", taskID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrLogStoreClosed
	}
	if err := s.writeErr; err != nil {
		s.writeErr = nil
		return fmt.Errorf("append log of task %s: %w", taskID, err)
	}
	s.seq++
	s.pending = append(s.pending, pendingLine{task: taskID, seq: s.seq, data: data, line: l})
	select {
	case s.kick <- struct{}{}:
	default:
	}
	for ch := range s.subs[taskID] {
		select {
		case ch <- l:
		default:
			// A reader this far behind would stall every run on the node.
			s.unsubscribeLocked(taskID, ch)
		}
	}
	return nil
}

// writer commits queued lines until Close, each batch in one transaction.
func (s *LogStore) writer() {
	defer close(s.writerDone)
	for {
		_, open := <-s.kick
		s.mu.Lock()
		s.inFlight, s.pending = s.pending, nil
		batch := s.inFlight
		s.mu.Unlock()
		var err error
		if len(batch) > 0 {
			err = s.db.Update(func(tx *bbolt.Tx) error { return s.commit(tx, batch) })
		}
		s.mu.Lock()
		s.inFlight = nil
		if err != nil {
			s.writeErr = err
		}
		s.committed.Broadcast()
		s.mu.Unlock()
		if !open {
			return
		}
	}
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func recentKey(seq uint64, task string) []byte { return append(u64(seq), task...) }

type taskMeta struct{ bytes, last uint64 }

func getMeta(tx *bbolt.Tx, task string) (taskMeta, bool) {
	v := tx.Bucket(bucketMeta).Get([]byte(task))
	if len(v) != 16 {
		return taskMeta{}, false
	}
	return taskMeta{binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])}, true
}

// commit writes a batch of lines, trims each task over its bound to its newest half, and evicts
// the least recently written tasks while the total is over its bound.
func (s *LogStore) commit(tx *bbolt.Tx, batch []pendingLine) error {
	lines, meta, recent, totals := tx.Bucket(bucketLines), tx.Bucket(bucketMeta), tx.Bucket(bucketRecent), tx.Bucket(bucketTotal)
	var total uint64
	if v := totals.Get(keyTotal); len(v) == 8 {
		total = binary.BigEndian.Uint64(v)
	}
	touched := map[string]taskMeta{}
	var order []string
	for _, p := range batch {
		m, ok := touched[p.task]
		if !ok {
			m, _ = getMeta(tx, p.task)
			if m.last != 0 {
				if err := recent.Delete(recentKey(m.last, p.task)); err != nil {
					return err
				}
			}
			order = append(order, p.task)
		}
		b, err := lines.CreateBucketIfNotExists([]byte(p.task))
		if err != nil {
			return err
		}
		if err := b.Put(u64(p.seq), p.data); err != nil {
			return err
		}
		m.bytes += uint64(len(p.data)) + 1
		total += uint64(len(p.data)) + 1
		m.last = p.seq
		touched[p.task] = m
	}
	for _, task := range order {
		m := touched[task]
		if m.bytes > uint64(s.maxBytes) {
			b := lines.Bucket([]byte(task))
			c := b.Cursor()
			for k, v := c.First(); k != nil && m.bytes > uint64(s.maxBytes/2); k, v = c.First() {
				m.bytes -= uint64(len(v)) + 1
				total -= uint64(len(v)) + 1
				if err := b.Delete(k); err != nil {
					return err
				}
			}
		}
		if err := meta.Put([]byte(task), append(u64(m.bytes), u64(m.last)...)); err != nil {
			return err
		}
		if err := recent.Put(recentKey(m.last, task), nil); err != nil {
			return err
		}
	}
	c := recent.Cursor()
	for k, _ := c.First(); k != nil && total > uint64(s.maxTotal); k, _ = c.First() {
		task := string(k[8:])
		m, _ := getMeta(tx, task)
		total -= min(total, m.bytes)
		if err := deleteTask(tx, task, m); err != nil {
			return err
		}
	}
	if err := totals.Put(keyTotal, u64(total)); err != nil {
		return err
	}
	return totals.Put(keySeq, u64(batch[len(batch)-1].seq))
}

func deleteTask(tx *bbolt.Tx, task string, m taskMeta) error {
	if err := tx.Bucket(bucketLines).DeleteBucket([]byte(task)); err != nil && !errors.Is(err, bbolt.ErrBucketNotFound) {
		return err
	}
	if err := tx.Bucket(bucketRecent).Delete(recentKey(m.last, task)); err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Delete([]byte(task))
}

// Read returns the stored lines of the task in order; an empty slice if none.
func (s *LogStore) Read(taskID string) ([]LogLine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readLocked(taskID)
}

// readLocked reads the task's lines: an older release's file, then the committed lines, then the
// queued ones not committed yet (sequence numbers tell a line the writer committed meanwhile).
func (s *LogStore) readLocked(taskID string) ([]LogLine, error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	lines, err := s.readLegacy(taskID)
	if err != nil {
		return nil, err
	}
	var last uint64
	err = s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketLines).Bucket([]byte(taskID))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var l LogLine
			if json.Unmarshal(v, &l) == nil {
				lines = append(lines, l)
			}
			last = binary.BigEndian.Uint64(k)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read log of task %s: %w", taskID, err)
	}
	for _, q := range [][]pendingLine{s.inFlight, s.pending} {
		for _, p := range q {
			if p.task == taskID && p.seq > last {
				lines = append(lines, p.line)
			}
		}
	}
	return lines, nil
}

func (s *LogStore) readLegacy(taskID string) ([]LogLine, error) {
	data, err := os.ReadFile(s.legacyPath(taskID))
	if errors.Is(err, fs.ErrNotExist) {
		return []LogLine{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read log of task %s: %w", taskID, err)
	}
	lines := []LogLine{}
	for raw := range bytes.SplitSeq(data, []byte("\n")) {
		var l LogLine
		// A line torn by a crash is skipped rather than failing the whole read.
		if len(raw) > 0 && json.Unmarshal(raw, &l) == nil {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// Bytes is how many bytes of the task's output the store holds (as JSON lines).
func (s *LogStore) Bytes(taskID string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	if st, err := os.Stat(s.legacyPath(taskID)); err == nil {
		n = st.Size()
	}
	_ = s.db.View(func(tx *bbolt.Tx) error {
		m, _ := getMeta(tx, taskID)
		n += int64(m.bytes)
		return nil
	})
	for _, q := range [][]pendingLine{s.inFlight, s.pending} {
		for _, p := range q {
			if p.task == taskID {
				n += int64(len(p.data)) + 1
			}
		}
	}
	return n
}

// Sync waits until every line appended so far is committed (or the writer failed).
func (s *LogStore) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for (len(s.pending) > 0 || len(s.inFlight) > 0) && s.writeErr == nil && !s.closed {
		s.committed.Wait()
	}
	return s.writeErr
}

// Subscribe returns the task's stored lines and a channel of the lines
// appended after them, with no gap and no duplicate. The channel is closed by
// cancel, by Delete of the task, by Close, or when the reader falls more than
// subscriberBuffer lines behind; a store that cannot read the task returns no
// lines and a closed channel.
func (s *LogStore) Subscribe(taskID string) (lines []LogLine, ch <-chan LogLine, cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines, err := s.readLocked(taskID)
	c := make(chan LogLine, subscriberBuffer)
	if err != nil || s.closed {
		close(c)
		return []LogLine{}, c, func() {}
	}
	if s.subs[taskID] == nil {
		s.subs[taskID] = make(map[chan LogLine]struct{})
	}
	s.subs[taskID][c] = struct{}{}
	return lines, c, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.unsubscribeLocked(taskID, c)
	}
}

func (s *LogStore) unsubscribeLocked(taskID string, ch chan LogLine) {
	if _, ok := s.subs[taskID][ch]; !ok {
		return
	}
	delete(s.subs[taskID], ch)
	if len(s.subs[taskID]) == 0 {
		delete(s.subs, taskID)
	}
	close(ch)
}

// Delete removes the task's log and ends its subscriptions.
func (s *LogStore) Delete(taskID string) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	if err := s.Sync(); err != nil {
		return fmt.Errorf("delete log of task %s: %w", taskID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs[taskID] {
		s.unsubscribeLocked(taskID, ch)
	}
	if err := os.Remove(s.legacyPath(taskID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete log of task %s: %w", taskID, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		m, ok := getMeta(tx, taskID)
		if !ok {
			return nil
		}
		totals := tx.Bucket(bucketTotal)
		var total uint64
		if v := totals.Get(keyTotal); len(v) == 8 {
			total = binary.BigEndian.Uint64(v)
		}
		if err := totals.Put(keyTotal, u64(total-min(total, m.bytes))); err != nil {
			return err
		}
		return deleteTask(tx, taskID, m)
	})
	if err != nil {
		return fmt.Errorf("delete log of task %s: %w", taskID, err)
	}
	return nil
}

// Close commits what is queued, ends every subscription and closes the file; later Appends fail
// with ErrLogStoreClosed.
func (s *LogStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for taskID, chans := range s.subs {
		for ch := range chans {
			s.unsubscribeLocked(taskID, ch)
		}
	}
	close(s.kick) // the writer commits what is queued and returns
	s.mu.Unlock()
	<-s.writerDone
	return s.db.Close()
}

// Tasks lists the IDs of the tasks this store holds output for.
func (s *LogStore) Tasks() ([]string, error) {
	if err := s.Sync(); err != nil {
		return nil, fmt.Errorf("list task logs: %w", err)
	}
	seen := map[string]bool{}
	var ids []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).ForEach(func(k, _ []byte) error {
			seen[string(k)] = true
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list task logs: %w", err)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list task logs: %w", err)
	}
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".jsonl"); ok && !e.IsDir() && !seen[id] {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
