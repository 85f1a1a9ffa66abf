package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// SubmitBatch of the fake answers each request as a node would: missing_type without a type, 200
// for an idempotency key seen before (in this batch or an earlier one), 201 otherwise.
func (f *fakeBackend) SubmitBatch(_ context.Context, caller Caller, reqs []api.SubmitRequest) ([]api.BatchResult, error) {
	f.mu.Lock()
	f.gotBatch = append(f.gotBatch, reqs)
	f.gotCaller = caller
	err := f.err
	if f.keys == nil {
		f.keys = map[string]string{}
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := make([]api.BatchResult, len(reqs))
	for i, req := range reqs {
		if req.Type == "" {
			out[i] = ErrorResult(api.Errorf(api.CodeMissingType, "type is required"))
			continue
		}
		f.mu.Lock()
		id, seen := f.keys[req.IdempotencyKey]
		if !seen || req.IdempotencyKey == "" {
			id = fmt.Sprintf("b%d", len(f.tasks))
			if req.IdempotencyKey != "" {
				f.keys[req.IdempotencyKey] = id
			}
		}
		f.mu.Unlock()
		t := api.Task{ID: id, Type: req.Type, State: api.StatePending, ModifyIndex: 1, History: []api.HistoryEntry{}}
		f.put(t)
		out[i] = api.BatchResult{Status: http.StatusCreated, Task: &t}
		if seen {
			out[i].Status = http.StatusOK
		}
	}
	return out, nil
}

func batchBody(types ...string) string {
	var req api.BatchSubmitRequest
	for _, typ := range types {
		r := api.SubmitRequest{Type: typ}
		if k, ok := strings.CutPrefix(typ, "echo#"); ok {
			r = api.SubmitRequest{Type: "echo", IdempotencyKey: k}
		}
		req.Tasks = append(req.Tasks, r)
	}
	b, _ := json.Marshal(req)
	return string(b)
}

func decodeBatch(t *testing.T, rec interface {
	Result() *http.Response
}, n int) []api.BatchResult {
	t.Helper()
	resp := rec.Result()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("batch status %d, want 200", resp.StatusCode)
	}
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	var reply api.BatchSubmitReply
	if err := dec.Decode(&reply); err != nil {
		t.Fatal(err)
	}
	if len(reply.Results) != n {
		t.Fatalf("%d results, want %d", len(reply.Results), n)
	}
	return reply.Results
}

func TestSubmitBatchGivesOneResultPerTaskInOrder(t *testing.T) {
	f := newFake()
	h := New(f, Options{})
	rec := call(h, "POST", api.PathTasksBatch, "application/json", batchBody("echo#k", "", "echo", "echo#k"))
	res := decodeBatch(t, rec, 4)
	statuses := fmt.Sprint(res[0].Status, res[1].Status, res[2].Status, res[3].Status)
	if statuses != "201 400 201 200" {
		t.Fatalf("statuses %s, want 201 400 201 200", statuses)
	}
	if res[0].Task == nil || res[0].Error != nil || res[3].Task == nil || res[3].Task.ID != res[0].Task.ID {
		t.Fatalf("idempotent item: %+v then %+v", res[0], res[3])
	}
	if res[1].Task != nil || res[1].Error == nil || res[1].Error.Code != api.CodeMissingType || res[1].Error.Message == "" {
		t.Fatalf("bad item: %+v", res[1])
	}
	if len(f.gotBatch) != 1 || len(f.gotBatch[0]) != 4 {
		t.Fatalf("backend got %d calls, want one of 4 tasks", len(f.gotBatch))
	}
	// The wire shape is what clients code against.
	rec = call(h, "POST", api.PathTasksBatch, "application/json", batchBody("", "echo"))
	var raw struct {
		Results []map[string]json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if e := string(raw.Results[0]["error"]); !strings.Contains(e, `"code":"missing_type"`) || !strings.Contains(e, `"error":`) {
		t.Fatalf("error item %s", rec.Body)
	}
	if _, ok := raw.Results[1]["task"]; !ok || string(raw.Results[1]["status"]) != "201" {
		t.Fatalf("created item %s", rec.Body)
	}
}

func TestSubmitBatchRefusesWholeBatches(t *testing.T) {
	tooMany := make([]string, api.MaxBatchTasks+1)
	for i := range tooMany {
		tooMany[i] = "echo"
	}
	cases := []struct {
		name, body string
		opts       Options
		backend    error
		status     int
		code       api.Code
	}{
		{"empty", `{"tasks":[]}`, Options{}, nil, 400, api.CodeEmptyBatch},
		{"no tasks field", `{}`, Options{}, nil, 400, api.CodeEmptyBatch},
		{"too many", batchBody(tooMany...), Options{}, nil, 400, api.CodeBatchTooLarge},
		{"unknown field", `{"tasks":[{"type":"echo"}],"wait":"1s"}`, Options{}, nil, 400, api.CodeInvalidRequest},
		{"too large", batchBody("echo", "echo", "echo"), Options{MaxBatchBodyBytes: 40}, nil, 413, api.CodeBodyTooLarge},
		{"no leader", batchBody("echo"), Options{}, api.Errorf(api.CodeNoLeader, "no leader"), 503, api.CodeNoLeader},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			f.err = c.backend
			wantError(t, call(New(f, c.opts), "POST", api.PathTasksBatch, "application/json", c.body), c.status, c.code)
			if len(f.tasks) != 0 {
				t.Fatal("a refused batch stored tasks")
			}
		})
	}
	// The batch cap is its own: a body over the single-submit cap still goes through.
	rec := call(New(newFake(), Options{MaxBodyBytes: 30}), "POST", api.PathTasksBatch, "application/json", batchBody("echo", "echo", "echo"))
	decodeBatch(t, rec, 3)
}

func TestSubmitBatchChecksACLPerTask(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	h := New(b, Options{ACL: a})
	rec := call(h, "POST", api.PathTasksBatch, "application/json", batchBody("echo", "report-daily", "echo"),
		"Authorization", "Bearer "+secrets["echo-only"])
	res := decodeBatch(t, rec, 3)
	if res[0].Status != 201 || res[1].Status != 403 || res[1].Error.Code != api.CodeForbidden || res[2].Status != 201 {
		t.Fatalf("results %+v", res)
	}
	if len(b.gotBatch) != 1 || len(b.gotBatch[0]) != 2 || b.gotBatch[0][0].Type != "echo" || b.gotBatch[0][1].Type != "echo" {
		t.Fatalf("backend got %+v, want only the two echo tasks", b.gotBatch)
	}
	if b.gotCaller.Principal() == "" {
		t.Fatal("the backend was not told who submitted")
	}
	// Every task refused: the backend is not called, the reply still has one result per task.
	res = decodeBatch(t, call(h, "POST", api.PathTasksBatch, "application/json", batchBody("report-daily"),
		"Authorization", "Bearer "+secrets["echo-only"]), 1)
	if res[0].Status != 403 || len(b.gotBatch) != 1 {
		t.Fatalf("all refused: %+v, backend calls %d", res, len(b.gotBatch))
	}
	// Without a token at all the request is refused as a whole, as any route.
	wantError(t, call(h, "POST", api.PathTasksBatch, "application/json", batchBody("echo")), 401, api.CodeUnauthorized)
}
