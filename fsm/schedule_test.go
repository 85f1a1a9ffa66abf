package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func schedule(name string, overlap Overlap) Schedule {
	return Schedule{Name: name, Spec: "@every 1m", Type: "echo", Input: json.RawMessage(`{"n":1}`),
		MaxAttempts: 2, Timeout: Duration(time.Minute), Overlap: overlap, CatchUp: 1, SubmittedBy: "alice"}
}

func putCmd(s Schedule) *Command { return &Command{Body: &SchedulePut{Schedule: s}} }

func fireCmd(name string, tick time.Time, taskID string) *Command {
	return &Command{Body: &ScheduleFire{Name: name, Tick: tick, TaskID: taskID}}
}

func (h *harness) schedule(name string) Schedule {
	h.t.Helper()
	s, ok := h.f.Schedule(name)
	if !ok {
		h.t.Fatalf("schedule %s not found", name)
	}
	return s
}

func TestSchedulePutValidatesAndKeepsFiringStateOnUpdate(t *testing.T) {
	h := newHarness(t)
	for _, bad := range []Schedule{
		{Name: "bad name", Spec: "@every 1s", Type: "echo", Overlap: OverlapSkip, CatchUp: 1},
		{Name: "x", Type: "echo", Overlap: OverlapSkip, CatchUp: 1},
		{Name: "x", Spec: "@every 1s", Type: "echo", Overlap: "sometimes", CatchUp: 1},
		{Name: "x", Spec: "@every 1s", Type: "echo", Overlap: OverlapSkip},
	} {
		if r := h.apply(putCmd(bad)); !errors.Is(r.Err, ErrScheduleInvalid) {
			t.Errorf("put %+v: err %v, want ErrScheduleInvalid", bad, r.Err)
		}
	}
	h.must(putCmd(schedule("nightly", OverlapSkip)))
	created := h.schedule("nightly")
	tick := t0 // before the harness's clock: resuming passes over it
	h.must(fireCmd("nightly", tick, "T1"))

	paused := schedule("nightly", OverlapSkip)
	paused.Paused = true
	paused.LastFired = time.Time{} // a put cannot rewind the last fired tick
	h.must(putCmd(paused))
	s := h.schedule("nightly")
	if !s.Paused || !s.LastFired.Equal(tick) || s.LastTaskID != "T1" || s.Fired != 1 ||
		!s.CreatedAt.Equal(created.CreatedAt) || s.CreateIndex != created.CreateIndex || s.ModifyIndex <= created.ModifyIndex {
		t.Errorf("after pause: %+v", s)
	}

	resumed := schedule("nightly", OverlapSkip)
	r := h.must(putCmd(resumed))
	if s := h.schedule("nightly"); s.Paused || !s.LastFired.Equal(t0.Add(time.Duration(r.Index)*time.Second)) {
		t.Errorf("resuming should pass over the ticks that fell while paused: last fired %v", s.LastFired)
	}

	h.must(&Command{Body: &ScheduleDelete{Name: "nightly"}})
	if _, ok := h.f.Schedule("nightly"); ok {
		t.Error("deleted schedule still there")
	}
	if r := h.apply(&Command{Body: &ScheduleDelete{Name: "nightly"}}); !errors.Is(r.Err, ErrScheduleNotFound) {
		t.Errorf("delete twice: %v", r.Err)
	}
	if _, ok := h.f.Task("T1"); !ok {
		t.Error("deleting a schedule removed its task")
	}
}

// A tick fires once: the same tick again (a second leader, a retried proposal) or an older one
// submits nothing, whatever task ID it carries.
func TestScheduleFireIsIdempotentPerTick(t *testing.T) {
	h := newHarness(t)
	h.must(putCmd(schedule("s", OverlapAllowAll)))
	tick := time.Unix(1_700_000_060, 0).UTC()
	it := h.item(fireCmd("s", tick, "T1"))
	if it.ID != "T1" || it.Existing {
		t.Fatalf("first fire: %+v", it)
	}
	tk := h.task("T1")
	if tk.IdempotencyKey != "schedule:s:1700000060" || tk.Schedule != "s" || tk.Type != "echo" ||
		string(tk.Input) != `{"n":1}` || tk.MaxAttempts != 2 || tk.SubmittedBy != "alice" || tk.ExecutionID != "T1" {
		t.Errorf("fired task: %+v", tk)
	}
	for _, again := range []struct {
		tick time.Time
		id   string
	}{{tick, "T2"}, {tick.Add(-time.Minute), "T3"}} {
		if it := h.item(fireCmd("s", again.tick, again.id)); !it.Existing {
			t.Errorf("fire of %v again: %+v, want existing", again.tick, it)
		}
		if _, ok := h.f.Task(again.id); ok {
			t.Errorf("a second fire of tick %v submitted task %s", again.tick, again.id)
		}
	}
	if s := h.schedule("s"); s.Fired != 1 || !s.LastFired.Equal(tick) {
		t.Errorf("schedule after repeated fires: fired %d last %v", s.Fired, s.LastFired)
	}
	if r := h.apply(fireCmd("gone", tick, "T4")); !errors.Is(r.Err, ErrScheduleNotFound) {
		t.Errorf("fire of an unknown schedule: %v", r.Err)
	}
}

