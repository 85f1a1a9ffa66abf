package fsm

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func byWho(id, who string) Submit {
	s := sub(id, "echo")
	s.SubmittedBy = who
	return s
}

// TestAdmissionRefusesItemsPastTheCaps applies batches under caps and checks, per item, which
// are refused and that a refused item stores nothing.
func TestAdmissionRefusesItemsPastTheCaps(t *testing.T) {
	later := t0.Add(time.Hour)
	cases := []struct {
		name    string
		before  []Submit // applied without caps first
		a       *Admission
		items   []Submit
		wantErr []error // per item of items
	}{
		{name: "cluster cap: the items past it fail alone", a: &Admission{MaxPending: 2},
			items:   []Submit{byWho("a", ""), byWho("b", ""), byWho("c", "")},
			wantErr: []error{nil, nil, ErrQueueFull}},
		{name: "cluster cap counts what was there", before: []Submit{byWho("x", "bob")}, a: &Admission{MaxPending: 2},
			items:   []Submit{byWho("a", "alice"), byWho("b", "alice")},
			wantErr: []error{nil, ErrQueueFull}},
		{name: "delayed tasks wait too", before: []Submit{{ID: "x", Type: "echo", MaxAttempts: 1, RunAt: &later}}, a: &Admission{MaxPending: 1},
			items:   []Submit{byWho("a", "")},
			wantErr: []error{ErrQueueFull}},
		{name: "a principal's cap leaves others alone", before: []Submit{byWho("x", "bob")},
			a:       &Admission{Principals: []PrincipalCap{{Principal: "bob", MaxPending: 2}}},
			items:   []Submit{byWho("a", "bob"), byWho("b", "bob"), byWho("c", "alice"), byWho("d", "alice")},
			wantErr: []error{nil, ErrQuotaExceeded, nil, nil}},
		{name: "a seen idempotency key answers with its task when full", before: []Submit{{ID: "x", Type: "echo", MaxAttempts: 1, IdempotencyKey: "k"}},
			a:       &Admission{MaxPending: 1},
			items:   []Submit{{ID: "y", Type: "echo", MaxAttempts: 1, IdempotencyKey: "k"}, byWho("z", "")},
			wantErr: []error{nil, ErrQueueFull}},
		{name: "no caps: everything goes", a: nil,
			items:   []Submit{byWho("a", ""), byWho("b", "")},
			wantErr: []error{nil, nil}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if len(tc.before) > 0 {
				h.must(submitCmd(tc.before...))
			}
			before := h.f.Counts()
			r := h.apply(&Command{Body: &SubmitBatch{Items: tc.items, Admission: tc.a}})
			if r.Err != nil || len(r.Items) != len(tc.items) {
				t.Fatalf("apply: %v, %d items", r.Err, len(r.Items))
			}
			stored := 0
			for i, it := range r.Items {
				if tc.wantErr[i] == nil {
					if it.Err != nil {
						t.Errorf("item %d: %v, want admitted", i, it.Err)
					}
					if !it.Existing {
						stored++
					}
					continue
				}
				if !errors.Is(it.Err, tc.wantErr[i]) {
					t.Errorf("item %d: err %v, want %v", i, it.Err, tc.wantErr[i])
				}
				if _, ok := h.f.Task(tc.items[i].ID); ok {
					t.Errorf("item %d was refused but stored", i)
				}
			}
			after := h.f.Counts()
			if got := after[Pending] + after[Scheduled] - before[Pending] - before[Scheduled]; got != stored {
				t.Errorf("%d tasks added, want %d", got, stored)
			}
		})
	}
}

// TestAdmissionFreesRoomAsTasksLeavePending: the cap is on waiting tasks, so a placed one frees
// its place, and a finished one does not count.
func TestAdmissionFreesRoomAsTasksLeavePending(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	a := &Admission{MaxPending: 1}
	h.must(&Command{Body: &SubmitBatch{Items: []Submit{sub("a", "echo")}, Admission: a}})
	if it := h.item(&Command{Body: &SubmitBatch{Items: []Submit{sub("b", "echo")}, Admission: a}}); !errors.Is(it.Err, ErrQueueFull) {
		t.Fatalf("second submit: %v, want queue full", it.Err)
	}
	h.must(assignCmd("a", "n1", "b1"))
	h.must(&Command{Body: &SubmitBatch{Items: []Submit{sub("b", "echo")}, Admission: a}})
}

