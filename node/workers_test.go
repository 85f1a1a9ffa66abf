package node

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
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
