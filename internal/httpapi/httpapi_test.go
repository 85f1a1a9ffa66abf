package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// fakeBackend is an in-memory Backend: a task map with change notification, and errors to return.
type fakeBackend struct {
	mu      sync.Mutex
	tasks   map[string]api.Task
	changed chan struct{} // closed on every change
	waiting chan string   // receives the ID each time WaitTask starts waiting, when not nil

	err       error // returned by every call that can fail, when set
	created   bool
	gotSubmit api.SubmitRequest
	gotQuery  api.ListQuery
	gotForce  bool
	health    api.Health
	logs      []api.LogLine
	gotFollow bool
	gotCaller Caller
	leakList  bool // List ignores visible, as a buggy backend would
	leaves    int
	gotKeyOp  api.KeyringRequest
	barriers  int  // Barrier calls
	notLeader bool // Barrier answers no_leader

	index        uint64                // bumped by every put, as an FSM's applied index
	waitingIndex chan uint64           // receives after each time WaitIndex starts waiting, when not nil
	nodeState    string                // the gossip state Cluster reports for n1 ("" = alive)
	types        []api.TypeInfo        // what Types returns
	throughput   api.Throughput        // what Throughput returns
	gotBatch     [][]api.SubmitRequest // every SubmitBatch call's requests
	keys         map[string]string     // idempotency key -> task ID, for SubmitBatch

	fakeSchedules                   // schedules_test.go
	fakeWorkflows                   // workflows_test.go
	gotPurge      *api.PurgeRequest // the last Purge's request
	queueCalls    []string          // queue_test.go: every queue or type limit change
	rateCalls     []string          // ratelimits_test.go: every rate limit call but the list
}

func newFake() *fakeBackend {
	return &fakeBackend{tasks: map[string]api.Task{}, changed: make(chan struct{}), created: true,
		health: api.Health{Status: "ok", Leader: "n1"}}
}

func (f *fakeBackend) put(t api.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[t.ID] = t
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeBackend) get(id string) (api.Task, <-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return t, f.changed, api.Errorf(api.CodeNotFound, "task %s not found", id)
	}
	return t, f.changed, f.err
}

func (f *fakeBackend) Submit(_ context.Context, caller Caller, req api.SubmitRequest) (api.Task, bool, error) {
	f.mu.Lock()
	f.gotSubmit, f.gotCaller = req, caller
	err, created := f.err, f.created
	f.mu.Unlock()
	if err != nil {
		return api.Task{}, false, err
	}
	t := api.Task{ID: "t1", Type: req.Type, State: api.StatePending, ModifyIndex: 1, History: []api.HistoryEntry{}, SubmittedBy: caller.Principal()}
	f.put(t)
	return t, created, nil
}

func (f *fakeBackend) Task(_ context.Context, id string) (api.Task, error) {
	t, _, err := f.get(id)
	return t, err
}

func (f *fakeBackend) WaitTask(ctx context.Context, id string, until func(api.Task) bool) (api.Task, error) {
	for {
		t, changed, err := f.get(id)
		if err != nil || until(t) {
			return t, err
		}
		if f.waiting != nil {
			f.waiting <- id
		}
		select {
		case <-ctx.Done():
			return t, nil
		case <-changed:
		}
	}
}

func (f *fakeBackend) List(_ context.Context, q api.ListQuery, visible func(string) bool) (api.TaskPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gotQuery = q
	if f.err != nil {
		return api.TaskPage{}, f.err
	}
	var out []api.Task
	for _, t := range f.tasks {
		if f.leakList || visible(t.Type) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b api.Task) int { return strings.Compare(b.ID, a.ID) })
	page := api.TaskPage{Tasks: out, Total: len(out)}
	if q.SubmittedBy != "" || !q.Since.IsZero() || !q.Until.IsZero() {
		page.Total = -1 // as the FSM: no index counts these
	}
	if q.Limit > 0 && len(out) > q.Limit {
		page.Tasks, page.Next = out[:q.Limit], "after-"+out[q.Limit-1].ID
	}
	return page, nil
}

