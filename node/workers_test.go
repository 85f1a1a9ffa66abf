package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// A worker on a follower runs tasks of its type submitted through any node: the leader places
// them, its log lines stream through any node's logs route, its result lands.
func TestWorkerRunsTasksSubmittedThroughAnyNode(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l, f := tc.leader(), tc.follower()
	w := mustRegisterProtoWorker(t, f, "", "py1", 4, "py-upper")
	if w.sess.Node != f.Name() || w.sess.Lease != "1s" || w.sess.PollWait != "500ms" || w.sess.Name != "py1" {
		t.Fatalf("session %+v", w.sess)
	}
	w.serve(upperHandler)
	defer w.kill()

	for i, via := range []*Node{l, f} {
		task := submit(t, via, "py-upper", fmt.Sprintf("hi %d", i), "10s")
		if task.State != "succeeded" || task.Node != "py1" {
			t.Fatalf("through %s: %s on %q, result %s", via.Name(), task.State, task.Node, task.Result)
		}
		var got string
		_ = json.Unmarshal(task.Result, &got)
		if got != fmt.Sprintf("HI %d", i) {
			t.Errorf("result %q", got)
		}
		// Its log line is read through every node (the leader reads it from the host).
		for _, n := range tc.live() {
			var lines []api.LogLine
			resp, err := http.Get("http://" + n.HTTPAddr() + "/v1/tasks/" + task.ID + "/logs")
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				var ln api.LogLine
				if json.Unmarshal(sc.Bytes(), &ln) == nil {
					lines = append(lines, ln)
				}
			}
			resp.Body.Close()
			if len(lines) != 1 || lines[0].Line != fmt.Sprintf("upper-casing hi %d", i) || lines[0].Node != "py1" || lines[0].Level != "info" {
				t.Errorf("logs through %s: %+v", n.Name(), lines)
			}
		}
	}

	// A follow streams the lines while the attempt runs.
	release := make(chan struct{})
	w2 := mustRegisterProtoWorker(t, f, "", "py2", 1, "py-slow")
	w2.serve(func(a api.WorkerAssignment) []api.WorkerEvent {
		w2.events(api.WorkerEvent{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventLog, Stream: "stdout", Line: "first"})
		return holdHandler(release)(a)
	})
	defer w2.kill()
	slow := submit(t, l, "py-slow", nil, "")
	resp, err := http.Get("http://" + l.HTTPAddr() + "/v1/tasks/" + slow.ID + "/logs?follow=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"first"`) {
		t.Fatalf("follow: first line %q, err %v", sc.Text(), sc.Err())
	}
	close(release)
	if tk := waitTaskEnded(t, l, slow.ID); tk.State != "succeeded" || tk.Node != "py2" {
		t.Fatalf("slow task %s on %s", tk.State, tk.Node)
	}

	// Every node lists the workers, and /v1/cluster carries them.
	var ws []api.WorkerInfo
	waitFor(t, "workers listed", 10*time.Second, func() bool {
		httpCall(t, l, "GET", "/v1/workers", nil, &ws)
		return len(ws) == 2 && ws[0].Name == "py1" && ws[0].Node == f.Name() && ws[0].State == "up"
	})
	if ws[0].Capacity != 4 || ws[0].Labels["test"] != "yes" || len(ws[0].TaskTypes) != 1 || ws[0].TaskTypes[0].Type != "py-upper" ||
		ws[0].TaskTypes[0].Description != "a test type" || ws[0].RegisteredAt.IsZero() {
		t.Errorf("worker info %+v", ws[0])
	}
	var cl api.Cluster
	httpCall(t, f, "GET", "/v1/cluster", nil, &cl)
	if len(cl.Workers) != 2 || len(cl.Nodes) != 3 {
		t.Errorf("cluster: %d workers, %d nodes (workers are not nodes)", len(cl.Workers), len(cl.Nodes))
	}
	if strings.Contains(mustMarshal(t, ws), w.sess.ID) || strings.Contains(mustMarshal(t, cl), w.sess.ID) {
		t.Error("a session ID is shown")
	}
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A type version no node or worker offers stays pending and says why.
func TestPendingTaskSaysWhy(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.leader()
	w := mustRegisterProtoWorker(t, n, "", "py1", 1, "py-upper")
	release := make(chan struct{})
	w.serve(holdHandler(release))
	defer w.kill()
	defer close(release)

	var task api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks", map[string]any{"type": "py-upper", "version": "2", "input": "x"}, &task); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	want := `no node or worker offers "py-upper" version "2"`
	waitFor(t, "pending reason", 10*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/tasks/"+task.ID, nil, &task)
		return task.State == "pending" && task.PendingReason == want
	})
	var list []api.Task
	httpCall(t, n, "GET", "/v1/tasks?state=pending", nil, &list)
	if len(list) != 1 || list[0].PendingReason != want {
		t.Errorf("list: %+v", list)
	}
	// The worker's one slot taken, the next task of its version waits for it, and says so.
	busy := submit(t, n, "py-upper", "a", "")
	workerTaskOn(t, n, busy.ID, "py1")
	next := submit(t, n, "py-upper", "b", "")
	waitFor(t, "busy reason", 10*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/tasks/"+next.ID, nil, &next)
		return next.PendingReason == `every node and worker that offers "py-upper" is busy`
	})
}

