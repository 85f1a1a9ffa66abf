package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"
)

func queueSetCmd(name string, limit *int, paused *bool) *Command {
	return &Command{Body: &QueueSet{Name: name, Limit: limit, Paused: paused}}
}

func TestDelayedTaskIsScheduledUntilDueThenPending(t *testing.T) {
	h := placementFSM(t) // n1: echo, one free slot
	alive := map[string]bool{"n1": true, "n2": true}
	due := t0.Add(time.Hour)
	s := sub("later", "echo")
	s.RunAt = &due
	h.must(&Command{Now: t0, Body: &SubmitBatch{Items: []Submit{s}}})
	if got := h.task("later"); got.State != Scheduled || !got.RunAt.Equal(due) {
		t.Fatalf("state %s run_at %v, want scheduled at %v", got.State, got.RunAt, due)
	}
	v := h.f.PlacementView(alive, t0.Add(time.Minute))
	if len(v.Due) != 0 || len(v.Pending) != 0 || !v.NextDue.Equal(due) {
		t.Fatalf("before due: due %v pending %v next %v, want none, none, %v", v.Due, ids(v.Pending), v.NextDue, due)
	}
	// A promotion the leader asks for too early (its clock ahead of the entry's) changes nothing.
	h.must(&Command{Now: due.Add(-time.Second), Body: &AssignBatch{Due: []string{"later"}}})
	if got := h.task("later").State; got != Scheduled {
		t.Fatalf("promoted before due: %s", got)
	}
	v = h.f.PlacementView(alive, due)
	if !reflect.DeepEqual(v.Due, []string{"later"}) || !v.NextDue.IsZero() {
		t.Fatalf("at due: due %v next %v, want [later] and none", v.Due, v.NextDue)
	}
	h.must(&Command{Now: due, Body: &AssignBatch{Due: v.Due}})
	if got := h.task("later").State; got != Pending {
		t.Fatalf("after promotion: %s, want pending", got)
	}
	if got := ids(h.f.PlacementView(alive, due).Pending); !reflect.DeepEqual(got, []string{"later"}) {
		t.Fatalf("candidates after promotion = %v", got)
	}
}

func TestCancelWhileScheduled(t *testing.T) {
	h := newHarness(t)
	s := sub("later", "echo")
	s.RunAt = ptr(t0.Add(time.Hour))
	h.must(&Command{Now: t0, Body: &SubmitBatch{Items: []Submit{s}}})
	h.must(&Command{Now: t0, Body: &Cancel{IDs: []string{"later"}}})
	if got := h.task("later"); got.State != Cancelled || got.FinishedAt == nil {
		t.Fatalf("state %s finished %v, want cancelled", got.State, got.FinishedAt)
	}
	if q := h.f.Queue(""); q.Scheduled != 0 || q.Pending != 0 {
		t.Errorf("queue counts after cancel = %+v", q)
	}
	if !h.f.NextDue(t0).IsZero() {
		t.Error("a cancelled task is still due")
	}
}

func TestSubmitFieldsNeedProtocol2(t *testing.T) {
	tests := []struct {
		name string
		s    Submit
		want int
	}{
		{"plain", sub("a", "echo"), 0},
		{"run_at", Submit{ID: "a", Type: "echo", RunAt: ptr(t0)}, 2},
		{"priority", Submit{ID: "a", Type: "echo", Priority: -1}, 2},
		{"queue", Submit{ID: "a", Type: "echo", Queue: "mail"}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := (&SubmitBatch{Items: []Submit{tc.s}}).NeedsProtocol(); got != tc.want {
				t.Errorf("NeedsProtocol = %d, want %d", got, tc.want)
			}
		})
	}
	if got := (&AssignBatch{Due: []string{"x"}}).NeedsProtocol(); got != 2 {
		t.Errorf("assign with due: NeedsProtocol = %d, want 2", got)
	}
	if got := (&AssignBatch{Items: []Assign{{TaskID: "x"}}}).NeedsProtocol(); got != 0 {
		t.Errorf("plain assign: NeedsProtocol = %d, want 0", got)
	}
}

