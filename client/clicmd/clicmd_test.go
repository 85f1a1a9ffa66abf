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
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
)

// fakeAPI is an in-memory node: a submitted task ends at once, in a state
// chosen by its type (echo succeeds with its input, fail fails, sleep is
// cancelled, anything else is an unknown type).
type fakeAPI struct {
	mu      sync.Mutex
	tasks   map[string]*client.Task
	submits []client.SubmitRequest
	queries []string // raw queries of GET /v1/tasks
	leader  string
	left    bool
	started time.Time // the nodes' start, for uptime
	// clusterErr, when set, is GET /v1/cluster's error answer: {status, code}.
	clusterErr *struct {
		status int
		code   string
	}
	authSeen string
	batches  int // POST /v1/tasks/batch requests
	// workers are GET /v1/workers and /v1/cluster's workers.
	workers []client.Worker
}

func newFakeAPI(t *testing.T) (*fakeAPI, string) {
	f := &fakeAPI{tasks: map[string]*client.Task{}, leader: "n1", started: time.Now().Add(-(2*time.Hour + 13*time.Minute + 5*time.Second))}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", f.submit)
	mux.HandleFunc("POST /v1/tasks/batch", f.submitBatch)
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
			if task.Type == "json-out" { // a command-backed task: its result is its last stdout line
				_ = enc.Encode(client.LogLine{Stream: "stdout", Attempt: 1, Line: "working"})
				_ = enc.Encode(client.LogLine{Stream: "stdout", Attempt: 1, Line: `{"n": 1}` + "\n"})
				return
			}
			_ = enc.Encode(client.LogLine{Stream: "stdout", Line: "out of " + task.ID})
			_ = enc.Encode(client.LogLine{Stream: "stderr", Line: "err of " + task.ID})
			_ = enc.Encode(client.LogLine{Stream: "log", Level: "warn", Line: "log of " + task.ID})
		})
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if e := f.clusterErr; e != nil {
			reply(w, e.status, map[string]string{"error": "refused: " + e.code, "code": e.code})
			return
		}
		lag := func(n uint64) *uint64 { return &n }
		reply(w, 200, client.Cluster{Leader: f.leader, Workers: f.workers, Tasks: map[string]int{"running": 2, "succeeded": 5}, Nodes: []client.NodeInfo{
			{Name: "n2", GossipAddr: "h2:7946", RaftAddr: "h2:7947", HTTPAddr: "h2:7948", State: "alive", RaftRole: "voter", Capacity: 4, Running: 1, Draining: true,
				Version: "v1.2.0", StartedAt: &f.started, CommitIndex: 118, AppliedIndex: 117, Lag: lag(3)},
			{Name: "n1", GossipAddr: "h1:7946", RaftAddr: "h1:7947", HTTPAddr: "h1:7948", State: "alive", RaftRole: "leader", Capacity: 8, Running: 1,
				Version: "v1.2.0", StartedAt: &f.started, CommitIndex: 120, AppliedIndex: 120, Lag: lag(0)},
			{Name: "n3", GossipAddr: "h3:7946", RaftAddr: "h3:7947", HTTPAddr: "h3:7948", State: "dead", RaftRole: "voter", Capacity: 2, Running: 0,
				Version: "v1.1.0", StartedAt: &f.started},
		}})
	})
	mux.HandleFunc("GET /v1/workers", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		reply(w, 200, append([]client.Worker{}, f.workers...))
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
	if old, ok := f.tasks["t-"+req.Type]; ok && req.IdempotencyKey != "" && old.IdempotencyKey == req.IdempotencyKey {
		reply(w, http.StatusOK, old)
		return
	}
	task := &client.Task{IdempotencyKey: req.IdempotencyKey, CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ID: "t-" + req.Type, Type: req.Type, Version: "1", Input: req.Input, MaxAttempts: 3, Attempt: 1, Node: "n1", ModifyIndex: 3}
	switch req.Type {
	case "echo":
		task.State, task.Result = client.StateSucceeded, req.Input
	case "fail":
		var msg string
		_ = json.Unmarshal(req.Input, &msg)
		task.State, task.Error = client.StateFailed, &client.TaskError{Type: "task", Message: msg}
	case "sleep":
		task.State = client.StateCancelled
	case "flaky": // failed twice on other nodes, then succeeded
		task.State, task.Result, task.Attempt = client.StateSucceeded, json.RawMessage(`"third time"`), 3
		task.History = []client.HistoryEntry{
			{Attempt: 1, Node: "n2", Event: "started"}, {Attempt: 1, Node: "n2", Event: "failed", Error: "disk full"},
			{Attempt: 2, Node: "n3", Event: "started"}, {Attempt: 2, Node: "n3", Event: "interrupted", Error: "node n3 died"},
			{Attempt: 3, Node: "n1", Event: "started"}, {Attempt: 3, Node: "n1", Event: "succeeded"},
		}
	case "fail-last": // failed once, retried, failed for good: only the first is a retry
		task.State, task.Attempt, task.MaxAttempts = client.StateFailed, 2, 2
		task.Error = &client.TaskError{Type: "task", Message: "second"}
		task.History = []client.HistoryEntry{
			{Attempt: 1, Node: "n1", Event: "failed", Error: "first"}, {Attempt: 2, Node: "n1", Event: "failed", Error: "second"},
		}
	case "json-out":
		task.State, task.Result = client.StateSucceeded, json.RawMessage(`{"n":1}`)
	case "py-upper": // no worker offers it
		task.State, task.Attempt, task.Node = client.StatePending, 0, ""
		task.PendingReason = `no node or worker offers "py-upper" version "1"`
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
		Version:        "v1.2.3-test",
	}
	Configure(app)
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
		{name: "retries are reported on stderr", args: []string{"exec", "--addr", addr, "flaky"}, stdout: "out of t-flaky\n\"third time\"\n",
			stderrIn: []string{"attempt 1 failed on n2: disk full; retrying\n", "attempt 2 interrupted on n3: node n3 died; retrying\n"}},
		{name: "a command's result that is its last stdout line is printed once", args: []string{"exec", "--addr", addr, "json-out"},
			stdout: "working\n{\"n\": 1}\n"},
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

	// The last failure is no retry: only attempt 1 is reported.
	_, stderr, code := run(t, "", "exec", "--addr", addr, "fail-last")
	if code != 1 || !strings.Contains(stderr, "attempt 1 failed on n1: first; retrying") || strings.Contains(stderr, "second; retrying") {
		t.Errorf("exec fail-last: exit %d, stderr %q; want one retry reported, then the failure", code, stderr)
	}

	// An idempotency key seen before returns the earlier task, and exec says so.
	if _, stderr, _ := run(t, "", "exec", "--addr", addr, "--idempotency-key", "k1", "echo", "1"); strings.Contains(stderr, "idempotency") {
		t.Errorf("first submit with a key: stderr %q mentions idempotency", stderr)
	}
	stdout, stderr, code := run(t, "", "exec", "--addr", addr, "--idempotency-key", "k1", "echo", "2")
	if want := "idempotency key seen before: task t-echo from " + formatTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)); code != 0 ||
		!strings.Contains(stderr, want) || !strings.HasSuffix(stdout, "1\n") {
		t.Errorf("repeat submit with a key: exit %d, stdout %q, stderr %q; want the first task's result and %q", code, stdout, stderr, want)
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

NAME  GOSSIP   RAFT     HTTP     STATE  ROLE    RUNNING/CAPACITY  DRAINING  VERSION  UPTIME  COMMIT  APPLIED  LAG
n1    h1:7946  h1:7947  h1:7948  alive  leader  1/8               no        v1.2.0   2h13m   120     120      0
n2    h2:7946  h2:7947  h2:7948  alive  voter   1/4               yes       v1.2.0   2h13m   118     117      3
n3    h3:7946  h3:7947  h3:7948  dead   voter   -                 no        v1.1.0   -       -       -        -

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
	if err := json.Unmarshal([]byte(stdout), &cl); code != 0 || err != nil || len(cl.Nodes) != 3 {
		t.Errorf("status --json: exit %d, %v, stdout %q", code, err, stdout)
	}

	f.leader = ""
	stdout, stderr, code := run(t, "", "status", "--addr", addr)
	if code != 1 || !strings.HasPrefix(stdout, "Leader: (none)") || !strings.Contains(stderr, "no leader") {
		t.Errorf("status without leader: exit %d, stdout %q, stderr %q; want 1 and no leader", code, stdout, stderr)
	}

	// Each reason for no answer has its exit status and its own message.
	cases := []struct {
		name   string
		addr   string
		status int // of /v1/cluster; 0: answers
		code   int
		msg    string
	}{
		{name: "unreachable", addr: "127.0.0.1:1", code: 2, msg: "cannot reach the node at 127.0.0.1:1"},
		{name: "no token", addr: addr, status: 401, code: 2, msg: "refused the credential (401)"},
		{name: "token lacks permission", addr: addr, status: 403, code: 2, msg: "refused the credential (403)"},
		{name: "node without leader answers 503", addr: addr, status: 503, code: 1, msg: "no leader: the node at " + addr + " is not healthy"},
		{name: "other request error", addr: addr, status: 400, code: 2, msg: "rejected the request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.clusterErr = nil
			if tc.status != 0 {
				f.clusterErr = &struct {
					status int
					code   string
				}{tc.status, "some_code"}
			}
			f.mu.Unlock()
			_, stderr, code := run(t, "", "status", "--addr", tc.addr)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.msg)
			}
		})
	}
}

func TestFormatUptime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 42 * time.Second: "42s", 5*time.Minute + 12*time.Second: "5m12s",
		2*time.Hour + 13*time.Minute + 59*time.Second: "2h13m", 76 * time.Hour: "3d4h",
	} {
		if got := formatUptime(d); got != want {
			t.Errorf("formatUptime(%v) = %q, want %q", d, got, want)
		}
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