// A worker that stops polling while it runs a long task loses its lease: the task runs again on
// another worker and succeeds there; the first worker's late outcome changes nothing.
func TestLostWorkerTasksRunElsewhere(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l := tc.leader()
	nodes := tc.live()
	release := make(chan struct{})
	defer close(release)
	a := mustRegisterProtoWorker(t, nodes[1], "", "wa", 1, "py-long")
	a.serve(holdHandler(release))
	task := submit(t, l, "py-long", "x", "")
	workerTaskOn(t, l, task.ID, "wa")
	waitFor(t, "assignment delivered", 10*time.Second, func() bool { return a.got(task.ID) == 1 })
	b := mustRegisterProtoWorker(t, nodes[2], "", "wb", 1, "py-long")
	b.serve(upperHandler)
	defer b.kill()

	lastSign := a.kill() // killed mid-task: no more polls, no outcome
	var moved time.Duration
	waitFor(t, "task on the second worker", 10*time.Second, func() bool {
		var tk api.Task
		httpCall(t, l, "GET", "/v1/tasks/"+task.ID, nil, &tk)
		if tk.Node == "wb" && moved == 0 {
			moved = time.Since(lastSign)
		}
		return tk.State == "succeeded"
	})
	t.Logf("a killed worker's task was placed on another worker %s after its last poll returned (lease 1s)", moved.Round(time.Millisecond))

	// The lost worker's late outcome lands nowhere: its session is gone.
	r, code, e := a.events(api.WorkerEvent{TaskID: task.ID, Attempt: 1, Kind: api.WorkerEventSucceeded, Result: json.RawMessage(`"late"`)})
	if code != http.StatusNotFound || e.Code != api.CodeUnknownWorker {
		t.Errorf("late outcome: %d %+v %+v, want 404 unknown_worker", code, e, r)
	}
	tk := waitTaskEnded(t, l, task.ID)
	var got string
	_ = json.Unmarshal(tk.Result, &got)
	if tk.Node != "wb" || got != "X" || tk.Attempt != 2 || tk.Failures != 0 {
		t.Fatalf("task %s on %s attempt %d failures %d result %s", tk.State, tk.Node, tk.Attempt, tk.Failures, tk.Result)
	}
	var events []string
	for _, h := range tk.History {
		events = append(events, fmt.Sprintf("%d:%s:%s", h.Attempt, h.Node, h.Event))
	}
	want := "1:wa:assigned 1:wa:started 1:wa:interrupted 2:wb:assigned 2:wb:started 2:wb:succeeded"
	if strings.Join(events, " ") != want {
		t.Errorf("history %v, want %s", events, want)
	}
	var ws []api.WorkerInfo
	httpCall(t, l, "GET", "/v1/workers", nil, &ws)
	if len(ws) != 2 || ws[0].Name != "wa" || ws[0].State != "down" {
		t.Errorf("workers %+v", ws)
	}
	// A stale outcome through a live session is refused as stale.
	r, code, _ = b.events(api.WorkerEvent{TaskID: task.ID, Attempt: 1, Kind: api.WorkerEventSucceeded, Result: json.RawMessage(`"late"`)})
	if code != http.StatusOK || len(r.Results) != 1 || r.Results[0].Code != api.CodeStaleAttempt {
		t.Errorf("stale outcome: %d %+v", code, r)
	}
}

