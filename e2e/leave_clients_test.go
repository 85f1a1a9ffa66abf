package e2e

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// A held exec survives the SIGTERM of the node it talks to: it printed the task ID first, the
// leaving node answers its held requests before it goes, and exec carries on at another member
// (saying so on stderr) without submitting again, then exits 0 with the result.
func TestProcessExecSurvivesSIGTERMOfItsNode(t *testing.T) {
	// A short drain timeout: should the task land on the victim, it is handed back at once and
	// the exec has to move all the same.
	pc := startProcCluster(t, 3, "--drain-timeout", "1s")
	victim, observer := pc.procs[1], pc.procs[0]

	type result struct {
		out, errOut string
		code        int
		err         error
	}
	// Run by hand rather than through CLI, to read its stderr while it runs: the node is stopped
	// only once exec has its submit answered (it prints the task ID), as a user would see it.
	var stdout, stderr lockedBuffer
	cmd := exec.Command(pc.c.Bin, "exec", "--addr", "http://"+victim.HTTP, "sleep", `{"ms": 5000}`)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan result, 1)
	go func() {
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code, err = ee.ExitCode(), nil
		}
		done <- result{stdout.String(), stderr.String(), code, err}
	}()
	poll(t, "exec's submit answered (the task ID on its stderr)", 30*time.Second, func() bool {
		return strings.Contains(stderr.String(), " submitted")
	})

	var task client.Task
	poll(t, "the exec's task running", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		list, err := observer.client().List(ctx, client.ListOptions{Type: "sleep"})
		if err != nil || len(list) == 0 {
			return false
		}
		task = list[0]
		return task.State == client.StateRunning
	})
	pc.sigtermExits(victim, 60*time.Second)

	var r result
	select {
	case r = <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("exec still running 90s after %s was stopped", victim.Name)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("exec stderr:\n%s", r.errOut)
	if r.code != 0 {
		t.Fatalf("exec exit %d, stdout %q, stderr %q; want 0", r.code, r.out, r.errOut)
	}
	if first, _, _ := strings.Cut(r.errOut, "\n"); first != "task "+task.ID+" submitted" {
		t.Fatalf("exec's first stderr line %q, want the task ID first (task %s submitted); stderr %q", first, task.ID, r.errOut)
	}
	if !strings.Contains(r.errOut, "went away") || !strings.Contains(r.errOut, "carrying on at") {
		t.Fatalf("exec's stderr %q does not say it moved to another node", r.errOut)
	}
	var rec taskRec
	if err := observer.getJSON("/v1/tasks/"+task.ID, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.State != client.StateSucceeded || strings.TrimSpace(r.out) == "" ||
		!strings.Contains(strings.Join(strings.Fields(r.out), ""), strings.Join(strings.Fields(string(rec.Result)), "")) {
		t.Fatalf("task %s %s with result %s; exec printed %q", task.ID, rec.State, rec.Result, r.out)
	}
	// One submit only: the move never resubmitted.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if list, err := observer.client().List(ctx, client.ListOptions{Type: "sleep"}); err != nil || len(list) != 1 {
		t.Fatalf("sleep tasks after the exec: %d (%v), want exactly 1", len(list), err)
	}
	pc.checkLeft(observer, victim)
}
