package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/tasks"
)

// TaskEndpoint serves tasks: submit, read, wait, list and cancel (here), retry and purge
// (uniq.go), their output (logs.go), and the child tasks a running task submits. Reads come from
// this node's FSM, writes through the leader, records converted in convert.go, errors as
// *api.Error.
type TaskEndpoint struct{ srv *Server }

func (e *TaskEndpoint) Submit(ctx context.Context, caller httpapi.Caller, req api.SubmitRequest) (api.Task, bool, error) {
	srv := e.srv
	if reason := srv.cfg.StorageFault(); reason != "" {
		// Its FSM stops where its disk did: it could not even show the client its own task.
		return api.Task{}, false, api.Errorf(api.CodeStorageUnavailable, "node %s cannot take work: %s; send it to another node", srv.cfg.Name, reason)
	}
	item, err := srv.submitTask(withIdentity(ctx, caller.Identity), req, caller.Principal(), srv.cfg.Propose)
	if err != nil {
		return api.Task{}, false, e.hideHolder(caller, srv.apiError(err))
	}
	t, ok := srv.cfg.FSM.Task(item.ID)
	if !ok {
		return api.Task{}, false, taskNotFound(item.ID)
	}
	at := toAPITask(&t)
	if item.Existing && !mayShowExisting(caller, at) {
		return api.Task{}, false, errKeyTaken()
	}
	return at, !item.Existing, nil
}

func (e *TaskEndpoint) SubmitBatch(ctx context.Context, caller httpapi.Caller, reqs []api.SubmitRequest) ([]api.BatchResult, error) {
	out, err := e.srv.submitBatch(withIdentity(ctx, caller.Identity), reqs, caller.Principal())
	for i, r := range out {
		switch {
		case r.Status == http.StatusOK && r.Task != nil && !mayShowExisting(caller, *r.Task):
			out[i] = httpapi.ErrorResult(errKeyTaken())
		case r.Error != nil && r.Error.ExistingTask != "":
			out[i] = httpapi.ErrorResult(e.hideHolder(caller, r.Error))
		}
	}
	return out, e.srv.apiError(err)
}

// mayShowExisting reports whether a submit whose idempotency key was seen before may answer with
// the task that holds the key: idempotency keys are cluster-wide, so the task may be another
// principal's, of a type the caller may not read.
func mayShowExisting(caller httpapi.Caller, t api.Task) bool {
	return caller.CanRead(t.Type) || caller.Identity != nil && t.SubmittedBy == caller.Principal()
}

// hideHolder takes the ID of the task holding a unique key out of a conflict when the caller may
// not read that task: the conflict is all it learns.
func (e *TaskEndpoint) hideHolder(caller httpapi.Caller, err error) error {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.ExistingTask == "" {
		return err
	}
	if t, ok := e.srv.cfg.FSM.Task(ae.ExistingTask); ok && mayShowExisting(caller, toAPITask(&t)) {
		return err
	}
	return api.Errorf(ae.Code, "a task of this type with this unique key was submitted less than its unique_for ago, by another principal")
}

// errKeyTaken refuses such a submit without showing the record: the caller learns only that the
// key is taken.
func errKeyTaken() error {
	return api.Errorf(api.CodeForbidden, "idempotency_key is held by a task this caller may not read; choose another key")
}

func (e *TaskEndpoint) Task(_ context.Context, id string) (api.Task, error) {
	t, ok := e.srv.cfg.FSM.Task(id)
	if !ok {
		return api.Task{}, taskNotFound(id)
	}
	out := []api.Task{toAPITask(&t)}
	e.srv.withPendingReasons(out)
	return out[0], nil
}

// withPendingReason is at with its pending reason set when it is pending.
func (e *TaskEndpoint) withPendingReason(at api.Task) api.Task {
	if at.State != string(fsm.Pending) {
		return at
	}
	one := []api.Task{at}
	e.srv.withPendingReasons(one)
	return one[0]
}

func (e *TaskEndpoint) WaitTask(ctx context.Context, id string, until func(api.Task) bool) (api.Task, error) {
	for {
		t, ok, changed := e.srv.cfg.FSM.TaskWatch(id)
		if !ok {
			return api.Task{}, taskNotFound(id)
		}
		// until reads the record without its pending reason, which is computed (from every
		// node's record and the load) only for the answer.
		at := toAPITask(&t)
		if until(at) {
			return e.withPendingReason(at), nil
		}
		select {
		case <-ctx.Done():
			return e.withPendingReason(at), nil
		case <-e.srv.cfg.Released: // the node is leaving: answer now, as a wait that elapsed would
			return e.withPendingReason(at), nil
		case <-changed:
		}
	}
}

