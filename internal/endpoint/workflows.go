package endpoint

import (
	"context"
	"errors"
	"slices"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// WorkflowEndpoint serves workflows (httpapi.WorkflowBackend): each step's task is validated as a
// submit is, the graph by fsm.CheckWorkflow, and the whole workflow is one raft entry.
type WorkflowEndpoint struct{ srv *Server }

func (e *WorkflowEndpoint) SubmitWorkflow(ctx context.Context, caller httpapi.Caller, req api.WorkflowRequest) (api.Workflow, bool, error) {
	srv := e.srv
	if reason := srv.cfg.StorageFault(); reason != "" {
		return api.Workflow{}, false, api.Errorf(api.CodeStorageUnavailable, "node %s cannot take work: %s; send it to another node", srv.cfg.Name, reason)
	}
	w, err := srv.prepareWorkflow(srv.cfg.NewID(ctx, 0), req, caller.Principal())
	if err != nil {
		return api.Workflow{}, false, err
	}
	if tc := traceOf(ctx); tc != nil { // every step's task joins the submit's trace
		for i := range w.Steps {
			w.Steps[i].Task.Trace = tc
		}
	}
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.WorkflowSubmit{Workflow: w}})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return api.Workflow{}, false, srv.workflowError(w.ID, err)
	}
	if err := srv.waitIndex(ctx, res.Index); err != nil {
		return api.Workflow{}, false, err
	}
	out, err := e.Workflow(ctx, w.ID)
	// A repeat (fsm.Result.Repeat) is the retry of a submit whose first try created it: its ID
	// is the request's (NewID), which no other submit takes.
	return out, res.Repeat || len(res.Items) == 1 && !res.Items[0].Existing, err
}

// prepareWorkflow validates req into the workflow's record with the ID id: each step's task as a
// submit's, and the graph as the FSM will.
func (srv *Server) prepareWorkflow(id string, req api.WorkflowRequest, submittedBy string) (fsm.Workflow, error) {
	if len(req.Steps) == 0 || len(req.Steps) > api.MaxWorkflowSteps {
		return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "a workflow needs 1 to %d steps, it has %d", api.MaxWorkflowSteps, len(req.Steps))
	}
	w := fsm.Workflow{ID: id, Name: req.Name, OnFailure: fsm.OnFailure(req.OnFailure), SubmittedBy: submittedBy,
		Steps: make([]fsm.WorkflowStep, 0, len(req.Steps))}
	if len(w.Name) > 256 {
		return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "name is longer than 256 bytes")
	}
	mv := srv.membershipNow()
	for _, rs := range req.Steps {
		step := fsm.WorkflowStep{Name: rs.Name, DependsOn: rs.DependsOn}
		sources := rs.InputFrom.Sources
		if len(sources) == 1 && sources[0] == "*" {
			sources = rs.DependsOn
			if len(sources) == 0 {
				return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "step %q: input_from \"*\" needs depends_on", api.Truncate(rs.Name))
			}
		}
		if len(step.DependsOn)+len(sources) > api.MaxWorkflowSteps {
			return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "step %q: more dependencies than a workflow has steps", api.Truncate(rs.Name))
		}
		deps := make(map[string]bool, len(step.DependsOn))
		for _, d := range step.DependsOn {
			deps[d] = true
		}
		for _, src := range sources {
			if parent, _ := fsm.SplitSource(src); !deps[parent] {
				deps[parent] = true
				step.DependsOn = append(step.DependsOn, parent)
			}
		}
		step.InputFrom, step.InputObject = slices.Clone(sources), rs.InputFrom.Object
		if len(sources) > 0 && len(rs.Input) > 0 {
			return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "step %q: give input or input_from, not both", api.Truncate(rs.Name))
		}
		sreq := api.SubmitRequest{Type: rs.Type, Input: rs.Input, Version: rs.Version, MaxAttempts: rs.MaxAttempts,
			Timeout: rs.Timeout, Priority: rs.Priority, Queue: rs.Queue}
		sub, err := srv.prepareSubmitIn(sreq, fsm.StepTaskID(id, rs.Name), mv)
		var ae *api.Error
		if err != nil && len(sources) > 0 && errors.As(err, &ae) && ae.Code == api.CodeInvalidInput && sub.ID != "" {
			err = srv.checkSubmitInput(&sub, false) // its input comes from its parents, later
		}
		if err != nil {
			if errors.As(err, &ae) {
				return fsm.Workflow{}, api.Errorf(ae.Code, "step %q: %s", api.Truncate(rs.Name), ae.Message)
			}
			return fsm.Workflow{}, err
		}
		sub.ID, sub.ExecutionID = "", "" // the FSM gives each step's task its own
		step.Task = sub
		w.Steps = append(w.Steps, step)
	}
	if err := fsm.CheckWorkflow(&w); err != nil {
		return fsm.Workflow{}, api.Errorf(api.CodeInvalidWorkflow, "%v", err)
	}
	return w, nil
}

