package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// waiter registers "wait-parent": it submits the children its input lists (max_attempts 1, with
// idempotency keys, so a run submitted again names the same ones), checkpoints, waits for them,
// and returns each child's outcome in order. And "held": it squares its input once the test
// opens hold, honouring cancellation.
type waiter struct {
	hold     chan struct{}
	holdOnce sync.Once
	// onResume, when set, runs in a resumed attempt before it returns.
	onResume func(ctx *tasks.Context) error
	// completed counts the runs that returned their children's outcomes.
	completed atomic.Int32
}

type waitChild struct {
	Type  string          `json:"type"`
	Input json.RawMessage `json:"input"`
}

type waitChildOut struct {
	ID     string          `json:"id"`
	State  string          `json:"state"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

func newWaiter() *waiter { return &waiter{hold: make(chan struct{})} }

func (w *waiter) release() { w.holdOnce.Do(func() { close(w.hold) }) }

func (w *waiter) run(ctx *tasks.Context, in []waitChild) ([]waitChildOut, error) {
	ids := make([]string, len(in))
	for i, c := range in {
		id, err := ctx.Submit(tasks.ChildTask{Type: c.Type, Input: c.Input, MaxAttempts: 1, IdempotencyKey: fmt.Sprintf("%s/%d", ctx.TaskID, i)})
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	if err := ctx.Checkpoint(map[string]int{"submitted": len(ids)}); err != nil {
		return nil, err
	}
	res, err := ctx.WaitChildren(ids...)
	if err != nil {
		return nil, err
	}
	if w.onResume != nil {
		if err := w.onResume(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]waitChildOut, len(ids))
	for i, id := range ids {
		r := res[id]
		out[i] = waitChildOut{ID: id, State: r.State, Result: r.Result}
		if r.Error != nil {
			out[i].Error = r.Error.Message
		}
	}
	w.completed.Add(1)
	return out, nil
}

func (w *waiter) registry(t *testing.T) func(int) *tasks.Registry {
	return func(int) *tasks.Registry {
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range []tasks.Handler{
			tasks.Func(tasks.Definition{Name: "wait-parent", Version: "1"}, w.run),
			tasks.Func(tasks.Definition{Name: "held", Version: "1"}, func(ctx *tasks.Context, n int) (int, error) {
				select {
				case <-w.hold:
					return n * n, nil
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}),
		} {
			if err := reg.Register(h); err != nil {
				t.Fatal(err)
			}
		}
		return reg
	}
}

// squares lists n children of type typ with inputs 0..n-1.
func squares(typ string, n int) []waitChild {
	out := make([]waitChild, n)
	for i := range out {
		out[i] = waitChild{Type: typ, Input: json.RawMessage(fmt.Sprint(i))}
	}
	return out
}

func submitParent(t *testing.T, n *Node, children []waitChild) api.Task {
	t.Helper()
	var task api.Task
	body := map[string]any{"type": "wait-parent", "input": children, "max_attempts": 1}
	if code := httpCall(t, n, "POST", "/v1/tasks", body, &task); code != http.StatusCreated {
		t.Fatalf("submit wait-parent: %d", code)
	}
	return task
}

func countEvents(t fsm.Task, event string) int {
	n := 0
	for _, h := range t.History {
		if h.Event == event {
			n++
		}
	}
	return n
}

func eventAt(t fsm.Task, event string) (fsm.HistoryEntry, bool) {
	for _, h := range t.History {
		if h.Event == event {
			return h, true
		}
	}
	return fsm.HistoryEntry{}, false
}

// checkSquares checks a parent's result: n children, each succeeded with the square of its index.
func checkSquares(t *testing.T, task fsm.Task, n int) []waitChildOut {
	t.Helper()
	var out []waitChildOut
	if err := json.Unmarshal(task.Result, &out); err != nil || len(out) != n {
		t.Fatalf("parent result %s (%v): want %d children", task.Result, err, n)
	}
	for i, c := range out {
		if c.State != "succeeded" || string(c.Result) != fmt.Sprint(i*i) {
			t.Errorf("child %d: %+v, want succeeded with %d", i, c, i*i)
		}
	}
	return out
}

// On a node with one slot, the parent holds it while it runs: its ten children can only run once
// the wait gave the slot back, and the parent runs again with every result once they are done.
// The resumed run is not a retry: max_attempts is 1.
func TestWaitingParentGivesItsSlotBackAndResumesWithEveryChildsResult(t *testing.T) {
	w := newWaiter()
	tc := startCluster(t, 1, clusterOpts{capacity: 1, inmem: true, registry: w.registry(t)})
	n := tc.nodes[0]
	parent := submitParent(t, n, squares("calc-square", 10))
	got := waitState(t, tc, parent.ID, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Succeeded || got.Attempt != 2 || got.Failures != 0 || countEvents(got, fsm.EventSucceeded) != 1 {
		t.Fatalf("parent %s attempt %d failures %d history %+v", got.State, got.Attempt, got.Failures, got.History)
	}
	out := checkSquares(t, got, 10)
	waited, ok1 := eventAt(got, fsm.EventWaiting)
	resumed, ok2 := eventAt(got, fsm.EventResumed)
	if !ok1 || !ok2 || !slices.Equal(got.WaitFor, sortedIDs(out)) {
		t.Fatalf("parent history %+v, wait_for %v", got.History, got.WaitFor)
	}
	for _, c := range out {
		child := tc.task(c.ID)
		if child.ParentID != parent.ID || child.ExecutionID != parent.ID || child.StartedAt == nil ||
			child.StartedAt.Before(waited.At) || child.FinishedAt.After(resumed.At) {
			t.Errorf("child %s: parent %s, ran %v..%v; the parent waited %v..%v", c.ID, child.ParentID, child.StartedAt, child.FinishedAt, waited.At, resumed.At)
		}
	}
	if w.completed.Load() != 1 {
		t.Errorf("the parent's handler returned its children's outcomes %d times", w.completed.Load())
	}

	// A late wait report of the first attempt is refused: that attempt is over.
	err := n.work.Reporter().Finished(context.Background(), tasks.RunRef{TaskID: parent.ID, Attempt: 1}, tasks.OutcomeWaiting, json.RawMessage(`["`+out[0].ID+`"]`), nil)
	if !errors.Is(err, tasks.ErrFenced) {
		t.Fatalf("a stale wait report: %v, want it fenced", err)
	}
	if again := tc.task(parent.ID); again.State != fsm.Succeeded || again.ModifyIndex != got.ModifyIndex {
		t.Fatalf("the stale wait changed the parent: %s", again.State)
	}
}

func sortedIDs(out []waitChildOut) []string {
	ids := make([]string, len(out))
	for i, c := range out {
		ids[i] = c.ID
	}
	return slices.Sorted(slices.Values(ids))
}

// A child that fails is not the parent's failure: the parent sees its state and error, and
// decides (here it succeeds, listing both).
func TestAFailedChildIsReportedToItsParent(t *testing.T) {
	w := newWaiter()
	tc := startCluster(t, 1, clusterOpts{inmem: true, registry: w.registry(t)})
	parent := submitParent(t, tc.nodes[0], []waitChild{
		{Type: "calc-square", Input: json.RawMessage(`3`)},
		{Type: "fail", Input: json.RawMessage(`"child broke"`)},
	})
	got := waitState(t, tc, parent.ID, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	var out []waitChildOut
	if err := json.Unmarshal(got.Result, &out); got.State != fsm.Succeeded || err != nil || len(out) != 2 {
		t.Fatalf("parent %s result %s", got.State, got.Result)
	}
	if out[0].State != "succeeded" || string(out[0].Result) != "9" || out[1].State != "failed" || out[1].Error != "child broke" {
		t.Fatalf("children as the parent saw them: %+v", out)
	}
}

// Cancelling a waiting parent cancels it at once, and the children it waits for: the running ones
// through their executors, the pending ones in the same entry.
func TestCancellingAWaitingParentCancelsItsChildren(t *testing.T) {
	w := newWaiter()
	defer w.release()
	tc := startCluster(t, 1, clusterOpts{capacity: 2, inmem: true, registry: w.registry(t)})
	n := tc.nodes[0]
	parent := submitParent(t, n, squares("held", 4))
	waitState(t, tc, parent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State == fsm.Waiting })
	waitFor(t, "two children running", 30*time.Second, func() bool {
		p := tc.task(parent.ID)
		running := 0
		for _, id := range p.WaitFor {
			if tc.task(id).State == fsm.Running {
				running++
			}
		}
		return running == 2
	})
	var rec api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks/"+parent.ID+"/cancel", nil, &rec); code != http.StatusAccepted {
		t.Fatalf("cancel: %d", code)
	}
	p := waitState(t, tc, parent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if p.State != fsm.Cancelled {
		t.Fatalf("parent %s", p.State)
	}
	for _, id := range p.WaitFor {
		c := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if c.State != fsm.Cancelled {
			t.Errorf("child %s is %s, want cancelled", id, c.State)
		}
	}
	if w.completed.Load() != 0 {
		t.Error("the cancelled parent ran again")
	}
}

// The node that ran the parent dies while it waits, and the node that runs it after it resumed
// dies while it runs: it completes exactly once, elsewhere, with every child's result.
func TestAWaitingParentSurvivesTheNodesThatRanIt(t *testing.T) {
	longTest(t)
	w := newWaiter()
	defer w.release()
	entered := make(chan string, 1)
	var first atomic.Bool
	w.onResume = func(ctx *tasks.Context) error {
		if !first.CompareAndSwap(false, true) {
			return nil
		}
		entered <- ctx.TaskID
		<-ctx.Done() // held until its node dies
		return ctx.Err()
	}
	tc := startCluster(t, 4, clusterOpts{capacity: 3, inmem: true, registry: w.registry(t), tweak: func(_ int, c *Config) { c.Voters = 3 }})
	voters := tc.voters
	waitFor(t, "3 voters", 30*time.Second, func() bool { a, n := voters(); return a == 3 && n == 3 })

	parent := submitParent(t, tc.nodes[0], squares("held", 10))
	p := waitState(t, tc, parent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State == fsm.Waiting })
	wait, _ := eventAt(p, fsm.EventWaiting)
	x := tc.node(wait.Node)
	if err := x.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead node taken out", 30*time.Second, func() bool {
		a, n := voters()
		rec, _ := tc.leader().FSM().Node(x.Name())
		return a == 3 && n == 3 && rec.Status != fsm.NodeUp
	})
	if p := tc.task(parent.ID); p.State != fsm.Waiting || p.Attempt != 1 {
		t.Fatalf("after its node died the parent is %s, attempt %d", p.State, p.Attempt)
	}

	w.release()
	<-entered
	p = waitState(t, tc, parent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running && t.Attempt >= 2 })
	y := tc.node(p.Node)
	if err := y.Shutdown(); err != nil {
		t.Fatal(err)
	}
	done := waitState(t, tc, parent.ID, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if done.State != fsm.Succeeded || done.Node == x.Name() || done.Node == y.Name() || done.Failures != 0 {
		t.Fatalf("parent %s on %s, failures %d, history %+v", done.State, done.Node, done.Failures, done.History)
	}
	checkSquares(t, done, 10)
	if countEvents(done, fsm.EventSucceeded) != 1 || countEvents(done, fsm.EventInterrupted) < 1 || w.completed.Load() != 1 {
		t.Fatalf("completed %d times; history %+v", w.completed.Load(), done.History)
	}
}

// While a node of a release before waits is up, a wait cannot be written: the attempt fails
// (wait_unsupported) instead, and nothing of the wait reaches the log.
func TestAWaitWhileAnOlderNodeIsUpFailsTheAttempt(t *testing.T) {
	w := newWaiter()
	tc := startCluster(t, 1, clusterOpts{inmem: true, registry: w.registry(t)})
	l := tc.leader()
	upOldNode(t, l, fsm.WaitProtocol-1)
	parent := submitParent(t, l, squares("calc-square", 2))
	got := waitState(t, tc, parent.ID, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Failed || got.Error == nil || got.Error.Type != "wait_unsupported" || countEvents(got, fsm.EventWaiting) != 0 || got.WaitFor != nil {
		t.Fatalf("parent %s error %+v history %+v", got.State, got.Error, got.History)
	}
}

// A worker waits through the protocol: it submits children into its task's execution over the
// API, reports wait_children, and its next assignment of the task is resumed with the children's
// outcomes.
func TestAWorkerWaitsForChildrenThroughTheProtocol(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	call := func(what, method, path, body string, want int, into any) {
		t.Helper()
		code, b := getRaw(t, n, method, path, body)
		if code != want {
			t.Fatalf("%s: %d %s", what, code, b)
		}
		if into != nil {
			decodeExact(t, what, b, into)
		}
	}
	var sess api.WorkerSession
	call("register", "POST", api.PathWorkers, `{"name":"w1","capacity":1,"lease":"10s","types":[{"type":"py-parent","version":"1"}]}`, http.StatusCreated, &sess)
	base := api.PathWorkers + "/" + sess.ID
	parent := submitRawTo(t, n, `{"type":"py-parent","input":2,"max_attempts":1}`)
	poll := func() api.WorkerAssignment {
		t.Helper()
		var p api.WorkerPoll
		waitFor(t, "an assignment", 30*time.Second, func() bool {
			call("poll", "POST", base+"/poll", `{"wait":"2s"}`, http.StatusOK, &p)
			return len(p.Assignments) == 1
		})
		return p.Assignments[0]
	}
	first := poll()
	if first.TaskID != parent.ID || first.Resumed || first.Children != nil {
		t.Fatalf("first assignment %+v", first)
	}
	var ids []string
	for i := 3; i <= 4; i++ {
		child := submitRawTo(t, n, fmt.Sprintf(`{"type":"calc-square","input":%d,"parent_id":%q,"execution_id":%q}`, i, parent.ID, parent.ID))
		ids = append(ids, child.ID)
	}
	var res api.WorkerEventResults
	call("events", "POST", base+"/events", fmt.Sprintf(`{"events":[
		{"task_id":%q,"attempt":1,"kind":"wait_children"},
		{"task_id":%q,"attempt":1,"kind":"checkpoint","checkpoint":{"submitted":2}},
		{"task_id":%q,"attempt":1,"kind":"wait_children","children":[%q,%q]}]}`, parent.ID, parent.ID, parent.ID, ids[0], ids[1]), http.StatusOK, &res)
	if len(res.Results) != 3 || res.Results[0].Code != api.CodeInvalidEvent || !res.Results[1].OK || !res.Results[2].OK {
		t.Fatalf("events: %+v", res)
	}
	if p := tc.task(parent.ID); !slices.Contains([]fsm.State{fsm.Waiting, fsm.Pending, fsm.Assigned}, p.State) || countEvents(p, fsm.EventWaiting) != 1 {
		t.Fatalf("after the wait the parent is %s, history %+v", p.State, p.History)
	}
	second := poll()
	if second.TaskID != parent.ID || second.Attempt != 2 || !second.Resumed || string(second.Checkpoint) != `{"submitted":2}` || len(second.Children) != 2 {
		t.Fatalf("resumed assignment %+v", second)
	}
	for i, c := range second.Children {
		if c.ID != slices.Sorted(slices.Values(ids))[i] || c.State != api.StateSucceeded || c.Error != nil {
			t.Fatalf("child %d as the worker sees it: %+v", i, c)
		}
	}
	byID := map[string]string{second.Children[0].ID: string(second.Children[0].Result), second.Children[1].ID: string(second.Children[1].Result)}
	if byID[ids[0]] != "9" || byID[ids[1]] != "16" {
		t.Fatalf("children's results %v", byID)
	}
	call("events", "POST", base+"/events", fmt.Sprintf(`{"events":[{"task_id":%q,"attempt":2,"kind":"succeeded","result":25}]}`, parent.ID), http.StatusOK, &res)
	if len(res.Results) != 1 || !res.Results[0].OK {
		t.Fatalf("outcome: %+v", res)
	}
	if p := tc.task(parent.ID); p.State != fsm.Succeeded || p.Failures != 0 {
		t.Fatalf("parent %s failures %d", p.State, p.Failures)
	}
}

// A worker cannot wait for tasks that are not its task's children, to read their results: the
// cluster fails its task (invalid_wait) and hands it nothing; an oversized wait is refused as an
// invalid event.
func TestAWorkerCannotWaitForAnotherTasksChildren(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	other := submitRawTo(t, n, `{"type":"echo","input":"another principal's secret"}`)
	waitState(t, tc, other.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	code, b := getRaw(t, n, "POST", api.PathWorkers, `{"name":"w1","capacity":1,"lease":"10s","types":[{"type":"py-parent","version":"1"}]}`)
	var sess api.WorkerSession
	if code != http.StatusCreated {
		t.Fatalf("register: %d %s", code, b)
	}
	decodeExact(t, "register", b, &sess)
	base := api.PathWorkers + "/" + sess.ID
	parent := submitRawTo(t, n, `{"type":"py-parent","max_attempts":3}`)
	var p api.WorkerPoll
	waitFor(t, "an assignment", 30*time.Second, func() bool {
		_, b := getRaw(t, n, "POST", base+"/poll", `{"wait":"2s"}`)
		decodeExact(t, "poll", b, &p)
		return len(p.Assignments) == 1
	})
	many := make([]string, fsm.MaxWaitChildren+1)
	for i := range many {
		many[i] = "x" // short: the count is what is refused, within the events call's body cap
	}
	tooMany, _ := json.Marshal(many)
	body := fmt.Sprintf(`{"events":[{"task_id":%q,"attempt":1,"kind":"wait_children","children":%s},
		{"task_id":%q,"attempt":1,"kind":"wait_children","children":[%q]}]}`, parent.ID, tooMany, parent.ID, other.ID)
	code, b = getRaw(t, n, "POST", base+"/events", body)
	var res api.WorkerEventResults
	if code != http.StatusOK {
		t.Fatalf("events: %d %s", code, b)
	}
	decodeExact(t, "events", b, &res)
	if len(res.Results) != 2 || res.Results[0].Code != api.CodeInvalidEvent || !res.Results[1].OK {
		t.Fatalf("events: %+v", res)
	}
	got := waitState(t, tc, parent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Failed || got.Error == nil || got.Error.Type != fsm.ErrTypeInvalidWait || got.WaitFor != nil || got.Attempt != 1 {
		t.Fatalf("parent %s attempt %d error %+v wait_for %v", got.State, got.Attempt, got.Error, got.WaitFor)
	}
	if o := tc.task(other.ID); o.State != fsm.Succeeded || o.ParentID != "" || string(o.Result) != `"another principal's secret"` {
		t.Fatalf("the other task changed: %+v", o)
	}
}
