package clicmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
)

// fakeAPI is an in-memory node: a submitted task ends at once, in a state
// chosen by its type (echo succeeds with its input, fail fails, sleep is
// cancelled, anything else is an unknown type).
type fakeAPI struct {
	mu       sync.Mutex
	tasks    map[string]*client.Task
	submits  []client.SubmitRequest
	queries  []string // raw queries of GET /v1/tasks
	leader   string
	left     bool
	authSeen string
}

func newFakeAPI(t *testing.T) (*fakeAPI, string) {
	f := &fakeAPI{tasks: map[string]*client.Task{}, leader: "n1"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", f.submit)
	mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.queries = append(f.queries, r.URL.RawQuery)
		tasks := []*client.Task{}
		for _, id := range []string{"t-sleep", "t-echo"} {
			if task, ok := f.tasks[id]; ok {
				tasks = append(tasks, task)
			}
		}
		reply(w, 200, tasks)
	})
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.withTask(w, r, func(task *client.Task) { reply(w, 200, task) })
	})
	mux.HandleFunc("POST /v1/tasks/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		f.withTask(w, r, func(*client.Task) { w.WriteHeader(http.StatusAccepted) })
	})
	mux.HandleFunc("GET /v1/tasks/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		f.withTask(w, r, func(task *client.Task) {
			enc := json.NewEncoder(w)
			_ = enc.Encode(client.LogLine{Stream: "stdout", Line: "out of " + task.ID})
			_ = enc.Encode(client.LogLine{Stream: "stderr", Line: "err of " + task.ID})
			_ = enc.Encode(client.LogLine{Stream: "log", Level: "warn", Line: "log of " + task.ID})
		})
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		reply(w, 200, client.Cluster{Leader: f.leader, Tasks: map[string]int{"running": 2, "succeeded": 5}, Nodes: []client.NodeInfo{
			{Name: "n2", GossipAddr: "h2:7946", RaftAddr: "h2:7947", HTTPAddr: "h2:7948", State: "alive", RaftRole: "voter", Capacity: 4, Running: 1, Draining: true},
			{Name: "n1", GossipAddr: "h1:7946", RaftAddr: "h1:7947", HTTPAddr: "h1:7948", State: "alive", RaftRole: "leader", Capacity: 8, Running: 1},
		}})
	})
	mux.HandleFunc("GET /v1/types", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []client.TypeInfo{
			{Type: "sleep", Version: "1", Description: "sleeps", ExampleInput: json.RawMessage(`{"ms": 500}`), Nodes: []string{"n1", "n2"}},
			{Type: "echo", Version: "1", Description: "returns its input", ExampleInput: json.RawMessage(`"hi"`), Nodes: []string{"n1"}},
		})
	})
	mux.HandleFunc("POST /v1/agent/leave", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.left = true
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.left { // gone: drop the connection as a stopped process would
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		reply(w, 200, map[string]string{"status": "ok", "leader": f.leader})
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.authSeen = r.Header.Get("Authorization")
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakeAPI) submit(w http.ResponseWriter, r *http.Request) {
	var req client.SubmitRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		reply(w, 400, map[string]string{"error": err.Error(), "code": "bad_request"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, req)
	task := &client.Task{ID: "t-" + req.Type, Type: req.Type, Version: "1", Input: req.Input, MaxAttempts: 3, Attempt: 1, Node: "n1", ModifyIndex: 3}
	switch req.Type {
	case "echo":
		task.State, task.Result = client.StateSucceeded, req.Input
	case "fail":
		var msg string
		_ = json.Unmarshal(req.Input, &msg)
		task.State, task.Error = client.StateFailed, &client.TaskError{Type: "task", Message: msg}
	case "sleep":
		task.State = client.StateCancelled
	default:
		reply(w, 400, map[string]string{"error": "unknown task type " + req.Type, "code": "unknown_task_type"})
		return
	}
	f.tasks[task.ID] = task
	reply(w, http.StatusCreated, task)
}

func (f *fakeAPI) withTask(w http.ResponseWriter, r *http.Request, fn func(*client.Task)) {
	f.mu.Lock()
	task, ok := f.tasks[r.PathValue("id")]
	f.mu.Unlock()
	if !ok {
		reply(w, 404, map[string]string{"error": "no task " + r.PathValue("id"), "code": "not_found"})
		return
	}
	fn(task)
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// run runs the client commands as the binary would, with stdin as input, and
// returns what they printed and the exit status.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{
		Name:           "taskworker",
		Commands:       Commands(),
		Reader:         strings.NewReader(stdin),
		Writer:         &out,
		ErrWriter:      &errOut,
		ExitErrHandler: func(*cli.Context, error) {}, // keep the test process alive; the code is read below
	}
	err := app.Run(append([]string{"taskworker"}, args...))
	var exit cli.ExitCoder
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
		fmt.Fprintln(&errOut, err)
	case err != nil:
		t.Fatalf("%q returned %v, which sets no exit status", args, err)
	}
	return out.String(), errOut.String(), code
}

