package clicmd

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

func fakeWorkers() []client.Worker {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return []client.Worker{
		{Name: "py2", Node: "n1", State: client.WorkerDown, Capacity: 2, Running: 1, Labels: map[string]string{},
			TaskTypes: []client.WorkerType{{Type: "py-upper", Version: "1"}}, RegisteredAt: at},
		{Name: "py1", Node: "n2", State: client.WorkerUp, Draining: true, Capacity: 4, Running: 3,
			Labels:    map[string]string{"zone": "a", "gpu": "no"},
			TaskTypes: []client.WorkerType{{Type: "py-upper", Version: "2"}, {Type: "py-lower", Version: "1"}}, RegisteredAt: at},
	}
}

func TestStatusShowsWorkers(t *testing.T) {
	f, addr := newFakeAPI(t)
	f.workers = fakeWorkers()
	stdout, _, code := run(t, "", "status", "--addr", addr)
	want := `WORKER  NODE  STATE  DRAINING  RUNNING/CAPACITY  TYPES                  LABELS
py1     n2    up     yes       3/4               py-upper@2,py-lower@1  gpu=no,zone=a
py2     n1    down   no        -                 py-upper@1             -

TASKS      COUNT
`
	if code != 0 || !strings.Contains(stdout, want) {
		t.Errorf("status: exit %d, stdout:\n%s\nwant a workers section before the tasks:\n%s", code, stdout, want)
	}
	// The node table comes first, its blank line, then the workers.
	if i, j := strings.Index(stdout, "n3    h3:7946"), strings.Index(stdout, "WORKER"); i < 0 || j < i {
		t.Errorf("status: workers not after the nodes:\n%s", stdout)
	}

	stdout, _, code = run(t, "", "status", "--addr", addr, "--json")
	var cl client.Cluster
	if err := json.Unmarshal([]byte(stdout), &cl); code != 0 || err != nil || len(cl.Workers) != 2 || cl.Workers[1].Labels["zone"] != "a" {
		t.Errorf("status --json: exit %d, %v, workers %+v", code, err, cl.Workers)
	}

	f.workers = nil
	stdout, _, _ = run(t, "", "status", "--addr", addr)
	if strings.Contains(stdout, "WORKER") {
		t.Errorf("status without workers shows a workers section:\n%s", stdout)
	}
}

func TestWorkersCommand(t *testing.T) {
	f, addr := newFakeAPI(t)
	t.Setenv("TASKWORKER_TOKEN", "tok")
	stdout, _, code := run(t, "", "workers", "--addr", addr)
	if code != 0 || stdout != "No workers\n" {
		t.Errorf("workers with none: exit %d, stdout %q", code, stdout)
	}

	f.workers = fakeWorkers()
	stdout, _, code = run(t, "", "workers", "--addr", addr)
	want := `WORKER  NODE  STATE  DRAINING  RUNNING/CAPACITY  TYPES                  LABELS
py1     n2    up     yes       3/4               py-upper@2,py-lower@1  gpu=no,zone=a
py2     n1    down   no        -                 py-upper@1             -
`
	if code != 0 || stdout != want {
		t.Errorf("workers: exit %d, stdout:\n%s\nwant:\n%s", code, stdout, want)
	}
	if f.authSeen != "Bearer tok" {
		t.Errorf("Authorization %q, want the token", f.authSeen)
	}

	stdout, _, code = run(t, "", "workers", "--json", "--addr", addr)
	var ws []client.Worker
	if err := json.Unmarshal([]byte(stdout), &ws); code != 0 || err != nil || len(ws) != 2 || ws[0].Name != "py2" || ws[1].TaskTypes[1].Type != "py-lower" {
		t.Errorf("workers --json: exit %d, %v, stdout %q", code, err, stdout)
	}

	if _, _, code := run(t, "", "workers", "extra", "--addr", addr); code != 2 {
		t.Errorf("workers with an argument: exit %d, want 2", code)
	}
	if _, stderr, code := run(t, "", "workers", "--addr", "127.0.0.1:1"); code != 2 || stderr == "" {
		t.Errorf("workers from an unreachable node: exit %d, stderr %q; want 2", code, stderr)
	}
}

// A worker chooses its labels (any UTF-8) and its name: what it sends must not write escape
// sequences to the operator's terminal or break the table's rows.
func TestWorkersEscapesWhatAWorkerChose(t *testing.T) {
	f, addr := newFakeAPI(t)
	f.workers = []client.Worker{{Name: "w1", Node: "n1", State: client.WorkerUp, Capacity: 1,
		Labels:    map[string]string{"k\x1b[2J": "a b\tc\nd", "rtl": "x\u202ey"},
		TaskTypes: []client.WorkerType{{Type: "t", Version: "1"}}}}
	stdout, _, code := run(t, "", "workers", "--addr", addr)
	if code != 0 {
		t.Fatalf("workers: exit %d", code)
	}
	if strings.ContainsAny(stdout, "\x1b\t\u202e") || strings.Count(stdout, "\n") != 2 {
		t.Errorf("workers printed raw control characters or extra rows: %q", stdout)
	}
	if !strings.Contains(stdout, `k\x1b[2J=a\x20b\tc\nd,rtl=x\u202ey`) {
		t.Errorf("labels not escaped as Go quotes them: %q", stdout)
	}
}

func TestTaskGetShowsPendingReason(t *testing.T) {
	_, addr := newFakeAPI(t)
	t.Setenv("TASKWORKER_ADDR", addr)
	run(t, "", "submit", "py-upper", `"hi"`)
	run(t, "", "submit", "echo", `"hi"`)
	stdout, _, code := run(t, "", "task", "get", "t-py-upper")
	if code != 0 || !strings.Contains(stdout, "Pending reason  no node or worker offers \"py-upper\" version \"1\"\n") {
		t.Errorf("task get of a pending task: exit %d, stdout:\n%s", code, stdout)
	}
	stdout, _, _ = run(t, "", "task", "get", "--json", "t-py-upper")
	var task client.Task
	if err := json.Unmarshal([]byte(stdout), &task); err != nil || task.PendingReason == "" {
		t.Errorf("task get --json: %v, stdout %q", err, stdout)
	}
	if stdout, _, _ = run(t, "", "task", "get", "t-echo"); strings.Contains(stdout, "Pending reason") {
		t.Errorf("a succeeded task shows a pending reason:\n%s", stdout)
	}
}