func (f *fakeBackend) Cancel(_ context.Context, caller Caller, id string) (api.Task, error) {
	f.mu.Lock()
	f.gotCaller = caller
	f.mu.Unlock()
	t, _, err := f.get(id)
	if err != nil {
		return api.Task{}, err
	}
	t.State, t.ModifyIndex = api.StateCancelled, t.ModifyIndex+1
	f.put(t)
	return t, nil
}

func (f *fakeBackend) Cluster(context.Context) (api.Cluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := f.nodeState
	if state == "" {
		state = api.NodeAlive
	}
	// The raft indexes move with every write; a console must not be woken by them alone.
	return api.Cluster{Leader: "n1", Nodes: []api.NodeInfo{{Name: "n1", State: state, RaftRole: api.RoleLeader,
		TaskTypes: []api.TypeVersion{{Type: "echo", Version: "1"}}, CommitIndex: f.index, AppliedIndex: f.index}},
		Tasks: map[string]int{"pending": 1}}, f.err
}

func (f *fakeBackend) Types(context.Context) ([]api.TypeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.types, nil
}

func (f *fakeBackend) Index() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index
}

func (f *fakeBackend) WaitIndex(ctx context.Context, after uint64) uint64 {
	for {
		f.mu.Lock()
		idx, changed := f.index, f.changed
		f.mu.Unlock()
		if idx > after {
			return idx
		}
		if f.waitingIndex != nil {
			f.waitingIndex <- after
		}
		select {
		case <-ctx.Done():
			return idx
		case <-changed:
		}
	}
}

func (f *fakeBackend) Throughput(context.Context) api.Throughput { return f.throughput }

func (f *fakeBackend) Health(context.Context) api.Health { return f.health }

func (f *fakeBackend) Leave(_ context.Context, force bool) (api.LeaveReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gotForce = force
	f.leaves++
	return api.LeaveReply{Status: "leaving", Node: "n1"}, f.err
}

func (f *fakeBackend) Logs(_ context.Context, id string, follow bool, emit func(api.LogLine)) error {
	f.mu.Lock()
	f.gotFollow = follow
	lines := f.logs
	f.mu.Unlock()
	for _, l := range lines {
		emit(l)
	}
	return nil
}

func (f *fakeBackend) Metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "taskworker_up 1\n") })
}

func (f *fakeBackend) JoinToken(context.Context) (api.JoinToken, error) {
	return api.JoinToken{Token: "TW1::fp::secret"}, f.err
}

func (f *fakeBackend) RotateJoinToken(context.Context, Caller) (api.JoinToken, error) {
	return api.JoinToken{Token: "TW1::fp::new"}, f.err
}

func (f *fakeBackend) Keyring(context.Context) (api.Keyring, error) {
	return api.Keyring{Primary: "k", Keys: []string{"k"}}, f.err
}

func (f *fakeBackend) ChangeKeyring(_ context.Context, caller Caller, req api.KeyringRequest) (api.Keyring, error) {
	f.mu.Lock()
	f.gotKeyOp, f.gotCaller = req, caller
	f.mu.Unlock()
	return api.Keyring{Primary: "k", Keys: []string{"k", req.Key}}, f.err
}

func (f *fakeBackend) Barrier(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.barriers++
	if f.notLeader {
		return api.Errorf(api.CodeNoLeader, "not the leader")
	}
	return nil
}

func (f *fakeBackend) Digest(context.Context) (api.Digest, error) {
	return api.Digest{Node: "n1", Index: 7, Digest: "abc"}, f.err
}

// call sends a request to h and returns the recorded reply.
func call(h http.Handler, method, target, contentType, body string, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// decodeStrict decodes a reply body into v, failing on fields v does not have.
func decodeStrict(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q into %T: %v", rec.Body.String(), v, err)
	}
}

