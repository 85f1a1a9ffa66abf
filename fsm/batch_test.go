package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// observerCall is one call of an Observer.
type observerCall struct {
	index uint64
	ts    []Transition
}

// recorder installs an observer on f that records every call.
func recorder(f *FSM) *[]observerCall {
	var calls []observerCall
	f.SetObserver(func(index uint64, ts []Transition) {
		calls = append(calls, observerCall{index, append([]Transition(nil), ts...)})
	})
	return &calls
}

// configLog is a configuration change as raft hands it to ApplyBatch.
func configLog(index uint64) *raft.Log {
	return &raft.Log{Type: raft.LogConfiguration, Index: index, Data: raft.EncodeConfiguration(raft.Configuration{
		Servers: []raft.Server{{ID: "n1", Address: "127.0.0.1:1", Suffrage: raft.Voter}}})}
}

// encodeLogs makes raft entries of cmds from index 1, with a configuration change wherever
// configAt says.
func encodeLogs(t *testing.T, cmds []*Command, configAt func(i int) bool) []*raft.Log {
	t.Helper()
	var logs []*raft.Log
	for i, c := range cmds {
		if configAt != nil && configAt(i) {
			logs = append(logs, configLog(uint64(len(logs)+1)))
		}
		logs = append(logs, raftLog(t, uint64(len(logs)+1), c))
	}
	return logs
}

// applied is what a run of entries left: each entry's result, the observer's calls, and the state.
type applied struct {
	results  []any
	calls    []observerCall
	index    uint64
	digest   string
	snapshot []byte
	halted   error
}

// oneByOne applies logs with Apply, one entry at a time.
func oneByOne(t *testing.T, logs []*raft.Log) applied {
	t.Helper()
	f := New()
	calls := recorder(f)
	var out applied
	for _, l := range logs {
		out.results = append(out.results, f.Apply(l))
	}
	return finish(t, f, out, calls)
}

// inBatches applies logs with ApplyBatch, cut into batches of the given sizes (the last one
// repeated until the logs run out).
func inBatches(t *testing.T, logs []*raft.Log, sizes ...int) applied {
	t.Helper()
	f := New()
	calls := recorder(f)
	var out applied
	for i := 0; len(logs) > 0; i++ {
		n := min(sizes[min(i, len(sizes)-1)], len(logs))
		rs := f.ApplyBatch(logs[:n])
		if len(rs) != n {
			t.Fatalf("ApplyBatch of %d entries returned %d results", n, len(rs))
		}
		out.results = append(out.results, rs...)
		logs = logs[n:]
	}
	return finish(t, f, out, calls)
}

func finish(t *testing.T, f *FSM, out applied, calls *[]observerCall) applied {
	t.Helper()
	out.calls = *calls
	out.index, out.digest = f.Digest()
	if out.halted = f.Halted(); out.halted == nil { // a halted FSM refuses snapshots
		out.snapshot = snapshotBytes(t, f)
	}
	return out
}

// differs reports how got differs from want, "" when it does not.
func (got applied) differs(want applied) string {
	switch {
	case len(got.results) != len(want.results):
		return fmt.Sprintf("%d results, want %d", len(got.results), len(want.results))
	case got.index != want.index || got.digest != want.digest:
		return fmt.Sprintf("index %d digest %s, want %d %s", got.index, got.digest, want.index, want.digest)
	case !bytes.Equal(got.snapshot, want.snapshot):
		return "snapshots differ"
	case !reflect.DeepEqual(got.halted, want.halted):
		return fmt.Sprintf("halted %v, want %v", got.halted, want.halted)
	case !reflect.DeepEqual(got.calls, want.calls):
		return fmt.Sprintf("observer saw %+v\nwant %+v", got.calls, want.calls)
	}
	for i := range got.results {
		if !reflect.DeepEqual(got.results[i], want.results[i]) {
			return fmt.Sprintf("result %d is %#v, want %#v", i, got.results[i], want.results[i])
		}
	}
	return ""
}

