package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// The Python SDK's worker (sdk/python) as its users run it: a separate Python process on a
// secure 3-node cluster with --acl, through e2e/testdata/py_worker.py, whose tasks wait on gate
// files the test creates.

// pyPython returns the Python to run workers with: TASKWORKER_PYTHON, else python3. It skips the
// test when there is none of at least 3.10 (the SDK's floor), and fails it instead when
// TASKWORKER_REQUIRE_SDKS=1.
func pyPython(t *testing.T) string {
	t.Helper()
	py := os.Getenv("TASKWORKER_PYTHON")
	if py == "" {
		py = "python3"
	}
	path, err := exec.LookPath(py)
	if err != nil {
		skipUnlessRequired(t, "TASKWORKER_REQUIRE_SDKS", "no %s for the Python worker tests: %v", py, err)
	}
	if out, err := exec.Command(path, "-c", "import sys; sys.exit(sys.version_info < (3, 10))").CombinedOutput(); err != nil {
		skipUnlessRequired(t, "TASKWORKER_REQUIRE_SDKS", "%s is not Python 3.10 or later: %v %s", path, err, out)
	}
	return path
}

// pyLines collects a stream of lines, safe for concurrent reads.
type pyLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *pyLines) read(r io.Reader, done func()) {
	defer done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
	}
}

func (l *pyLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// pyWorker is one Python worker process.
type pyWorker struct {
	*workerProc
	stdout, stderr pyLines
}

// startPyWorker runs script with python as the worker name, against addr with token. The
// process is killed at the end of the test, and its output shown when the test failed.
func startPyWorker(t *testing.T, python, script, name, addr, token string) *pyWorker {
	t.Helper()
	src, err := filepath.Abs(filepath.Join("..", "sdk", "python", "src"))
	if err != nil {
		t.Fatal(err)
	}
	w := &pyWorker{}
	cmd := exec.Command(python, script)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+src, "PYTHONUNBUFFERED=1", "WORKER_NAME="+name,
		"TASKWORKER_ADDR=http://"+addr, "TASKWORKER_TOKEN="+token, "TASKWORKER_CA_FILE=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	output := func() string {
		return "stdout:\n" + strings.Join(w.stdout.all(), "\n") + "\nstderr:\n" + strings.Join(w.stderr.all(), "\n")
	}
	w.workerProc = startWorkerProc(t, name, cmd, readers.Wait, output)
	go w.stdout.read(outR, readers.Done)
	go w.stderr.read(errR, readers.Done)
	return w
}

// wait waits for the process to exit and returns its exit code.
func (w *pyWorker) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-w.exited:
	case <-time.After(timeout):
		t.Fatalf("worker %s still runs after %s", w.name, timeout)
	}
	return w.cmd.ProcessState.ExitCode()
}

// pyEvent is one JSON line the test script prints.
type pyEvent struct {
	Event      string            `json:"event"`
	Task       string            `json:"task"`
	Tasks      []string          `json:"tasks"`
	Attempt    int               `json:"attempt"`
	T          float64           `json:"t"` // Unix seconds
	Status     int               `json:"status"`
	Code       string            `json:"code"`
	Error      string            `json:"error"`
	Results    []json.RawMessage `json:"results"`
	Checkpoint json.RawMessage   `json:"checkpoint"`
}

// event waits for the script to print an event that match accepts.
func (w *pyWorker) event(t *testing.T, what string, match func(pyEvent) bool) pyEvent {
	t.Helper()
	var got pyEvent
	poll(t, "worker "+w.name+": "+what, 60*time.Second, func() bool {
		for _, line := range w.stdout.all() {
			var ev pyEvent
			if json.Unmarshal([]byte(line), &ev) == nil && match(ev) {
				got = ev
				return true
			}
		}
		return false
	})
	return got
}

// pyWorkerState returns the worker named name as node p lists it, or ok false.
func pyWorkerState(p *proc, token, name string) (api.WorkerInfo, bool) {
	var ws []api.WorkerInfo
	if p.getJSONAs(token, api.PathWorkers, &ws) != nil {
		return api.WorkerInfo{}, false
	}
	for _, w := range ws {
		if w.Name == name {
			return w, true
		}
	}
	return api.WorkerInfo{}, false
}

func pyWaitWorker(t *testing.T, p *proc, token, name string, ok func(api.WorkerInfo) bool, what string) {
	t.Helper()
	poll(t, "worker "+name+" "+what+" on "+p.Name, 60*time.Second, func() bool {
		w, found := pyWorkerState(p, token, name)
		return found && ok(w)
	})
}