// wantError checks a reply is the contract's error body with status and code.
func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code api.Code) {
	t.Helper()
	var e api.Error
	decodeStrict(t, rec, &e)
	if rec.Code != status || e.Code != code || e.Message == "" {
		t.Fatalf("got %d %+v, want %d %s", rec.Code, e, status, code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error content type %q", ct)
	}
}

func TestEveryRouteAnswersWithItsAPIType(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a", State: api.StateRunning, ModifyIndex: 7})
	f.logs = []api.LogLine{{Attempt: 1, Node: "n1", Stream: api.StreamStdout, Line: "hi"}}
	h := New(f, Options{})
	cases := []struct {
		method, target, body string
		status               int
		into                 func() any
	}{
		{"POST", "/v1/tasks", `{"type":"echo"}`, 201, func() any { return new(api.Task) }},
		{"GET", "/v1/tasks", "", 200, func() any { return new([]api.Task) }},
		{"GET", "/v1/tasks/a", "", 200, func() any { return new(api.Task) }},
		{"POST", "/v1/tasks/a/cancel", "", 202, func() any { return new(api.Task) }},
		{"GET", "/v1/tasks/a/logs", "", 200, func() any { return new(api.LogLine) }},
		{"GET", "/v1/cluster", "", 200, func() any { return new(api.Cluster) }},
		{"GET", "/v1/types", "", 200, func() any { return new([]api.TypeInfo) }},
		{"GET", "/v1/health", "", 200, func() any { return new(api.Health) }},
		{"POST", "/v1/agent/leave", "", 202, func() any { return new(api.LeaveReply) }},
		{"GET", api.PathJoinToken, "", 200, func() any { return new(api.JoinToken) }},
		{"POST", api.PathJoinTokenRotate, "", 200, func() any { return new(api.JoinToken) }},
		{"GET", api.PathKeyring, "", 200, func() any { return new(api.Keyring) }},
		{"POST", api.PathKeyring, `{"op":"install","key":"a2V5"}`, 200, func() any { return new(api.Keyring) }},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.target, func(t *testing.T) {
			rec := call(h, c.method, c.target, "application/json", c.body)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			decodeStrict(t, rec, c.into())
		})
	}
	if rec := call(h, "GET", "/metrics", "", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), "taskworker_up") {
		t.Fatalf("metrics: %d %s", rec.Code, rec.Body)
	}
	// Empty lists are [] rather than null.
	for _, target := range []string{"/v1/types"} {
		if rec := call(h, "GET", target, "", ""); strings.TrimSpace(rec.Body.String()) != "[]" {
			t.Fatalf("%s empty = %s, want []", target, rec.Body)
		}
	}
	empty := New(newFake(), Options{})
	if rec := call(empty, "GET", "/v1/tasks", "", ""); strings.TrimSpace(rec.Body.String()) != "[]" {
		t.Fatalf("empty list = %s, want []", rec.Body)
	}
}

func TestUnknownRouteIs404JSON(t *testing.T) {
	h := New(newFake(), Options{})
	for _, target := range []string{"/v1/nope", "/", "/v1/tasks/a/cancel"} { // the last: GET on a POST route
		wantError(t, call(h, "GET", target, "", ""), 404, api.CodeNotFound)
	}
	wantError(t, call(h, "DELETE", "/v1/tasks", "", ""), 404, api.CodeNotFound)
}