// TestPrepareStampsTheLeadersCaps: the leader's Prepare replaces what a follower sent with its own
// caps, one entry per principal, and stamps none while a node older than AdmissionProtocol is up.
func TestPrepareStampsTheLeadersCaps(t *testing.T) {
	env := PrepareEnv{Admission: &AdmissionEnv{MaxPending: 7, PrincipalPending: func(p string) int {
		if p == "free" {
			return 0
		}
		return len(p)
	}}}
	items := []Submit{byWho("a", "carol"), byWho("b", "bob"), byWho("c", "carol"), byWho("d", "free")}
	forged := &Admission{MaxPending: 1 << 30}

	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: Protocol}}})
	c := &Command{Body: &SubmitBatch{Items: items, Admission: forged}}
	h.f.Prepare(c, t0, env)
	want := &Admission{MaxPending: 7, Principals: []PrincipalCap{{"bob", 3}, {"carol", 5}}}
	if got := c.Body.(*SubmitBatch).Admission; !reflect.DeepEqual(got, want) {
		t.Errorf("stamped %+v, want %+v", got, want)
	}

	h.must(&Command{Body: &Register{Node: Node{Name: "n2", BootID: "b2", Capacity: 1, Protocol: AdmissionProtocol - 1}}})
	c = &Command{Body: &SubmitBatch{Items: items, Admission: forged}}
	h.f.Prepare(c, t0, env)
	if got := c.Body.(*SubmitBatch).Admission; got != nil {
		t.Errorf("stamped %+v with an older node up, want none", got)
	}
}

// TestMergedSubmitsKeepEveryCap: the leader's batcher merges submits of several callers; the
// merged entry holds every principal's cap once.
func TestMergedSubmitsKeepEveryCap(t *testing.T) {
	a := &Command{Body: &SubmitBatch{Items: []Submit{byWho("a", "x")}, Admission: &Admission{MaxPending: 5, Principals: []PrincipalCap{{"x", 1}}}}}
	b := &Command{Body: &SubmitBatch{Items: []Submit{byWho("b", "w")}, Admission: &Admission{MaxPending: 5, Principals: []PrincipalCap{{"w", 2}, {"x", 1}}}}}
	m, err := Merge(t0, []*Command{a, b})
	if err != nil {
		t.Fatal(err)
	}
	want := &Admission{MaxPending: 5, Principals: []PrincipalCap{{"w", 2}, {"x", 1}}}
	if got := m.Body.(*SubmitBatch).Admission; !reflect.DeepEqual(got, want) {
		t.Errorf("merged %+v, want %+v", got, want)
	}
	if got := m.Body.(*SubmitBatch).NeedsProtocol(); got != AdmissionProtocol {
		t.Errorf("merged entry needs protocol %d, want %d", got, AdmissionProtocol)
	}
}

// TestAdmissionIsDeterministic: the same entries applied on two replicas refuse the same items
// and end in the same state, whatever each node's settings (Apply reads only the command).
func TestAdmissionIsDeterministic(t *testing.T) {
	a, b := newHarness(t), newHarness(t)
	for i := range 20 {
		var items []Submit
		for j := range 30 {
			items = append(items, byWho(fmt.Sprintf("t%02d-%02d", i, j), fmt.Sprintf("p%d", j%3)))
		}
		adm := &Admission{MaxPending: 400, Principals: []PrincipalCap{{"p0", 50}, {"p1", 500}}}
		ra := a.apply(&Command{Body: &SubmitBatch{Items: items, Admission: adm}})
		rb := b.apply(&Command{Body: &SubmitBatch{Items: append([]Submit(nil), items...), Admission: adm}})
		if !reflect.DeepEqual(ra.Items, rb.Items) {
			t.Fatalf("batch %d: replicas disagree", i)
		}
	}
	ia, da := a.f.Digest()
	ib, db := b.f.Digest()
	if ia != ib || da != db {
		t.Errorf("replicas differ: %d %s vs %d %s", ia, da, ib, db)
	}
	if c := a.f.Counts(); c[Pending] != 400 {
		t.Errorf("%d pending, want the cap, 400", c[Pending])
	}
}

