package scheduler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// cluster is a single real FSM with a serialised Apply, a settable clock and a kick channel that
// lets the test wait for a whole scheduling pass instead of sleeping.
type cluster struct {
	t    *testing.T
	f    *fsm.FSM
	mu   sync.Mutex
	idx  uint64
	now  time.Time
	kick chan struct{}
	// applyHook, when set, is the loop's Apply instead of apply.
	applyHook func(context.Context, *fsm.Command) (*fsm.Result, error)
}

func newCluster(t *testing.T) *cluster {
	return &cluster{t: t, f: fsm.New(), now: now0, kick: make(chan struct{})}
}

func (c *cluster) apply(_ context.Context, cmd *fsm.Command) (*fsm.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx++
	return c.f.ApplyCommand(c.idx, cmd), nil
}

// must applies cmd at the current fake time and fails on any error.
func (c *cluster) must(cmd *fsm.Command) {
	c.t.Helper()
	cmd.Now = c.clock()
	r, _ := c.apply(context.Background(), cmd)
	if r.Err != nil {
		c.t.Fatalf("apply %s: %v", cmd.Type(), r.Err)
	}
	for _, it := range r.Items {
		if it.Err != nil {
			c.t.Fatalf("apply %s item %s: %v", cmd.Type(), it.ID, it.Err)
		}
	}
}

func (c *cluster) clock() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *cluster) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// start runs a Loop until the test ends.
func (c *cluster) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	apply := c.apply
	if c.applyHook != nil {
		apply = c.applyHook
	}
	l := &Loop{
		FSM:    c.f,
		Apply:  apply,
		Alive:  func() map[string]bool { return map[string]bool{"n1": true} },
		Kick:   c.kick,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:    c.clock,
	}
	go func() { defer close(done); l.Run(ctx) }()
	c.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.t.Error("loop did not stop after context cancel")
		}
	})
}

// pass waits until the loop has finished a full scheduling pass that began after this call.
// Kick is unbuffered: the first send returns once the loop is idle in its select, the second once
// the pass started by the first is done.
func (c *cluster) pass() {
	c.t.Helper()
	for range 2 {
		select {
		case c.kick <- struct{}{}:
		case <-time.After(5 * time.Second):
			c.t.Fatal("loop did not take a kick")
		}
	}
}

// waitFor polls the task until cond holds or a generous deadline passes.
func (c *cluster) waitFor(id, what string, cond func(fsm.Task) bool) fsm.Task {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tk, ok, changed := c.f.TaskWatch(id)
		if ok && cond(tk) {
			return tk
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("task %s: not %s within 5s: %+v", id, what, tk)
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func register(name, boot string) *fsm.Command {
	return &fsm.Command{Body: &fsm.Register{Node: fsm.Node{Name: name, BootID: boot, Capacity: 2,
		Types: []fsm.TypeInfo{{Type: "echo", Version: "v1"}}}}}
}

func submit(id string) *fsm.Command {
	return &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{{ID: id, Type: "echo", MaxAttempts: 3}}}}
}

func TestLoopPlacesSubmittedTaskOnceANodeRegisters(t *testing.T) {
	c := newCluster(t)
	c.must(submit("a"))
	c.start()
	c.pass()
	if tk, _ := c.f.Task("a"); tk.State != fsm.Pending {
		t.Fatalf("placed with no nodes: %+v", tk)
	}
	c.must(register("n1", "b1"))
	tk := c.waitFor("a", "assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned })
	if tk.Node != "n1" || tk.BootID != "b1" || tk.Attempt != 1 || !tk.History[0].At.Equal(now0) {
		t.Errorf("task = %+v", tk)
	}
	// Tasks submitted while the loop runs are placed too.
	c.must(submit("b"))
	c.waitFor("b", "assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned && tk.Node == "n1" })
}

func TestLoopPlacesRetryOnlyAfterNotBefore(t *testing.T) {
	c := newCluster(t)
	c.must(register("n1", "b1"))
	c.must(submit("a"))
	c.start()
	c.waitFor("a", "assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned })

	retry := now0.Add(time.Minute)
	c.must(&fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1",
		Kind: fsm.ReportFailed, Error: &fsm.TaskError{Type: "x", Message: "boom"}, NotBefore: &retry}}}})
	c.pass()
	c.advance(59 * time.Second)
	c.pass()
	if tk, _ := c.f.Task("a"); tk.State != fsm.Pending || tk.Attempt != 1 {
		t.Fatalf("retry placed before its NotBefore: %+v", tk)
	}
	c.advance(time.Second)
	tk := c.waitFor("a", "re-assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned })
	if tk.Attempt != 2 || tk.Failures != 1 || tk.NotBefore != nil {
		t.Errorf("task = %+v", tk)
	}
}