// Drain stops new assignments to a worker; DELETE hands back what it runs (interrupted, not a
// failure), and the task runs again on another worker.
func TestWorkerDrainThenDelete(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.leader()
	release := make(chan struct{})
	defer close(release)
	a := mustRegisterProtoWorker(t, n, "", "wa", 2, "py-long")
	a.serve(holdHandler(release))
	first := submit(t, n, "py-long", "x", "")
	workerTaskOn(t, n, first.ID, "wa")
	if code, e := a.drain(); code != http.StatusOK {
		t.Fatalf("drain: %d %+v", code, e)
	}
	second := submit(t, n, "py-long", "y", "")
	waitFor(t, "pending reason of the second task", 10*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/tasks/"+second.ID, nil, &second)
		return second.State == "pending" && second.PendingReason != ""
	})
	if a.got(second.ID) != 0 {
		t.Fatal("a draining worker got a new assignment")
	}
	waitFor(t, "polls say draining", 5*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.draining
	})

	b := mustRegisterProtoWorker(t, n, "", "wb", 2, "py-long")
	b.serve(upperHandler)
	defer b.kill()
	if tk := waitTaskEnded(t, n, second.ID); tk.State != "succeeded" || tk.Node != "wb" {
		t.Fatalf("second task %s on %s", tk.State, tk.Node)
	}
	if code, e := a.leave(); code != http.StatusOK {
		t.Fatalf("delete: %d %+v", code, e)
	}
	// The DELETE tried again (its reply lost) answers as the one that took effect.
	if code, e := a.leave(); code != http.StatusOK {
		t.Fatalf("delete tried again: %d %+v, want 200 as the first", code, e)
	}
	tk := waitTaskEnded(t, n, first.ID)
	if tk.State != "succeeded" || tk.Node != "wb" || tk.Failures != 0 || tk.Attempt != 2 {
		t.Fatalf("handed-back task %s on %s, attempt %d, failures %d", tk.State, tk.Node, tk.Attempt, tk.Failures)
	}
	if h := tk.History[2]; h.Event != "interrupted" || h.Node != "wa" {
		t.Errorf("history %+v", tk.History)
	}
	if _, code, e := a.poll(""); code != http.StatusNotFound || e.Code != api.CodeUnknownWorker {
		t.Errorf("poll after delete: %d %+v", code, e)
	}
	var ws []api.WorkerInfo
	httpCall(t, n, "GET", "/v1/workers", nil, &ws)
	if len(ws) != 2 || ws[0].State != "left" {
		t.Errorf("workers %+v", ws)
	}
}

// A host node that crashes takes its workers down with it: their tasks run elsewhere.
func TestHostCrashTakesItsWorkersDown(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l := tc.leader()
	var hosts []*Node
	for _, n := range tc.live() {
		if n != l {
			hosts = append(hosts, n)
		}
	}
	release := make(chan struct{})
	defer close(release)
	a := mustRegisterProtoWorker(t, hosts[0], "", "wa", 1, "py-long")
	a.serve(holdHandler(release))
	task := submit(t, l, "py-long", "x", "")
	workerTaskOn(t, l, task.ID, "wa")
	b := mustRegisterProtoWorker(t, hosts[1], "", "wb", 1, "py-long")
	b.serve(upperHandler)
	defer b.kill()

	if err := hosts[0].Shutdown(); err != nil {
		t.Fatal(err)
	}
	tk := waitTaskEnded(t, l, task.ID)
	if tk.State != "succeeded" || tk.Node != "wb" || tk.Failures != 0 {
		t.Fatalf("task %s on %s failures %d", tk.State, tk.Node, tk.Failures)
	}
	w, ok := l.FSM().Worker("wa")
	if !ok || w.Status == "up" {
		t.Fatalf("worker of the crashed host: %+v", w)
	}
	a.kill()
}

// workerToken makes a token whose policy grants submit, read and logs on py-*, and work on the
// given pattern ("" for none).
func workerToken(t *testing.T, n *Node, mgmt, name, work string) api.ACLToken {
	t.Helper()
	rules := `[{"task_type": "py-*", "capabilities": ["submit", "read", "logs"]}]`
	if work != "" {
		rules = fmt.Sprintf(`[{"task_type": "py-*", "capabilities": ["submit", "read", "logs"]}, {"task_type": %q, "capabilities": ["work"]}]`, work)
	}
	code, b := aclCall(t, n, "PUT", "/v1/acl/policy/"+name, mgmt, `{"rules": `+rules+`}`)
	if code != http.StatusOK {
		t.Fatalf("policy %s: %d %s", name, code, b)
	}
	code, b = aclCall(t, n, "POST", "/v1/acl/tokens", mgmt, fmt.Sprintf(`{"policies": [%q]}`, name))
	var tok api.ACLToken
	mustJSON(t, b, &tok)
	if code != http.StatusCreated {
		t.Fatalf("token %s: %d %s", name, code, b)
	}
	return tok
}