// TestFreshHighPriorityGoesBeforeAnAgedBacklog: a priority-10 task submitted behind a backlog
// that has waited ten minutes is the first candidate, and a past run_at does not age a task.
func TestFreshHighPriorityGoesBeforeAnAgedBacklog(t *testing.T) {
	for _, tc := range []struct {
		name   string
		runAt  *time.Time // the backlog's run_at
		submit time.Time  // when the backlog is submitted
	}{
		{name: "backlog aged ten minutes", submit: t0},
		{name: "backlog with a run_at a day back", runAt: ptr(t0.Add(-24 * time.Hour)), submit: t0.Add(9*time.Minute + 50*time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
			var backlog []Submit
			for i := range 500 {
				backlog = append(backlog, Submit{ID: fmt.Sprintf("flood%03d", i), Type: "echo", Version: "v1", MaxAttempts: 1, RunAt: tc.runAt, SubmittedBy: "flooder"})
			}
			h.must(&Command{Now: tc.submit, Body: &SubmitBatch{Items: backlog}})
			now := t0.Add(10 * time.Minute)
			h.must(&Command{Now: now, Body: &SubmitBatch{Items: []Submit{{ID: "urgent", Type: "echo", Version: "v1", MaxAttempts: 1, Priority: 10}}}})
			if got := ids(h.f.PlacementView(map[string]bool{"n1": true}, now.Add(time.Second)).Pending); !reflect.DeepEqual(got, []string{"urgent"}) {
				t.Errorf("candidates %v, want [urgent]", got)
			}
		})
	}
}

// TestPastRunAtDoesNotJumpTheQueue: a task submitted with a run_at in the past is ready when it
// is created, like any other; it does not go before the tasks of its priority submitted earlier.
func TestPastRunAtDoesNotJumpTheQueue(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	h.must(submitCmd(Submit{ID: "first", Type: "echo", Version: "v1", MaxAttempts: 1}))
	h.must(submitCmd(Submit{ID: "backdated", Type: "echo", Version: "v1", MaxAttempts: 1, RunAt: ptr(t0.Add(-time.Hour))}))
	if got := ids(h.f.PlacementView(map[string]bool{"n1": true}, t0.Add(time.Minute)).Pending); !reflect.DeepEqual(got, []string{"first"}) {
		t.Errorf("candidates %v, want [first]", got)
	}
}

// TestOverRetainedNamesTheOldestFinishedOfEachSubmitterPastItsCap: finished tasks past a
// submitter's cap are named oldest finished first; other submitters and unfinished tasks stay.
func TestOverRetainedNamesTheOldestFinishedOfEachSubmitterPastItsCap(t *testing.T) {
	h := newHarness(t)
	var items []Submit
	for i := range 6 {
		items = append(items, byWho(fmt.Sprintf("a%d", i), "alice"))
	}
	items = append(items, byWho("b0", "bob"), byWho("b1", "bob"), byWho("b2", "bob"))
	h.must(submitCmd(items...))
	// Finished in this order (one entry each, so their finish times differ): a3 first.
	for _, id := range []string{"a3", "b0", "a1", "a0", "b1", "a4"} {
		h.must(cancelCmd(id))
	}
	caps := map[string]int{"alice": 2, "bob": 5}
	got := h.f.OverRetained(func(p string) int { return caps[p] }, 100)
	if want := []string{"a3", "a1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("over retained %v, want %v (alice has 4 finished, cap 2; bob is under his)", got, want)
	}
	if got := h.f.OverRetained(func(p string) int { return caps[p] }, 1); !reflect.DeepEqual(got, []string{"a3"}) {
		t.Errorf("limited to 1: %v, want [a3]", got)
	}
	if got := h.f.OverRetained(func(string) int { return 0 }, 100); got != nil {
		t.Errorf("no caps: %v, want none", got)
	}
	h.must(removeCmd("a3", "a1"))
	if got := h.f.OverRetained(func(p string) int { return caps[p] }, 100); got != nil {
		t.Errorf("after removing them: %v, want none", got)
	}
}

