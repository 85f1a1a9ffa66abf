package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// Retry and Purge of the fake backend: retry as the FSM does it, purge records its request.

func (f *fakeBackend) Retry(_ context.Context, caller Caller, id string) (api.Task, error) {
	f.mu.Lock()
	f.gotCaller = caller
	f.mu.Unlock()
	t, _, err := f.get(id)
	if err != nil {
		return api.Task{}, err
	}
	if t.State != api.StateFailed && t.State != api.StateCancelled {
		return api.Task{}, api.Errorf(api.CodeNotRetryable, "task %s is %s", id, t.State)
	}
	t.State, t.ModifyIndex = api.StatePending, t.ModifyIndex+1
	t.History = append(t.History, api.HistoryEntry{Event: "retried", By: caller.Principal()})
	f.put(t)
	return t, nil
}

func (f *fakeBackend) Purge(_ context.Context, caller Caller, req api.PurgeRequest) (api.PurgeReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gotCaller, f.gotPurge = caller, &req
	if f.err != nil {
		return api.PurgeReply{}, f.err
	}
	return api.PurgeReply{Purged: 2}, nil
}

func TestRetryRoute(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "f1", Type: "echo", State: api.StateFailed, History: []api.HistoryEntry{}})
	f.put(api.Task{ID: "r1", Type: "echo", State: api.StateRunning, History: []api.HistoryEntry{}})
	h := New(f, Options{})
	tests := []struct {
		target string
		status int
		code   api.Code
	}{
		{"/v1/tasks/f1/retry", http.StatusAccepted, ""},
		{"/v1/tasks/r1/retry", http.StatusConflict, api.CodeNotRetryable},
		{"/v1/tasks/nope/retry", http.StatusNotFound, api.CodeNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			rec := call(h, "POST", tc.target, "", "")
			if tc.code != "" {
				wantError(t, rec, tc.status, tc.code)
				return
			}
			var got api.Task
			decodeStrict(t, rec, &got)
			if rec.Code != tc.status || got.State != api.StatePending {
				t.Fatalf("got %d %+v", rec.Code, got)
			}
		})
	}
	if rec := call(h, "GET", "/v1/tasks/f1/retry", "", ""); rec.Code == http.StatusAccepted {
		t.Error("GET retried a task")
	}
}

func TestPurgeRouteValidates(t *testing.T) {
	before := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		body   string
		status int
		code   api.Code
		want   api.PurgeRequest
	}{
		{"empty body purges every finished task", "", 200, "", api.PurgeRequest{}},
		{"full filter", `{"state":"failed","type":"echo","finished_before":"2026-01-02T03:04:05Z","limit":5}`, 200, "",
			api.PurgeRequest{State: "failed", Type: "echo", FinishedBefore: &before, Limit: 5}},
		{"pending is not terminal", `{"state":"pending"}`, 400, api.CodeInvalidPurge, api.PurgeRequest{}},
		{"running is not terminal", `{"state":"running"}`, 400, api.CodeInvalidPurge, api.PurgeRequest{}},
		{"negative limit", `{"limit":-1}`, 400, api.CodeInvalidPurge, api.PurgeRequest{}},
		{"bad time", `{"finished_before":"yesterday"}`, 400, api.CodeInvalidRequest, api.PurgeRequest{}},
		{"unknown field", `{"states":["failed"]}`, 400, api.CodeInvalidRequest, api.PurgeRequest{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			rec := call(New(f, Options{}), "POST", api.PathTasksPurge, "application/json", tc.body)
			if tc.code != "" {
				wantError(t, rec, tc.status, tc.code)
				if f.gotPurge != nil {
					t.Error("refused purge reached the backend")
				}
				return
			}
			var got api.PurgeReply
			decodeStrict(t, rec, &got)
			if rec.Code != tc.status || got.Purged != 2 {
				t.Fatalf("got %d %+v", rec.Code, got)
			}
			if f.gotPurge == nil || fmt.Sprint(*f.gotPurge) != fmt.Sprint(tc.want) {
				t.Errorf("backend got %+v, want %+v", f.gotPurge, tc.want)
			}
		})
	}
}