func TestBackendErrorsMapToTheirStatus(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
		code   api.Code
	}{
		{"api error keeps its code", api.Errorf(api.CodeUnknownTaskType, "unknown task type"), 400, api.CodeUnknownTaskType},
		{"wrapped api error", fmt.Errorf("submit: %w", api.Errorf(api.CodeInvalidInput, "bad")), 400, api.CodeInvalidInput},
		{"invalid max attempts", api.Errorf(api.CodeInvalidMaxAttempts, "x"), 400, api.CodeInvalidMaxAttempts},
		{"invalid timeout", api.Errorf(api.CodeInvalidTimeout, "x"), 400, api.CodeInvalidTimeout},
		{"invalid version", api.Errorf(api.CodeInvalidVersion, "x"), 400, api.CodeInvalidVersion},
		{"shutting down", api.Errorf(api.CodeShuttingDown, "x"), 503, api.CodeShuttingDown},
		{"no leader", api.Errorf(api.CodeNoLeader, "x"), 503, api.CodeNoLeader},
		{"conflict", api.Errorf(api.CodeAlreadyFinished, "x"), 409, api.CodeAlreadyFinished},
		{"deadline means no leader in time", fmt.Errorf("propose: %w", context.DeadlineExceeded), 503, api.CodeNoLeader},
		{"cancelled request", context.Canceled, 503, api.CodeCancelled},
		{"anything else is internal", errors.New("disk on fire"), 500, api.CodeInternal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			f.err = c.err
			wantError(t, call(New(f, Options{}), "POST", "/v1/tasks", "application/json", `{"type":"echo"}`), c.status, c.code)
		})
	}
}

func TestEveryRouteReportsBackendErrors(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a"})
	f.err = api.Errorf(api.CodeNoLeader, "no leader")
	h := New(f, Options{})
	for _, r := range [][2]string{
		{"GET", "/v1/tasks"}, {"GET", "/v1/tasks/a"}, {"GET", "/v1/tasks/a?wait=1s"}, {"GET", "/v1/tasks/a/logs"},
		{"GET", "/v1/cluster"}, {"GET", "/v1/types"}, {"POST", "/v1/agent/leave"},
	} {
		wantError(t, call(h, r[0], r[1], "", ""), 503, api.CodeNoLeader)
	}
	f.err = nil
	for _, r := range [][2]string{{"GET", "/v1/tasks/b"}, {"POST", "/v1/tasks/b/cancel"}, {"GET", "/v1/tasks/b/logs"}, {"GET", "/v1/tasks/b?wait=1s&index=3"}} {
		wantError(t, call(h, r[0], r[1], "", ""), 404, api.CodeNotFound)
	}
	f.err = api.Errorf(api.CodeLeaveRefused, "last node")
	wantError(t, call(h, "POST", "/v1/agent/leave", "", ""), 409, api.CodeLeaveRefused)
}

func TestSubmitBodies(t *testing.T) {
	cases := []struct {
		name, contentType, body string
		status                  int
		code                    api.Code
	}{
		{"not JSON", "application/json", `type=echo`, 400, api.CodeInvalidRequest},
		{"unknown field", "application/json", `{"type":"echo","colour":"red"}`, 400, api.CodeInvalidRequest},
		{"wrong field type", "application/json", `{"type":"echo","max_attempts":"3"}`, 400, api.CodeInvalidRequest},
		{"two values", "application/json", `{"type":"echo"} {"type":"echo"}`, 400, api.CodeInvalidRequest},
		{"empty body", "application/json", ``, 400, api.CodeInvalidRequest},
		{"text/plain", "text/plain", `{"type":"echo"}`, 415, api.CodeUnsupportedMediaType},
		{"unparseable content type", "application/", `{"type":"echo"}`, 415, api.CodeUnsupportedMediaType},
		{"too large", "application/json", `{"type":"echo","input":"` + strings.Repeat("x", 200) + `"}`, 413, api.CodeBodyTooLarge},
		{"bad wait", "application/json", `{"type":"echo"}`, 400, api.CodeInvalidWait},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			target := "/v1/tasks"
			if c.code == api.CodeInvalidWait {
				target += "?wait=soon"
			}
			wantError(t, call(New(f, Options{MaxBodyBytes: 100}), "POST", target, c.contentType, c.body), c.status, c.code)
			if len(f.tasks) != 0 {
				t.Fatal("a rejected body reached the backend")
			}
		})
	}
	for _, ct := range []string{"", "application/json; charset=utf-8", "application/merge-patch+json"} {
		if rec := call(New(newFake(), Options{}), "POST", "/v1/tasks", ct, `{"type":"echo"}`); rec.Code != 201 {
			t.Fatalf("content type %q: %d %s", ct, rec.Code, rec.Body)
		}
	}
}

