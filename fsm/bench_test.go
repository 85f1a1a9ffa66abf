package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/mpcheck"
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

// lifeBatch is how many tasks one entry of each kind carries in the life benchmarks: the leader's
// batcher merges up to 512 items per entry (internode's maxBatchItems).
const lifeBatch = 512

// lifeFSM is an empty FSM with three echo nodes of unbounded capacity, at index 3.
func lifeFSM(tb testing.TB) *FSM {
	tb.Helper()
	f := New()
	for i, name := range lifeNodes {
		r := f.ApplyCommand(uint64(i+1), &Command{Now: lifeT0, Body: &Register{Node: Node{Name: name, BootID: lifeBoot(i),
			Capacity: 1 << 30, Protocol: Protocol, Types: []TypeInfo{{Type: "echo", Version: "1"}}}}})
		if r.Err != nil {
			tb.Fatal(r.Err)
		}
	}
	return f
}

var (
	lifeNodes = []string{"n1", "n2", "n3"}
	lifeT0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func lifeBoot(i int) string { return fmt.Sprintf("01JBOOT%019d", i) }

// lifeCommands are the three commands of the life of n small echo tasks from the first, as a busy
// leader writes them: one submit batch, one capped assignment batch over three nodes (placement
// at submit), and one report batch with each task's started and succeeded reports (an executor's
// StartedAndFinished).
func lifeCommands(first, n int, now time.Time) []*Command {
	subs := make([]Submit, n)
	as := make([]Assign, n)
	reps := make([]Report, 0, 2*n)
	for i := range n {
		id := benchID(first + i)
		subs[i] = Submit{ID: id, Type: "echo", Version: "1", Input: json.RawMessage(`{"msg":"hello"}`), MaxAttempts: 3,
			Timeout: Duration(30 * time.Second), ExecutionID: id}
		node, boot := lifeNodes[i%3], lifeBoot(i%3)
		as[i] = Assign{TaskID: id, Node: node, BootID: boot, Capped: true}
		reps = append(reps,
			Report{TaskID: id, Attempt: 1, Node: node, BootID: boot, Kind: ReportStarted},
			Report{TaskID: id, Attempt: 1, Node: node, BootID: boot, Kind: ReportSucceeded, Result: json.RawMessage(`{"msg":"hello"}`)})
	}
	return []*Command{
		{Now: now, Body: &SubmitBatch{Items: subs}},
		{Now: now.Add(time.Millisecond), Body: &AssignBatch{Items: as}},
		{Now: now.Add(2 * time.Millisecond), Body: &ReportBatch{Items: reps}},
	}
}

// lifeLogs are lifeCommands encoded as raft entries from index idx.
func lifeLogs(tb testing.TB, first, n int, idx uint64, now time.Time) []*raft.Log {
	tb.Helper()
	var logs []*raft.Log
	for i, c := range lifeCommands(first, n, now) {
		b, err := Encode(c)
		if err != nil {
			tb.Fatal(err)
		}
		logs = append(logs, &raft.Log{Type: raft.LogCommand, Index: idx + uint64(i), Data: b})
	}
	return logs
}

// checkLife fails unless every item of every result applied.
func checkLife(tb testing.TB, rs []any) {
	tb.Helper()
	for _, r := range rs {
		res := r.(*Result)
		if res.Err != nil {
			tb.Fatal(res.Err)
		}
		for _, it := range res.Items {
			if it.Err != nil {
				tb.Fatalf("%s: %v", it.ID, it.Err)
			}
		}
	}
}

// BenchmarkTaskLife applies the whole life of lifeBatch echo tasks per iteration (submit, capped
// assignment, started and succeeded reports: three entries) and reports the cost per task:
// "entries" through ApplyBatch from the encoded entries, as raft hands them over (decode and
// apply), "decoded" through ApplyCommand from the commands (apply alone). "entries-12" is
// "entries" with 12 tasks an entry, about what entries carry under 64 closed-loop clients;
// "watched-12" the same with the tasks watched.
func BenchmarkTaskLife(b *testing.B) {
	// entries applies the lives of n tasks an iteration from their encoded entries; observed
	// with an observer installed, as a node has one. watched applies the submit entry outside the
	// timing and then watches every task, as a submitter waiting for its result does (?wait), and
	// the task list, as a console does: only the assignment and report entries are timed.
	entries := func(b *testing.B, n int, observed, watched bool) {
		f := lifeFSM(b)
		if observed {
			f.SetObserver(func(uint64, []Transition) {})
		}
		idx := uint64(4)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			logs := lifeLogs(b, i*n, n, idx, lifeT0.Add(time.Duration(i)*time.Second))
			idx += uint64(len(logs))
			if watched {
				checkLife(b, f.ApplyBatch(logs[:1]))
				logs = logs[1:]
				for j := range n {
					if _, ok, _ := f.TaskWatch(benchID(i*n + j)); !ok {
						b.Fatal("no task")
					}
				}
				if _, err := f.ListPage(Filter{Limit: 1, Watch: true}); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			checkLife(b, f.ApplyBatch(logs))
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/task")
	}
	b.Run("entries-12", func(b *testing.B) { entries(b, 12, true, false) })
	b.Run("watched-12", func(b *testing.B) { entries(b, 12, true, true) })
	b.Run("entries", func(b *testing.B) { entries(b, lifeBatch, false, false) })
	b.Run("decoded", func(b *testing.B) {
		f := lifeFSM(b)
		idx := uint64(4)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			cmds := lifeCommands(i*lifeBatch, lifeBatch, lifeT0.Add(time.Duration(i)*time.Second))
			b.StartTimer()
			for _, c := range cmds {
				checkLife(b, []any{f.ApplyCommand(idx, c)})
				idx++
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lifeBatch), "ns/task")
	})
}

// BenchmarkDecode decodes one entry of lifeBatch items of each kind of a task's life, per task.
func BenchmarkDecode(b *testing.B) {
	for _, c := range lifeCommands(0, lifeBatch, lifeT0) {
		data, err := Encode(c)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.Type().String(), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Decode(data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lifeBatch), "ns/task")
		})
	}
}