func pyUp(w api.WorkerInfo) bool { return w.State == "up" && !w.Draining }

// pyGate is a file a task waits for; open creates it.
type pyGate string

func (g pyGate) open(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(string(g), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pySubmit submits a task through p with token and returns its ID.
func pySubmit(t *testing.T, p *proc, token string, req client.SubmitRequest) string {
	t.Helper()
	if req.Timeout == "" {
		req.Timeout = "5m"
	}
	task, _, err := client.New("http://"+p.HTTP, client.WithToken(token)).Submit(context.Background(), req)
	if err != nil {
		t.Fatalf("submit %s through %s: %v", req.Type, p.Name, err)
	}
	return task.ID
}

func pyInput(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pyGet reads task id from p with token; ok is false on any error.
func pyGet(p *proc, token, id string) (api.Task, bool) {
	var rec api.Task
	if p.getJSONAs(token, "/v1/tasks/"+id, &rec) != nil {
		return api.Task{}, false
	}
	return rec, true
}

// pyWaitTask waits until p shows task id in a state that ok accepts and returns the record.
func pyWaitTask(t *testing.T, p *proc, token, id, what string, ok func(api.Task) bool) api.Task {
	t.Helper()
	var rec api.Task
	poll(t, "task "+id+" "+what, 90*time.Second, func() bool {
		r, found := pyGet(p, token, id)
		rec = r
		return found && ok(r)
	})
	return rec
}

func pySucceeded(r api.Task) bool { return r.State == api.StateSucceeded }

// pyResult decodes a task's result.
func pyResult(t *testing.T, r api.Task) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Result, &m); err != nil {
		t.Fatalf("result of %s: %v: %s", r.ID, err, r.Result)
	}
	return m
}

// pyCluster is a secure 3-node cluster with --acl, and the credentials the test uses.
type pyCluster struct {
	pc       *procCluster
	root     string // the management token
	work     string // work on py-e2e-* only
	user     string // submit, read, cancel and logs on py-*: no work
	leader   *proc
	follower []*proc
}

func startPyCluster(t *testing.T) *pyCluster {
	t.Helper()
	pc := newProcCluster(t)
	for range 3 {
		pc.add("--acl")
	}
	n1 := pc.procs[0]
	var boot api.ACLToken
	poll(t, "ACL bootstrap on n1", 60*time.Second, func() bool {
		code, _ := callAs(t, n1, "", "POST", api.PathACLBootstrap, nil, &boot)
		return code == http.StatusOK
	})
	c := &pyCluster{pc: pc, root: boot.SecretID}
	pc.token = c.root // the harness compares the replicas with it
	for _, p := range pc.procs {
		p.Token = c.root
	}
	view := pc.waitCluster(n1, 3)
	for _, p := range pc.procs {
		if p.Name == view.Leader {
			c.leader = p
		} else {
			c.follower = append(c.follower, p)
		}
	}
	if c.leader == nil || len(c.follower) != 2 {
		t.Fatalf("leader %q among %d nodes", view.Leader, len(pc.procs))
	}
	token := func(policy string, rules []api.ACLRule) string {
		if code, b := callAs(t, c.leader, c.root, "PUT", api.PathACLPolicy+policy, api.ACLPolicy{Name: policy, Rules: rules}, nil); code != http.StatusOK {
			t.Fatalf("policy %s: %d %s", policy, code, b)
		}
		var tok api.ACLToken
		if code, b := callAs(t, c.leader, c.root, "POST", api.PathACLTokens, api.ACLTokenRequest{Policies: []string{policy}}, &tok); code != http.StatusCreated {
			t.Fatalf("token of %s: %d %s", policy, code, b)
		}
		return tok.SecretID
	}
	c.work = token("py-e2e-workers", []api.ACLRule{{TaskType: "py-e2e-*", Capabilities: []string{"work"}}})
	c.user = token("py-e2e-users", []api.ACLRule{{TaskType: "py-*", Capabilities: []string{"submit", "read", "cancel", "logs"}}})
	for _, p := range pc.procs {
		poll(t, p.Name+" knows the tokens", 30*time.Second, func() bool {
			code, _ := callAs(t, p, c.user, "GET", "/v1/tasks?type=py-e2e-upper", nil, nil)
			return code == http.StatusOK
		})
	}
	return c
}

// A Python worker on a secure 3-node cluster with --acl: tasks submitted through every node run
// on it with live logs; a killed worker's task moves to another, from its checkpoint; a frozen
// worker's late report is refused; SIGTERM drains; a token without work is refused; a version
// no worker offers waits and says why.
func TestWorkerPythonOnASecureCluster(t *testing.T) {
	python := pyPython(t)
	script, err := filepath.Abs(filepath.Join("testdata", "py_worker.py"))
	if err != nil {
		t.Fatal(err)
	}
	example, err := filepath.Abs(filepath.Join("..", "examples", "python-worker", "worker.py"))
	if err != nil {
		t.Fatal(err)
	}
	c := startPyCluster(t)
	gates := t.TempDir()
	gateN := 0
	newGate := func() pyGate {
		gateN++
		return pyGate(filepath.Join(gates, fmt.Sprintf("gate-%d", gateN)))
	}
	all := c.pc.procs

	t.Run("a token without work is refused", func(t *testing.T) {
		for _, tc := range []struct{ what, token string }{{"no work at all", c.user}, {"work on other types", c.work}} {
			w := startPyWorker(t, python, example, "py-refused", c.follower[0].HTTP, tc.token)
			code := w.wait(t, 60*time.Second)
			stderr := strings.Join(w.stderr.all(), "\n")
			if code == 0 || !strings.Contains(stderr, `missing capability "work" on task type "py-upper" (403 forbidden)`) || strings.Contains(stderr, "Traceback") {
				t.Errorf("the example worker with a token of %s: exit %d, want non-zero, the missing capability and no traceback; stderr:\n%s", tc.what, code, stderr)
			}
			t.Logf("the example worker with a token of %s: exit %d:\n%s", tc.what, code, stderr)
			if strings.Contains(stderr, tc.token) {
				t.Errorf("the worker's output shows its token")
			}
		}
		if w, found := pyWorkerState(c.leader, c.root, "py-refused"); found {
			t.Errorf("a refused worker is registered: %+v", w)
		}
	})

	// Worker A's host is a follower: its tasks are still placed by the leader.
	a := startPyWorker(t, python, script, "py-a", c.follower[0].HTTP, c.work)
	pyWaitWorker(t, c.leader, c.root, "py-a", pyUp, "up")

	t.Run("tasks through each node run with live logs", func(t *testing.T) {
		for i, p := range all {
			g := newGate()
			text := fmt.Sprintf("hi-%d", i)
			id := pySubmit(t, p, c.user, client.SubmitRequest{Type: "py-e2e-upper", Input: pyInput(t, map[string]any{"text": text, "gate": g})})
			want := "upper-casing " + text + " on py-a"
			var seen []api.LogLine
			var whileRunning *api.Task
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			err := client.New("http://"+p.HTTP, client.WithToken(c.user)).Logs(ctx, id, true, func(l client.LogLine) error {
				seen = append(seen, l)
				if l.Line == want && whileRunning == nil {
					// The task waits for its gate, which only opens now: the line came live.
					if rec, ok := pyGet(p, c.user, id); ok {
						whileRunning = &rec
					}
					g.open(t)
				}
				return nil
			})
			cancel()
			if err != nil {
				t.Fatalf("follow the logs of %s through %s: %v (lines %+v)", id, p.Name, err, seen)
			}
			// The record may still say assigned: the host reports the start as the worker runs.
			if whileRunning == nil || api.IsTerminal(whileRunning.State) || whileRunning.Node != "py-a" {
				t.Fatalf("through %s: the line %q while the task ran on py-a: got lines %+v, record %+v", p.Name, want, seen, whileRunning)
			}
			if seen[0].Node != "py-a" || seen[0].Stream != "log" || seen[0].Level != "info" {
				t.Errorf("through %s: the line %+v, want it from py-a, on log at info", p.Name, seen[0])
			}
			rec := pyWaitTask(t, p, c.user, id, "succeeded", pySucceeded)
			if res := pyResult(t, rec); rec.Node != "py-a" || res["upper"] != strings.ToUpper(text) || res["worker"] != "py-a" {
				t.Errorf("through %s: node %s result %s, want HI on py-a", p.Name, rec.Node, rec.Result)
			}
		}
	})

	t.Run("a version no worker offers waits with a reason", func(t *testing.T) {
		id := pySubmit(t, c.follower[1], c.user, client.SubmitRequest{Type: "py-e2e-upper", Version: "2", Input: pyInput(t, map[string]any{"text": "v2"})})
		want := `no node or worker offers "py-e2e-upper" version "2"`
		for _, p := range all {
			pyWaitTask(t, p, c.user, id, "pending with its reason on "+p.Name, func(r api.Task) bool {
				return r.State == api.StatePending && r.PendingReason == want
			})
		}
		if code, b := callAs(t, c.leader, c.user, "POST", "/v1/tasks/"+id+"/cancel", nil, nil); code/100 != 2 {
			t.Errorf("cancel: %d %s", code, b)
		}
	})

	// Worker B's host is the leader.
	b := startPyWorker(t, python, script, "py-b", c.leader.HTTP, c.work)
	pyWaitWorker(t, c.leader, c.root, "py-b", pyUp, "up")
	byName := map[string]*pyWorker{"py-a": a, "py-b": b}
	var survivor *pyWorker

	t.Run("a killed worker's task runs on the other from its checkpoint", func(t *testing.T) {
		g := newGate()
		id := pySubmit(t, c.follower[1], c.user, client.SubmitRequest{Type: "py-e2e-long", Input: pyInput(t, map[string]any{"gate": g})})
		rec := pyWaitTask(t, c.leader, c.user, id, "running with step 1 checkpointed", func(r api.Task) bool {
			return r.State == api.StateRunning && bytes.Contains(r.Checkpoint, []byte(`"step":1`))
		})
		victim := byName[rec.Node]
		if victim == nil {
			t.Fatalf("the task runs on %q, not on a Python worker", rec.Node)
		}
		survivor = a
		if victim == a {
			survivor = b
		}
		firstAttempt := rec.Attempt
		killed := time.Now()
		if err := victim.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		victim.wait(t, 30*time.Second)
		g.open(t) // the task may end now, wherever it runs: not on the dead worker
		moved := survivor.event(t, "starts "+id, func(ev pyEvent) bool { return ev.Event == "start" && ev.Task == id })
		rec = pyWaitTask(t, c.leader, c.user, id, "succeeded", pySucceeded)
		var startedAt time.Time
		for _, h := range rec.History {
			if h.Event == api.EventStarted && h.Node == survivor.name && h.Attempt > firstAttempt {
				startedAt = h.At
			}
		}
		if startedAt.IsZero() {
			t.Fatalf("no start on %s after attempt %d in the history %+v", survivor.name, firstAttempt, rec.History)
		}
		handler := time.Unix(0, int64(moved.T*1e9))
		t.Logf("failover after kill -9 of %s: the task started on %s %v after the kill (its handler ran %v after it; the issue wants <= 2s)",
			victim.name, survivor.name, startedAt.Sub(killed).Round(time.Millisecond), handler.Sub(killed).Round(time.Millisecond))
		res := pyResult(t, rec)
		from, _ := res["resumed_from"].(map[string]any)
		if rec.Node != survivor.name || res["worker"] != survivor.name || from["by"] != victim.name || from["step"] != 1.0 {
			t.Errorf("the moved task: node %s result %s, want it on %s resumed from step 1 of %s", rec.Node, rec.Result, survivor.name, victim.name)
		}
		if !slices.ContainsFunc(rec.History, func(h api.HistoryEntry) bool {
			return h.Event == api.EventInterrupted && h.Node == victim.name
		}) || rec.Failures != 0 {
			t.Errorf("history %+v failures %d: want the attempt on %s interrupted, and no failure", rec.History, rec.Failures, victim.name)
		}
		pyWaitWorker(t, c.leader, c.root, victim.name, func(w api.WorkerInfo) bool { return w.State == "down" }, "down")
	})
	if survivor == nil {
		return // the kill did not happen: what follows needs its survivor
	}

	// The drain: a task placed while the survivor is the only worker up runs there; then
	// worker C comes up, to take what the draining worker no longer takes.
	drainGate := newGate()
	drained := pySubmit(t, c.follower[0], c.user, client.SubmitRequest{Type: "py-e2e-upper", Input: pyInput(t, map[string]any{"text": "drained", "gate": drainGate})})
	survivor.event(t, "starts "+drained, func(ev pyEvent) bool { return ev.Event == "start" && ev.Task == drained })
	cw := startPyWorker(t, python, script, "py-c", c.follower[1].HTTP, c.work)
	pyWaitWorker(t, c.leader, c.root, "py-c", pyUp, "up")

	t.Run("SIGTERM drains", func(t *testing.T) {
		survivor.signal(t, syscall.SIGTERM)
		pyWaitWorker(t, c.leader, c.root, survivor.name, func(w api.WorkerInfo) bool { return w.State == "up" && w.Draining }, "draining")
		var ids []string
		for i := range 4 {
			ids = append(ids, pySubmit(t, all[i%len(all)], c.user, client.SubmitRequest{Type: "py-e2e-upper", Input: pyInput(t, map[string]any{"text": fmt.Sprintf("after-%d", i)})}))
		}
		for _, id := range ids {
			rec := pyWaitTask(t, c.leader, c.user, id, "succeeded", pySucceeded)
			if rec.Node != "py-c" || slices.ContainsFunc(rec.History, func(h api.HistoryEntry) bool { return h.Node == survivor.name }) {
				t.Errorf("a task submitted while %s drained ran on %s, history %+v: want py-c only", survivor.name, rec.Node, rec.History)
			}
		}
		// The draining worker's running task is still its own, and ends there.
		if rec, ok := pyGet(c.leader, c.user, drained); !ok || api.IsTerminal(rec.State) || rec.Node != survivor.name {
			t.Errorf("the draining worker's task: %+v, want it running on %s", rec, survivor.name)
		}
		if !survivor.running() {
			t.Fatalf("%s exited before its running task ended", survivor.name)
		}
		drainGate.open(t)
		rec := pyWaitTask(t, c.leader, c.user, drained, "succeeded", pySucceeded)
		if res := pyResult(t, rec); rec.Node != survivor.name || res["worker"] != survivor.name || rec.Attempt != 1 {
			t.Errorf("the drained task: node %s attempt %d result %s, want attempt 1 on %s", rec.Node, rec.Attempt, rec.Result, survivor.name)
		}
		if code := survivor.wait(t, 60*time.Second); code != 0 {
			t.Errorf("%s after SIGTERM: exit %d, want 0", survivor.name, code)
		}
		survivor.event(t, "run() returned", func(ev pyEvent) bool { return ev.Event == "stopped" })
		pyWaitWorker(t, c.leader, c.root, survivor.name, func(w api.WorkerInfo) bool { return w.State == "left" }, "left")
	})

	t.Run("a frozen worker's late report is refused", func(t *testing.T) {
		hold := newGate()
		id := pySubmit(t, c.leader, c.user, client.SubmitRequest{Type: "py-e2e-upper",
			Input: pyInput(t, map[string]any{"text": "late", "hold_on": "py-c", "hold_report": hold})})
		// C finished the task; its report waits, unsent, while the process is frozen.
		cw.event(t, "holds the outcome of "+id, func(ev pyEvent) bool { return ev.Event == "holding" && slices.Contains(ev.Tasks, id) })
		cw.signal(t, syscall.SIGSTOP)
		frozen := true
		defer func() {
			if frozen {
				_ = cw.cmd.Process.Signal(syscall.SIGCONT)
			}
		}()
		// Its lease runs out; the task runs again on worker E.
		startPyWorker(t, python, script, "py-e", c.follower[0].HTTP, c.work)
		rec := pyWaitTask(t, c.leader, c.user, id, "succeeded", pySucceeded)
		if res := pyResult(t, rec); rec.Node != "py-e" || res["worker"] != "py-e" {
			t.Fatalf("the frozen worker's task: node %s result %s, want it run on py-e", rec.Node, rec.Result)
		}
		cw.signal(t, syscall.SIGCONT)
		frozen = false
		hold.open(t)
		sent := cw.event(t, "sends its late report", func(ev pyEvent) bool { return ev.Event == "sent" && slices.Contains(ev.Tasks, id) })
		var res0 api.WorkerEventResult
		if len(sent.Results) > 0 {
			_ = json.Unmarshal(sent.Results[0], &res0)
		}
		refused := sent.Status == http.StatusNotFound && sent.Code == string(api.CodeUnknownWorker) ||
			sent.Status == http.StatusOK && !res0.OK && res0.Code == api.CodeStaleAttempt
		t.Logf("the late report of py-c: %d %s %s", sent.Status, sent.Code, sent.Results)
		if !refused {
			t.Errorf("the late report of py-c was not refused: %+v", sent)
		}
		for _, p := range all {
			after := pyWaitTask(t, p, c.user, id, "as py-e left it on "+p.Name, func(r api.Task) bool { return r.ModifyIndex >= rec.ModifyIndex })
			if after.Node != "py-e" || !bytes.Equal(after.Result, rec.Result) || len(after.History) != len(rec.History) ||
				slices.ContainsFunc(after.History, func(h api.HistoryEntry) bool { return h.Node == "py-c" && h.Event == api.EventSucceeded }) {
				t.Errorf("on %s after the late report: node %s result %s history %+v; want py-e's, as before", p.Name, after.Node, after.Result, after.History)
			}
		}
		// The worker registers again, under a new session.
		pyWaitWorker(t, c.leader, c.root, "py-c", pyUp, "up again")
	})
}
