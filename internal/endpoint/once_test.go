package endpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/tasks"
)

type requestKey struct{}

// withRequest is ctx carrying a write's request ID as the test's Config.RequestID reads it.
func withRequest(ctx context.Context, b byte) context.Context {
	return context.WithValue(ctx, requestKey{}, bytes.Repeat([]byte{b}, fsm.RequestIDLen))
}

// The commands an API write proposes carry its request ID, but for batchable ones and for the
// writes that propose without it; a write tried again with the same ID, after its first try
// applied, answers as the write that took effect (the FSM answers fsm.Result.Repeat).
func TestProposeCarriesTheRequestIDAndARepeatAnswersSuccess(t *testing.T) {
	reg := tasks.NewRegistry()
	if err := tasks.RegisterBuiltins(reg, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	f := fsmWith(t, fsm.Task{ID: "01DONE", Type: "echo", Version: "1", State: fsm.Succeeded, MaxAttempts: 1,
		Timeout: fsm.Duration(time.Minute), ExecutionID: "01DONE"},
		fsm.Task{ID: "01PENDING", Type: "echo", Version: "1", State: fsm.Pending, MaxAttempts: 1,
			Timeout: fsm.Duration(time.Minute), ExecutionID: "01PENDING"})
	logs, err := tasks.OpenLogStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var proposed []*fsm.Command
	a := New(Config{
		Name: "n1", MaxInputBytes: 1 << 20, FSM: f, Registry: reg, Logs: logs,
		Propose: func(_ context.Context, c *fsm.Command) (*fsm.Result, error) {
			proposed = append(proposed, c)
			c.Now = time.Now().UTC()
			res := f.ApplyCommand(f.Index()+1, c)
			return res, res.Err
		},
		NewID: func(context.Context, int) string { return "01NEW" },
		RequestID: func(ctx context.Context) ([]byte, bool) {
			id, ok := ctx.Value(requestKey{}).([]byte)
			return id, ok
		},
		WaitIndex:    func(context.Context, uint64) error { return nil },
		Alive:        func() map[string]bool { return map[string]bool{"n1": true} },
		StorageFault: func() string { return "" },
	})
	ctx := context.Background()
	last := func() *fsm.Command { return proposed[len(proposed)-1] }

	// A rate limit delete, tried twice.
	if _, err := a.SetRateLimit(ctx, httpapi.Caller{}, "api", api.RateLimitUpdate{Rate: "1/s"}); err != nil {
		t.Fatal(err)
	}
	del := withRequest(ctx, 1)
	if err := a.DeleteRateLimit(del, httpapi.Caller{}, "api"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if !bytes.Equal(last().RequestID, bytes.Repeat([]byte{1}, fsm.RequestIDLen)) {
		t.Fatalf("the delete proposed request ID %x", last().RequestID)
	}
	if err := a.DeleteRateLimit(del, httpapi.Caller{}, "api"); err != nil {
		t.Fatalf("the delete tried again after it applied: %v; want success", err)
	}
	if err := a.DeleteRateLimit(withRequest(ctx, 2), httpapi.Caller{}, "api"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("another request's delete of the deleted limit: %v; want not_found", err)
	}

	// A task cancel whose command is a repeat answers the task (its result holds no item).
	cancel := withRequest(ctx, 3)
	for try := range 2 {
		got, err := a.Cancel(cancel, httpapi.Caller{}, "01PENDING")
		if err != nil || got.State != api.StateCancelled {
			t.Fatalf("cancel try %d: %+v %v", try+1, got.State, err)
		}
	}
	proposedBefore := len(proposed)
	if _, err := a.Cancel(withRequest(ctx, 4), httpapi.Caller{}, "01DONE"); !isCode(err, api.CodeAlreadyFinished) {
		t.Fatalf("cancel of a task that succeeded: %v", err)
	}
	if len(proposed) != proposedBefore+1 {
		t.Fatal("the cancel proposed nothing")
	}

	// A submit is batchable: it carries no ID (its tasks' IDs come from the request instead).
	if _, _, err := a.Submit(withRequest(ctx, 5), httpapi.Caller{}, api.SubmitRequest{Type: "echo", Input: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if last().RequestID != nil {
		t.Fatalf("a submit proposed request ID %x", last().RequestID)
	}
	// A purge proposes without it: each of its entries must apply.
	if _, err := a.Purge(withRequest(ctx, 6), httpapi.Caller{}, api.PurgeRequest{State: "succeeded"}); err != nil {
		t.Fatal(err)
	}
	if last().RequestID != nil {
		t.Fatalf("a purge proposed request ID %x", last().RequestID)
	}
	// Outside a write (no request ID), nothing is set.
	if err := a.DeleteRateLimit(ctx, httpapi.Caller{}, "api"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("delete without a request: %v", err)
	}
}

func isCode(err error, code api.Code) bool {
	ae, ok := err.(*api.Error)
	return ok && ae.Code == code
}