func TestSubmitPassesTheRequestAndReportsCreation(t *testing.T) {
	f := newFake()
	h := New(f, Options{})
	body := `{"type":"echo","input":{"x":1},"version":"2","idempotency_key":"k","max_attempts":5,"timeout":"1m","execution_id":"e","parent_id":"p"}`
	if rec := call(h, "POST", "/v1/tasks", "application/json", body); rec.Code != 201 {
		t.Fatalf("created: %d", rec.Code)
	}
	want := api.SubmitRequest{Type: "echo", Input: json.RawMessage(`{"x":1}`), Version: "2", IdempotencyKey: "k",
		MaxAttempts: 5, Timeout: "1m", ExecutionID: "e", ParentID: "p"}
	if got := f.gotSubmit; got.Type != want.Type || string(got.Input) != string(want.Input) || got.Version != want.Version ||
		got.IdempotencyKey != want.IdempotencyKey || got.MaxAttempts != want.MaxAttempts || got.Timeout != want.Timeout ||
		got.ExecutionID != want.ExecutionID || got.ParentID != want.ParentID {
		t.Fatalf("backend got %+v, want %+v", got, want)
	}
	f.created = false
	if rec := call(h, "POST", "/v1/tasks", "application/json", `{"type":"echo","idempotency_key":"k"}`); rec.Code != 200 {
		t.Fatalf("existing idempotency key: %d, want 200", rec.Code)
	}
}

func TestSubmitWaitHoldsUntilTheTaskEnds(t *testing.T) {
	f := newFake()
	f.waiting = make(chan string, 1)
	h := New(f, Options{})
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- call(h, "POST", "/v1/tasks?wait=30s", "application/json", `{"type":"echo"}`) }()
	<-f.waiting // the handler waits on the pending task
	f.put(api.Task{ID: "t1", State: api.StateRunning, ModifyIndex: 2})
	<-f.waiting // still not ended
	f.put(api.Task{ID: "t1", State: api.StateSucceeded, ModifyIndex: 3, Result: json.RawMessage(`1`)})
	rec := <-done
	var got api.Task
	decodeStrict(t, rec, &got)
	if rec.Code != 201 || got.State != api.StateSucceeded {
		t.Fatalf("got %d %+v", rec.Code, got)
	}
	// A wait that elapses returns the record as it is.
	f.waiting = nil
	f2 := newFake()
	rec = call(New(f2, Options{}), "POST", "/v1/tasks?wait=1ms", "application/json", `{"type":"echo"}`)
	decodeStrict(t, rec, &got)
	if rec.Code != 201 || got.State != api.StatePending {
		t.Fatalf("elapsed wait: %d %+v", rec.Code, got)
	}
}

func TestGetBlockingQuery(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a", State: api.StateRunning, ModifyIndex: 5})
	f.waiting = make(chan string, 1)
	h := New(f, Options{})
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- call(h, "GET", "/v1/tasks/a?wait=30s&index=5", "", "") }()
	<-f.waiting
	f.put(api.Task{ID: "a", State: api.StateSucceeded, ModifyIndex: 6})
	rec := <-done
	var got api.Task
	decodeStrict(t, rec, &got)
	if got.ModifyIndex != 6 || rec.Header().Get("X-Taskworker-Index") != "6" {
		t.Fatalf("got index %d, header %q", got.ModifyIndex, rec.Header().Get("X-Taskworker-Index"))
	}
	f.waiting = nil
	// index below the record's answers at once; the wait elapsing answers with the record as it is.
	for _, target := range []string{"/v1/tasks/a?wait=30s&index=2", "/v1/tasks/a?wait=1ms&index=6", "/v1/tasks/a?index=99"} {
		if rec := call(h, "GET", target, "", ""); rec.Code != 200 || rec.Header().Get("X-Taskworker-Index") != "6" {
			t.Fatalf("%s: %d %s", target, rec.Code, rec.Body)
		}
	}
	wantError(t, call(h, "GET", "/v1/tasks/a?wait=-1s", "", ""), 400, api.CodeInvalidWait)
	wantError(t, call(h, "GET", "/v1/tasks/a?wait=1s&index=-1", "", ""), 400, api.CodeInvalidIndex)
	wantError(t, call(h, "GET", "/v1/tasks/a?index=x", "", ""), 400, api.CodeInvalidIndex)
}