// Each policy meets a tick while the previous run (a pending task) is unfinished, then the run
// finishes (is cancelled) and buffered ticks may start.
func TestScheduleOverlapPolicies(t *testing.T) {
	t1, t2, t3 := t0.Add(time.Minute), t0.Add(2*time.Minute), t0.Add(3*time.Minute)
	tests := []struct {
		overlap Overlap
		// tasks that exist after the ticks t2 and t3 fired over the unfinished t1 run
		wantTasks    []string
		wantBuffered []time.Time
		wantSkipped  int
		t1State      State
		// after t1's run ends, the buffered fire of t2 starts it
		bufferedStarts bool
	}{
		{OverlapSkip, []string{"T1"}, nil, 2, Pending, false},
		{OverlapBufferOne, []string{"T1"}, []time.Time{t2}, 1, Pending, true},
		{OverlapBufferAll, []string{"T1"}, []time.Time{t2, t3}, 0, Pending, true},
		{OverlapCancelOther, []string{"T1", "T2", "T3"}, nil, 0, Cancelled, false},
		{OverlapAllowAll, []string{"T1", "T2", "T3"}, nil, 0, Pending, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.overlap), func(t *testing.T) {
			h := newHarness(t)
			h.must(putCmd(schedule("s", tt.overlap)))
			h.must(fireCmd("s", t1, "T1"))
			h.must(fireCmd("s", t2, "T2"))
			h.must(fireCmd("s", t3, "T3"))
			var got []string
			for _, tk := range h.f.List(Filter{}) {
				got = append(got, tk.ID)
			}
			if len(got) != len(tt.wantTasks) {
				t.Fatalf("tasks %v, want %v", got, tt.wantTasks)
			}
			s := h.schedule("s")
			if !reflect.DeepEqual(s.Buffered, tt.wantBuffered) || s.Skipped != tt.wantSkipped || !s.LastFired.Equal(t3) {
				t.Errorf("buffered %v skipped %d last %v; want %v %d %v", s.Buffered, s.Skipped, s.LastFired, tt.wantBuffered, tt.wantSkipped, t3)
			}
			if st := h.task("T1").State; st != tt.t1State {
				t.Errorf("T1 is %s, want %s", st, tt.t1State)
			}
			if tt.overlap == OverlapCancelOther && h.task("T2").State != Cancelled {
				t.Errorf("T2 is %s: the third tick should have cancelled it", h.task("T2").State)
			}

			buffered := &Command{Body: &ScheduleFire{Name: "s", Tick: t2, Buffered: true, TaskID: "B2"}}
			if len(tt.wantBuffered) > 0 {
				if it := h.item(buffered); it.ID != "" {
					t.Errorf("buffered tick started while T1 runs: %+v", it)
				}
			}
			h.apply(cancelCmd("T1")) // cancel_other cancelled it already
			if !tt.bufferedStarts {
				return
			}
			it := h.item(buffered)
			if it.ID != "B2" || h.task("B2").IdempotencyKey != TickKey("s", t2) {
				t.Fatalf("buffered fire after T1 ended: %+v", it)
			}
			s = h.schedule("s")
			if s.LastTaskID != "B2" || !reflect.DeepEqual(s.Buffered, tt.wantBuffered[1:]) && len(tt.wantBuffered) > 1 {
				t.Errorf("after the buffered start: last task %s buffered %v", s.LastTaskID, s.Buffered)
			}
			if it := h.item(buffered); it.ID != "" || !it.Existing {
				t.Errorf("the same buffered tick started twice: %+v", it)
			}
		})
	}
}

func TestScheduleManualTriggerAndErrorTick(t *testing.T) {
	h := newHarness(t)
	h.must(putCmd(schedule("s", OverlapSkip)))
	manual := &Command{Body: &ScheduleFire{Name: "s", Manual: true, TaskID: "M1"}}
	r := h.must(manual)
	if tk := h.task("M1"); tk.IdempotencyKey != ManualKey("s", r.Index) || tk.Schedule != "s" {
		t.Errorf("manual task: %+v", tk)
	}
	again := &Command{Body: &ScheduleFire{Name: "s", Manual: true, TaskID: "M1"}}
	if it := h.item(again); !it.Existing || it.ID != "M1" {
		t.Errorf("the same trigger proposed again: %+v", it)
	}
	s := h.schedule("s")
	if s.Manual != 1 || !s.LastFired.IsZero() || s.LastTaskID != "" {
		t.Errorf("a manual trigger changed the tick state: %+v", s)
	}
	// A manual run does not block the next tick under skip.
	tick := t0.Add(time.Hour)
	if it := h.item(fireCmd("s", tick, "T1")); it.ID != "T1" {
		t.Errorf("tick after a manual run: %+v", it)
	}
	// A tick whose task the leader could not build is recorded with the reason.
	next := tick.Add(time.Minute)
	if it := h.item(&Command{Body: &ScheduleFire{Name: "s", Tick: next, TaskID: "T2", Error: "unknown task type"}}); it.ID != "" {
		t.Errorf("error tick: %+v", it)
	}
	if s := h.schedule("s"); !s.LastFired.Equal(next) || s.LastError != "unknown task type" {
		t.Errorf("error tick state: %+v", s)
	}
}

