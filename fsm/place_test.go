package fsm

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func placeCmd(now time.Time, items []Submit, place ...Assign) *Command {
	return &Command{Now: now, Body: &SubmitBatch{Items: items, Place: place}}
}

func at(id, node, boot string) Assign { return Assign{TaskID: id, Node: node, BootID: boot} }

// A submit entry with Place creates its tasks and assigns them in the same entry, at its time,
// and answers one result per submit item.
func TestSubmitWithPlaceAssignsItsTasksInOneEntry(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	now := t0.Add(time.Minute)
	r := h.must(placeCmd(now, []Submit{sub("a", "echo"), sub("b", "echo")}, at("a", "n1", "b1"), at("b", "n1", "b1")))
	if len(r.Items) != 2 || r.Items[0].ID != "a" || r.Items[1].ID != "b" {
		t.Fatalf("results %+v, want one per submit item", r.Items)
	}
	for _, id := range []string{"a", "b"} {
		tk := h.task(id)
		if tk.State != Assigned || tk.Node != "n1" || tk.Attempt != 1 || tk.CreateIndex != r.Index || tk.ModifyIndex != r.Index {
			t.Errorf("%s: %s on %q attempt %d, indexes %d/%d; want assigned on n1 in entry %d", id, tk.State, tk.Node, tk.Attempt, tk.CreateIndex, tk.ModifyIndex, r.Index)
		}
		if ev := events(tk); !slices.Equal(ev, []string{string(EventAssigned)}) || !tk.History[0].At.Equal(now) {
			t.Errorf("%s: history %v, want one assignment at the entry's time", id, tk.History)
		}
	}
	if got := h.f.Index(); got != r.Index {
		t.Errorf("index %d, want %d", got, r.Index)
	}
}