func TestWaitIsCapped(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a", ModifyIndex: 1})
	r := httptest.NewRequest("GET", "/v1/tasks/a?wait=100h", nil)
	d, err := waitParam(r)
	if err != nil || d != MaxWait {
		t.Fatalf("wait=100h gives %s %v, want %s", d, err, MaxWait)
	}
}

func TestListQuery(t *testing.T) {
	f := newFake()
	h := New(f, Options{})
	if rec := call(h, "GET", "/v1/tasks?state=running&type=echo&node=n2&execution=e&limit=5&after=X", "", ""); rec.Code != 200 {
		t.Fatalf("list: %d", rec.Code)
	}
	want := api.ListQuery{State: "running", Type: "echo", Node: "n2", Execution: "e", Limit: 5, After: "X"}
	if f.gotQuery != want {
		t.Fatalf("backend got %+v, want %+v", f.gotQuery, want)
	}
	call(h, "GET", "/v1/tasks", "", "")
	if f.gotQuery.Limit != api.DefaultListLimit {
		t.Fatalf("default limit %d", f.gotQuery.Limit)
	}
	wantError(t, call(h, "GET", "/v1/tasks?state=sleeping", "", ""), 400, api.CodeInvalidState)
	for _, l := range []string{"0", "-1", "x", "10001"} {
		wantError(t, call(h, "GET", "/v1/tasks?limit="+l, "", ""), 400, api.CodeInvalidLimit)
	}
	call(h, "GET", "/v1/tasks?submitted_by=alice&since=2026-12-01T10:00:00Z&until=2026-12-01T11:00:00.5%2B01:00", "", "")
	since, until := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 10, 0, 0, 5e8, time.UTC)
	if g := f.gotQuery; g.SubmittedBy != "alice" || !g.Since.Equal(since) || !g.Until.Equal(until) {
		t.Fatalf("backend got %+v", g)
	}
	before := f.gotQuery
	for _, bad := range []string{"since=yesterday", "until=2026-13-01T00:00:00Z", "since=2026-12-01T10:00:00Z&until=2026-12-01T10:00:00Z"} {
		wantError(t, call(h, "GET", "/v1/tasks?"+bad, "", ""), 400, api.CodeInvalidTime)
	}
	if f.gotQuery != before {
		t.Error("a refused query reached the backend")
	}
}

func TestListOmitsATotalNoIndexCounts(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a"})
	h := New(f, Options{})
	rec := call(h, "GET", "/v1/tasks?submitted_by=alice", "", "")
	if _, ok := rec.Header()[api.HeaderTotal]; rec.Code != 200 || ok {
		t.Errorf("%d, headers %v: want no %s when the backend cannot count", rec.Code, rec.Header(), api.HeaderTotal)
	}
}

