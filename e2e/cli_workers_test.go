package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// startProtoWorker registers a worker with the node at addr over the protocol of docs/workers.md
// and keeps its lease by polling until the test ends, when it deregisters. It runs nothing: the
// tests that use it submit no task it could take. Its lease is long so that a slow machine does
// not lose it between polls.
func startProtoWorker(t *testing.T, addr, token string, reg api.WorkerRegistration) api.WorkerSession {
	t.Helper()
	reg.Lease = "10s"
	var sess api.WorkerSession
	if code := apiCall(t, addr, token, "POST", api.PathWorkers, reg, &sess); code != http.StatusCreated || sess.ID == "" {
		t.Fatalf("register worker %s with %s: %d", reg.Name, addr, code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+api.PathWorkers+"/"+sess.ID+"/poll", bytes.NewReader([]byte(`{}`)))
			if err != nil {
				return
			}
			req.Header.Set("Content-Type", "application/json")
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				select { // the node is busy or restarting: pause, then poll again
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			var poll api.WorkerPoll
			_ = json.NewDecoder(resp.Body).Decode(&poll)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("worker %s: poll answered %d", reg.Name, resp.StatusCode)
				return
			}
			if len(poll.Assignments) > 0 {
				t.Errorf("worker %s got assignments it was not meant to: %+v", reg.Name, poll.Assignments)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		apiCall(t, addr, token, "DELETE", api.PathWorkers+"/"+sess.ID, nil, nil)
	})
	return sess
}

// The CLI against a real node: `workers` and `status` show a worker registered over the protocol,
// `workers --json` is the API's list, and `task get` says why a task no one can run waits.
func TestProcessCLIShowsWorkersAndPendingReasons(t *testing.T) {
	pc := startProcCluster(t, 1)
	p := pc.procs[0]
	sess := startProtoWorker(t, p.HTTP, "", api.WorkerRegistration{Name: "cli-py", Capacity: 3,
		Labels: map[string]string{"zone": "a"}, Types: []api.WorkerType{{Type: "py-upper", Version: "1"}}})

	row := []string{"cli-py", p.Name, "up", "no", "0/3", "py-upper@1", "zone=a"}
	hasRow := func(out string) bool {
		for _, line := range strings.Split(out, "\n") {
			if strings.Join(strings.Fields(line), " ") == strings.Join(row, " ") {
				return true
			}
		}
		return false
	}
	var out string
	var code int
	poll(t, "the worker in `workers`", 30*time.Second, func() bool {
		out, _, code = pc.cli(p, "workers")
		return code == 0 && hasRow(out)
	})
	if !strings.HasPrefix(out, "WORKER ") {
		t.Errorf("workers: no header:\n%s", out)
	}
	out, _, code = pc.cli(p, "status")
	if code != 0 || !hasRow(out) || strings.Index(out, "WORKER ") > strings.Index(out, "TASKS ") {
		t.Errorf("status: exit %d, want the worker's row between the nodes and the tasks:\n%s", code, out)
	}
	out, _, code = pc.cli(p, "workers", "--json")
	var ws []api.WorkerInfo
	if err := json.Unmarshal([]byte(out), &ws); code != 0 || err != nil || len(ws) != 1 || ws[0].Name != "cli-py" || ws[0].Node != p.Name {
		t.Errorf("workers --json: exit %d, %v, stdout %q", code, err, out)
	}
	if strings.Contains(out, sess.ID) {
		t.Error("workers --json shows the session ID")
	}
	out, _, _ = pc.cli(p, "status", "--json")
	var cl api.Cluster
	if err := json.Unmarshal([]byte(out), &cl); err != nil || len(cl.Workers) != 1 || cl.Workers[0].Labels["zone"] != "a" {
		t.Errorf("status --json: %v, workers %+v", err, cl.Workers)
	}

	// A version no one offers: the task waits and says why.
	var task uiTask
	if code := apiCall(t, p.HTTP, "", "POST", "/v1/tasks", map[string]any{"type": "py-upper", "version": "2", "input": "x"}, &task); code != 201 {
		t.Fatalf("submit py-upper version 2: %d", code)
	}
	want := `Pending reason  no node or worker offers "py-upper" version "2"`
	var errOut string
	if err := localcluster.Until(30*time.Second, 50*time.Millisecond, func() bool {
		// pc.cli puts --addr after the first word, which for `task get` is the group.
		var b, eb bytes.Buffer
		cmd := exec.Command(pc.c.Bin, "task", "get", "--addr", "http://"+p.HTTP, task.ID)
		cmd.Stdout, cmd.Stderr = &b, &eb
		if err := cmd.Run(); cmd.ProcessState == nil {
			t.Fatalf("run %s: %v", pc.c.Bin, err)
		}
		out, errOut, code = b.String(), eb.String(), cmd.ProcessState.ExitCode()
		return code == 0 && strings.Contains(out, want)
	}); err != nil {
		t.Fatalf("task get of a task no one can run: exit %d, stdout:\n%s\nstderr: %s\nwant %q", code, out, errOut, want)
	}
	apiCall(t, p.HTTP, "", "POST", "/v1/tasks/"+task.ID+"/cancel", nil, nil)
}
