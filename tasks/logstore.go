package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultLogBytes is the per-task bound of a LogStore opened with 0.
const DefaultLogBytes = 1 << 20

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

// LogStore keeps the output of the runs of this node, one JSON-lines file per
// task. It is bounded per task and survives restarts; it is not replicated.
type LogStore struct {
	dir      string
	maxBytes int64

	// mu serialises every file access, so that Subscribe can read a file and
	// register for later lines with no gap and no duplicate.
	mu     sync.Mutex
	subs   map[string]map[chan LogLine]struct{}
	closed bool
}

// OpenLogStore opens (creating it if needed) the store in dir. Each task keeps
// roughly its newest maxBytesPerTask bytes (DefaultLogBytes if 0): past that,
// its file is rewritten keeping the newest half.
func OpenLogStore(dir string, maxBytesPerTask int64) (*LogStore, error) {
	if maxBytesPerTask <= 0 {
		maxBytesPerTask = DefaultLogBytes
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	// Leftovers of a trim interrupted by a crash.
	tmps, err := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	for _, t := range tmps {
		if err := os.Remove(t); err != nil {
			return nil, fmt.Errorf("open log store: %w", err)
		}
	}
	return &LogStore{dir: dir, maxBytes: maxBytesPerTask, subs: make(map[string]map[chan LogLine]struct{})}, nil
}

func (s *LogStore) path(taskID string) (string, error) {
	if taskID == "" || taskID[0] == '.' || !filepath.IsLocal(taskID) || filepath.Base(taskID) != taskID {
		return "", fmt.Errorf("invalid task id %q", taskID)
	}
	return filepath.Join(s.dir, taskID+".jsonl"), nil
}

// Append adds l to the task's log and hands it to the task's subscribers.
func (s *LogStore) Append(taskID string, l LogLine) error {
	p, err := s.path(taskID)
	if err != nil {
		return err
	}
	data, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("append log of task %s: %w", taskID, err)
	}
	data = append(data, '\n')

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrLogStoreClosed
	}
	size, err := appendFile(p, data)
	if err != nil {
		return fmt.Errorf("append log of task %s: %w", taskID, err)
	}
	for ch := range s.subs[taskID] {
		select {
		case ch <- l:
		default:
			// A reader this far behind would stall every run on the node.
			s.unsubscribeLocked(taskID, ch)
		}
	}
	if size > s.maxBytes {
		if err := s.trimLocked(p); err != nil {
			return fmt.Errorf("trim log of task %s: %w", taskID, err)
		}
	}
	return nil
}

// appendFile appends data to the file at p and returns the file's new size.
func appendFile(p string, data []byte) (int64, error) {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return 0, err
	}
	_, werr := f.Write(data)
	st, serr := f.Stat()
	if err := errors.Join(werr, serr, f.Close()); err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// trimLocked rewrites the file at p keeping the newest lines that fit in half the bound.
func (s *LogStore) trimLocked(p string) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	cut := len(data) - int(s.maxBytes/2)
	if cut <= 0 {
		return nil
	}
	start := len(data)
	if i := bytes.IndexByte(data[cut-1:], '\n'); i >= 0 {
		start = cut + i
	}
	tmp, err := os.CreateTemp(s.dir, filepath.Base(p)+".*.tmp")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data[start:])
	if err := errors.Join(werr, tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// Read returns the stored lines of the task in order; an empty slice if none.
func (s *LogStore) Read(taskID string) ([]LogLine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readLocked(taskID)
}

func (s *LogStore) readLocked(taskID string) ([]LogLine, error) {
	p, err := s.path(taskID)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
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
	p, err := s.path(taskID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs[taskID] {
		s.unsubscribeLocked(taskID, ch)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete log of task %s: %w", taskID, err)
	}
	return nil
}

// Close ends every subscription; later Appends fail with ErrLogStoreClosed.
func (s *LogStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for taskID, chans := range s.subs {
		for ch := range chans {
			s.unsubscribeLocked(taskID, ch)
		}
	}
	return nil
}

// Tasks lists the IDs of the tasks this store holds output for.
func (s *LogStore) Tasks() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list task logs: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".jsonl"); ok && !e.IsDir() {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