func TestReadInput(t *testing.T) {
	file := filepath.Join(t.TempDir(), "in.json")
	if err := os.WriteFile(file, []byte("{\"ms\": 5}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, stdin string
		args        []string
		want        string // empty: an error
	}{
		{name: "absent is null", want: "null"},
		{name: "JSON text", args: []string{` {"a": [1, 2]} `}, want: `{"a": [1, 2]}`},
		{name: "@file", args: []string{"@" + file}, want: `{"ms": 5}`},
		{name: "- is stdin", stdin: "42\n", args: []string{"-"}, want: "42"},
		{name: "missing file", args: []string{"@" + file + ".nope"}},
		{name: "not JSON", args: []string{"hello"}},
		{name: "empty stdin", args: []string{"-"}},
		{name: "two values", args: []string{"1 2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readInput(strings.NewReader(tc.stdin), tc.args)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("readInput = %s, want an error", got)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("readInput = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestExec(t *testing.T) {
	f, addr := newFakeAPI(t)
	cases := []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stdout   string
		stderrIn []string
	}{
		{name: "succeeded prints output then result", args: []string{"exec", "--addr", addr, "echo", `{"a": 1}`},
			stdout: "out of t-echo\n{\"a\":1}\n", stderrIn: []string{"task t-echo submitted\n", "err of t-echo\n", "WARN  log of t-echo\n"}},
		{name: "input from stdin", stdin: `"x"`, args: []string{"exec", "--addr", addr, "echo", "-"}, stdout: "out of t-echo\n\"x\"\n"},
		{name: "absent input is null", args: []string{"exec", "--addr", addr, "echo"}, stdout: "out of t-echo\nnull\n"},
		{name: "failed", args: []string{"exec", "--addr", addr, "fail", `"boom"`}, code: 1,
			stdout: "out of t-fail\n", stderrIn: []string{"task t-fail submitted\n", "task t-fail failed: boom (task)"}},
		{name: "cancelled", args: []string{"exec", "--addr", addr, "sleep"}, code: 1, stdout: "out of t-sleep\n", stderrIn: []string{"cancelled"}},
		{name: "rejected by the API", args: []string{"exec", "--addr", addr, "nope"}, code: 2, stderrIn: []string{"unknown task type nope"}},
		{name: "no type", args: []string{"exec", "--addr", addr}, code: 2, stderrIn: []string{"Incorrect Usage"}},
		{name: "unknown flag", args: []string{"exec", "--addr", addr, "--bogus", "echo"}, code: 2, stderrIn: []string{"Incorrect Usage"}},
		{name: "node unreachable", args: []string{"exec", "--addr", "127.0.0.1:1", "echo"}, code: 2, stderrIn: []string{`Post "http://127.0.0.1:1/v1/tasks"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, tc.stdin, tc.args...)
			if code != tc.code || stdout != tc.stdout {
				t.Errorf("exit %d, stdout %q; want %d, %q (stderr %q)", code, stdout, tc.code, tc.stdout, stderr)
			}
			for _, s := range tc.stderrIn {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr %q lacks %q", stderr, s)
				}
			}
		})
	}

	f.submits = nil
	for _, input := range []string{"hello", "@/nonexistent/input.json", "{"} {
		if _, stderr, code := run(t, "", "exec", "--addr", addr, "echo", input); code != 2 || !strings.Contains(stderr, "input") {
			t.Errorf("exec with input %q: exit %d, stderr %q; want a usage error", input, code, stderr)
		}
	}
	if len(f.submits) != 0 {
		t.Errorf("bad input reached the API: %+v", f.submits)
	}
}

func TestSubmitSendsFlagsBeforeOrAfterArguments(t *testing.T) {
	f, addr := newFakeAPI(t)
	stdout, stderr, code := run(t, "", "submit", "--addr", addr, "--version", "1", "echo", "[1]",
		"--idempotency-key", "k1", "--max-attempts=5", "--timeout", "1m30s")
	if code != 0 || stdout != "t-echo\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	want := client.SubmitRequest{Type: "echo", Input: json.RawMessage(`[1]`), Version: "1", IdempotencyKey: "k1", MaxAttempts: 5, Timeout: "1m30s"}
	if got := f.submits[0]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("request %+v, want %+v", got, want)
	}
	if _, _, code := run(t, "", "submit", "--addr", addr, "nope"); code != 2 {
		t.Errorf("rejected submit: exit %d, want 2", code)
	}
	if _, _, code := run(t, "", "submit", "--addr", addr, "echo", "1", "2"); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
	if _, _, code := run(t, "", "submit", "--addr", addr, "echo", "1", "--timeout", "soon"); code != 2 {
		t.Errorf("bad --timeout: exit %d, want 2", code)
	}
}

func TestTaskCommands(t *testing.T) {
	f, addr := newFakeAPI(t)
	t.Setenv("TASKWORKER_ADDR", addr)
	t.Setenv("TASKWORKER_TOKEN", "tok")
	run(t, "", "submit", "echo", `"hi"`)
	run(t, "", "submit", "sleep")

	stdout, _, code := run(t, "", "task", "get", "t-echo")
	if code != 0 || !strings.Contains(stdout, "succeeded") || !strings.Contains(stdout, `"hi"`) {
		t.Errorf("task get: exit %d, stdout %q", code, stdout)
	}
	if f.authSeen != "Bearer tok" {
		t.Errorf("Authorization %q, want the token from TASKWORKER_TOKEN", f.authSeen)
	}
	stdout, _, code = run(t, "", "task", "get", "--json", "t-echo")
	var task client.Task
	if err := json.Unmarshal([]byte(stdout), &task); code != 0 || err != nil || task.ID != "t-echo" {
		t.Errorf("task get --json: exit %d, %v, stdout %q", code, err, stdout)
	}

	stdout, _, code = run(t, "", "task", "list", "--state", "running", "--type", "sleep", "--node", "n1", "--execution", "e", "--limit", "2", "--after", "x")
	if code != 0 || !strings.HasPrefix(stdout, "ID ") || !strings.Contains(stdout, "t-sleep  sleep  cancelled  n1    1/3") {
		t.Errorf("task list: exit %d, stdout:\n%s", code, stdout)
	}
	if want := "after=x&execution=e&limit=2&node=n1&state=running&type=sleep"; f.queries[0] != want {
		t.Errorf("list query %q, want %q", f.queries[0], want)
	}
	stdout, _, _ = run(t, "", "task", "list", "--json")
	var tasks []client.Task
	if err := json.Unmarshal([]byte(stdout), &tasks); err != nil || len(tasks) != 2 {
		t.Errorf("task list --json: %v, stdout %q", err, stdout)
	}

	stdout, stderr, code := run(t, "", "task", "logs", "t-echo", "--follow")
	if code != 0 || stdout != "out of t-echo\n" || stderr != "err of t-echo\nWARN  log of t-echo\n" {
		t.Errorf("task logs: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, _, code := run(t, "", "task", "cancel", "t-sleep"); code != 0 {
		t.Errorf("task cancel: exit %d", code)
	}

	for _, args := range [][]string{{"get", "nope"}, {"cancel", "nope"}, {"logs", "nope"}} {
		if _, stderr, code := run(t, "", append([]string{"task"}, args...)...); code != 1 || !strings.Contains(stderr, "no task nope") {
			t.Errorf("task %s: exit %d, stderr %q; want 1 for not found", args, code, stderr)
		}
	}
	for _, args := range [][]string{{"get"}, {"get", "a", "b"}, {"list", "--limit", "many"}, {"logs", "a", "--bogus"}} {
		if _, _, code := run(t, "", append([]string{"task"}, args...)...); code != 2 {
			t.Errorf("task %s: exit %d, want 2 for a usage error", args, code)
		}
	}
	if _, _, code := run(t, "", "task", "get", "--addr", "127.0.0.1:1", "t-echo"); code != 2 {
		t.Errorf("task get from an unreachable node: exit %d, want 2", code)
	}
}

func TestStatus(t *testing.T) {
	f, addr := newFakeAPI(t)
	stdout, _, code := run(t, "", "status", "--addr", addr)
	want := `Leader: n1

NAME  GOSSIP   RAFT     HTTP     STATE  ROLE    RUNNING/CAPACITY  DRAINING
n1    h1:7946  h1:7947  h1:7948  alive  leader  1/8               no
n2    h2:7946  h2:7947  h2:7948  alive  voter   1/4               yes

TASKS      COUNT
pending    0
assigned   0
running    2
succeeded  5
failed     0
cancelled  0
`
	if code != 0 || stdout != want {
		t.Errorf("status: exit %d, stdout:\n%s\nwant:\n%s", code, stdout, want)
	}
	stdout, _, code = run(t, "", "status", "--addr", addr, "--json")
	var cl client.Cluster
	if err := json.Unmarshal([]byte(stdout), &cl); code != 0 || err != nil || len(cl.Nodes) != 2 {
		t.Errorf("status --json: exit %d, %v, stdout %q", code, err, stdout)
	}

	f.leader = ""
	if stdout, _, code := run(t, "", "status", "--addr", addr); code != 1 || !strings.HasPrefix(stdout, "Leader: (none)") {
		t.Errorf("status without leader: exit %d, stdout %q; want 1", code, stdout)
	}
	if _, _, code := run(t, "", "status", "--addr", "127.0.0.1:1"); code != 1 {
		t.Errorf("status of an unreachable node: exit %d, want 1", code)
	}
}

func TestLeaveWaitsUntilTheNodeStops(t *testing.T) {
	f, addr := newFakeAPI(t)
	stdout, stderr, code := run(t, "", "leave", "--addr", addr)
	if code != 0 || !f.left || stdout != "Node left the cluster\n" {
		t.Errorf("leave: exit %d, left %v, stdout %q, stderr %q", code, f.left, stdout, stderr)
	}
}

func TestTypes(t *testing.T) {
	_, addr := newFakeAPI(t)
	stdout, _, code := run(t, "", "types", "--addr", addr)
	want := `TYPE   VERSION  NODES  DESCRIPTION        EXAMPLE
echo   1        n1     returns its input  "hi"
sleep  1        n1,n2  sleeps             {"ms":500}
`
	if code != 0 || stdout != want {
		t.Errorf("types: exit %d, stdout:\n%s\nwant:\n%s", code, stdout, want)
	}
}