func TestSchedulesSurviveSnapshotAndEnterTheDigest(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 2))
	h.must(putCmd(schedule("a", OverlapBufferAll)))
	h.must(putCmd(schedule("b", OverlapSkip)))
	h.must(fireCmd("a", t0.Add(time.Minute), "T1"))
	h.must(fireCmd("a", t0.Add(2*time.Minute), "T2")) // buffered behind T1

	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.Schedules(), h.f.Schedules()) {
		t.Errorf("restored schedules differ:\n%+v\n%+v", g.Schedules(), h.f.Schedules())
	}
	if tk, _ := g.Task("T1"); tk.Schedule != "a" {
		t.Errorf("restored task lost its schedule: %+v", tk)
	}
	_, before := h.f.Digest()
	if _, after := g.Digest(); after != before {
		t.Errorf("digest after round trip %s, want %s", after, before)
	}

	// A replica whose schedule differs only in its last fired tick has another digest.
	other := New()
	if err := other.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	other.mu.Lock()
	other.schedules["b"].LastFired = t0
	other.mu.Unlock()
	if _, sum := other.Digest(); sum == before {
		t.Error("a schedule's last fired tick is not in the digest")
	}

	// Deleting every schedule gives the digest of a state that never had one, and a snapshot
	// without a schedules section (every earlier one) restores to no schedules.
	h.must(&Command{Body: &ScheduleDelete{Name: "a"}})
	h.must(&Command{Body: &ScheduleDelete{Name: "b"}})
	snap := snapshotBytes(t, h.f)
	if bytes.Contains(snap, []byte("schedules")) {
		t.Error("a snapshot without schedules writes a schedules section: earlier releases' format changed")
	}
	old := New()
	old.schedules["stale"] = &Schedule{Name: "stale"}
	if err := old.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if len(old.Schedules()) != 0 {
		t.Errorf("restoring a snapshot without schedules kept %v", old.Schedules())
	}
}

// The digest of a state without schedules is what it was before schedules existed: same sum as
// one computed without the section (tasks without a schedule encode as before).
func TestDigestWithoutSchedulesIsUnchanged(t *testing.T) {
	f := digestState(t, 10, digestTasks(), digestNodes())
	_, sum := f.Digest()
	ts := digestTasks()
	ts[1].Schedule = "s"
	if _, with := digestState(t, 10, ts, digestNodes()).Digest(); with == sum {
		t.Error("a task's schedule is not in the digest")
	}
	b := snapshotBytes(t, f)
	if bytes.Contains(b, []byte("schedule")) {
		t.Error("tasks without a schedule encode a schedule field")
	}
}

func TestScheduledSubmitNeedsProtocol2(t *testing.T) {
	plain := &SubmitBatch{Items: []Submit{sub("a", "echo")}}
	scheduled := &SubmitBatch{Items: []Submit{sub("a", "echo"), {ID: "b", Type: "echo", Schedule: "s"}}}
	if plain.NeedsProtocol() != 0 || scheduled.NeedsProtocol() != 2 {
		t.Errorf("NeedsProtocol plain %d scheduled %d, want 0 and 2", plain.NeedsProtocol(), scheduled.NeedsProtocol())
	}
	for _, typ := range []CommandType{CmdSchedulePut, CmdScheduleDelete, CmdScheduleFire} {
		if typ.Since() != 2 {
			t.Errorf("%s: Since %d, want 2", typ, typ.Since())
		}
	}
}

func TestSchedulesChangedWakesOnScheduledTaskEnd(t *testing.T) {
	h := newHarness(t)
	h.must(putCmd(schedule("s", OverlapBufferOne)))
	h.must(submitCmd(sub("plain", "echo")))
	h.must(fireCmd("s", t0.Add(time.Minute), "T1"))
	ch := h.f.SchedulesChanged()
	h.must(cancelCmd("plain"))
	select {
	case <-ch:
		t.Error("an unscheduled task's end woke the schedule loop")
	default:
	}
	h.must(cancelCmd("T1"))
	select {
	case <-ch:
	default:
		t.Error("a scheduled task's end did not wake the schedule loop")
	}
}