func (srv *Server) workflowError(id string, err error) error {
	switch {
	case errors.Is(err, fsm.ErrWorkflowNotFound):
		return workflowNotFound(id)
	case errors.Is(err, fsm.ErrWorkflowInvalid):
		return api.Errorf(api.CodeInvalidWorkflow, "%v", err)
	case errors.Is(err, fsm.ErrFinished):
		return api.Errorf(api.CodeAlreadyFinished, "workflow %s has already finished", api.Truncate(id))
	}
	return srv.apiError(err)
}

func workflowNotFound(id string) error {
	return api.Errorf(api.CodeNotFound, "workflow %s not found", api.Truncate(id))
}

func (e *WorkflowEndpoint) Workflow(_ context.Context, id string) (api.Workflow, error) {
	w, ok := e.srv.cfg.FSM.Workflow(id)
	if !ok {
		return api.Workflow{}, workflowNotFound(id)
	}
	return e.srv.toAPIWorkflow(&w, true), nil
}

func (e *WorkflowEndpoint) Workflows(_ context.Context, after string, limit int, visible func(taskType string) bool) (api.WorkflowPage, error) {
	keep := func(w *fsm.Workflow) bool {
		if visible == nil {
			return true
		}
		for i := range w.Steps {
			if !visible(w.Steps[i].Task.Type) {
				return false
			}
		}
		return true
	}
	ws, next := e.srv.cfg.FSM.WorkflowPage(after, limit, keep)
	out := api.WorkflowPage{Workflows: make([]api.Workflow, 0, len(ws)), Next: next}
	for i := range ws {
		out.Workflows = append(out.Workflows, e.srv.toAPIWorkflow(&ws[i], false))
	}
	return out, nil
}

func (e *WorkflowEndpoint) CancelWorkflow(ctx context.Context, caller httpapi.Caller, id string) (api.Workflow, error) {
	srv := e.srv
	if _, ok := srv.cfg.FSM.Workflow(id); !ok {
		return api.Workflow{}, workflowNotFound(id)
	}
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.WorkflowCancel{ID: id, By: caller.Principal()}})
	if err == nil {
		err = res.Err // nil for a repeat (fsm.Result.Repeat): the first try cancelled it
	}
	if errors.Is(err, fsm.ErrFinished) {
		// Cancel is idempotent, as a task's (TaskEndpoint.Cancel): a workflow already cancelled
		// answers as a cancel that took effect, so a cancel tried again after its first try
		// applied (where the FSM no longer holds its request ID, or a client's own retry) is not
		// told that the workflow it cancelled had finished.
		if w, ok := srv.cfg.FSM.Workflow(id); ok && w.State == fsm.WorkflowCancelled {
			return srv.toAPIWorkflow(&w, true), nil
		}
	}
	if err != nil {
		return api.Workflow{}, srv.workflowError(id, err)
	}
	_ = srv.waitIndex(ctx, res.Index) // answer with what this node knows, even if it lags
	return e.Workflow(ctx, id)
}

// toAPIWorkflow converts a workflow's record, with its steps (each running step in its task's
// state) when steps is set.
func (srv *Server) toAPIWorkflow(w *fsm.Workflow, steps bool) api.Workflow {
	out := api.Workflow{ID: w.ID, Name: w.Name, OnFailure: string(w.OnFailure), State: string(w.State),
		Result: w.FinalResult(), Error: w.Error, SubmittedBy: w.SubmittedBy, CreatedAt: w.CreatedAt, FinishedAt: w.FinishedAt,
		StepsTotal: len(w.Steps)}
	for i := range w.Steps {
		if w.Steps[i].State.Done() {
			out.StepsDone++
		}
		if !slices.Contains(out.Types, w.Steps[i].Task.Type) {
			out.Types = append(out.Types, w.Steps[i].Task.Type)
		}
	}
	slices.Sort(out.Types)
	if !steps {
		return out
	}
	out.Steps = make([]api.WorkflowStep, 0, len(w.Steps))
	for i := range w.Steps {
		s := &w.Steps[i]
		as := api.WorkflowStep{Name: s.Name, Type: s.Task.Type, DependsOn: s.DependsOn, State: string(s.State),
			TaskID: s.TaskID, Result: s.Result, Error: s.Error,
			InputFrom: api.InputFrom{Sources: s.InputFrom, Object: s.InputObject}}
		switch s.State {
		case fsm.StepWaiting:
			as.State = api.StepWaiting
		case fsm.StepRunning:
			if t, ok := srv.cfg.FSM.Task(s.TaskID); ok {
				as.State = string(t.State)
			}
		}
		out.Steps = append(out.Steps, as)
	}
	return out
}
