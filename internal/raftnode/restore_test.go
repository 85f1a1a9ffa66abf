package raftnode

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// gogc reads the collector's current percentage without changing it.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// memSink is a raft.SnapshotSink into memory.
type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// fileSink is a raft.SnapshotSink into a file.
type fileSink struct{ *os.File }

func (fileSink) ID() string      { return "file" }
func (s fileSink) Cancel() error { return s.File.Close() }

func snapshotOf(t testing.TB, f *fsm.FSM, sink interface {
	io.Writer
	ID() string
	Cancel() error
	Close() error
}) {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
}

// watchGC is a snapshot reader that records the collector's percentage while it is read.
type watchGC struct {
	r    io.Reader
	seen int
}

func (w *watchGC) Read(p []byte) (int, error) {
	w.seen = gogc()
	return w.r.Read(p)
}
func (*watchGC) Close() error { return nil }

func TestRestoreRelaxesTheCollectorOnlyWhileItRuns(t *testing.T) {
	src := fsm.New()
	src.ApplyCommand(1, &fsm.Command{Now: time.Unix(1, 0).UTC(), Body: &fsm.SubmitBatch{Items: []fsm.Submit{
		{ID: "01JTASK0000000000000000001", Type: "echo", Version: "1", Input: json.RawMessage(`1`), MaxAttempts: 1},
	}}})
	var sink memSink
	snapshotOf(t, src, &sink)

	tests := []struct {
		name         string
		before, want int // GOGC before, and while restoring
	}{
		{"default is raised", 100, restoreGCPercent},
		{"a higher setting is kept", 800, 800},
		{"collector off stays off", -1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := debug.SetGCPercent(tt.before)
			defer debug.SetGCPercent(old)
			dst := fsm.New()
			w := &watchGC{r: bytes.NewReader(sink.Bytes())}
			if err := (gcDuringRestore{dst}).Restore(w); err != nil {
				t.Fatal(err)
			}
			if w.seen != tt.want {
				t.Errorf("GOGC while restoring = %d, want %d", w.seen, tt.want)
			}
			if got := debug.SetGCPercent(old); got != tt.before {
				t.Errorf("GOGC after restoring = %d, want %d back", got, tt.before)
			}
			if _, ok := dst.Task("01JTASK0000000000000000001"); !ok {
				t.Error("restored FSM lacks the task")
			}
		})
	}
}

// BenchmarkRestoreGC restores a snapshot of TASKWORKER_BENCH_RECORDS (default 200,000) finished
// echo tasks into a fresh FSM twice: as fsm.Restore does at the process's GOGC, then through
// gcDuringRestore as the agent does.
//
//	TASKWORKER_BENCH_RECORDS=1000000 go test -run - -bench RestoreGC -benchtime 1x -timeout 30m ./internal/raftnode
func BenchmarkRestoreGC(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("TASKWORKER_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	path := filepath.Join(b.TempDir(), "snapshot")
	func() {
		src := finishedTasks(b, n)
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		snapshotOf(b, src, fileSink{out})
	}()
	restore := func(f interface{ Restore(io.ReadCloser) error }) time.Duration {
		runtime.GC()
		in, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := f.Restore(in); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for b.Loop() {
		plain := restore(fsm.New())
		relaxed := restore(gcDuringRestore{fsm.New()})
		b.ReportMetric(float64(n), "tasks")
		b.ReportMetric(plain.Seconds(), "restore-s")
		b.ReportMetric(relaxed.Seconds(), "restore-relaxed-s")
	}
}

// finishedTasks applies n echo tasks through submit, assign, started and succeeded, in batches of
// 100, on three nodes (as fsm's own benchmark does).
func finishedTasks(tb testing.TB, n int) *fsm.FSM {
	f := fsm.New()
	idx := uint64(0)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apply := func(body fsm.Payload) {
		idx++
		now = now.Add(time.Millisecond)
		if r := f.ApplyCommand(idx, &fsm.Command{Now: now, Body: body}); r.Err != nil {
			tb.Fatal(r.Err)
		}
	}
	nodes := []string{"n1", "n2", "n3"}
	for i, name := range nodes {
		apply(&fsm.Register{Node: fsm.Node{Name: name, BootID: fmt.Sprintf("01JBOOT%019d", i), Capacity: 1 << 20,
			Types: []fsm.TypeInfo{{Type: "echo", Version: "1"}}}})
	}
	for done := 0; done < n; done += 100 {
		k := min(100, n-done)
		subs := make([]fsm.Submit, k)
		as := make([]fsm.Assign, k)
		started := make([]fsm.Report, k)
		succeeded := make([]fsm.Report, k)
		for i := range subs {
			id := fmt.Sprintf("01JTASK%019d", done+i)
			node, boot := nodes[i%3], fmt.Sprintf("01JBOOT%019d", i%3)
			subs[i] = fsm.Submit{ID: id, Type: "echo", Version: "1", Input: json.RawMessage(`"hello"`), MaxAttempts: 3, Timeout: fsm.Duration(30 * time.Second)}
			as[i] = fsm.Assign{TaskID: id, Node: node, BootID: boot}
			started[i] = fsm.Report{TaskID: id, Attempt: 1, Node: node, BootID: boot, Kind: fsm.ReportStarted}
			succeeded[i] = fsm.Report{TaskID: id, Attempt: 1, Node: node, BootID: boot, Kind: fsm.ReportSucceeded, Result: json.RawMessage(`"hello"`)}
		}
		apply(&fsm.SubmitBatch{Items: subs})
		apply(&fsm.AssignBatch{Items: as})
		apply(&fsm.ReportBatch{Items: started})
		apply(&fsm.ReportBatch{Items: succeeded})
	}
	return f
}
