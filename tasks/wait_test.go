package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// fanOut submits n children with idempotency keys (so a run submitted again names the same
// ones), checkpoints, and waits for them; with every child done it returns the sum of their
// results, counting failures.
type fanOutIn struct {
	N int `json:"n"`
}

type fanOutOut struct {
	Sum     int  `json:"sum"`
	Failed  int  `json:"failed"`
	Resumed bool `json:"resumed"`
}

func fanOut(ctx *Context, in fanOutIn) (fanOutOut, error) {
	for i := range in.N {
		if _, err := ctx.Submit(ChildTask{Type: "echo", Input: i, IdempotencyKey: fmt.Sprint(ctx.TaskID, "-", i)}); err != nil {
			return fanOutOut{}, err
		}
	}
	if err := ctx.Checkpoint(map[string]int{"submitted": in.N}); err != nil {
		return fanOutOut{}, err
	}
	res, err := ctx.WaitChildren()
	if err != nil {
		return fanOutOut{}, err
	}
	out := fanOutOut{Resumed: ctx.Resumed()}
	for _, r := range res {
		var v int
		if err := r.Decode(&v); err != nil {
			out.Failed++
			continue
		}
		out.Sum += v
	}
	return out, nil
}

// childIDs is a Submitter that names each child after its idempotency key.
func childIDs(_ context.Context, parent RunRef, _ string, c ChildTask) (string, error) {
	return "child-" + c.IdempotencyKey, nil
}

func waitExecutor(t *testing.T, rep Reporter) *Executor {
	t.Helper()
	reg := testRegistry(t, nil)
	for _, h := range []Handler{
		Func(def("fan-out", "", `{"n": 2}`), fanOut),
		Func(def("swallow", "", `null`), func(ctx *Context, _ any) (any, error) {
			if _, err := ctx.WaitChildren("x"); !errors.Is(err, ErrWaiting) {
				return nil, fmt.Errorf("WaitChildren: %v", err)
			}
			return "went on", nil
		}),
	} {
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
	}
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: rep, NodeName: "n1", ReportRetry: time.Millisecond, Submit: childIDs})
	t.Cleanup(e.Close)
	return e
}

func TestWaitChildrenEndsTheAttemptWithAWaitForEveryChildItSubmitted(t *testing.T) {
	rep := &fakeReporter{}
	e := waitExecutor(t, rep)
	e.Start(Assignment{TaskID: "p", Attempt: 1, Type: "fan-out", Input: json.RawMessage(`{"n": 3}`)})
	waitIdle(t, e)
	if got := strings.Join(rep.kinds(), " "); got != "started checkpoint finished" {
		t.Fatalf("reports %s: the checkpoint goes before the wait", got)
	}
	calls := rep.snapshot()
	fin := calls[len(calls)-1]
	if fin.outcome != OutcomeWaiting || fin.terr != nil {
		t.Fatalf("outcome %s, error %+v", fin.outcome, fin.terr)
	}
	ids, err := WaitList(json.RawMessage(fin.result))
	if err != nil || strings.Join(ids, ",") != "child-p-0,child-p-1,child-p-2" {
		t.Fatalf("waits for %v (%v)", ids, err)
	}
}

func TestAResumedRunGetsItsChildrensOutcomesFailuresIncluded(t *testing.T) {
	rep := &fakeReporter{}
	e := waitExecutor(t, rep)
	e.Start(Assignment{TaskID: "p", Attempt: 2, Type: "fan-out", Input: json.RawMessage(`{"n": 3}`), Resumed: true,
		Checkpoint: json.RawMessage(`{"submitted":3}`),
		Children: []ChildResult{
			{ID: "child-p-0", State: "succeeded", Result: json.RawMessage(`10`)},
			{ID: "child-p-1", State: "failed", Error: &TaskError{Type: "task_error", Message: "boom"}},
			{ID: "child-p-2", State: "succeeded", Result: json.RawMessage(`32`)},
		}})
	waitIdle(t, e)
	calls := rep.snapshot()
	fin := calls[len(calls)-1]
	if fin.outcome != OutcomeSucceeded || fin.result != `{"sum":42,"failed":1,"resumed":true}` {
		t.Fatalf("outcome %s result %s error %+v", fin.outcome, fin.result, fin.terr)
	}
}

// A resumed run that names a child its wait did not (one it submits only now) waits again.
func TestAResumedRunThatSubmitsAnotherChildWaitsAgain(t *testing.T) {
	rep := &fakeReporter{}
	e := waitExecutor(t, rep)
	e.Start(Assignment{TaskID: "p", Attempt: 2, Type: "fan-out", Input: json.RawMessage(`{"n": 2}`), Resumed: true,
		Children: []ChildResult{{ID: "child-p-0", State: "succeeded", Result: json.RawMessage(`1`)}}})
	waitIdle(t, e)
	calls := rep.snapshot()
	fin := calls[len(calls)-1]
	if fin.outcome != OutcomeWaiting || fin.result != `["child-p-0","child-p-1"]` {
		t.Fatalf("outcome %s result %s", fin.outcome, fin.result)
	}
}

// A handler that goes on after WaitChildren asked to wait decides its own outcome: no wait.
func TestAWaitTheHandlerDoesNotReturnIsDropped(t *testing.T) {
	rep := &fakeReporter{}
	e := waitExecutor(t, rep)
	e.Start(Assignment{TaskID: "p", Attempt: 1, Type: "swallow"})
	waitIdle(t, e)
	calls := rep.snapshot()
	if fin := calls[len(calls)-1]; fin.outcome != OutcomeSucceeded || fin.result != `"went on"` {
		t.Fatalf("outcome %s result %s error %+v", fin.outcome, fin.result, fin.terr)
	}
}

func TestWaitChildrenWithNothingToWaitForReturnsAtOnce(t *testing.T) {
	rep := &fakeReporter{}
	e := waitExecutor(t, rep)
	e.Start(Assignment{TaskID: "p", Attempt: 1, Type: "fan-out", Input: json.RawMessage(`{"n": 0}`)})
	waitIdle(t, e)
	calls := rep.snapshot()
	if fin := calls[len(calls)-1]; fin.outcome != OutcomeSucceeded || fin.result != `{"sum":0,"failed":0,"resumed":false}` {
		t.Fatalf("outcome %s result %s", fin.outcome, fin.result)
	}
}

func TestWaitChildrenOutsideAnExecutorIsRefused(t *testing.T) {
	tc, _ := newTestContext(t, context.Background(), 1)
	if _, err := tc.WaitChildren("a"); !errors.Is(err, ErrNoWait) {
		t.Fatalf("WaitChildren = %v, want ErrNoWait", err)
	}
}

func TestChildResultDecodeRefusesAChildThatDidNotSucceed(t *testing.T) {
	var v int
	for _, r := range []ChildResult{
		{ID: "a", State: "failed", Error: &TaskError{Message: "boom"}},
		{ID: "b", State: "cancelled"},
		{ID: "c", Error: &TaskError{Type: "not_found", Message: "removed"}},
	} {
		if err := r.Decode(&v); err == nil || !strings.Contains(err.Error(), r.ID) {
			t.Errorf("Decode of %+v: %v", r, err)
		}
	}
}