func TestListPagingHeaders(t *testing.T) {
	f := newFake()
	for _, id := range []string{"a", "b", "c"} {
		f.put(api.Task{ID: id})
	}
	h := New(f, Options{})
	rec := call(h, "GET", "/v1/tasks?limit=2&next=CUR", "", "")
	if rec.Code != 200 || f.gotQuery.Next != "CUR" {
		t.Fatalf("list: %d, backend query %+v", rec.Code, f.gotQuery)
	}
	var body []api.Task
	if err := json.NewDecoder(rec.Body).Decode(&body); err != nil || len(body) != 2 {
		t.Fatalf("body = %v, %v: want a JSON array of the page", body, err)
	}
	if got := rec.Header().Get(api.HeaderNext); got != "after-b" {
		t.Errorf("%s = %q, want after-b", api.HeaderNext, got)
	}
	if got := rec.Header().Get(api.HeaderTotal); got != "3" {
		t.Errorf("%s = %q, want 3", api.HeaderTotal, got)
	}
	last := call(h, "GET", "/v1/tasks?limit=3", "", "")
	if _, ok := last.Header()[api.HeaderNext]; ok || last.Header().Get(api.HeaderTotal) != "3" {
		t.Errorf("last page headers = %v, want a total and no next", last.Header())
	}
}

func TestLogsStreamJSONLines(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a"})
	f.logs = []api.LogLine{{Attempt: 1, Stream: api.StreamStdout, Line: "one"}, {Attempt: 1, Stream: api.StreamLog, Level: "INFO", Line: "two"}}
	h := New(f, Options{})
	for _, follow := range []bool{false, true} {
		rec := call(h, "GET", fmt.Sprintf("/v1/tasks/a/logs?follow=%v", follow), "", "")
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/x-ndjson" || f.gotFollow != follow {
			t.Fatalf("follow=%v: %d %q %v", follow, rec.Code, rec.Header().Get("Content-Type"), f.gotFollow)
		}
		dec := json.NewDecoder(rec.Body)
		dec.DisallowUnknownFields()
		var lines []string
		for {
			var l api.LogLine
			if err := dec.Decode(&l); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, l.Line)
		}
		if strings.Join(lines, ",") != "one,two" {
			t.Fatalf("lines %v", lines)
		}
	}
}

func TestCancelLeaveHealth(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a", State: api.StatePending})
	h := New(f, Options{})
	rec := call(h, "POST", "/v1/tasks/a/cancel", "", "")
	var got api.Task
	decodeStrict(t, rec, &got)
	if rec.Code != 202 || got.State != api.StateCancelled {
		t.Fatalf("cancel: %d %+v", rec.Code, got)
	}
	if call(h, "POST", "/v1/agent/leave?force=true", "", ""); !f.gotForce {
		t.Fatal("force not passed")
	}
	if call(h, "POST", "/v1/agent/leave", "", ""); f.gotForce {
		t.Fatal("force passed without ?force=true")
	}
	f.health = api.Health{Status: "unavailable"}
	if rec := call(h, "GET", "/v1/health", "", ""); rec.Code != 503 {
		t.Fatalf("unhealthy: %d", rec.Code)
	}
}

func TestTokenGuardsEveryRouteButHealthAndMetrics(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a"})
	h := New(f, Options{Token: "s3cret"})
	routes := [][2]string{{"POST", "/v1/tasks"}, {"GET", "/v1/tasks"}, {"GET", "/v1/tasks/a"}, {"POST", "/v1/tasks/a/cancel"},
		{"GET", "/v1/tasks/a/logs"}, {"GET", "/v1/cluster"}, {"GET", "/v1/types"}, {"POST", "/v1/agent/leave"}, {"GET", "/v1/nope"}}
	for _, r := range routes {
		wantError(t, call(h, r[0], r[1], "application/json", `{"type":"echo"}`), 401, api.CodeUnauthorized)
		wantError(t, call(h, r[0], r[1], "application/json", `{"type":"echo"}`, "Authorization", "Bearer "), 401, api.CodeUnauthorized)
		wantError(t, call(h, r[0], r[1], "application/json", `{"type":"echo"}`, "Authorization", "s3cret"), 401, api.CodeUnauthorized)
		wantError(t, call(h, r[0], r[1], "application/json", `{"type":"echo"}`, "Authorization", "Bearer wrong"), 403, api.CodeForbidden)
		if rec := call(h, r[0], r[1], "application/json", `{"type":"echo"}`, "Authorization", "Bearer s3cret"); rec.Code == 401 || rec.Code == 403 {
			t.Fatalf("%s %s with the token: %d", r[0], r[1], rec.Code)
		}
	}
	for _, target := range []string{"/v1/health", "/metrics"} {
		if rec := call(h, "GET", target, "", ""); rec.Code != 200 {
			t.Fatalf("%s without a token: %d", target, rec.Code)
		}
	}
}