func TestQueueSetAndTypeLimitSet(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(Submit{ID: "a", Type: "echo", Queue: "mail"}, Submit{ID: "b", Type: "echo", Queue: DefaultQueue}))
	if got := h.task("b").Queue; got != "" {
		t.Errorf("the default queue is stored as %q, want empty", got)
	}
	h.must(queueSetCmd("mail", ptr(3), nil))
	h.must(queueSetCmd("mail", nil, ptr(true)))
	h.must(queueSetCmd("idle", ptr(2), nil))
	h.must(queueSetCmd("idle", ptr(0), nil)) // back to the defaults: not kept
	want := []QueueStatus{
		{Name: "default", Pending: 1},
		{Name: "mail", QueueConfig: QueueConfig{Limit: 3, Paused: true}, Pending: 1},
	}
	if got := h.f.Queues(); !reflect.DeepEqual(got, want) {
		t.Errorf("queues = %+v\nwant %+v", got, want)
	}
	if r := h.apply(queueSetCmd("mail", ptr(-1), nil)); !errors.Is(r.Err, ErrBadCommand) {
		t.Errorf("negative limit: err %v", r.Err)
	}
	h.must(&Command{Body: &TypeLimitSet{Type: "echo", Limit: 2}})
	h.must(&Command{Body: &TypeLimitSet{Type: "sleep", Limit: 1}})
	h.must(&Command{Body: &TypeLimitSet{Type: "sleep"}})
	if got := h.f.TypeLimits(); !reflect.DeepEqual(got, []TypeLimitStatus{{Type: "echo", Limit: 2}}) {
		t.Errorf("type limits = %+v", got)
	}
	if r := h.apply(&Command{Body: &TypeLimitSet{Limit: 1}}); !errors.Is(r.Err, ErrBadCommand) {
		t.Errorf("type limit without a type: err %v", r.Err)
	}
}

func TestPlacementViewTakesBandHeadsWithAgeing(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	alive := map[string]bool{"n1": true}
	// low00..19 ready at t0+2s..t0+21s (the harness's clock), high00..19 (priority 3) at t0+22s..
	for i := range 20 {
		h.must(submitCmd(Submit{ID: fmt.Sprintf("low%02d", i), Type: "echo", Version: "v1"}))
	}
	for i := range 20 {
		h.must(submitCmd(Submit{ID: fmt.Sprintf("high%02d", i), Type: "echo", Version: "v1", Priority: 3}))
	}
	// At +45 s: low00 has 0+4, high00 3+2: the higher band's head wins.
	if got := ids(h.f.PlacementView(alive, t0.Add(45*time.Second)).Pending); !reflect.DeepEqual(got, []string{"high00"}) {
		t.Errorf("candidates %v, want [high00]", got)
	}
	// A fresh priority-5 task at +100 s: low00, ready for 98 s, has 0+9 and goes before it (the
	// high band, as old, has aged as much and stays ahead: compare without it).
	h = newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	for i := range 20 {
		h.must(submitCmd(Submit{ID: fmt.Sprintf("low%02d", i), Type: "echo", Version: "v1"}))
	}
	late := t0.Add(100 * time.Second)
	h.must(&Command{Now: late, Body: &SubmitBatch{Items: []Submit{{ID: "urgent", Type: "echo", Version: "v1", Priority: 5}}}})
	if got := ids(h.f.PlacementView(alive, late).Pending); !reflect.DeepEqual(got, []string{"low00"}) {
		t.Errorf("aged backlog: candidates %v, want [low00]", got)
	}
	// Without ageing urgent would come first: it does while low00 is young (+30 s: 0+2 < 5).
	if got := ids(h.f.PlacementView(alive, t0.Add(30*time.Second)).Pending); !reflect.DeepEqual(got, []string{"urgent"}) {
		t.Errorf("young backlog: candidates %v, want [urgent]", got)
	}
}

func TestPlacementViewRespectsQueueAndTypeLimits(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 10, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	alive := map[string]bool{"n1": true}
	for i := range 5 {
		h.must(submitCmd(Submit{ID: fmt.Sprintf("m%d", i), Type: "echo", Version: "v1", Queue: "mail"},
			Submit{ID: fmt.Sprintf("p%d", i), Type: "echo", Version: "v1", Queue: "paused"}))
	}
	h.must(queueSetCmd("mail", ptr(2), nil))
	h.must(queueSetCmd("paused", nil, ptr(true)))
	h.must(assignCmd("m0", "n1", "b1"))
	if got := ids(h.f.PlacementView(alive, t0).Pending); !reflect.DeepEqual(got, []string{"m1"}) {
		t.Errorf("candidates = %v, want [m1]: mail has one of two slots left, paused none", got)
	}
	h.must(queueSetCmd("paused", nil, ptr(false)))
	h.must(&Command{Body: &TypeLimitSet{Type: "echo", Limit: 3}})
	if got := ids(h.f.PlacementView(alive, t0).Pending); !reflect.DeepEqual(got, []string{"p0", "m1"}) {
		t.Errorf("candidates = %v, want [p0 m1]: echo has two of three slots left, mail one", got)
	}
	// Assign enforces the limits too, whatever the leader proposes: mail has 1 of 2 left.
	h.must(assignCmd("m1", "n1", "b1"))
	if it := h.item(assignCmd("m2", "n1", "b1")); !errors.Is(it.Err, ErrNotPlaceable) {
		t.Errorf("assign over the queue limit: %v, want ErrNotPlaceable", it.Err)
	}
	h.must(queueSetCmd("paused", nil, ptr(true)))
	if it := h.item(assignCmd("p0", "n1", "b1")); !errors.Is(it.Err, ErrNotPlaceable) {
		t.Errorf("assign from a paused queue: %v, want ErrNotPlaceable", it.Err)
	}
	// The node dies: its tasks are pending again and count nowhere.
	h.must(downCmd("n1", false))
	if q := h.f.Queue("mail"); q.Active != 0 || q.Pending != 5 {
		t.Errorf("mail after the node died = %+v, want 0 active, 5 pending", q)
	}
}