func TestDuplicateUniqueKeyNamesTheExistingTask(t *testing.T) {
	f := newFake()
	e := api.Errorf(api.CodeDuplicateUniqueKey, "held by task T0")
	e.ExistingTask = "T0"
	f.err = e
	rec := call(New(f, Options{}), "POST", "/v1/tasks", "application/json", `{"type":"echo","unique_key":"k","unique_for":"1h"}`)
	var got api.Error
	decodeStrict(t, rec, &got)
	if rec.Code != http.StatusConflict || got.Code != api.CodeDuplicateUniqueKey || got.ExistingTask != "T0" {
		t.Fatalf("got %d %+v", rec.Code, got)
	}
	if h := rec.Header().Get(api.HeaderExistingTask); h != "T0" {
		t.Errorf("%s = %q, want T0", api.HeaderExistingTask, h)
	}
	if f.gotSubmit.UniqueKey != "k" || f.gotSubmit.UniqueFor != "1h" {
		t.Errorf("backend got %+v", f.gotSubmit)
	}
	// In a batch, the item carries it.
	br := ErrorResult(e)
	if br.Status != http.StatusConflict || br.Error.ExistingTask != "T0" {
		t.Errorf("batch item = %+v", br)
	}
}

func TestRetryAndPurgeACL(t *testing.T) {
	// Fixture tasks run; fail two so they can be retried.
	type route struct{ method, target, body string }
	routes := []route{
		{"POST", "/v1/tasks/r1x/retry", ""},                     // 0 report-daily, failed
		{"POST", "/v1/tasks/e1x/retry", ""},                     // 1 echo, failed
		{"POST", "/v1/tasks/p1x/retry", ""},                     // 2 report-payroll, failed
		{"POST", api.PathTasksPurge, `{"type":"report-daily"}`}, // 3
		{"POST", api.PathTasksPurge, `{"type":"echo"}`},         // 4
		{"POST", api.PathTasksPurge, `{}`},                      // 5 every type
	}
	tests := []struct {
		token string
		want  string
	}{
		{"none", "401 401 401 401 401 401"},
		// A task the caller may not read is not found, as a missing one.
		{"reports", "202 404 202 200 403 403"},
		{"reports-no-payroll", "202 404 404 200 403 403"},
		{"echo-only", "404 404 404 403 403 403"}, // submit on echo but no read: no retry; no cancel: no purge
		{"ops", "404 404 404 403 403 403"},
		{"management", "202 202 202 200 200 200"},
	}
	for _, tc := range tests {
		want := strings.Fields(tc.want)
		for i, rt := range routes {
			t.Run(fmt.Sprintf("%s %s %s %s", tc.token, rt.method, rt.target, rt.body), func(t *testing.T) {
				b, a, secrets := newACLFixture(t, false)
				for _, tk := range []api.Task{{ID: "r1x", Type: "report-daily"}, {ID: "e1x", Type: "echo"}, {ID: "p1x", Type: "report-payroll"}} {
					tk.State, tk.History = api.StateFailed, []api.HistoryEntry{}
					b.put(tk)
				}
				var hdr []string
				if s := secrets[tc.token]; s != "" {
					hdr = []string{"Authorization", "Bearer " + s}
				}
				rec := call(New(b, Options{ACL: a}), rt.method, rt.target, "application/json", rt.body, hdr...)
				if got := fmt.Sprint(rec.Code); got != want[i] {
					t.Fatalf("status %s, want %s: %s", got, want[i], rec.Body)
				}
				if rec.Code >= 400 && (b.gotPurge != nil || b.tasks["r1x"].State != api.StateFailed) {
					t.Error("refused request reached the backend")
				}
			})
		}
	}
}