// With ACLs a worker needs work on every type it registers, and keeps needing it: a token
// revoked after registration ends the session at its next call, and its task runs elsewhere. A
// guessed or another identity's session ID finds nothing.
func TestWorkerAccessIsCheckedOnEveryCall(t *testing.T) {
	tc := aclCluster(t)
	l, f := tc.leader(), tc.follower()
	mgmt := bootstrapACL(t, l).SecretID
	worker := workerToken(t, l, mgmt, "workers", "py-*")
	other := workerToken(t, l, mgmt, "other-workers", "py-*")
	noWork := workerToken(t, l, mgmt, "users", "")
	narrow := workerToken(t, l, mgmt, "narrow", "py-upper")
	at := l.FSM().Index()
	waitFor(t, "tokens on the follower", 10*time.Second, func() bool { return f.FSM().Index() >= at })

	for _, c := range []struct {
		what  string
		token string
		types []string
	}{{"no token", "", []string{"py-upper"}}, {"no work", noWork.SecretID, []string{"py-upper"}},
		{"work on one type of two", narrow.SecretID, []string{"py-upper", "py-other"}}} {
		_, code, e := registerProtoWorker(t, f, c.token, "bad", 1, c.types...)
		if c.token == "" && code != http.StatusUnauthorized || c.token != "" && (code != http.StatusForbidden || e.Code != api.CodeForbidden) {
			t.Errorf("register with %s: %d %+v", c.what, code, e)
		}
	}
	if _, ok := l.FSM().Worker("bad"); ok {
		t.Fatal("a refused registration left a worker record")
	}

	a := mustRegisterProtoWorker(t, f, worker.SecretID, "wa", 1, "py-long")
	release := make(chan struct{})
	defer close(release)
	a.serve(holdHandler(release))
	var task api.Task
	code, b := aclCall(t, l, "POST", "/v1/tasks", mgmt, `{"type": "py-long", "input": "x"}`)
	mustJSON(t, b, &task)
	if code != http.StatusCreated {
		t.Fatalf("submit: %d %s", code, b)
	}
	waitFor(t, "task on wa", 10*time.Second, func() bool { return a.got(task.ID) == 1 })

	// A guessed session ID, and the real one under another identity, find nothing and change
	// nothing.
	guess := &protoWorker{t: t, base: a.base, token: worker.SecretID, sess: api.WorkerSession{ID: strings.Repeat("0", 32)}}
	if _, code, e := guess.poll(""); code != http.StatusNotFound || e.Code != api.CodeUnknownWorker {
		t.Errorf("guessed session: %d %+v", code, e)
	}
	thief := &protoWorker{t: t, base: a.base, token: other.SecretID, sess: a.sess}
	if _, code, e := thief.events(api.WorkerEvent{TaskID: task.ID, Attempt: 1, Kind: api.WorkerEventSucceeded, Result: json.RawMessage(`"stolen"`)}); code != http.StatusNotFound || e.Code != api.CodeUnknownWorker {
		t.Errorf("another identity's call: %d %+v", code, e)
	}
	if code, _ := thief.leave(); code != http.StatusNotFound {
		t.Errorf("another identity's delete: %d", code)
	}

	b2 := mustRegisterProtoWorker(t, l, other.SecretID, "wb", 1, "py-long")
	b2.serve(upperHandler)
	defer b2.kill()

	// Revoke the worker's token: its next poll is refused, its session ends, its task moves.
	if code, body := aclCall(t, l, "DELETE", "/v1/acl/token/"+worker.AccessorID, mgmt, ""); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, body)
	}
	waitFor(t, "the revoked worker's session refused", 10*time.Second, func() bool {
		select {
		case <-a.stopped: // its poll loop ends on the first refusal
			return true
		default:
			return false
		}
	})
	var tk api.Task
	waitFor(t, "the task done elsewhere", 30*time.Second, func() bool {
		_, b := aclCall(t, l, "GET", "/v1/tasks/"+task.ID+"?wait=5s", mgmt, "")
		mustJSON(t, b, &tk)
		return api.IsTerminal(tk.State)
	})
	if tk.State != "succeeded" || tk.Node != "wb" || tk.Failures != 0 {
		t.Fatalf("task %s on %s failures %d", tk.State, tk.Node, tk.Failures)
	}
	revoked := &protoWorker{t: t, base: a.base, token: mgmt, sess: a.sess}
	if _, code, _ := revoked.poll(""); code != http.StatusNotFound {
		t.Errorf("the ended session answers %d to another token", code)
	}
}

