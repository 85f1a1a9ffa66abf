package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
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

// requireSDKsEnv set to 1 turns a missing node, npm or SDK dependency into a failure (CI sets it).
const requireSDKsEnv = "TASKWORKER_REQUIRE_SDKS"

// How long the tests below wait for any one thing: generous, for a loaded machine.
const nodeWorkerWait = 60 * time.Second

var nodeSDKBuild struct {
	sync.Once
	err error
}

// nodeSDK returns the node binary and the file URL of the built TypeScript SDK, building it (npm
// run build) when sdk/typescript/dist is missing or older than its sources. It skips the test
// before anything starts when node, npm or the SDK's dev dependencies (npm ci) are missing,
// unless TASKWORKER_REQUIRE_SDKS=1, which fails it.
func nodeSDK(t *testing.T) (node, sdkURL string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		skipUnlessRequired(t, requireSDKsEnv, "node is not installed")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		skipUnlessRequired(t, requireSDKsEnv, "npm is not installed")
	}
	dir, err := filepath.Abs(filepath.Join("..", "sdk", "typescript"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil || !fi.IsDir() {
		skipUnlessRequired(t, requireSDKsEnv, "sdk/typescript/node_modules is missing (cd sdk/typescript && npm ci)")
	}
	nodeSDKBuild.Do(func() { nodeSDKBuild.err = buildNodeSDK(dir) })
	if nodeSDKBuild.err != nil {
		t.Fatal(nodeSDKBuild.err)
	}
	return node, (&url.URL{Scheme: "file", Path: filepath.Join(dir, "dist", "index.js")}).String()
}

// buildNodeSDK runs `npm run build` in dir unless dist/index.js is newer than every source.
func buildNodeSDK(dir string) error {
	built, err := os.Stat(filepath.Join(dir, "dist", "index.js"))
	stale := err != nil
	if !stale {
		srcs, _ := filepath.Glob(filepath.Join(dir, "src", "*.ts"))
		srcs = append(srcs, filepath.Join(dir, "package.json"), filepath.Join(dir, "package-lock.json"), filepath.Join(dir, "tsconfig.json"))
		for _, s := range srcs {
			if fi, err := os.Stat(s); err != nil || fi.ModTime().After(built.ModTime()) {
				stale = true
				break
			}
		}
	}
	if !stale {
		return nil
	}
	cmd := exec.Command("npm", "run", "--silent", "build")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm run build in %s: %v\n%s", dir, err, out)
	}
	return nil
}

// nodeWorker is a Node.js worker process running testdata/node_worker.mjs.
type nodeWorker struct {
	*workerProc
	out lockedBuffer // stdout and stderr
}

// startNodeWorker starts a worker named name offering types (type=kind pairs, see the script)
// with token, connected to the nodes in hosts (TASKWORKER_ADDR, in that order). The token
// travels in the environment, never in argv. The process is killed when the test ends.
func startNodeWorker(t *testing.T, node, sdk, name, token, types string, hosts ...*proc) *nodeWorker {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "node_worker.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, p := range hosts {
		addrs = append(addrs, "http://"+p.HTTP)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TASKWORKER_") {
			env = append(env, kv)
		}
	}
	w := &nodeWorker{}
	cmd := exec.Command(node, script)
	cmd.Env = append(env, "TASKWORKER_ADDR="+strings.Join(addrs, ","), "TASKWORKER_TOKEN="+token,
		"TW_SDK="+sdk, "WORKER_NAME="+name, "WORKER_TYPES="+types)
	cmd.Stdout, cmd.Stderr = &w.out, &w.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	w.workerProc = startWorkerProc(t, name, cmd, nil, w.out.String)
	return w
}