// BenchmarkDecodeFormat compares, for the submit and report entries of lifeBatch tasks, decoding
// the envelope as entries spell it (msgpack maps keyed by field names, after mpcheck's walk) with
// decoding the same payloads encoded as arrays (msgpack's UseArrayEncodedStructs): what a
// positional format would save. It measures only; entries stay maps.
func BenchmarkDecodeFormat(b *testing.B) {
	cmds := lifeCommands(0, lifeBatch, lifeT0)
	for _, c := range []*Command{cmds[0], cmds[2]} {
		name := c.Type().String()
		env := struct {
			Now  time.Time `msgpack:"now"`
			Body Payload   `msgpack:"body"`
		}{c.Now, c.Body}
		asMap, err := msgpack.Marshal(&env)
		if err != nil {
			b.Fatal(err)
		}
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		enc.UseArrayEncodedStructs(true)
		if err := enc.Encode(&env); err != nil {
			b.Fatal(err)
		}
		asArray := buf.Bytes()
		decode := func(b *testing.B, data []byte, check bool) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if check {
					if _, err := mpcheck.Check(data); err != nil {
						b.Fatal(err)
					}
				}
				d := msgpack.NewDecoder(bytes.NewReader(data))
				if _, err := commands[c.Type()].decode(d); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lifeBatch), "ns/task")
		}
		b.Run(name+"/map", func(b *testing.B) { decode(b, asMap, false) })
		b.Run(name+"/map+check", func(b *testing.B) { decode(b, asMap, true) })
		b.Run(name+"/array", func(b *testing.B) { decode(b, asArray, false) })
	}
}
