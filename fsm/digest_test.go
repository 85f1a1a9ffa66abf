package fsm

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// These tests build state through Restore, the snapshot format every version must keep reading,
// so they do not depend on how commands are spelled.

// digestState restores an FSM from a snapshot of tasks and nodes at index.
func digestState(t *testing.T, index uint64, tasks []Task, nodes []Node) *FSM {
	t.Helper()
	b, err := msgpack.Marshal(map[string]any{"index": index, "tasks": tasks, "nodes": nodes})
	if err != nil {
		t.Fatal(err)
	}
	f := New()
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return f
}

func digestTasks() []Task {
	at := time.Unix(1_700_000_000, 0)
	return []Task{
		{ID: "01A", Type: "echo", Version: "1", Input: json.RawMessage(`{"a":1}`), State: Succeeded, Node: "n1",
			Attempt: 1, MaxAttempts: 3, Result: json.RawMessage(`{"a":1}`), IdempotencyKey: "k1", ExecutionID: "01A",
			CreatedAt: at, CreateIndex: 5, ModifyIndex: 9,
			History: []HistoryEntry{{Attempt: 1, Node: "n1", Event: EventAssigned, At: at}, {Attempt: 1, Node: "n1", Event: EventSucceeded, At: at}}},
		{ID: "01B", Type: "sleep", Version: "1", State: Pending, MaxAttempts: 3, ExecutionID: "01B",
			CreatedAt: at, CreateIndex: 6, ModifyIndex: 6},
	}
}

func digestNodes() []Node {
	return []Node{
		{Name: "n1", BootID: "b1", Capacity: 2, Status: NodeUp, Types: []TypeInfo{{Type: "echo", Version: "1"}}},
		{Name: "n2", BootID: "b2", Capacity: 2, Status: NodeUp},
	}
}

func TestDigestIsCanonicalAndSeesEveryChange(t *testing.T) {
	refIndex, ref := digestState(t, 10, digestTasks(), digestNodes()).Digest()
	if refIndex != 10 || len(ref) != 64 {
		t.Fatalf("Digest = %d %q, want index 10 and a sha256", refIndex, ref)
	}
	reversed := digestTasks()
	reversed[0], reversed[1] = reversed[1], reversed[0]
	revNodes := digestNodes()
	revNodes[0], revNodes[1] = revNodes[1], revNodes[0]
	if _, sum := digestState(t, 10, reversed, revNodes).Digest(); sum != ref {
		t.Errorf("same state restored in another order: digest %s, want %s", sum, ref)
	}

	tests := []struct {
		name   string
		index  uint64
		change func(ts []Task, ns []Node)
	}{
		{"index", 11, func([]Task, []Node) {}},
		{"state", 10, func(ts []Task, _ []Node) { ts[1].State = Running }},
		{"attempt", 10, func(ts []Task, _ []Node) { ts[0].Attempt = 2 }},
		{"result", 10, func(ts []Task, _ []Node) { ts[0].Result = json.RawMessage(`{"a":2}`) }},
		{"history node", 10, func(ts []Task, _ []Node) { ts[0].History[1].Node = "n2" }},
		{"history time", 10, func(ts []Task, _ []Node) { ts[0].History[1].At = ts[0].History[1].At.Add(time.Nanosecond) }},
		{"boot id (not in the JSON record)", 10, func(ts []Task, _ []Node) { ts[0].BootID = "b9" }},
		{"idempotency key", 10, func(ts []Task, _ []Node) { ts[0].IdempotencyKey = "k2" }},
		{"node status", 10, func(_ []Task, ns []Node) { ns[1].Status = NodeDown }},
		{"node draining", 10, func(_ []Task, ns []Node) { ns[0].Draining = true }},
		{"node types", 10, func(_ []Task, ns []Node) { ns[0].Types = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, ns := digestTasks(), digestNodes()
			tt.change(ts, ns)
			if _, sum := digestState(t, tt.index, ts, ns).Digest(); sum == ref {
				t.Errorf("a changed %s leaves the digest unchanged", tt.name)
			}
		})
	}
}

// A replica restored from another's snapshot is the same replica.
// restoredCopy is a new FSM restored from a snapshot of f.
func restoredCopy(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink digestSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestDigestSurvivesSnapshotRoundTrip(t *testing.T) {
	f := digestState(t, 10, digestTasks(), digestNodes())
	g := restoredCopy(t, f)
	fi, fs := f.Digest()
	gi, gs := g.Digest()
	if fi != gi || fs != gs {
		t.Fatalf("restored replica digest %d %s, original %d %s", gi, gs, fi, fs)
	}
}

type digestSink struct{ bytes.Buffer }

func (*digestSink) ID() string    { return "digest-test" }
func (*digestSink) Cancel() error { return nil }
func (*digestSink) Close() error  { return nil }

// Two digests of one state are equal whatever order Go walks its maps in: a table with several
// queue settings (a map of structs) once summed differently on every call.
func TestDigestDoesNotDependOnMapOrder(t *testing.T) {
	f := New()
	f.queues.Queues = map[string]QueueConfig{"": {Paused: true}, "bulk": {Limit: 5}, "a": {Limit: 1}, "b": {Limit: 2}, "c": {Limit: 3}}
	f.queues.TypeLimits = map[string]int{"x": 1, "y": 2, "z": 3}
	_, want := f.Digest()
	for i := range 100 {
		if _, got := f.Digest(); got != want {
			t.Fatalf("digest %d differs from the first", i)
		}
	}
}
