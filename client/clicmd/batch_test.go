package clicmd

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// submitBatch answers each task of a batch as the fake's single submit would.
func (f *fakeAPI) submitBatch(w http.ResponseWriter, r *http.Request) {
	var req api.BatchSubmitRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		reply(w, 400, map[string]string{"error": err.Error(), "code": "bad_request"})
		return
	}
	f.mu.Lock()
	f.batches++
	f.mu.Unlock()
	out := api.BatchSubmitReply{Results: []api.BatchResult{}}
	for _, t := range req.Tasks {
		body, _ := json.Marshal(t)
		rec := httptest.NewRecorder()
		f.submit(rec, httptest.NewRequest("POST", "/v1/tasks", bytes.NewReader(body)))
		res := api.BatchResult{Status: rec.Code}
		if rec.Code < 300 {
			res.Task = new(client.Task)
			_ = json.Unmarshal(rec.Body.Bytes(), res.Task)
		} else {
			res.Error = new(api.Error)
			_ = json.Unmarshal(rec.Body.Bytes(), res.Error)
		}
		out.Results = append(out.Results, res)
	}
	reply(w, 200, out)
}

func TestSubmitBatchFile(t *testing.T) {
	f, addr := newFakeAPI(t)
	lines := `{"type":"echo","input":[1]}

{"type":"nope"}
{"type":"fail","input":"x","max_attempts":2}
`
	stdout, stderr, code := run(t, lines, "submit", "--addr", addr, "--batch", "-")
	if code != 2 || stdout != "t-echo\nt-fail\n" || !strings.Contains(stderr, "line 3: unknown task type nope") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 2, the two IDs, and line 3 refused", code, stdout, stderr)
	}
	if len(f.submits) != 3 || f.batches != 1 || f.submits[2].MaxAttempts != 2 || string(f.submits[0].Input) != "[1]" {
		t.Fatalf("the fake got %d batches of %+v", f.batches, f.submits)
	}
	// More tasks than a batch holds go in several requests, the IDs still in order of the file.
	var many strings.Builder
	for range client.MaxBatchTasks + 1 {
		many.WriteString(`{"type":"echo"}` + "\n")
	}
	f.batches = 0
	stdout, stderr, code = run(t, many.String(), "submit", "--addr", addr, "--batch", "-")
	if code != 0 || strings.Count(stdout, "t-echo\n") != client.MaxBatchTasks+1 || f.batches != 2 {
		t.Fatalf("exit %d, %d IDs, %d batches, stderr %q", code, strings.Count(stdout, "\n"), f.batches, stderr)
	}
	for _, bad := range [][]string{
		{"--batch", "-", "echo"},     // a type besides the file
		{"--batch", "/no/such/file"}, // unreadable
		{},                           // neither
	} {
		f.submits = nil
		if _, _, code := run(t, `{"type":"echo"}`, append([]string{"submit", "--addr", addr}, bad...)...); code != 2 || len(f.submits) != 0 {
			t.Errorf("%q: exit %d, %d submits; want 2 and none", bad, code, len(f.submits))
		}
	}
	// A malformed line submits nothing.
	f.submits = nil
	if _, stderr, code := run(t, "{\"type\":\"echo\"}\n{\"type\":\"echo\",\"colour\":1}\n", "submit", "--addr", addr, "--batch", "-"); code != 2 || len(f.submits) != 0 || !strings.Contains(stderr, "line 2") {
		t.Errorf("malformed line: exit %d, %d submits, stderr %q", code, len(f.submits), stderr)
	}
}