// Bad registrations and oversized or malformed calls are refused with 400 and change nothing.
func TestWorkerBadInputIsRefused(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.leader()
	base := "http://" + n.HTTPAddr()
	types := []api.WorkerType{{Type: "py-upper"}}
	many := make([]api.WorkerType, api.MaxWorkerTypes+1)
	for i := range many {
		many[i] = api.WorkerType{Type: fmt.Sprintf("t%d", i)}
	}
	labels := map[string]string{}
	for i := range api.MaxWorkerLabels + 1 {
		labels[fmt.Sprint(i)] = "v"
	}
	for _, c := range []struct {
		what string
		req  api.WorkerRegistration
	}{
		{"no name", api.WorkerRegistration{Capacity: 1, Types: types}},
		{"a name with a slash", api.WorkerRegistration{Name: "a/b", Capacity: 1, Types: types}},
		{"a name too long", api.WorkerRegistration{Name: strings.Repeat("a", 65), Capacity: 1, Types: types}},
		{"capacity 0", api.WorkerRegistration{Name: "w", Capacity: 0, Types: types}},
		{"capacity over the cap", api.WorkerRegistration{Name: "w", Capacity: api.MaxWorkerCapacity + 1, Types: types}},
		{"no types", api.WorkerRegistration{Name: "w", Capacity: 1}},
		{"too many types", api.WorkerRegistration{Name: "w", Capacity: 1, Types: many}},
		{"a type twice", api.WorkerRegistration{Name: "w", Capacity: 1, Types: []api.WorkerType{{Type: "a"}, {Type: "a", Version: "2"}}}},
		{"a bad version", api.WorkerRegistration{Name: "w", Capacity: 1, Types: []api.WorkerType{{Type: "a", Version: "1 2"}}}},
		{"an empty type", api.WorkerRegistration{Name: "w", Capacity: 1, Types: []api.WorkerType{{Type: ""}}}},
		{"a lease too short", api.WorkerRegistration{Name: "w", Capacity: 1, Types: types, Lease: "100ms"}},
		{"a lease that is no duration", api.WorkerRegistration{Name: "w", Capacity: 1, Types: types, Lease: "soon"}},
		{"too many labels", api.WorkerRegistration{Name: "w", Capacity: 1, Types: types, Labels: labels}},
		{"a label too long", api.WorkerRegistration{Name: "w", Capacity: 1, Types: types, Labels: map[string]string{"k": strings.Repeat("v", 129)}}},
		{"example input over its cap", api.WorkerRegistration{Name: "w", Capacity: 1,
			Types: []api.WorkerType{{Type: "a", ExampleInput: json.RawMessage(`"` + strings.Repeat("a", 17<<10) + `"`)}}}},
	} {
		code, e := workerCall(t, base, "", "POST", api.PathWorkers, c.req, nil)
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d %+v, want 400", c.what, code, e)
		}
	}
	if code, e := workerCall(t, base, "", "POST", api.PathWorkers, map[string]any{"name": "w", "capacity": 1, "types": types, "extra": 1}, nil); code != http.StatusBadRequest {
		t.Errorf("an unknown field: %d %+v", code, e)
	}
	if ws := n.FSM().Workers(); len(ws) != 0 {
		t.Fatalf("refused registrations left records: %+v", ws)
	}

	w := mustRegisterProtoWorker(t, n, "", "w", 1, "py-upper")
	if _, _, e := registerProtoWorker(t, n, "", "w", 1, "py-upper"); e.Code != api.CodeWorkerExists {
		t.Errorf("a second worker of the name: %+v", e)
	}
	if _, _, e := registerProtoWorker(t, n, "", n.Name(), 1, "py-upper"); e.Code != api.CodeWorkerExists {
		t.Errorf("a worker named as a node: %+v", e)
	}
	evs := make([]api.WorkerEvent, api.MaxWorkerEvents+1)
	for i := range evs {
		evs[i] = api.WorkerEvent{TaskID: "x", Attempt: 1, Kind: api.WorkerEventLog, Line: "l"}
	}
	if _, code, e := w.events(evs...); code != http.StatusBadRequest {
		t.Errorf("%d events: %d %+v", len(evs), code, e)
	}
	huge := api.WorkerEvent{TaskID: "x", Attempt: 1, Kind: api.WorkerEventLog, Line: strings.Repeat("a", 2<<20)}
	if _, code, e := w.events(huge); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over the cap: %d %+v", code, e)
	}
	if _, code, e := w.poll("forever"); code != http.StatusBadRequest {
		t.Errorf("a bad wait: %d %+v", code, e)
	}
	r, code, _ := w.events(api.WorkerEvent{TaskID: "x", Attempt: 1, Kind: "exploded"}, api.WorkerEvent{TaskID: "x", Attempt: 1, Kind: api.WorkerEventSucceeded})
	if code != http.StatusOK || len(r.Results) != 2 || r.Results[0].Code != api.CodeInvalidEvent || r.Results[1].Code != api.CodeStaleAttempt {
		t.Errorf("an unknown kind, an outcome of no attempt: %d %+v", code, r)
	}
	if ws := n.FSM().Workers(); len(ws) != 1 || ws[0].Status != "up" {
		t.Errorf("workers after bad calls: %+v", ws)
	}
}