func (e *TaskEndpoint) List(_ context.Context, q api.ListQuery, visible func(taskType string) bool) (api.TaskPage, error) {
	f := toFilter(q)
	f.Visible = visible
	p, err := e.srv.cfg.FSM.ListPage(f)
	if errors.Is(err, fsm.ErrBadCursor) {
		return api.TaskPage{}, api.Errorf(api.CodeInvalidCursor, "next is not a cursor this cluster made")
	} else if err != nil {
		return api.TaskPage{}, err
	}
	out := toAPITasks(p.Tasks)
	e.srv.withPendingReasons(out)
	return api.TaskPage{Tasks: out, Next: p.Next, Total: p.Total}, nil
}

func (e *TaskEndpoint) Cancel(ctx context.Context, caller httpapi.Caller, id string) (api.Task, error) {
	srv := e.srv
	if _, ok := srv.cfg.FSM.Task(id); !ok {
		return api.Task{}, taskNotFound(id)
	}
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.Cancel{IDs: []string{id}}})
	if err != nil {
		return api.Task{}, srv.apiError(err)
	}
	switch err := itemErr(res); {
	case errors.Is(err, fsm.ErrNotFound):
		return api.Task{}, taskNotFound(id)
	case errors.Is(err, fsm.ErrFinished):
		// Cancel is idempotent: a task already cancelled answers as a cancel that took effect,
		// so a cancel tried again after its first try applied (a forward whose reply a leader
		// change lost, a client's retry) is not told that the task it cancelled had finished.
		if t, ok := srv.cfg.FSM.Task(id); ok && t.State == fsm.Cancelled {
			return toAPITask(&t), nil
		}
		return api.Task{}, api.Errorf(api.CodeAlreadyFinished, "task %s has already finished", api.Truncate(id))
	case err != nil:
		return api.Task{}, err
	}
	_ = srv.waitIndex(ctx, res.Index) // answer with what this node knows, even if it lags
	t, _ := srv.cfg.FSM.Task(id)
	return toAPITask(&t), nil
}

// SubmitChild is the executor's tasks.Submitter: a running task's child joins its execution. It
// is sent to the leader as this node's own command (Config.ProposeNode), which the leader accepts
// only while the parent runs here (CheckSubmit and CheckChild on its side).
func (e *TaskEndpoint) SubmitChild(ctx context.Context, parent tasks.RunRef, executionID string, c tasks.ChildTask) (string, error) {
	srv := e.srv
	input, err := json.Marshal(c.Input)
	if err != nil {
		return "", fmt.Errorf("encode child input: %w", err)
	}
	req := api.SubmitRequest{Type: c.Type, Input: input, Version: c.Version, IdempotencyKey: c.IdempotencyKey,
		MaxAttempts: c.MaxAttempts, ExecutionID: executionID, ParentID: parent.TaskID}
	if c.Timeout > 0 {
		req.Timeout = c.Timeout.String()
	}
	// A child runs on behalf of whoever submitted its parent, and records that principal.
	var by string
	if p, ok := srv.cfg.FSM.Task(parent.TaskID); ok {
		by = p.SubmittedBy
	}
	item, err := srv.submitTask(ctx, req, by, srv.cfg.ProposeNode)
	if err != nil {
		return "", fmt.Errorf("submit child %s: %w", c.Type, err)
	}
	return item.ID, nil
}

// CheckSubmit validates a submit item with every field chosen, as the API's submits are: the
// leader runs it on a child submit another node sends.
func (e *TaskEndpoint) CheckSubmit(sub *fsm.Submit) error { return e.srv.checkSubmit(sub) }

// CheckChild accepts a submit made without an API caller only as a child of a running task
// (lineage.go).
func (e *TaskEndpoint) CheckChild(sub *fsm.Submit) error { return e.srv.checkChild(sub) }

// itemErr is the error of a one-item command's item; nil for a repeat (fsm.Result.Repeat), whose
// first try applied without error and whose result holds no items.
func itemErr(res *fsm.Result) error {
	if res.Repeat || len(res.Items) == 0 {
		return nil
	}
	return res.Items[0].Err
}