// Place assigns only the tasks the entry's own items created, and an assignment the FSM cannot
// apply leaves its task pending: no panic, no error for the submit.
func TestSubmitPlaceRefusals(t *testing.T) {
	later := t0.Add(time.Hour)
	cases := []struct {
		name     string
		capacity int // n1's; 4 when 0
		setup    func(h *harness)
		items    []Submit
		adm      *Admission
		place    []Assign
		want     map[string]State // a task's state after the entry; "" when it must not exist
		nodeOf   map[string]string
	}{
		{
			name:  "duplicate ID: the existing task is not assigned",
			setup: func(h *harness) { h.must(submitCmd(sub("a", "echo"))) },
			items: []Submit{sub("a", "echo")},
			place: []Assign{at("a", "n1", "b1")},
			want:  map[string]State{"a": Pending},
		},
		{
			name: "unique key held: neither the refused submit nor the lock's holder is assigned",
			setup: func(h *harness) {
				h.must(submitCmd(Submit{ID: "u1", Type: "echo", MaxAttempts: 1, UniqueKey: "k", UniqueFor: Duration(time.Hour)}))
			},
			items: []Submit{{ID: "u2", Type: "echo", MaxAttempts: 1, UniqueKey: "k", UniqueFor: Duration(time.Hour)}},
			place: []Assign{at("u2", "n1", "b1"), at("u1", "n1", "b1")},
			want:  map[string]State{"u1": Pending, "u2": ""},
		},
		{
			name: "debounced: the task it debounced into is not assigned",
			setup: func(h *harness) {
				h.must(submitCmd(Submit{ID: "d1", Type: "echo", MaxAttempts: 1, DebounceKey: "k", Debounce: Duration(time.Second)}))
			},
			items: []Submit{{ID: "d2", Type: "echo", MaxAttempts: 1, DebounceKey: "k", Debounce: Duration(time.Second)}},
			place: []Assign{at("d2", "n1", "b1"), at("d1", "n1", "b1")},
			want:  map[string]State{"d1": Scheduled, "d2": ""},
		},
		{
			name:  "refused by admission: the items admitted are assigned, the refused one does not exist",
			items: []Submit{sub("x", "echo"), sub("y", "echo")},
			adm:   &Admission{MaxPending: 1},
			place: []Assign{at("x", "n1", "b1"), at("y", "n1", "b1")},
			want:  map[string]State{"x": Assigned, "y": ""},
		},
		{
			name:  "unknown node: pending",
			items: []Submit{sub("a", "echo")},
			place: []Assign{at("a", "ghost", "b1")},
			want:  map[string]State{"a": Pending},
		},
		{
			name:  "stale boot ID: pending",
			items: []Submit{sub("a", "echo")},
			place: []Assign{at("a", "n1", "b0")},
			want:  map[string]State{"a": Pending},
		},
		{
			name:  "draining node: pending",
			setup: func(h *harness) { h.must(drainCmd("n1", true)) },
			items: []Submit{sub("a", "echo")},
			place: []Assign{at("a", "n1", "b1")},
			want:  map[string]State{"a": Pending},
		},
		{
			name:     "full node: the assignments past its free slots leave their tasks pending, even uncapped ones",
			capacity: 2,
			setup: func(h *harness) {
				h.must(submitCmd(sub("busy", "echo")))
				h.must(assignCmd("busy", "n1", "b1"))
			},
			items: []Submit{sub("a", "echo"), sub("b", "echo"), sub("c", "echo")},
			place: []Assign{at("a", "n1", "b1"), at("b", "n1", "b1"), {TaskID: "c", Node: "n1", BootID: "b1", Capped: true}},
			want:  map[string]State{"a": Assigned, "b": Pending, "c": Pending},
		},
		{
			name:  "a delayed task is not assigned before its time",
			items: []Submit{{ID: "late", Type: "echo", MaxAttempts: 1, RunAt: &later}},
			place: []Assign{at("late", "n1", "b1")},
			want:  map[string]State{"late": Scheduled},
		},
		{
			name:  "the same task twice: assigned once",
			items: []Submit{sub("a", "echo")},
			place: []Assign{at("a", "n1", "b1"), at("a", "n1", "b1")},
			want:  map[string]State{"a": Assigned},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			capacity := tc.capacity
			if capacity == 0 {
				capacity = 4
			}
			h.must(registerCmd("n1", "b1", capacity))
			if tc.setup != nil {
				tc.setup(h)
			}
			r := h.apply(&Command{Body: &SubmitBatch{Items: tc.items, Admission: tc.adm, Place: tc.place}})
			if r.Err != nil || len(r.Items) != len(tc.items) {
				t.Fatalf("apply: %v, %d results for %d items", r.Err, len(r.Items), len(tc.items))
			}
			for id, want := range tc.want {
				tk, ok := h.f.Task(id)
				switch {
				case want == "" && ok:
					t.Errorf("%s exists (%s), want none", id, tk.State)
				case want != "" && !ok:
					t.Errorf("%s does not exist, want %s", id, want)
				case ok && tk.State != want:
					t.Errorf("%s: %s, want %s (history %v)", id, tk.State, want, events(tk))
				case ok && want == Assigned && tk.Attempt != 1:
					t.Errorf("%s: attempt %d, want 1", id, tk.Attempt)
				}
			}
			if n := len(h.f.Active("n1")); n > capacity {
				t.Errorf("n1 holds %d tasks, capacity %d", n, capacity)
			}
		})
	}
}

// normalized are f's tasks without their log indexes, which differ by one entry between a submit
// with Place and a submit followed by its assignments.
func normalized(f *FSM) []Task {
	ts := f.List(Filter{})
	for i := range ts {
		ts[i].CreateIndex, ts[i].ModifyIndex = 0, 0
	}
	return ts
}

