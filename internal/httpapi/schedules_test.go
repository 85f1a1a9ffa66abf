package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// fakeSchedules is the fake backend's schedules table. Its methods take fakeBackend's lock.
type fakeSchedules struct {
	schedules map[string]api.Schedule
	callers   []Caller // the caller of every schedule write
	triggered []string
}

func (f *fakeBackend) Schedules(context.Context) ([]api.Schedule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]api.Schedule, 0, len(f.schedules))
	for _, s := range f.schedules {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, f.err
}

func (f *fakeBackend) Schedule(_ context.Context, name string) (api.Schedule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.schedules[name]
	if !ok {
		return api.Schedule{}, api.Errorf(api.CodeNotFound, "schedule %s not found", name)
	}
	return s, nil
}

func (f *fakeBackend) PutSchedule(_ context.Context, c Caller, name string, req api.ScheduleRequest) (api.Schedule, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return api.Schedule{}, false, f.err
	}
	if f.schedules == nil {
		f.schedules = map[string]api.Schedule{}
	}
	_, existed := f.schedules[name]
	s := api.Schedule{Name: name, Cron: req.Cron, Type: req.Type, Input: req.Input, Overlap: req.Overlap, Paused: req.Paused,
		SubmittedBy: c.Principal()}
	f.schedules[name] = s
	f.callers = append(f.callers, c)
	return s, !existed, nil
}

func (f *fakeBackend) DeleteSchedule(_ context.Context, c Caller, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.schedules, name)
	f.callers = append(f.callers, c)
	return nil
}

func (f *fakeBackend) PauseSchedule(_ context.Context, c Caller, name string, paused bool) (api.Schedule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.schedules[name]
	s.Paused = paused
	f.schedules[name] = s
	f.callers = append(f.callers, c)
	return s, nil
}

func (f *fakeBackend) TriggerSchedule(_ context.Context, c Caller, name string) (api.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.triggered = append(f.triggered, name)
	f.callers = append(f.callers, c)
	return api.Task{ID: "T-" + name, Type: f.schedules[name].Type, History: []api.HistoryEntry{}}, nil
}

func TestScheduleRoutes(t *testing.T) {
	b := newFake()
	h := New(b, Options{})
	rec := call(h, "PUT", "/v1/schedules/nightly", "application/json", `{"cron": "@every 1h", "type": "echo", "input": {"a": 1}}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h, "PUT", "/v1/schedules/nightly", "application/json", `{"cron": "@every 2h", "type": "echo"}`); rec.Code != http.StatusOK {
		t.Errorf("update: %d %s", rec.Code, rec.Body)
	}
	wantError(t, call(h, "PUT", "/v1/schedules/x", "application/json", `{"cron": "@every 2h"}`), 400, api.CodeMissingType)
	wantError(t, call(h, "PUT", "/v1/schedules/x", "application/json", `{"cron": "@every 2h", "type": "echo", "bogus": 1}`), 400, api.CodeInvalidRequest)

	rec = call(h, "GET", "/v1/schedules", "", "")
	var list []api.Schedule
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || rec.Code != 200 || len(list) != 1 || list[0].Cron != "@every 2h" {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h, "GET", "/v1/schedules/nightly", "", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"name":"nightly"`) {
		t.Errorf("get: %d %s", rec.Code, rec.Body)
	}
	wantError(t, call(h, "GET", "/v1/schedules/nope", "", ""), 404, api.CodeNotFound)
	wantError(t, call(h, "POST", "/v1/schedules/nope/trigger", "", ""), 404, api.CodeNotFound)

	for _, tt := range []struct {
		path   string
		paused bool
	}{{"pause", true}, {"resume", false}} {
		rec := call(h, "POST", "/v1/schedules/nightly/"+tt.path, "", "")
		var s api.Schedule
		if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil || rec.Code != 200 || s.Paused != tt.paused {
			t.Errorf("%s: %d %s", tt.path, rec.Code, rec.Body)
		}
	}
	if rec := call(h, "POST", "/v1/schedules/nightly/trigger", "", ""); rec.Code != http.StatusCreated || !strings.Contains(rec.Body.String(), "T-nightly") {
		t.Errorf("trigger: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h, "DELETE", "/v1/schedules/nightly", "", ""); rec.Code != http.StatusNoContent {
		t.Errorf("delete: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h, "GET", "/v1/schedules", "", ""); rec.Body.String() != "[]\n" && rec.Body.String() != "[]" {
		t.Errorf("empty list: %q", rec.Body)
	}
}

// A schedule submits tasks of its type: writing one needs submit on the type, reading needs read.
func TestScheduleACL(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	b.fakeSchedules.schedules = map[string]api.Schedule{
		"daily":   {Name: "daily", Type: "report-daily"},
		"payroll": {Name: "payroll", Type: "report-payroll"},
		"echo":    {Name: "echo", Type: "echo"},
	}
	h := New(b, Options{ACL: a})
	as := func(token string) []string { return []string{"Authorization", "Bearer " + secrets[token]} }
	tests := []struct {
		token, method, path, body string
		want                      int
	}{
		{"reports", "PUT", "/v1/schedules/new", `{"cron": "@hourly", "type": "report-x"}`, 201},
		{"reports", "PUT", "/v1/schedules/e", `{"cron": "@hourly", "type": "echo"}`, 403},
		{"reports", "PUT", "/v1/schedules/echo", `{"cron": "@hourly", "type": "report-x"}`, 403}, // takes over an echo schedule
		{"echo-only", "PUT", "/v1/schedules/e", `{"cron": "@hourly", "type": "echo"}`, 201},
		{"reports-no-payroll", "POST", "/v1/schedules/payroll/trigger", "", 403},
		{"reports-no-payroll", "POST", "/v1/schedules/daily/trigger", "", 201},
		{"reports-no-payroll", "POST", "/v1/schedules/payroll/pause", "", 403},
		{"reports-no-payroll", "DELETE", "/v1/schedules/payroll", "", 403},
		{"read-all-no-payroll", "GET", "/v1/schedules/daily", "", 200},
		{"read-all-no-payroll", "GET", "/v1/schedules/payroll", "", 403},
		{"read-all-no-payroll", "POST", "/v1/schedules/daily/trigger", "", 403},
		{"none", "GET", "/v1/schedules", "", 401},
	}
	for _, tt := range tests {
		rec := call(h, tt.method, tt.path, "application/json", tt.body, as(tt.token)...)
		if rec.Code != tt.want {
			t.Errorf("%s %s %s: %d %s, want %d", tt.token, tt.method, tt.path, rec.Code, rec.Body, tt.want)
		}
	}
	if len(b.triggered) != 1 || b.triggered[0] != "daily" {
		t.Errorf("triggered %v, want only daily", b.triggered)
	}
	rec := call(h, "GET", "/v1/schedules", "", "", as("reports-no-payroll")...)
	var list []api.Schedule
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "daily,new" {
		t.Errorf("list as reports-no-payroll: %v, want daily,new", names)
	}
}