// TestScheduleTicksAreAdmittedLikeSubmits: a tick fired while its submitter holds its cap of
// waiting tasks submits nothing and records why; the leader's Prepare stamps the schedule
// owner's cap into the fire.
func TestScheduleTicksAreAdmittedLikeSubmits(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: Protocol}}})
	h.must(putCmd(schedule("s", OverlapAllowAll))) // submitted by alice
	h.must(submitCmd(byWho("x", "alice")))
	fire := &Command{Body: &ScheduleFire{Name: "s", Tick: t0.Add(time.Hour), TaskID: "T1"}}
	h.f.Prepare(fire, t0, PrepareEnv{Admission: &AdmissionEnv{PrincipalPending: func(p string) int { return map[string]int{"alice": 1}[p] }}})
	if a := fire.Body.(*ScheduleFire).Admission; a == nil || a.principalCap("alice") != 1 {
		t.Fatalf("stamped %+v, want alice's cap of 1", a)
	}
	if it := h.item(fire); !errors.Is(it.Err, ErrQuotaExceeded) {
		t.Errorf("tick past the cap: %+v, want quota exceeded", it)
	}
	if _, ok := h.f.Task("T1"); ok {
		t.Error("the refused tick stored its task")
	}
	if s := h.schedule("s"); s.Fired != 0 || s.LastError == "" || !s.LastFired.Equal(t0.Add(time.Hour)) {
		t.Errorf("schedule after the refused tick: fired %d, last error %q, last fired %v", s.Fired, s.LastError, s.LastFired)
	}
}

// TestRetryIsAdmittedLikeASubmit: retrying a finished task makes it wait again, so it is held to
// the caps: past them the task stays finished.
func TestRetryIsAdmittedLikeASubmit(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(byWho("a", "alice"), byWho("b", "alice")))
	h.must(cancelCmd("a"))
	a := &Admission{Principals: []PrincipalCap{{"alice", 1}}}
	if it := h.item(&Command{Body: &Retry{IDs: []string{"a"}, Admission: a}}); !errors.Is(it.Err, ErrQuotaExceeded) {
		t.Fatalf("retry past alice's cap: %+v, want quota exceeded", it)
	}
	if st := h.task("a").State; st != Cancelled {
		t.Errorf("refused retry left the task %s, want cancelled", st)
	}
	h.must(cancelCmd("b"))
	if it := h.item(&Command{Body: &Retry{IDs: []string{"a"}, Admission: a}}); it.Err != nil || h.task("a").State != Pending {
		t.Errorf("retry with room: %+v, state %s; want pending", it, h.task("a").State)
	}
}

// TestPrepareRetryStampsTheRetriedSubmittersCaps: the leader reads each retried task's submitter
// (from its frozen record) and stamps that submitter's cap, and only those of the retried tasks.
func TestPrepareRetryStampsTheRetriedSubmittersCaps(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: Protocol}}})
	h.must(submitCmd(byWho("a", "alice"), byWho("b", "bob"), byWho("c", "carol")))
	h.must(cancelCmd("a", "b"))
	retry := &Command{Body: &Retry{IDs: []string{"a", "b", "missing"}}}
	h.f.Prepare(retry, t0, PrepareEnv{Admission: &AdmissionEnv{PrincipalPending: func(string) int { return 3 }}})
	want := &Admission{Principals: []PrincipalCap{{"alice", 3}, {"bob", 3}}}
	if got := retry.Body.(*Retry).Admission; !reflect.DeepEqual(got, want) {
		t.Errorf("stamped %+v, want %+v", got, want)
	}
}