func TestApplyBatchMatchesApplyingEachEntry(t *testing.T) {
	// A state the golden test covers, as commands, then script's every command type.
	cmds := script()
	later := t0.Add(2 * time.Hour)
	cmds = append(cmds,
		&Command{Body: &QueueSet{Name: "q1", Limit: ptr(1)}},
		&Command{Body: &TypeLimitSet{Type: "echo", Limit: 5}},
		submitCmd(Submit{ID: "f", Type: "echo", Queue: "q1", Priority: 2}, Submit{ID: "g", Type: "echo", RunAt: &later},
			Submit{ID: "h", Type: "echo", UniqueKey: "u", UniqueFor: Duration(time.Hour)}),
		&Command{Body: &AssignBatch{Due: []string{"g"}, Items: []Assign{{TaskID: "f", Node: "n1", BootID: "b3", Capped: true}}}},
		reportCmd(rep("f", 1, "n1", "b3", ReportStarted),
			Report{TaskID: "f", Attempt: 1, Node: "n1", BootID: "b3", Kind: ReportFailed, Error: &TaskError{Type: "x", Message: "y", Final: true}}),
		&Command{Body: &Retry{IDs: []string{"f", "nope"}, By: "alice"}},
		&Command{Body: &Purge{States: []State{Succeeded}}},
	)
	for i, c := range cmds {
		c.Now = t0.Add(time.Duration(i) * time.Minute)
	}
	logs := encodeLogs(t, cmds, func(i int) bool { return i%5 == 2 })
	want := oneByOne(t, logs)
	if want.halted != nil {
		t.Fatalf("the script halted: %v", want.halted)
	}
	for _, sizes := range [][]int{{1}, {2}, {3}, {7}, {len(logs)}, {1, 4, 2, 64}} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			if d := inBatches(t, logs, sizes...).differs(want); d != "" {
				t.Error(d)
			}
		})
	}
}

