package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// fakeWorkflows is the fake backend's workflows table. Its methods take fakeBackend's lock.
type fakeWorkflows struct {
	workflows map[string]api.Workflow
	wfOrder   []string
	cancelled []string
}

func (f *fakeBackend) SubmitWorkflow(_ context.Context, c Caller, req api.WorkflowRequest) (api.Workflow, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return api.Workflow{}, false, f.err
	}
	if f.workflows == nil {
		f.workflows = map[string]api.Workflow{}
	}
	w := api.Workflow{ID: fmt.Sprint("wf", len(f.workflows)+1), Name: req.Name, State: api.WorkflowRunning, SubmittedBy: c.Principal()}
	for _, s := range req.Steps {
		w.Steps = append(w.Steps, api.WorkflowStep{Name: s.Name, Type: s.Type, State: api.StepWaiting})
		if !slices.Contains(w.Types, s.Type) {
			w.Types = append(w.Types, s.Type)
		}
	}
	f.workflows[w.ID] = w
	f.wfOrder = append(f.wfOrder, w.ID)
	return w, true, nil
}

func (f *fakeBackend) Workflow(_ context.Context, id string) (api.Workflow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.workflows[id]
	if !ok {
		return api.Workflow{}, api.Errorf(api.CodeNotFound, "workflow %s not found", id)
	}
	return w, nil
}

func (f *fakeBackend) Workflows(_ context.Context, _ string, limit int, visible func(string) bool) (api.WorkflowPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := api.WorkflowPage{Workflows: []api.Workflow{}}
	for _, id := range slices.Backward(f.wfOrder) {
		w := f.workflows[id]
		ok := true
		for _, typ := range w.Types {
			ok = ok && (visible == nil || visible(typ))
		}
		if ok && len(out.Workflows) < limit {
			out.Workflows = append(out.Workflows, w)
		}
	}
	return out, nil
}

func (f *fakeBackend) CancelWorkflow(_ context.Context, _ Caller, id string) (api.Workflow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.workflows[id]
	if !ok {
		return api.Workflow{}, api.Errorf(api.CodeNotFound, "workflow %s not found", id)
	}
	w.State = api.WorkflowCancelled
	f.workflows[id] = w
	f.cancelled = append(f.cancelled, id)
	return w, nil
}

