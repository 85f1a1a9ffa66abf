package fsm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// benchRecords is how many tasks the snapshot benchmark holds: TASKWORKER_BENCH_RECORDS, or 200k.
func benchRecords() int {
	if n, err := strconv.Atoi(os.Getenv("TASKWORKER_BENCH_RECORDS")); err == nil && n > 0 {
		return n
	}
	return 200_000
}

// finishedFSM applies n small echo tasks through submit, assign, started and succeeded, in batches
// of 100 as the leader's batcher would, on three nodes.
func finishedFSM(tb testing.TB, n int) *FSM {
	tb.Helper()
	f := New()
	idx := uint64(0)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apply := func(body Payload) {
		idx++
		now = now.Add(time.Millisecond)
		r := f.ApplyCommand(idx, &Command{Now: now, Body: body})
		if r.Err != nil {
			tb.Fatal(r.Err)
		}
		for _, it := range r.Items {
			if it.Err != nil {
				tb.Fatalf("%s: %v", it.ID, it.Err)
			}
		}
	}
	nodes := []string{"n1", "n2", "n3"}
	for i, name := range nodes {
		apply(&Register{Node: Node{Name: name, BootID: fmt.Sprintf("01JBOOT%019d", i), Capacity: 1 << 20,
			Types: []TypeInfo{{Type: "echo", Version: "1"}}}})
	}
	const batch = 100
	for done := 0; done < n; done += batch {
		k := min(batch, n-done)
		subs := make([]Submit, k)
		for i := range subs {
			id := benchID(done + i)
			subs[i] = Submit{ID: id, Type: "echo", Version: "1", Input: json.RawMessage(`"hello"`), MaxAttempts: 3, Timeout: Duration(30 * time.Second)}
		}
		apply(&SubmitBatch{Items: subs})
		as := make([]Assign, k)
		started := make([]Report, k)
		succeeded := make([]Report, k)
		for i, s := range subs {
			node := nodes[i%len(nodes)]
			boot := fmt.Sprintf("01JBOOT%019d", i%len(nodes))
			as[i] = Assign{TaskID: s.ID, Node: node, BootID: boot}
			started[i] = Report{TaskID: s.ID, Attempt: 1, Node: node, BootID: boot, Kind: ReportStarted}
			succeeded[i] = Report{TaskID: s.ID, Attempt: 1, Node: node, BootID: boot, Kind: ReportSucceeded, Result: json.RawMessage(`"hello"`)}
		}
		apply(&AssignBatch{Items: as})
		apply(&ReportBatch{Items: started})
		apply(&ReportBatch{Items: succeeded})
	}
	return f
}

// benchID is a task ID as long as the leader's ULIDs, unique per i.
func benchID(i int) string { return fmt.Sprintf("01JBENCH%018d", i) }

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkMemoryPerFinishedTask reports the memory one finished small echo task costs, indexes
// and all, measured over 100k of them (the budget: ≤ 1 KB on each node): the heap, and
// the arena its frozen record lives in.
func BenchmarkMemoryPerFinishedTask(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		before := heapInuse()
		f := finishedFSM(b, n)
		after := heapInuse()
		_, arena := f.tasks.arena.usage() // the frozen records, outside the heap
		b.ReportMetric(float64(after-before)/n, "heap-bytes/task")
		b.ReportMetric(float64(arena)/n, "arena-bytes/task")
		b.ReportMetric(float64(after-before+uint64(arena))/n, "bytes/task")
		runtime.KeepAlive(f)
	}
}

func BenchmarkApplySubmit(b *testing.B) {
	f := New()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	idx := uint64(0)
	for b.Loop() {
		idx++
		id := benchID(int(idx))
		f.ApplyCommand(idx, &Command{Now: now, Body: &SubmitBatch{Items: []Submit{{ID: id, Type: "echo", Input: json.RawMessage(`"hello"`), MaxAttempts: 3}}}})
	}
}

// fileSink is a snapshot sink on a file, as raft's FileSnapshotStore gives Persist.
type fileSink struct{ *os.File }

func (fileSink) ID() string      { return "bench" }
func (s fileSink) Cancel() error { return s.File.Close() }

// BenchmarkSnapshotRestore persists benchRecords() finished tasks to a file, then restores them
// into an empty FSM with the source gone, as a restarting node does, reporting each phase.
func BenchmarkSnapshotRestore(b *testing.B) {
	n := benchRecords()
	path := filepath.Join(b.TempDir(), "snapshot")
	src := finishedFSM(b, n)
	for b.Loop() {
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		snap, err := src.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if err := snap.Persist(fileSink{out}); err != nil {
			b.Fatal(err)
		}
		persisted := time.Since(start)
		st, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n), "tasks")
		b.ReportMetric(float64(st.Size())/float64(n), "snapshot-bytes/task")
		b.ReportMetric(persisted.Seconds(), "persist-s")
	}
	src = nil
	runtime.GC()
	in, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := New().Restore(in); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(time.Since(start).Seconds(), "restore-s")
}

// BenchmarkConsoleQueries times the reads a console page makes, one page of 50 each, on an FSM
// holding benchRecords() finished tasks (TASKWORKER_BENCH_RECORDS=1000000 for the million):
// the newest page, a state tab, a type filter, a page deep in the list by cursor, and the per-state
// counts of the tabs. None may grow with the number of tasks.
func BenchmarkConsoleQueries(b *testing.B) {
	n := benchRecords()
	f := finishedFSM(b, n)
	deep, err := f.ListPage(Filter{Limit: n / 2})
	if err != nil || deep.Next == "" {
		b.Fatalf("deep cursor: %v", err)
	}
	for _, q := range []struct {
		name string
		f    Filter
	}{
		{"newest", Filter{Limit: 50}},
		{"state_tab", Filter{State: Succeeded, Limit: 50}},
		{"type", Filter{Type: "echo", Limit: 50}},
		{"deep_cursor", Filter{Limit: 50, Next: deep.Next}},
		{"empty_state_tab", Filter{State: Running, Limit: 50}},
		// A node's page of one state: its total walks the node's index (a third of the tasks).
		{"node_state", Filter{Node: "n1", State: Succeeded, Limit: 50}},
	} {
		b.Run(q.name, func(b *testing.B) {
			for b.Loop() {
				p, err := f.ListPage(q.f)
				if err != nil || p.Total < 0 {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n), "tasks")
		})
	}
	b.Run("counts", func(b *testing.B) {
		for b.Loop() {
			f.Counts()
		}
	})
}