// An entry this build cannot read halts the FSM in a batch exactly as alone: the entries before
// it apply, it and every command after it answer the halt error, configuration changes answer
// nil, and the state stays that of the entries before it.
func TestApplyBatchHaltsAtTheBadEntry(t *testing.T) {
	cmds := script()[:6]
	logs := encodeLogs(t, cmds, nil)
	bad := &raft.Log{Type: raft.LogCommand, Index: 4, Data: []byte{99, 0x80}} // an unknown command type
	logs = append(logs[:3], bad)
	logs = append(logs, configLog(5))
	for i, c := range cmds[3:] {
		logs = append(logs, raftLog(t, uint64(6+i), c))
	}
	want := oneByOne(t, logs)
	got := inBatches(t, logs, len(logs))
	if d := got.differs(want); d != "" {
		t.Fatal(d)
	}
	if !errors.Is(got.halted, ErrHalted) || got.index != 3 {
		t.Fatalf("halted %v at index %d, want halted at 3", got.halted, got.index)
	}
	for i, r := range got.results {
		switch {
		case i < 3:
			if res := r.(*Result); res.Err != nil || res.Index != uint64(i+1) {
				t.Errorf("entry %d: %#v, want applied", i+1, res)
			}
		case logs[i].Type != raft.LogCommand:
			if r != nil {
				t.Errorf("configuration entry %d: %#v, want nil", i+1, r)
			}
		default:
			if res := r.(*Result); !errors.Is(res.Err, ErrHalted) || res.Err != got.halted || res.Index != logs[i].Index {
				t.Errorf("entry %d: %#v, want the halt error", i+1, res)
			}
		}
	}
	if before := inBatches(t, logs[:3], 3); before.digest != want.digest {
		t.Error("the halted state is not that of the entries before the bad one")
	}

	// A halted FSM applies no later batch either.
	f := New()
	f.ApplyBatch(logs)
	ch := f.Changed()
	for _, r := range f.ApplyBatch([]*raft.Log{raftLog(t, 20, cmds[0])}) {
		if res := r.(*Result); !errors.Is(res.Err, ErrHalted) || res.Index != 20 {
			t.Errorf("after the halt: %#v", res)
		}
	}
	if f.Index() != 3 || isClosed(ch) {
		t.Errorf("a halted FSM moved: index %d, changed closed %v", f.Index(), isClosed(ch))
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A batch wakes the watchers once it is applied: Changed and the watch of every task it changed;
// a batch that applies nothing (only configuration changes, or only an unreadable entry) wakes no
// one.
func TestApplyBatchWakesWatchers(t *testing.T) {
	f := New()
	f.ApplyBatch(encodeLogs(t, []*Command{registerCmd("n1", "b1", 4), submitCmd(sub("a", "echo"), sub("b", "echo"))}, nil))
	changed := f.Changed()
	_, _, watchA := f.TaskWatch("a")
	_, _, watchB := f.TaskWatch("b")
	page, err := f.ListPage(Filter{Node: "n1", Watch: true})
	if err != nil {
		t.Fatal(err)
	}
	watchBNode := page.Watch

	if f.ApplyBatch([]*raft.Log{configLog(3)}); isClosed(changed) {
		t.Fatal("a batch of a configuration change closed Changed")
	}
	cmds := []*Command{assignCmd("a", "n1", "b1"), reportCmd(rep("a", 1, "n1", "b1", ReportStarted))}
	for _, c := range cmds {
		c.Now = t0
	}
	logs := []*raft.Log{raftLog(t, 4, cmds[0]), raftLog(t, 5, cmds[1])}
	f.ApplyBatch(logs)
	if !isClosed(changed) || !isClosed(watchA) || !isClosed(watchBNode) {
		t.Errorf("after the batch: Changed closed %v, a's watch %v, n1's list watch %v; want all closed",
			isClosed(changed), isClosed(watchA), isClosed(watchBNode))
	}
	if isClosed(watchB) {
		t.Error("b's watch closed by a batch that did not change b")
	}
	if next := f.Changed(); isClosed(next) || next == changed {
		t.Error("Changed after the batch is not a fresh open channel")
	}
	if f.Index() != 5 {
		t.Errorf("index %d, want 5", f.Index())
	}

	next := f.Changed()
	f.ApplyBatch([]*raft.Log{{Type: raft.LogCommand, Index: 6, Data: []byte("garbage")}})
	if isClosed(next) {
		t.Error("a batch of an unreadable entry closed Changed")
	}
}

// The observer gets each entry's transitions in its own call, after the lock is released: it may
// read the FSM.
func TestApplyBatchCallsTheObserverPerEntry(t *testing.T) {
	f := New()
	var calls []observerCall
	f.SetObserver(func(index uint64, ts []Transition) {
		calls = append(calls, observerCall{index, ts})
		f.Index() // would deadlock under the lock
	})
	cmds := []*Command{registerCmd("n1", "b1", 4), submitCmd(sub("a", "echo"), sub("b", "echo")), drainCmd("n1", false),
		assignCmd("a", "n1", "b1"), reportCmd(rep("a", 1, "n1", "b1", ReportStarted), rep("a", 1, "n1", "b1", ReportSucceeded))}
	for _, c := range cmds {
		c.Now = t0
	}
	f.ApplyBatch(encodeLogs(t, cmds, func(i int) bool { return i == 3 }))
	var got []string
	for _, c := range calls {
		for _, tr := range c.ts {
			got = append(got, fmt.Sprintf("%d:%s:%s", c.index, tr.TaskID, tr.Kind))
		}
		if cap(c.ts) != len(c.ts) {
			t.Errorf("entry %d: transitions with spare capacity %d: the observer could append into the next entry's", c.index, cap(c.ts)-len(c.ts))
		}
	}
	want := []string{"2:a:submitted", "2:b:submitted", "6:a:started", "6:a:succeeded"}
	if !reflect.DeepEqual(got, want) || len(calls) != 2 {
		t.Errorf("observer calls %v (%d calls), want %v in 2 calls", got, len(calls), want)
	}
}

func TestApplyBatchOfNothing(t *testing.T) {
	f := New()
	if rs := f.ApplyBatch(nil); len(rs) != 0 {
		t.Errorf("ApplyBatch(nil) = %v", rs)
	}
}

// randomAssigns places the due and pending tasks of v, each but one in skipOneIn of them, on a
// node of nodes picked at random (at its boot bootOf), capped or not at random.
func randomAssigns(rng *rand.Rand, v View, skipOneIn int, nodes []string, bootOf func(string) string) *AssignBatch {
	b := &AssignBatch{Due: v.Due}
	for _, p := range v.Pending {
		if rng.IntN(skipOneIn) > 0 {
			node := nodes[rng.IntN(len(nodes))]
			b.Items = append(b.Items, Assign{TaskID: p.ID, Node: node, BootID: bootOf(node), Capped: rng.IntN(2) == 0})
		}
	}
	return b
}

// randomCommands generates n commands over a few tasks and nodes, each chosen knowing the state
// the ones before it leave (ref applies them), so that most apply and the rest fail in every way a
// command can: stale reports, unknown tasks, duplicate IDs, full queues, bad kinds.
func randomCommands(t *testing.T, rng *rand.Rand, n int) []*Command {
	t.Helper()
	ref := New()
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	nodes := []string{"n1", "n2", "n3"}
	boots := map[string]int{}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	bootOf := func(node string) string { return fmt.Sprintf("%s-b%d", node, boots[node]) }
	var cmds []*Command
	for i := range n {
		now := t0.Add(time.Duration(i) * time.Second)
		var body Payload
		switch k := rng.IntN(20); {
		case k < 2 || i < 3:
			node := nodes[min(i, len(nodes)-1)]
			if i >= 3 {
				node = pick(nodes)
				if rng.IntN(3) == 0 {
					boots[node]++ // a restart: its tasks are taken back
				}
			}
			body = &Register{Node: Node{Name: node, BootID: bootOf(node), Capacity: 1 + rng.IntN(3), Protocol: Protocol}}
		case k < 6:
			var items []Submit
			for range 1 + rng.IntN(4) {
				s := Submit{ID: pick(ids) + fmt.Sprint(rng.IntN(3)), Type: pick([]string{"echo", "sleep"}), MaxAttempts: rng.IntN(3),
					Input: json.RawMessage(`{"n":1}`)}
				switch rng.IntN(8) {
				case 0:
					s.IdempotencyKey = pick(ids)
				case 1:
					at := now.Add(time.Duration(rng.IntN(5)) * time.Second)
					s.RunAt = &at
				case 2:
					s.Queue, s.Priority = "q", rng.IntN(3)
				case 3:
					s.UniqueKey, s.UniqueFor = pick(ids), Duration(time.Minute)
				}
				items = append(items, s)
			}
			b := &SubmitBatch{Items: items}
			if rng.IntN(4) == 0 {
				b.Admission = &Admission{MaxPending: 1 + rng.IntN(6)}
			}
			body = b
		case k < 9:
			body = randomAssigns(rng, ref.SchedulerView(), 3, nodes, bootOf)
		case k < 14:
			b := &ReportBatch{}
			for _, tk := range ref.List(Filter{}) {
				if !tk.State.Active() || rng.IntN(3) == 0 {
					continue
				}
				r := Report{TaskID: tk.ID, Attempt: tk.Attempt, Node: tk.Node, BootID: tk.BootID,
					Kind: ReportKind(1 + rng.IntN(6))}
				if rng.IntN(8) == 0 {
					r.Attempt++ // stale
				}
				if rng.IntN(10) == 0 {
					r.Kind = 9 // invalid
				}
				switch r.Kind {
				case ReportSucceeded:
					r.Result = json.RawMessage(`"ok"`)
				case ReportFailed:
					r.Error = &TaskError{Type: "x", Message: "boom", Final: rng.IntN(4) == 0}
					nb := now.Add(time.Second)
					r.NotBefore = &nb
				case ReportCheckpoint:
					r.Checkpoint = json.RawMessage(`[1]`)
				}
				if r.Kind == ReportStarted && rng.IntN(2) == 0 {
					b.Items = append(b.Items, r) // started and finished in one entry
					r.Kind = ReportSucceeded
				}
				b.Items = append(b.Items, r)
			}
			body = b
		case k == 14:
			body = &Cancel{IDs: []string{pick(ids) + "0", pick(ids) + "1"}}
		case k == 15:
			body = &Retry{IDs: []string{pick(ids) + "0", pick(ids) + "2"}, By: "bob"}
		case k == 16:
			body = &Purge{Limit: 1 + rng.IntN(3)}
		case k == 17:
			body = &Remove{IDs: []string{pick(ids) + "1"}}
		case k == 18:
			body = &Down{Name: pick(nodes), Left: rng.IntN(2) == 0}
		default:
			body = &Drain{Name: pick(nodes), Draining: rng.IntN(2) == 0}
		}
		c := &Command{Now: now, Body: body}
		ref.ApplyCommand(uint64(i+1), c)
		cmds = append(cmds, c)
	}
	return cmds
}

// ApplyBatch, however raft cuts the log into batches, leaves what Apply on each entry leaves:
// results, observer calls, index, digest and snapshot, over random command sequences with
// configuration changes among them, and sometimes an unreadable entry.
func TestApplyBatchMatchesApplyOnRandomSequences(t *testing.T) {
	runs := 150
	if testing.Short() {
		runs = 30
	}
	for run := range runs {
		rng := rand.New(rand.NewPCG(uint64(run), 7))
		cmds := randomCommands(t, rng, 20+rng.IntN(60))
		logs := encodeLogs(t, cmds, func(int) bool { return rng.IntN(10) == 0 })
		if run%5 == 4 {
			at := rng.IntN(len(logs))
			logs[at] = &raft.Log{Type: raft.LogCommand, Index: logs[at].Index, Data: []byte{byte(CmdReport), 0x81, 0xa1, 'x', 0x01}}
		}
		want := oneByOne(t, logs)
		sizes := []int{1 + rng.IntN(8), 1 + rng.IntN(64), 1 + rng.IntN(3)}
		if d := inBatches(t, logs, sizes...).differs(want); d != "" {
			t.Fatalf("run %d, batches of %v: %s", run, sizes, d)
		}
		if run%5 == 4 && want.halted == nil {
			t.Fatalf("run %d: the unreadable entry did not halt the FSM", run)
		}
	}
}

// The allocation budget of one task's life through the command path: its share of a submit
// entry, a capped assignment entry and a report entry (started and succeeded) of lifeTasks tasks
// each, from the encoded entries to the applied state, with an observer installed as a node
// has. Per task that is the decoded strings and raw JSON (12 strings, 2 inputs), the record
// copied at each of its three stores (newTask, cow; the start and end reported together make one
// change, reportPair) with an index entry for each, one history
// array, and the entries' share of decoders, results and B-tree nodes. A new allocation on this
// path shows here; lower the budget when one goes.
func TestAllocationsPerTask(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts vary under the race detector")
	}
	const (
		lifeTasks = 64
		budget    = 23.5
	)
	f := lifeFSM(t)
	f.SetObserver(func(uint64, []Transition) {})
	const runs = 20
	var batches [][]*raft.Log
	for i := range runs + 1 {
		batches = append(batches, lifeLogs(t, i*lifeTasks, lifeTasks, uint64(4+3*i), lifeT0.Add(time.Duration(i)*time.Second)))
	}
	next := 0
	perTask := testing.AllocsPerRun(runs, func() {
		checkLife(t, f.ApplyBatch(batches[next]))
		next++
	}) / lifeTasks
	if perTask > budget {
		t.Errorf("%.2f allocations per task, budget %.1f", perTask, budget)
	}
	t.Logf("%.2f allocations per task (budget %.1f)", perTask, budget)
}