func TestErrorsEchoOnlyAShortPrefixOfClientText(t *testing.T) {
	long := strings.Repeat("z", 5000)
	h := New(newFake(), Options{})
	for _, rec := range []*httptest.ResponseRecorder{
		call(h, "POST", "/v1/tasks", "text/"+long, `{}`),
		call(h, "POST", "/v1/tasks?wait="+long, "application/json", `{"type":"echo"}`),
		call(h, "POST", "/v1/tasks", "application/json", `{"`+long+`":1}`),
		call(h, "GET", "/v1/"+long, "", ""),
		call(h, "GET", "/v1/tasks?state="+long, "", ""),
	} {
		var e api.Error
		decodeStrict(t, rec, &e)
		if len(e.Message) > 300 {
			t.Fatalf("%d-byte error message echoes client text: %.80s…", len(e.Message), e.Message)
		}
	}
}

func TestWriteTimeoutBoundsSubmit(t *testing.T) {
	b := &slowBackend{fakeBackend: newFake()}
	rec := call(New(b, Options{WriteTimeout: 10 * time.Millisecond}), "POST", "/v1/tasks", "application/json", `{"type":"echo"}`)
	wantError(t, rec, 503, api.CodeNoLeader)
}

// slowBackend's Submit waits for its context, as a propose does while no leader answers.
type slowBackend struct{ *fakeBackend }

func (s *slowBackend) Submit(ctx context.Context, _ Caller, _ api.SubmitRequest) (api.Task, bool, error) {
	<-ctx.Done()
	return api.Task{}, false, fmt.Errorf("submit: %w", ctx.Err())
}

func TestKeyringChangesAreCheckedBeforeTheBackend(t *testing.T) {
	cases := []struct {
		name, body string
		status     int
		code       api.Code
	}{
		{"unknown op", `{"op":"rotate","key":"a2V5"}`, 400, api.CodeInvalidRequest},
		{"no key", `{"op":"use"}`, 400, api.CodeInvalidRequest},
		{"unknown field", `{"op":"use","key":"a2V5","force":true}`, 400, api.CodeInvalidRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			wantError(t, call(New(f, Options{}), "POST", api.PathKeyring, "application/json", c.body), c.status, c.code)
			if f.gotKeyOp != (api.KeyringRequest{}) {
				t.Errorf("backend called with %+v", f.gotKeyOp)
			}
		})
	}
	f := newFake()
	f.err = api.Errorf(api.CodeKeyringConflict, "the primary key cannot be removed")
	wantError(t, call(New(f, Options{}), "POST", api.PathKeyring, "application/json", `{"op":"remove","key":"a2V5"}`), 409, api.CodeKeyringConflict)
	f.err = api.Errorf(api.CodeNotSecure, "insecure")
	wantError(t, call(New(f, Options{}), "GET", api.PathJoinToken, "", ""), 409, api.CodeNotSecure)
}

func TestOperatorRoutesNeedTheToken(t *testing.T) {
	h := New(newFake(), Options{Token: "sekrit"})
	for _, r := range []struct{ method, path string }{
		{"GET", api.PathJoinToken}, {"POST", api.PathJoinTokenRotate}, {"GET", api.PathKeyring}, {"POST", api.PathKeyring},
	} {
		wantError(t, call(h, r.method, r.path, "application/json", `{"op":"use","key":"a2V5"}`), 401, api.CodeUnauthorized)
	}
	if rec := call(h, "GET", api.PathJoinToken, "", "", "Authorization", "Bearer sekrit"); rec.Code != 200 {
		t.Fatalf("with the token: %d %s", rec.Code, rec.Body)
	}
}
