package clicmd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// workflowNode fakes the /v1/workflows routes with one workflow, W1.
func workflowNode(t *testing.T) (*sync.Mutex, *[]api.WorkflowRequest, string) {
	t.Helper()
	var mu sync.Mutex
	var all []api.WorkflowRequest
	wf := api.Workflow{ID: "W1", Name: "thumbs", State: api.WorkflowSucceeded, OnFailure: api.OnFailureCancel, Result: json.RawMessage("81"),
		StepsTotal: 2, StepsDone: 2,
		Steps: []api.WorkflowStep{
			{Name: "a", Type: "calc-square", State: "succeeded", TaskID: "W1.a", Result: json.RawMessage("9")},
			{Name: "b", Type: "calc-square", State: "failed", TaskID: "W1.b", DependsOn: []string{"a"}, Error: "boom"},
		}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workflows", func(w http.ResponseWriter, r *http.Request) {
		var got api.WorkflowRequest
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			reply(w, 400, api.Errorf(api.CodeInvalidRequest, "bad body"))
			return
		}
		all = append(all, got)
		if len(got.Steps) == 0 {
			reply(w, 400, api.Errorf(api.CodeInvalidWorkflow, "a workflow needs 1 to 10000 steps"))
			return
		}
		reply(w, 201, wf)
	})
	mux.HandleFunc("GET /v1/workflows/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "W1" {
			reply(w, 404, api.Errorf(api.CodeNotFound, "workflow not found"))
			return
		}
		reply(w, 200, wf)
	})
	mux.HandleFunc("GET /v1/workflows", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, api.WorkflowPage{Workflows: []api.Workflow{wf}, Next: r.URL.Query().Get("limit")})
	})
	mux.HandleFunc("POST /v1/workflows/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 409, api.Errorf(api.CodeAlreadyFinished, "workflow W1 has already finished"))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &mu, &all, srv.URL
}

func TestWorkflowCommands(t *testing.T) {
	mu, got, addr := workflowNode(t)
	file := filepath.Join(t.TempDir(), "wf.json")
	body := `{"name": "thumbs", "steps": [{"name": "a", "type": "calc-square", "input": 3},
		{"name": "b", "type": "calc-square", "depends_on": ["a"], "input_from": "a#/x"}]}`
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stdoutIn string
		stderrIn string
	}{
		{name: "submit a file", args: []string{"workflow", "submit", "--addr", addr, "-f", file}, stdoutIn: "W1\n"},
		{name: "submit stdin", stdin: body, args: []string{"workflow", "submit", "--addr", addr, "-f", "-"}, stdoutIn: "W1\n"},
		{name: "submit refused", stdin: `{"steps": []}`, args: []string{"workflow", "submit", "--addr", addr, "-f", "-"}, code: 2, stderrIn: "invalid_workflow"},
		{name: "submit not a workflow", stdin: `{"stepz": []}`, args: []string{"workflow", "submit", "--addr", addr, "-f", "-"}, code: 2, stderrIn: "not a workflow"},
		{name: "submit missing file", args: []string{"workflow", "submit", "--addr", addr, "-f", file + ".nope"}, code: 2},
		{name: "get", args: []string{"workflow", "get", "--addr", addr, "W1"}, stdoutIn: "W1.a"},
		{name: "get shows progress", args: []string{"workflow", "get", "--addr", addr, "W1"}, stdoutIn: "Steps:       2 of 2 done\n"},
		{name: "get shows errors", args: []string{"workflow", "get", "--addr", addr, "W1"}, stdoutIn: "error: boom"},
		{name: "get unknown", args: []string{"workflow", "get", "--addr", addr, "W2"}, code: 1, stderrIn: "not found"},
		{name: "list", args: []string{"workflow", "list", "--addr", addr, "--limit", "5"}, stdoutIn: "thumbs", stderrIn: "next: 5"},
		{name: "list shows progress", args: []string{"workflow", "list", "--addr", addr, "--limit", "5"}, stdoutIn: "2/2"},
		{name: "cancel finished", args: []string{"workflow", "cancel", "--addr", addr, "W1"}, code: 1, stderrIn: "already_finished"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdoutIn) || !strings.Contains(stderr, tc.stderrIn) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q", code, stdout, stderr, tc.code, tc.stdoutIn, tc.stderrIn)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	first := (*got)[0]
	if len(*got) != 3 || !reflect.DeepEqual(first, (*got)[1]) {
		t.Errorf("the file and stdin sent different requests: %+v", *got)
	}
	if len(first.Steps) != 2 || first.Steps[1].InputFrom.Sources[0] != "a#/x" || first.Steps[1].InputFrom.Object || string(first.Steps[0].Input) != "3" {
		t.Errorf("request sent: %+v", first)
	}
}
