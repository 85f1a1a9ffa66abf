package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

func TestProcessExecStreamsOutputFromAnyNode(t *testing.T) {
	pc := startProcCluster(t, 3)
	for _, p := range pc.procs {
		out, errOut, code := pc.cli(p, "exec", "print", `"hi"`)
		if code != 0 || out != "hi\nnull\n" {
			t.Fatalf("exec print on %s: code %d stdout %q stderr %q", p.Name, code, out, errOut)
		}
		out, errOut, code = pc.cli(p, "exec", "calc-square", "12")
		if code != 0 || strings.TrimSpace(out) != "144" || !strings.Contains(errOut, "Calculating square of 12") {
			t.Fatalf("exec calc-square on %s: code %d stdout %q stderr %q", p.Name, code, out, errOut)
		}
	}
	out, errOut, code := pc.cli(pc.procs[1], "exec", "fail", `"boom"`, "--max-attempts", "1")
	if code != 1 || !strings.Contains(errOut, "boom") {
		t.Fatalf("exec fail: code %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestProcessCountResumesFromCheckpointAfterSIGKILL(t *testing.T) {
	pc := startProcCluster(t, 3)
	ctx := context.Background()
	task, _, err := pc.procs[0].client().Submit(ctx, client.SubmitRequest{Type: "count", Input: json.RawMessage(`{"to": 50, "step_ms": 100}`)})
	if err != nil {
		t.Fatal(err)
	}
	var running *client.Task
	poll(t, "count checkpointed past 5", 30*time.Second, func() bool {
		got, err := pc.procs[0].client().Get(ctx, task.ID)
		if err != nil || got.State != "running" {
			return false
		}
		var rec struct {
			Checkpoint struct {
				N int `json:"n"`
			} `json:"checkpoint"`
		}
		if pc.procs[0].getJSON("/v1/tasks/"+task.ID, &rec) != nil || rec.Checkpoint.N < 5 {
			return false
		}
		running = got
		return true
	})
	var victim, survivor *proc
	for _, p := range pc.procs {
		if p.Name == running.Node {
			victim = p
		} else {
			survivor = p
		}
	}
	pc.kill(victim)
	var done *client.Task
	poll(t, "count finished elsewhere", 60*time.Second, func() bool {
		got, err := survivor.client().Get(ctx, task.ID)
		if err != nil || !client.IsTerminal(got.State) {
			return false
		}
		done = got
		return true
	})
	var res struct {
		Counted     int `json:"counted"`
		ResumedFrom int `json:"resumed_from"`
	}
	if err := json.Unmarshal(done.Result, &res); err != nil || done.State != "succeeded" {
		t.Fatalf("count ended %s with %s (%v)", done.State, done.Result, err)
	}
	if res.Counted != 50 || res.ResumedFrom < 5 || done.Node == victim.Name {
		t.Fatalf("count result %+v on %s, want counted 50 resumed from >= 5 on a survivor", res, done.Node)
	}
	interrupted := false
	for _, h := range done.History {
		interrupted = interrupted || (h.Event == "interrupted" && h.Node == victim.Name)
	}
	if !interrupted {
		t.Fatalf("history has no interruption on %s: %+v", victim.Name, done.History)
	}
}

func TestProcessCommandTaskFromTasksFileStreamsOutput(t *testing.T) {
	file, err := filepath.Abs("../tasks/testdata/example-tasks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pc := startProcCluster(t, 2, "--tasks-file", file)
	for _, p := range pc.procs {
		out, errOut, code := pc.cli(p, "exec", "countdown", "3")
		want := "3...\n2...\n1...\n{\"counted_from\":3}\n"
		if code != 0 || out != want {
			t.Fatalf("exec countdown via %s: code %d stdout %q (want %q) stderr %q", p.Name, code, out, want, errOut)
		}
	}
	// uname's result is its last stdout line: exec shows it once, not again as the result.
	out, errOut, code := pc.cli(pc.procs[0], "exec", "uname")
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); code != 0 || len(lines) != 1 || !strings.Contains(lines[0], `"kernel"`) {
		t.Fatalf("exec uname: code %d stdout %q (want the result once) stderr %q", code, out, errOut)
	}
	_, errOut, code = pc.cli(pc.procs[1], "exec", "countdown", `"x"`, "--max-attempts", "1")
	if code != 1 || !strings.Contains(errOut, "input must be a non-negative integer") {
		t.Fatalf("bad countdown: code %d stderr %q", code, errOut)
	}
}
