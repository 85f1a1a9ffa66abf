package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// WorkflowBackend is what the workflow routes need from a node (Backend embeds it).
type WorkflowBackend interface {
	// SubmitWorkflow validates req (invalid_workflow, or a submit's codes for a step's task) and
	// has the cluster store it in one write, recording caller's principal as its submitter;
	// created is false when the request was applied before (a retried forward).
	SubmitWorkflow(ctx context.Context, caller Caller, req api.WorkflowRequest) (w api.Workflow, created bool, err error)
	// Workflow returns one workflow with its steps, or a not_found *api.Error.
	Workflow(ctx context.Context, id string) (api.Workflow, error)
	// Workflows lists up to limit workflows all of whose step types visible accepts, newest
	// first, after the workflow named after ("" from the newest).
	Workflows(ctx context.Context, after string, limit int, visible func(taskType string) bool) (api.WorkflowPage, error)
	// CancelWorkflow cancels every step of a workflow not finished (not_found, already_finished).
	CancelWorkflow(ctx context.Context, caller Caller, id string) (api.Workflow, error)
}

// workflowRoutes serves /v1/workflows. A workflow runs tasks of each of its steps' types, so
// submitting one needs submit on every one of them, reading one needs read on every one, and
// cancelling needs cancel on every one. A workflow the caller may not read is not found, in the
// same words as one that does not exist.
func (s *server) workflowRoutes(mux *routeMux) {
	mux.HandleFunc("POST "+api.PathWorkflows, s.submitWorkflow)
	mux.HandleFunc("GET "+api.PathWorkflows, s.workflows)
	mux.HandleFunc("GET "+api.PathWorkflows+"/{id}", s.workflow)
	mux.HandleFunc("POST "+api.PathWorkflows+"/{id}/cancel", s.cancelWorkflow)
}

func (s *server) submitWorkflow(w http.ResponseWriter, r *http.Request) {
	var req api.WorkflowRequest
	// A workflow of many steps is a large body: it gets a batch submit's cap.
	if err := decodeBodyMax(r, w, &req, s.opts.MaxBatchBodyBytes); err != nil {
		WriteError(w, err)
		return
	}
	if len(req.Steps) > api.MaxWorkflowSteps {
		WriteError(w, api.Errorf(api.CodeInvalidWorkflow, "a workflow has at most %d steps", api.MaxWorkflowSteps))
		return
	}
	seen := map[string]bool{}
	for _, st := range req.Steps {
		if st.Type == "" {
			WriteError(w, api.Errorf(api.CodeMissingType, "step %q: type is required", api.Truncate(st.Name)))
			return
		}
		if seen[st.Type] {
			continue
		}
		seen[st.Type] = true
		if err := authorize(r, acl.CapSubmit, st.Type); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	wf, created, err := s.b.SubmitWorkflow(ctx, callerOf(r), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK
	}
	WriteJSON(w, status, wf)
}

// workflowFor returns the workflow once the caller may use capability on every type of it.
func (s *server) workflowFor(r *http.Request, capability acl.Capability) (api.Workflow, error) {
	id := r.PathValue("id")
	wf, err := s.b.Workflow(r.Context(), id)
	if err != nil {
		return wf, err
	}
	caller := callerOf(r)
	for _, typ := range wf.Types {
		if caller.Allow(acl.CapRead, typ) != nil {
			return api.Workflow{}, api.Errorf(api.CodeNotFound, "workflow %s not found", api.Truncate(id))
		}
		if err := authorize(r, capability, typ); err != nil {
			return api.Workflow{}, err
		}
	}
	return wf, nil
}

func (s *server) workflow(w http.ResponseWriter, r *http.Request) {
	wf, err := s.workflowFor(r, acl.CapRead)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, wf)
}

func (s *server) workflows(w http.ResponseWriter, r *http.Request) {
	limit := api.DefaultListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxListLimit {
			WriteError(w, api.Errorf(api.CodeInvalidLimit, "limit must be between 1 and %d", api.MaxListLimit))
			return
		}
		limit = n
	}
	var visible func(string) bool
	if caller := callerOf(r); caller.Identity != nil {
		visible = caller.CanRead
	}
	page, err := s.b.Workflows(r.Context(), r.URL.Query().Get("after"), limit, visible)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, page)
}

func (s *server) cancelWorkflow(w http.ResponseWriter, r *http.Request) {
	wf, err := s.workflowFor(r, acl.CapCancel)
	if err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if wf, err = s.b.CancelWorkflow(ctx, callerOf(r), wf.ID); err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, wf)
}