// Submitting a workflow needs submit on every step's type; reading or cancelling one needs read
// (else it is not found) and cancel on every one.
func TestWorkflowRoutesAuthorizeEveryStepType(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	h := New(b, Options{ACL: a})
	as := func(token string) []string { return []string{"Authorization", "Bearer " + secrets[token]} }
	mixed := `{"name": "m", "steps": [{"name": "a", "type": "report-daily"}, {"name": "b", "type": "echo", "depends_on": ["a"]}]}`
	reports := `{"steps": [{"name": "a", "type": "report-daily"}, {"name": "b", "type": "report-weekly", "input_from": "a"}]}`

	// "reports" may submit report-* but not echo: the mixed workflow is refused, nothing stored.
	if rec := call(h, "POST", "/v1/workflows", "application/json", mixed, as("reports")...); rec.Code != http.StatusForbidden {
		t.Fatalf("mixed workflow by reports: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h, "POST", "/v1/workflows", "application/json", mixed); rec.Code != http.StatusUnauthorized {
		t.Fatalf("mixed workflow without a token: %d", rec.Code)
	}
	if len(b.workflows) != 0 {
		t.Fatalf("a refused workflow reached the backend: %v", b.workflows)
	}
	rec := call(h, "POST", "/v1/workflows", "application/json", reports, as("reports")...)
	if rec.Code != http.StatusCreated {
		t.Fatalf("reports workflow: %d %s", rec.Code, rec.Body)
	}
	var w api.Workflow
	if err := json.Unmarshal(rec.Body.Bytes(), &w); err != nil || w.ID == "" {
		t.Fatalf("reply %s: %v", rec.Body, err)
	}
	rec = call(h, "POST", "/v1/workflows", "application/json", mixed, as("management")...)
	if rec.Code != http.StatusCreated {
		t.Fatalf("mixed workflow by management: %d %s", rec.Code, rec.Body)
	}
	var mixedWF api.Workflow
	_ = json.Unmarshal(rec.Body.Bytes(), &mixedWF)

	// "reports" reads its own workflow, not the mixed one (not found, as an unknown ID), and
	// lists only its own.
	if rec := call(h, "GET", "/v1/workflows/"+w.ID, "", "", as("reports")...); rec.Code != http.StatusOK {
		t.Fatalf("get by reports: %d", rec.Code)
	}
	hidden := call(h, "GET", "/v1/workflows/"+mixedWF.ID, "", "", as("reports")...)
	unknown := call(h, "GET", "/v1/workflows/nope", "", "", as("reports")...)
	if hidden.Code != http.StatusNotFound || unknown.Code != http.StatusNotFound ||
		strings.Replace(hidden.Body.String(), mixedWF.ID, "X", 1) != strings.Replace(unknown.Body.String(), "nope", "X", 1) {
		t.Fatalf("hidden %d %s, unknown %d %s", hidden.Code, hidden.Body, unknown.Code, unknown.Body)
	}
	rec = call(h, "GET", "/v1/workflows", "", "", as("reports")...)
	var page api.WorkflowPage
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Workflows) != 1 || page.Workflows[0].ID != w.ID {
		t.Fatalf("list by reports: %d %s", rec.Code, rec.Body)
	}
	// "read-all-no-payroll" may read it but not cancel it.
	if rec := call(h, "POST", "/v1/workflows/"+w.ID+"/cancel", "application/json", "", as("read-all-no-payroll")...); rec.Code != http.StatusForbidden {
		t.Fatalf("cancel by a reader: %d", rec.Code)
	}
	if rec := call(h, "POST", "/v1/workflows/"+mixedWF.ID+"/cancel", "application/json", "", as("reports")...); rec.Code != http.StatusNotFound {
		t.Fatalf("cancel of a hidden workflow: %d", rec.Code)
	}
	if len(b.cancelled) != 0 {
		t.Fatalf("a refused cancel reached the backend: %v", b.cancelled)
	}
	if rec := call(h, "POST", "/v1/workflows/"+w.ID+"/cancel", "application/json", "", as("reports")...); rec.Code != http.StatusAccepted {
		t.Fatalf("cancel by reports: %d %s", rec.Code, rec.Body)
	}
}

func TestWorkflowSubmitRefusesBadBodies(t *testing.T) {
	b := newFake()
	h := New(b, Options{MaxBatchBodyBytes: 1 << 16})
	for name, body := range map[string]string{
		"unknown field":       `{"steps": [{"name": "a", "type": "echo", "idempotency_key": "k"}]}`,
		"bad input_from":      `{"steps": [{"name": "a", "type": "echo", "input_from": 3}]}`,
		"missing type":        `{"steps": [{"name": "a"}]}`,
		"not json":            `{"steps": [`,
		"larger than the cap": `{"name": "` + strings.Repeat("x", 1<<16) + `", "steps": []}`,
	} {
		rec := call(h, "POST", "/v1/workflows", "application/json", body)
		if rec.Code < 400 || rec.Code >= 500 {
			t.Errorf("%s: %d %s", name, rec.Code, rec.Body)
		}
	}
	if len(b.workflows) != 0 {
		t.Fatalf("a bad body reached the backend")
	}
	// One step more than the cap, within the body cap: refused before the backend sees it.
	steps := make([]string, api.MaxWorkflowSteps+1)
	for i := range steps {
		steps[i] = fmt.Sprintf(`{"name":"s%d","type":"echo"}`, i)
	}
	h = New(b, Options{})
	rec := call(h, "POST", "/v1/workflows", "application/json", `{"steps":[`+strings.Join(steps, ",")+`]}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), string(api.CodeInvalidWorkflow)) || len(b.workflows) != 0 {
		t.Fatalf("%d steps: %d %s", len(steps), rec.Code, rec.Body)
	}
}