func TestLoopStopsOnContextCancel(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l := &Loop{FSM: c.f, Apply: c.apply, Alive: func() map[string]bool { return nil }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go func() { defer close(done); l.Run(ctx) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestCollectRemovesTasksPastRetention(t *testing.T) {
	tests := []struct {
		name      string
		retention time.Duration
		age       time.Duration
		wantGone  bool
	}{
		{name: "older than retention is removed", retention: time.Hour, age: 2 * time.Hour, wantGone: true},
		{name: "younger than retention is kept", retention: time.Hour, age: 30 * time.Minute},
		{name: "zero retention keeps everything", retention: 0, age: 1000 * time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			c.must(submit("done"))
			c.must(submit("live"))
			c.must(&fsm.Command{Body: &fsm.Cancel{IDs: []string{"done"}}})
			l := &Loop{FSM: c.f, Apply: c.apply, Retention: tc.retention, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			l.collect(context.Background(), now0.Add(tc.age))
			if _, ok := c.f.Task("done"); ok == tc.wantGone {
				t.Errorf("finished task present = %v, want %v", ok, !tc.wantGone)
			}
			if _, ok := c.f.Task("live"); !ok {
				t.Error("pending task was removed")
			}
		})
	}
}

func TestLoopMakesDelayedTaskPendingAtItsTimeThenPlacesIt(t *testing.T) {
	c := newCluster(t)
	c.must(register("n1", "b1"))
	due := now0.Add(time.Minute)
	c.must(&fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{{ID: "later", Type: "echo", MaxAttempts: 3, RunAt: &due}}}})
	c.start()
	c.pass()
	c.advance(59 * time.Second)
	c.pass()
	if tk, _ := c.f.Task("later"); tk.State != fsm.Scheduled {
		t.Fatalf("before its time: %s, want scheduled", tk.State)
	}
	c.advance(time.Second)
	tk := c.waitFor("later", "assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned })
	if at := tk.History[0].At; at.Before(due) {
		t.Errorf("assigned at %v, before its run_at %v", at, due)
	}
}

func TestNextWakeIsTheEarlierOfRetryAndDue(t *testing.T) {
	tests := []struct {
		name       string
		retry, due time.Time
		want       time.Time
	}{
		{"none", time.Time{}, time.Time{}, time.Time{}},
		{"retry only", now0.Add(time.Second), time.Time{}, now0.Add(time.Second)},
		{"due only", time.Time{}, now0.Add(2 * time.Second), now0.Add(2 * time.Second)},
		{"due first", now0.Add(3 * time.Second), now0.Add(2 * time.Second), now0.Add(2 * time.Second)},
		{"retry first", now0.Add(time.Second), now0.Add(2 * time.Second), now0.Add(time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NextWake(fsm.View{NextRetry: tc.retry, NextDue: tc.due}, now0); !got.Equal(tc.want) {
				t.Errorf("NextWake = %v, want %v", got, tc.want)
			}
		})
	}
}

// The loop caps its assignments (protocol 3), and where the cluster refuses those (a node older
// than protocol 3 is up), it places the same tasks uncapped.
func TestLoopCapsAssignmentsAndFallsBackForOldClusters(t *testing.T) {
	for _, old := range []bool{false, true} {
		c := newCluster(t)
		var mu sync.Mutex
		var seen []bool // Capped of each assignment proposed
		apply := c.apply
		c.applyHook = func(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error) {
			if b, ok := cmd.Body.(*fsm.AssignBatch); ok && len(b.Items) > 0 {
				mu.Lock()
				seen = append(seen, b.Items[0].Capped)
				mu.Unlock()
				if old && b.Items[0].Capped {
					return nil, fmt.Errorf("emit: %w", fsm.ErrProtocolTooOld)
				}
			}
			return apply(ctx, cmd)
		}
		c.must(register("n1", "b1"))
		c.must(submit("a"))
		c.start()
		c.waitFor("a", "assigned", func(tk fsm.Task) bool { return tk.State == fsm.Assigned })
		mu.Lock()
		want := []bool{true}
		if old {
			want = []bool{true, false}
		}
		if !slices.Equal(seen[:min(len(seen), len(want))], want) {
			t.Errorf("old cluster %v: assignments proposed capped %v, want %v first", old, seen, want)
		}
		mu.Unlock()
	}
}