// A session ID is a secret: no log line of the host carries it, whatever the calls.
func TestWorkerSessionIDsStayOutOfLogs(t *testing.T) {
	var logs lockedBuffer
	tc := startCluster(t, 1, clusterOpts{inmem: true, tweak: func(_ int, c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	n := tc.leader()
	w := mustRegisterProtoWorker(t, n, "", "w", 1, "py-upper")
	w.poll("10ms")
	w.events(api.WorkerEvent{TaskID: "x", Attempt: 1, Kind: api.WorkerEventSucceeded})
	workerCall(t, w.base, "", "POST", api.PathWorkers+"/"+w.sess.ID+"/nope", struct{}{}, nil)
	workerCall(t, w.base, "", "GET", api.PathWorkers+"/"+w.sess.ID+"/poll", nil, nil)
	// Then it loses its lease: the host logs that, by name.
	waitFor(t, "the lease lost", 10*time.Second, func() bool {
		wk, _ := n.FSM().Worker("w")
		return wk.Status == "down"
	})
	w.poll("")
	if !strings.Contains(logs.String(), "worker lost its lease") {
		t.Fatal("the host logged nothing of the lost lease: the check below would prove nothing")
	}
	if strings.Contains(logs.String(), w.sess.ID) {
		t.Fatal("a session ID is in the node's log")
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A worker's checkpoint reaches the next attempt, its error type becomes the task's, a final
// error ends the task at once; a worker that lost its lease registers again under its name.
func TestWorkerCheckpointsErrorsAndRegistersAgain(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.leader()
	w := mustRegisterProtoWorker(t, n, "", "w", 2, "py-steps")
	var secondCheckpoint json.RawMessage
	w.serve(func(a api.WorkerAssignment) []api.WorkerEvent {
		if a.Attempt == 1 {
			return []api.WorkerEvent{
				{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventCheckpoint, Checkpoint: json.RawMessage(`{"done":1}`)},
				{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventFailed, Error: &api.TaskError{Type: "ValueError", Message: "bad"}},
			}
		}
		w.mu.Lock()
		secondCheckpoint = a.Checkpoint
		w.mu.Unlock()
		return []api.WorkerEvent{{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventFailed,
			Error: &api.TaskError{Type: "FatalThing", Message: "no retry fixes this", Final: true}}}
	})
	var task api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks", map[string]any{"type": "py-steps", "input": 1, "max_attempts": 5}, &task); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	tk := waitTaskEnded(t, n, task.ID)
	if tk.State != "failed" || tk.Attempt != 2 || tk.Error == nil || tk.Error.Type != "FatalThing" || !tk.Error.Final ||
		tk.Error.Message != "no retry fixes this" {
		t.Fatalf("task %s attempt %d error %+v", tk.State, tk.Attempt, tk.Error)
	}
	if tk.History[2].Event != "failed" || tk.History[2].Error != "bad" {
		t.Errorf("first failure in the history: %+v", tk.History[2])
	}
	w.mu.Lock()
	cp := string(secondCheckpoint)
	w.mu.Unlock()
	if cp != `{"done":1}` {
		t.Errorf("second attempt's checkpoint %s", cp)
	}
	// Lost, then back under the same name at once.
	w.kill()
	waitFor(t, "the lease lost", 10*time.Second, func() bool {
		wk, _ := n.FSM().Worker("w")
		return wk.Status == "down"
	})
	again := mustRegisterProtoWorker(t, n, "", "w", 1, "py-steps")
	if again.sess.ID == w.sess.ID {
		t.Fatal("a new session has the old ID")
	}
}

// An outcome the worker sends again (the first call's answer was lost, or said no_leader) gets
// the first one's fate, whatever it says, and the task keeps the first outcome.
func TestWorkerOutcomeSentAgainGetsTheFirstOnesFate(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l := tc.leader()
	w := mustRegisterProtoWorker(t, l, "", "again", 1, "py-upper")
	type answers struct {
		timeout             string
		first, again, other api.WorkerEventResults
	}
	got := make(chan answers, 1)
	w.serve(func(a api.WorkerAssignment) []api.WorkerEvent {
		an := answers{timeout: a.Timeout}
		ok := api.WorkerEvent{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventSucceeded, Result: json.RawMessage(`"first"`)}
		fail := api.WorkerEvent{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventFailed,
			Error: &api.TaskError{Type: "Late", Message: "a different outcome"}}
		an.first, _, _ = w.events(ok)
		an.again, _, _ = w.events(ok)
		an.other, _, _ = w.events(fail)
		got <- an
		return nil
	})
	defer w.kill()
	task := submit(t, l, "py-upper", "x", "10s")
	var an answers
	select {
	case an = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker's events were not answered")
	}
	if an.timeout != "30s" {
		t.Errorf("assignment timeout %q, want the task's default 30s", an.timeout)
	}
	for name, r := range map[string]api.WorkerEventResults{"first": an.first, "again": an.again, "different": an.other} {
		if len(r.Results) != 1 || !r.Results[0].OK {
			t.Errorf("%s outcome answered %+v, want ok (the first outcome's fate)", name, r.Results)
		}
	}
	task = waitTaskEnded(t, l, task.ID)
	if task.State != "succeeded" || string(task.Result) != `"first"` || task.Attempt != 1 {
		t.Fatalf("task %s, result %s, attempt %d: want the first outcome", task.State, task.Result, task.Attempt)
	}
}

// A client that registers worker after worker cannot make a node hold more sessions than its
// cap: past it, registration answers 503 too_many_workers and registers nothing; a session that
// ends makes room again.
func TestWorkerSessionsPerNodeAreCapped(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.MaxWorkerSessions = 2 }})
	l := tc.leader()
	base := "http://" + l.HTTPAddr()
	register := func(name string) (api.WorkerSession, int, api.Error) {
		var sess api.WorkerSession
		req := api.WorkerRegistration{Name: name, Capacity: 1, Lease: "60s", Types: []api.WorkerType{{Type: "py-upper", Version: "1"}}}
		code, e := workerCall(t, base, "", "POST", api.PathWorkers, req, &sess)
		return sess, code, e
	}
	first, code, e := register("cap-1")
	if code != http.StatusCreated {
		t.Fatalf("first: %d %+v", code, e)
	}
	if _, code, e := register("cap-2"); code != http.StatusCreated {
		t.Fatalf("second: %d %+v", code, e)
	}
	if _, code, e := register("cap-3"); code != http.StatusServiceUnavailable || e.Code != api.CodeTooManyWorkers {
		t.Fatalf("third: %d %+v, want 503 %s", code, e, api.CodeTooManyWorkers)
	}
	var ws []api.WorkerInfo
	httpCall(t, l, "GET", "/v1/workers", nil, &ws)
	for _, w := range ws {
		if w.Name == "cap-3" {
			t.Fatalf("the refused worker is registered: %+v", w)
		}
	}
	if code, e := workerCall(t, base, "", "DELETE", api.PathWorkers+"/"+first.ID, nil, nil); code != http.StatusOK {
		t.Fatalf("leave: %d %+v", code, e)
	}
	waitFor(t, "room for another session", 10*time.Second, func() bool {
		_, code, _ := register("cap-3")
		return code == http.StatusCreated
	})
}