// An entry with Place, applied by this FSM, leaves the state that the submit and a capped
// AssignBatch at the same time, in two entries, leave: a replica that read today's two entries
// and one that read the single entry agree on every task and node.
func TestSubmitWithPlaceEqualsSubmitThenCappedAssign(t *testing.T) {
	now := t0.Add(time.Minute)
	setup := func() *harness {
		h := newHarness(t)
		h.must(registerCmd("n1", "b1", 2))
		h.must(registerCmd("n2", "b2", 1))
		h.must(submitCmd(Submit{ID: "u1", Type: "echo", MaxAttempts: 1, UniqueKey: "k", UniqueFor: Duration(time.Hour)}))
		h.must(&Command{Body: &RateLimitSet{Name: "api", Count: 10, Period: Duration(time.Second), Burst: 2}})
		return h
	}
	items := []Submit{
		sub("a", "echo"), sub("b", "echo"), sub("c", "echo"), sub("d", "echo"),
		{ID: "u2", Type: "echo", MaxAttempts: 1, UniqueKey: "k", UniqueFor: Duration(time.Hour)},
		{ID: "q", Type: "echo", MaxAttempts: 1, RateLimit: "api"},
	}
	place := []Assign{
		at("a", "n1", "b1"), at("b", "n2", "b2"), at("c", "n1", "b1"),
		at("d", "n2", "b2"), // n2 is full by then
		at("u2", "n1", "b1"), at("q", "ghost", "g"),
	}
	one := setup()
	one.apply(placeCmd(now, items, place...))

	two := setup()
	two.apply(&Command{Now: now, Body: &SubmitBatch{Items: items}})
	capped := slices.Clone(place)
	for i := range capped {
		capped[i].Capped = true
	}
	two.apply(&Command{Now: now, Body: &AssignBatch{Items: capped}})

	if a, b := normalized(one.f), normalized(two.f); !reflect.DeepEqual(a, b) {
		t.Fatalf("tasks differ\none entry:   %+v\ntwo entries: %+v", a, b)
	}
	if a, b := one.f.Load(), two.f.Load(); !reflect.DeepEqual(a, b) {
		t.Errorf("load differs: %v and %v", a, b)
	}
	if a, b := one.f.Counts(), two.f.Counts(); !reflect.DeepEqual(a, b) {
		t.Errorf("counts differ: %v and %v", a, b)
	}
	if got := one.f.Counts()[Assigned]; got != 3 {
		t.Errorf("%d assigned, want 3 (a, b, c)", got)
	}
	// And the entry is deterministic through its encoding: a replica that decodes it reaches
	// the digest of the one that applied it.
	rep := setup()
	b, err := Encode(placeCmd(now, items, place...))
	if err != nil {
		t.Fatal(err)
	}
	rep.idx++
	rep.f.Apply(&raft.Log{Type: raft.LogCommand, Index: rep.idx, Data: b})
	_, want := one.f.Digest()
	if _, got := rep.f.Digest(); got != want {
		t.Errorf("a replica decoding the entry reached digest %s, the one that applied it %s", got, want)
	}
}

// Place needs PlaceProtocol: the leader refuses to write it while an older node is up, and its
// items alone need only what they needed before.
func TestSubmitPlaceIsProtocolGated(t *testing.T) {
	b := &SubmitBatch{Items: []Submit{sub("a", "echo")}}
	if got := b.NeedsProtocol(); got != 0 {
		t.Fatalf("plain submit needs %d, want 0", got)
	}
	b.Place = []Assign{at("a", "n1", "b1")}
	if got := b.NeedsProtocol(); got != PlaceProtocol {
		t.Fatalf("submit with Place needs %d, want %d", got, PlaceProtocol)
	}
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b0", Capacity: 1, Protocol: PlaceProtocol - 1}}})
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: Protocol}}})
	c := &Command{Now: t0, Body: b}
	if _, err := h.f.Emit(c); !errors.Is(err, ErrProtocolTooOld) {
		t.Fatalf("Emit with a protocol %d node up: %v, want ErrProtocolTooOld", PlaceProtocol-1, err)
	}
	if err := h.f.CheckContentProtocol(c); !errors.Is(err, ErrProtocolTooOld) {
		t.Fatalf("CheckContentProtocol: %v, want ErrProtocolTooOld", err)
	}
	b.Place = nil
	if _, err := h.f.Emit(c); err != nil {
		t.Fatalf("Emit of the same submit without Place: %v", err)
	}
	h.must(downCmd("old", true))
	b.Place = []Assign{at("a", "n1", "b1")}
	if _, err := h.f.Emit(c); err != nil {
		t.Fatalf("Emit once the old node left: %v", err)
	}
}

// Merging submits keeps their items and caps and drops any Place: the leader places a merged
// batch's tasks itself.
func TestMergeDropsPlace(t *testing.T) {
	m, err := Merge(t0, []*Command{
		placeCmd(t0, []Submit{sub("a", "echo")}, at("a", "n1", "b1")),
		submitCmd(sub("b", "echo")),
	})
	if err != nil {
		t.Fatal(err)
	}
	if b := m.Body.(*SubmitBatch); len(b.Items) != 2 || b.Place != nil {
		t.Fatalf("merged: %d items, place %v; want 2 items, no place", len(b.Items), b.Place)
	}
}