func TestQueuesSurviveSnapshotAndOldSnapshotsRestore(t *testing.T) {
	src := scriptFSM(t)
	oldIdx, oldSum := src.Digest()
	if oldSum != "a0917a7c3d79e6998fad8b8e1073c948e1fea3e1018771d65e2dc6ed1cd4bb0e" || oldIdx != 15 {
		// The same script before queues existed gave this sum: state without the new fields
		// and tables must hash as it did, or replicas of mixed builds would disagree.
		t.Errorf("digest of the pre-queue script = %d %s, changed by this build", oldIdx, oldSum)
	}
	// An old snapshot (no queues section) restores to no queues.
	dst := New()
	dst.ApplyCommand(1, queueSetCmd("stale", ptr(1), nil))
	if err := dst.Restore(io.NopCloser(bytes.NewReader(legacySnapshot(t, src)))); err != nil {
		t.Fatal(err)
	}
	if got := dst.TypeLimits(); len(got) != 0 {
		t.Errorf("type limits after an old snapshot = %+v", got)
	}
	if q := dst.Queue("stale"); q.Limit != 0 {
		t.Errorf("queue from before the restore survived it: %+v", q)
	}

	src.ApplyCommand(16, queueSetCmd("mail", ptr(3), ptr(true)))
	src.ApplyCommand(17, &Command{Body: &TypeLimitSet{Type: "echo", Limit: 4}})
	src.ApplyCommand(18, &Command{Now: t0, Body: &SubmitBatch{Items: []Submit{
		{ID: "q1", Type: "echo", Queue: "mail", Priority: 7, RunAt: ptr(t0.Add(time.Hour))},
		{ID: "q2", Type: "echo", Priority: -2}}}})
	_, changedSum := src.Digest()
	if changedSum == oldSum {
		t.Error("digest ignores queues and new tasks")
	}
	dst = New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, src)))); err != nil {
		t.Fatal(err)
	}
	wi, ws := src.Digest()
	if gi, gs := dst.Digest(); gi != wi || gs != ws {
		t.Errorf("digest after restore = %d %s, want %d %s", gi, gs, wi, ws)
	}
	if !reflect.DeepEqual(dst.Queues(), src.Queues()) || !reflect.DeepEqual(dst.TypeLimits(), src.TypeLimits()) {
		t.Errorf("queues after restore = %+v %+v, want %+v %+v", dst.Queues(), dst.TypeLimits(), src.Queues(), src.TypeLimits())
	}
	if got := dst.NextDue(t0); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("next due after restore = %v", got)
	}
	if got, _ := dst.Task("q1"); got.State != Scheduled || got.Priority != 7 || got.Queue != "mail" {
		t.Errorf("q1 after restore = %+v", got)
	}
}

func TestListByQueue(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(Submit{ID: "a", Type: "echo"}, Submit{ID: "b", Type: "echo", Queue: "mail"}, Submit{ID: "c", Type: "echo", Queue: "mail"}))
	for _, tc := range []struct {
		queue string
		want  []string
	}{{"mail", []string{"c", "b"}}, {"default", []string{"a"}}, {"", []string{"c", "b", "a"}}, {"none", []string{}}} {
		p, err := h.f.ListPage(Filter{Queue: tc.queue})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(p.Tasks); len(got) != len(tc.want) || len(got) > 0 && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("queue %q: %v, want %v", tc.queue, got, tc.want)
		}
		if tc.queue != "" && p.Total != -1 {
			t.Errorf("queue %q: total %d, want -1 (not indexed)", tc.queue, p.Total)
		}
	}
}