// wait waits up to timeout for the process to exit; ok is false if it has not.
func (w *nodeWorker) wait(timeout time.Duration) (err error, ok bool) {
	select {
	case <-w.exited:
		return w.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// nodeCluster is a secure 3-node --acl cluster with its management token and the tokens of the
// Node worker tests.
type nodeCluster struct {
	pc        *procCluster
	mgmt      string
	tok       map[string]string
	leader    *proc
	followers []*proc
}

// worker returns what p's GET /v1/workers says of the worker named name.
func (nc *nodeCluster) worker(t *testing.T, p *proc, name string) (api.WorkerInfo, bool) {
	var ws []api.WorkerInfo
	if code, _ := callAs(t, p, nc.mgmt, "GET", api.PathWorkers, nil, &ws); code != http.StatusOK {
		return api.WorkerInfo{}, false
	}
	for _, w := range ws {
		if w.Name == name {
			return w, true
		}
	}
	return api.WorkerInfo{}, false
}

// waitWorker waits until the leader lists the worker named name and cond holds of it.
func (nc *nodeCluster) waitWorker(t *testing.T, name, what string, cond func(api.WorkerInfo) bool) api.WorkerInfo {
	t.Helper()
	var w api.WorkerInfo
	poll(t, "worker "+name+" "+what, nodeWorkerWait, func() bool {
		var ok bool
		w, ok = nc.worker(t, nc.leader, name)
		return ok && cond(w)
	})
	return w
}

func (nc *nodeCluster) up(t *testing.T, w *nodeWorker) api.WorkerInfo {
	t.Helper()
	return nc.waitWorker(t, w.name, "up", func(i api.WorkerInfo) bool { return i.State == "up" })
}

// submit submits through p with the worker token.
func (nc *nodeCluster) submit(t *testing.T, p *proc, req map[string]any) api.Task {
	t.Helper()
	var task api.Task
	if code, b := callAs(t, p, nc.tok["worker"], "POST", "/v1/tasks", req, &task); code != http.StatusCreated {
		t.Fatalf("submit %v through %s: %d %s", req, p.Name, code, b)
	}
	return task
}

// task reads a task's record through p; ok is false on any error.
func (nc *nodeCluster) task(t *testing.T, p *proc, id string) (api.Task, bool) {
	var task api.Task
	code, _ := callAs(t, p, nc.tok["worker"], "GET", "/v1/tasks/"+id, nil, &task)
	return task, code == http.StatusOK
}

// waitTask waits until cond holds of the task's record read through p, and returns it.
func (nc *nodeCluster) waitTask(t *testing.T, p *proc, id, what string, cond func(api.Task) bool) api.Task {
	t.Helper()
	var task api.Task
	poll(t, "task "+id+" "+what, nodeWorkerWait, func() bool {
		var ok bool
		task, ok = nc.task(t, p, id)
		return ok && cond(task)
	})
	return task
}

func (nc *nodeCluster) cancel(t *testing.T, id string) {
	t.Helper()
	if code, b := callAs(t, nc.leader, nc.tok["worker"], "POST", "/v1/tasks/"+id+"/cancel", nil, nil); code != http.StatusOK && code != http.StatusAccepted {
		t.Errorf("cancel %s: %d %s", id, code, b)
	}
}

// startedOn returns the history entry of the task's start on node at an attempt after after.
func startedOn(task api.Task, node string, after int) (api.HistoryEntry, bool) {
	for _, h := range task.History {
		if h.Event == api.EventStarted && h.Node == node && h.Attempt > after {
			return h, true
		}
	}
	return api.HistoryEntry{}, false
}

// checkpointDone is the "done" of a count task's checkpoint, 0 when it has none.
func checkpointDone(task api.Task) int {
	var cp struct {
		Done int `json:"done"`
	}
	_ = json.Unmarshal(task.Checkpoint, &cp)
	return cp.Done
}

// newNodeCluster starts a secure 3-node cluster with --acl. Token "worker" may work on, submit,
// read, follow and cancel the tests' types; token "nowork" may submit and read node-wait and work
// on node-count only.
func newNodeCluster(t *testing.T) *nodeCluster {
	t.Helper()
	caps := []string{"work", "submit", "read", "logs", "cancel"}
	pc, mgmt, tok := leakACLCluster(t, map[string]api.ACLPolicy{
		"worker": {Rules: []api.ACLRule{leakRule("node-wait", caps...), leakRule("node-count", caps...), leakRule("node-drain", caps...)}},
		"nowork": {Rules: []api.ACLRule{leakRule("node-wait", "submit", "read", "logs"), leakRule("node-count", "work")}},
	})
	nc := &nodeCluster{pc: pc, mgmt: mgmt, tok: tok}
	poll(t, "a leader and 3 alive nodes", nodeWorkerWait, func() bool {
		var cl api.Cluster
		if code, _ := callAs(t, pc.procs[0], mgmt, "GET", "/v1/cluster", nil, &cl); code != http.StatusOK || cl.Leader == "" {
			return false
		}
		alive := 0
		for _, n := range cl.Nodes {
			if n.State == "alive" {
				alive++
			}
		}
		if alive != 3 {
			return false
		}
		nc.leader, nc.followers = nil, nil
		for _, p := range pc.procs {
			if p.Name == cl.Leader {
				nc.leader = p
			} else {
				nc.followers = append(nc.followers, p)
			}
		}
		return nc.leader != nil
	})
	return nc
}

// TestWorkerNodeSDKOnASecureACLCluster runs Node.js workers built on sdk/typescript against a
// secure 3-node cluster with --acl:
//   - tasks submitted through the leader and each follower run on a worker hosted by a follower,
//     and their log lines are followed live, before the task ends;
//   - the SIGKILL of a worker running a checkpointing task moves the task to another worker,
//     which resumes from the checkpoint (the time from the kill to the new start is logged);
//     a worker frozen with SIGSTOP loses the task the same way, and once resumed finds its
//     attempt and session gone: nothing it reports lands, and the record keeps the other
//     worker's result;
//   - SIGTERM drains a worker: it takes no new task, finishes the one it runs, shows as left
//     and exits 0;
//   - a token without work on a type cannot register a worker offering it: the process exits
//     non-zero and says why;
//   - a task of a version no worker offers stays pending and says why.
func TestWorkerNodeSDKOnASecureACLCluster(t *testing.T) {
	node, sdk := nodeSDK(t)
	nc := newNodeCluster(t)
	wtok := nc.tok["worker"]
	host := nc.followers[0]
	dir := t.TempDir()

	a := startNodeWorker(t, node, sdk, "node-a", wtok, "node-wait=wait", host)
	if w := nc.up(t, a); w.Node != host.Name {
		t.Errorf("worker node-a is hosted by %s, want %s (the address it was given)", w.Node, host.Name)
	}

	// A version no worker offers: pending, with a reason, from now until the end of the test.
	v2 := nc.submit(t, nc.leader, map[string]any{"type": "node-wait", "version": "2", "input": map[string]string{"text": "v2", "release": filepath.Join(dir, "never")}})
	wantReason := `no node or worker offers "node-wait" version "2"`
	nc.waitTask(t, nc.followers[1], v2.ID, "pending with a reason", func(task api.Task) bool {
		return task.State == api.StatePending && strings.Contains(task.PendingReason, wantReason)
	})

	t.Run("tasks submitted through every node run on the worker, with live logs", func(t *testing.T) {
		for _, p := range nc.pc.procs {
			release := filepath.Join(dir, "release-"+p.Name)
			task := nc.submit(t, p, map[string]any{"type": "node-wait", "input": map[string]string{"text": "from " + p.Name, "release": release}, "timeout": "120s"})
			ctx, cancel := context.WithTimeout(context.Background(), nodeWorkerWait)
			var seen []string
			err := client.New("http://"+p.HTTP, client.WithToken(wtok)).Logs(ctx, task.ID, true, func(l client.LogLine) error {
				seen = append(seen, l.Line)
				if l.Line != "waiting on node-a" {
					return nil
				}
				// The task waits for the release file: it has not ended while its line is read. A
				// follower's record may still say assigned: the line comes from the worker's host,
				// the record from the follower's copy of the log.
				if rec, ok := nc.task(t, p, task.ID); !ok || (rec.State != api.StateRunning && rec.State != api.StateAssigned) {
					t.Errorf("through %s: the task is %q when its log line arrives, want running", p.Name, rec.State)
				}
				return os.WriteFile(release, nil, 0o600)
			})
			cancel()
			if err != nil || !slices.Contains(seen, "waiting on node-a") {
				t.Fatalf("through %s: following the logs: %v, lines %q", p.Name, err, seen)
			}
			rec := nc.waitTask(t, p, task.ID, "succeeded", func(task api.Task) bool { return api.IsTerminal(task.State) })
			var res struct{ Text, Worker string }
			_ = json.Unmarshal(rec.Result, &res)
			if rec.State != api.StateSucceeded || rec.Node != "node-a" || res.Worker != "node-a" || res.Text != strings.ToUpper("from "+p.Name) {
				t.Errorf("through %s: %s on %q, result %s, error %+v; want succeeded on node-a", p.Name, rec.State, rec.Node, rec.Result, rec.Error)
			}
		}
	})

	t.Run("a token without work on a type is refused", func(t *testing.T) {
		w := startNodeWorker(t, node, sdk, "node-nowork", nc.tok["nowork"], "node-wait=wait", nc.leader)
		err, ok := w.wait(nodeWorkerWait)
		if !ok {
			t.Fatalf("the worker with a token without work is still running after %s:\n%s", nodeWorkerWait, w.out.String())
		}
		out := w.out.String()
		if err == nil || !strings.Contains(out, "403 forbidden") || !strings.Contains(out, `"work"`) || !strings.Contains(out, "node-wait") {
			t.Errorf("the worker exited with %v, want a non-zero status and a message that work on node-wait is missing (403 forbidden); output:\n%s", err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "403") {
				t.Logf("the refused worker says: %s", strings.TrimSpace(line))
				break
			}
		}
		if strings.Contains(out, nc.tok["nowork"]) {
			t.Error("the worker's output shows its token")
		}
		if _, ok := nc.worker(t, nc.leader, "node-nowork"); ok {
			t.Error("the refused worker is listed in /v1/workers")
		}
	})

	t.Run("a killed or frozen worker's task moves to another worker", func(t *testing.T) {
		fa := startNodeWorker(t, node, sdk, "node-fa", wtok, "node-count=count", nc.pc.procs[0])
		fb := startNodeWorker(t, node, sdk, "node-fb", wtok, "node-count=count", nc.pc.procs[1])
		nc.up(t, fa)
		nc.up(t, fb)
		workers := map[string]*nodeWorker{fa.name: fa, fb.name: fb}
		task := nc.submit(t, nc.leader, map[string]any{"type": "node-count", "input": map[string]int{"to": 100, "step_ms": 200}, "timeout": "300s", "max_attempts": 3})
		rec := nc.waitTask(t, nc.leader, task.ID, "running with a checkpoint", func(task api.Task) bool {
			return task.State == api.StateRunning && workers[task.Node] != nil && checkpointDone(task) >= 2
		})
		victim := workers[rec.Node]
		other := fa
		if victim == fa {
			other = fb
		}

		// kill -9: the lease runs out and the task starts again on the other worker.
		killed := time.Now()
		_ = victim.cmd.Process.Kill()
		<-victim.exited
		rec = nc.waitTask(t, nc.leader, task.ID, "started on "+other.name, func(task api.Task) bool {
			_, ok := startedOn(task, other.name, rec.Attempt)
			return ok
		})
		started, _ := startedOn(rec, other.name, 0)
		// The handler's first line on the other worker says when it began.
		first := fmt.Sprintf("attempt %d on %s from ", started.Attempt, other.name)
		var began time.Time
		poll(t, "the first line of attempt "+fmt.Sprint(started.Attempt), nodeWorkerWait, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = client.New("http://"+nc.leader.HTTP, client.WithToken(wtok)).Logs(ctx, task.ID, false, func(l client.LogLine) error {
				if strings.HasPrefix(l.Line, first) {
					began = l.TS
				}
				return nil
			})
			return !began.IsZero()
		})
		t.Logf("failover after kill -9 of %s: attempt %d started on %s %s after the kill, its handler's first line %s after (goal ≤ 2s)",
			victim.name, started.Attempt, other.name, started.At.Sub(killed).Round(time.Millisecond), began.Sub(killed).Round(time.Millisecond))
		nc.waitWorker(t, victim.name, "down", func(w api.WorkerInfo) bool { return w.State == "down" })

		// SIGSTOP: the frozen worker loses the task to a third worker; resumed, it reports nothing
		// that lands.
		fc := startNodeWorker(t, node, sdk, "node-fc", wtok, "node-count=count", nc.pc.procs[2])
		nc.up(t, fc)
		rec = nc.waitTask(t, nc.leader, task.ID, "a checkpoint from "+other.name, func(task api.Task) bool {
			return task.Node == other.name && task.Attempt == started.Attempt && checkpointDone(task) >= 4
		})
		frozen := time.Now()
		other.signal(t, syscall.SIGSTOP)
		rec = nc.waitTask(t, nc.leader, task.ID, "started on "+fc.name, func(task api.Task) bool {
			_, ok := startedOn(task, fc.name, started.Attempt)
			return ok
		})
		moved, _ := startedOn(rec, fc.name, 0)
		other.signal(t, syscall.SIGCONT)
		stopped := time.Since(frozen)
		t.Logf("failover after SIGSTOP of %s: attempt %d started on %s %s after the stop",
			other.name, moved.Attempt, fc.name, moved.At.Sub(frozen).Round(time.Millisecond))

		// Resumed, the worker's next call (its poll or the checkpoint of its next step) is
		// refused: the host took the session down. After a longer freeze the SDK would see its
		// own poll time out first (poll_wait + lease + 1s from the poll's start) and give the
		// session up without asking.
		lost := fmt.Sprintf("attempt %d of %s ended: AttemptLostError", started.Attempt, task.ID)
		why := "session lost: "
		if stopped < 1800*time.Millisecond {
			why += "the host no longer knows this session"
		}
		poll(t, other.name+" to find its attempt lost ("+why+")", nodeWorkerWait, func() bool {
			out := other.out.String()
			return strings.Contains(out, lost) && strings.Contains(out, why)
		})
		for _, line := range strings.Split(other.out.String(), "\n") {
			if strings.Contains(line, "session lost") {
				t.Logf("%s, resumed after %s: %s", other.name, stopped.Round(time.Millisecond), strings.TrimSpace(line))
			}
		}
		nc.waitWorker(t, other.name, "up again after registering anew", func(w api.WorkerInfo) bool { return w.State == "up" && w.Running == 0 })

		rec = nc.waitTask(t, nc.leader, task.ID, "ended", func(task api.Task) bool { return api.IsTerminal(task.State) })
		var res struct {
			Worker      string `json:"worker"`
			ResumedFrom int    `json:"resumed_from"`
			Counted     int    `json:"counted"`
		}
		_ = json.Unmarshal(rec.Result, &res)
		if rec.State != api.StateSucceeded || rec.Node != fc.name || res.Worker != fc.name || res.Counted != 100 || res.ResumedFrom < 4 {
			t.Errorf("task: %s on %q, result %s, error %+v; want succeeded on %s, resumed from a checkpoint ≥ 4", rec.State, rec.Node, rec.Result, rec.Error, fc.name)
		}
		for _, h := range rec.History {
			if h.Node != fc.name && (h.Event == api.EventSucceeded || h.Event == api.EventFailed) {
				t.Errorf("history: %s reported %s for attempt %d after losing it: %+v", h.Node, h.Event, h.Attempt, rec.History)
			}
		}
		if out := other.out.String(); strings.Contains(out, fmt.Sprintf("attempt %d of %s returned", started.Attempt, task.ID)) {
			t.Errorf("%s's handler finished the attempt it lost:\n%s", other.name, out)
		}
	})

	t.Run("SIGTERM drains the worker", func(t *testing.T) {
		d := startNodeWorker(t, node, sdk, "node-d", wtok, "node-drain=wait", host)
		nc.up(t, d)
		release := filepath.Join(dir, "release-drain")
		first := nc.submit(t, nc.leader, map[string]any{"type": "node-drain", "input": map[string]string{"text": "first", "release": release}, "timeout": "120s"})
		nc.waitTask(t, nc.leader, first.ID, "running on node-d", func(task api.Task) bool {
			return task.State == api.StateRunning && task.Node == d.name
		})

		d.signal(t, syscall.SIGTERM)
		nc.waitWorker(t, d.name, "draining", func(w api.WorkerInfo) bool { return w.Draining })
		// A task the worker would finish at once: it must not get it.
		ready := filepath.Join(dir, "release-ready")
		if err := os.WriteFile(ready, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		second := nc.submit(t, nc.followers[1], map[string]any{"type": "node-drain", "input": map[string]string{"text": "second", "release": ready}, "timeout": "120s"})
		nc.waitTask(t, nc.leader, second.ID, "pending with a reason", func(task api.Task) bool {
			return task.State == api.StatePending && task.PendingReason != ""
		})

		if err := os.WriteFile(release, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		rec := nc.waitTask(t, nc.leader, first.ID, "ended", func(task api.Task) bool { return api.IsTerminal(task.State) })
		if rec.State != api.StateSucceeded || rec.Node != d.name {
			t.Errorf("the running task: %s on %q, error %+v; want succeeded on %s", rec.State, rec.Node, rec.Error, d.name)
		}
		if err, ok := d.wait(nodeWorkerWait); !ok || err != nil {
			t.Errorf("worker after SIGTERM: exited %v, status %v; want exit status 0\n%s", ok, err, d.out.String())
		}
		nc.waitWorker(t, d.name, "left", func(w api.WorkerInfo) bool { return w.State == "left" })
		rec = nc.waitTask(t, nc.leader, second.ID, "pending as no one offers its type", func(task api.Task) bool {
			return task.State == api.StatePending && strings.Contains(task.PendingReason, `no node or worker offers "node-drain"`)
		})
		if len(rec.History) > 0 && slices.ContainsFunc(rec.History, func(h api.HistoryEntry) bool { return h.Node == d.name }) {
			t.Errorf("the task submitted during the drain went to %s: %+v", d.name, rec.History)
		}
		nc.cancel(t, second.ID)
	})

	rec, ok := nc.task(t, nc.leader, v2.ID)
	if !ok || rec.State != api.StatePending || !strings.Contains(rec.PendingReason, wantReason) {
		t.Errorf("the version-2 task at the end: %s, pending_reason %q; want pending with %q", rec.State, rec.PendingReason, wantReason)
	}
	nc.cancel(t, v2.ID)
}
