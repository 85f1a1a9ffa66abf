package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func line(i int) LogLine {
	return LogLine{TS: time.Unix(int64(i), 0).UTC(), Attempt: 1, Node: "n1", Stream: "stdout", Line: strconv.Itoa(i)}
}

func appendLines(t *testing.T, s *LogStore, taskID string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := s.Append(taskID, line(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkRun fails unless lines are consecutive numbers from first to last.
func checkRun(t *testing.T, lines []LogLine, first, last int) {
	t.Helper()
	if len(lines) != last-first+1 {
		t.Fatalf("got %d lines, want %d..%d", len(lines), first, last)
	}
	for i, l := range lines {
		if l.Line != strconv.Itoa(first+i) {
			t.Fatalf("line %d = %q, want %d", i, l.Line, first+i)
		}
	}
}

func TestLogStoreAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenLogStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	appendLines(t, s, "t1", 0, 10)
	appendLines(t, s, "t2", 100, 101)
	got, err := s.Read("t1")
	if err != nil {
		t.Fatal(err)
	}
	checkRun(t, got, 0, 9)
	if got[3] != line(3) {
		t.Fatalf("line 3 = %+v, want %+v", got[3], line(3))
	}
	if empty, err := s.Read("none"); err != nil || empty == nil || len(empty) != 0 {
		t.Fatalf("Read of unknown task = %v, %v; want empty slice", empty, err)
	}
	if err := s.Append("../escape", line(0)); err == nil {
		t.Fatal("Append with a path as task id succeeded")
	}
	s.Close()
	if err := s.Append("t1", line(10)); !errors.Is(err, ErrLogStoreClosed) {
		t.Fatalf("Append after Close = %v", err)
	}

	s, err = OpenLogStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _ = s.Read("t1")
	checkRun(t, got, 0, 9)
	if err := s.Delete("t1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Read("t1"); len(got) != 0 {
		t.Fatalf("Read after Delete = %v", got)
	}
	got, _ = s.Read("t2")
	checkRun(t, got, 100, 100)
}

func TestLogStoreKeepsTheNewestLinesWithinItsBound(t *testing.T) {
	const limit = 2000
	dir := t.TempDir()
	s, err := OpenLogStore(dir, limit)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendLines(t, s, "t1", 0, 500)
	if err := s.Sync(); err != nil { // the bound holds for what is committed
		t.Fatal(err)
	}
	if size := s.Bytes("t1"); size > limit {
		t.Fatalf("the task holds %d bytes, bound %d", size, limit)
	}
	got, _ := s.Read("t1")
	if len(got) < 10 {
		t.Fatalf("kept only %d lines", len(got))
	}
	checkRun(t, got, 500-len(got), 499)
}

func TestLogStoreSubscribeHasNoGapNorDuplicate(t *testing.T) {
	s, err := OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const total = 1000
	written := make(chan error, 1)
	go func() {
		for i := range total {
			if err := s.Append("t1", line(i)); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	waitFor(t, "some lines", func() bool { l, _ := s.Read("t1"); return len(l) > 0 })
	lines, ch, cancel := s.Subscribe("t1")
	defer cancel()
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	for len(lines) < total {
		select {
		case l := <-ch:
			lines = append(lines, l)
		case <-time.After(10 * time.Second):
			t.Fatalf("stuck after %d lines", len(lines))
		}
	}
	checkRun(t, lines, 0, total-1)
	select {
	case l := <-ch:
		t.Fatalf("extra line %+v", l)
	default:
	}
}

func TestLogStoreEndsSubscriptions(t *testing.T) {
	tests := []struct {
		name string
		end  func(s *LogStore, cancel func())
	}{
		{"cancel", func(_ *LogStore, cancel func()) { cancel() }},
		{"delete", func(s *LogStore, _ func()) { s.Delete("t1") }},
		{"close", func(s *LogStore, _ func()) { s.Close() }},
		{"reader too slow", func(s *LogStore, _ func()) {
			for i := range subscriberBuffer + 1 {
				s.Append("t1", line(i))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := OpenLogStore(t.TempDir(), 0)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, ch, cancel := s.Subscribe("t1")
			defer cancel() // after the check: cancelling first would end every case by itself
			tt.end(s, cancel)
			// A deadline of its own: a subscription left open fails here in seconds instead of
			// hanging until the package's timeout.
			deadline := time.NewTimer(10 * time.Second)
			defer deadline.Stop()
			for {
				select {
				case _, ok := <-ch:
					if !ok {
						return
					}
				case <-deadline.C:
					t.Fatalf("the subscription is still open 10 s after %s", tt.name)
				}
			}
		})
	}
}

func TestLogStoreRejectsTaskIDsThatArePaths(t *testing.T) {
	s, err := OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range []string{"", ".", "..", "../x", "a/b", "/abs", ".hidden"} {
		if err := s.Append(id, line(0)); err == nil {
			t.Errorf("Append(%q) succeeded", id)
		}
		if _, err := s.Read(id); err == nil {
			t.Errorf("Read(%q) succeeded", id)
		}
		lines, ch, _ := s.Subscribe(id)
		if _, open := <-ch; open || len(lines) != 0 {
			t.Errorf("Subscribe(%q) gave lines %v or an open channel", id, lines)
		}
	}
}

// TestLogStoreEvictsTheLeastRecentlyWrittenTasks: past the total bound the output of the tasks
// written to longest ago goes first, whole, and the bound holds across a reopen.
func TestLogStoreEvictsTheLeastRecentlyWrittenTasks(t *testing.T) {
	dir := t.TempDir()
	const perTask, total = 4000, 8000 // a task below writes 20 lines, about 1,950 bytes
	opts := LogStoreOptions{MaxBytesPerTask: perTask, MaxTotalBytes: total}
	s, err := OpenLogStoreWith(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	write := func(id string, from, to int) {
		t.Helper()
		appendLines(t, s, id, from, to)
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	held := func() (kept []string, sum int64) {
		for i := 1; i <= 6; i++ {
			id := fmt.Sprintf("t%d", i)
			if n := s.Bytes(id); n > 0 {
				kept = append(kept, id)
				sum += n
			}
		}
		return kept, sum
	}
	// t1..t4 fit; t1 is written to again, so t2 becomes the least recently written; t5 goes over
	// the bound and evicts t2 alone.
	for i := 1; i <= 4; i++ {
		write(fmt.Sprintf("t%d", i), i*100, i*100+20)
	}
	write("t1", 120, 121)
	write("t5", 500, 520)
	kept, sum := held()
	if sum > total || fmt.Sprint(kept) != "[t1 t3 t4 t5]" {
		t.Fatalf("kept %v, %d bytes; want t1 t3 t4 t5 within %d", kept, sum, total)
	}
	got, _ := s.Read("t1")
	checkRun(t, got, 100, 120)
	if got, _ := s.Read("t2"); len(got) != 0 {
		t.Fatalf("evicted t2 still reads %d lines", len(got))
	}
	if ids, err := s.Tasks(); err != nil || len(ids) != 4 {
		t.Fatalf("Tasks = %v, %v; want the 4 kept", ids, err)
	}
	// The running total survives a reopen: one more task evicts the oldest kept, t3.
	s.Close()
	if s, err = OpenLogStoreWith(dir, opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	write("t6", 600, 620)
	if kept, sum := held(); sum > total || fmt.Sprint(kept) != "[t1 t4 t5 t6]" {
		t.Fatalf("after reopen: kept %v, %d bytes; want t1 t4 t5 t6 within %d", kept, sum, total)
	}
}

// TestLogStoreReadsTheFilesOfOlderReleases: a data dir of a release that kept one file per task
// still serves that output, before the task's newer lines, and Delete removes it.
func TestLogStoreReadsTheFilesOfOlderReleases(t *testing.T) {
	dir := t.TempDir()
	var old []byte
	for i := range 3 {
		b, _ := json.Marshal(line(i))
		old = append(append(old, b...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, "t1.jsonl"), old, 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := OpenLogStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendLines(t, s, "t1", 3, 5)
	got, _ := s.Read("t1")
	checkRun(t, got, 0, 4)
	if ids, _ := s.Tasks(); len(ids) != 1 || ids[0] != "t1" {
		t.Fatalf("Tasks = %v, want [t1] once", ids)
	}
	if err := s.Delete("t1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Read("t1"); len(got) != 0 {
		t.Fatalf("after Delete: %d lines", len(got))
	}
	if _, err := os.Stat(filepath.Join(dir, "t1.jsonl")); !os.IsNotExist(err) {
		t.Fatalf("the old file is still there: %v", err)
	}
}
