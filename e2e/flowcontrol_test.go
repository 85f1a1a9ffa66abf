package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// subCLI runs `taskworker GROUP SUB --addr p ARGS...` and returns stdout, stderr and exit status.
func subCLI(t *testing.T, pc *procCluster, p *proc, group, sub string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(pc.c.Bin, append([]string{group, sub, "--addr", "http://" + p.HTTP}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// firstAssigned is when r's first attempt was assigned, as the node that answered recorded it.
func firstAssigned(r taskRec) (time.Time, bool) {
	i := slices.IndexFunc(r.History, func(h client.HistoryEntry) bool { return h.Event == "assigned" })
	if i < 0 {
		return time.Time{}, false
	}
	return r.History[i].At, true
}

// A rate limit of 10/s (burst 10), set with the CLI, paces 100 tasks across real processes and a
// SIGKILL of the leader while they start: every surviving replica's records show them starting
// over at least 9 s, never more than burst + rate × t in any window.
func TestProcessRateLimitPacesStartsAcrossALeaderKill(t *testing.T) {
	pc := startProcCluster(t, 3)
	c := threeVoters(t, pc)
	p0 := pc.procs[0]
	if out, errOut, code := subCLI(t, pc, p0, "rate-limit", "set", "--burst", "10", "ten", "10/s"); code != 0 || !strings.Contains(out, "rate limit ten: 10/s, burst 10") {
		t.Fatalf("rate-limit set: exit %d, %q %q", code, out, errOut)
	}
	if _, errOut, code := subCLI(t, pc, p0, "rate-limit", "set", "--burst", "0", "ten", "10/s"); code != 2 {
		t.Fatalf("rate-limit set with burst 0: exit %d (%q), want 2", code, errOut)
	}
	if out, _, code := subCLI(t, pc, p0, "rate-limit", "list"); code != 0 || !strings.Contains(out, "ten") || !strings.Contains(out, "10/s") {
		t.Fatalf("rate-limit list: exit %d, %q", code, out)
	}
	reqs := make([]client.SubmitRequest, 100)
	for i := range reqs {
		reqs[i] = client.SubmitRequest{Type: "echo", Input: json.RawMessage(fmt.Sprint(i)), RateLimit: "ten"}
	}
	res, err := pc.procs[1].client().SubmitBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range res {
		if r.Task == nil {
			t.Fatalf("a batch item was refused: %+v", r.Error)
		}
		ids = append(ids, r.Task.ID)
	}
	// Kill the leader once some have started, none of them all.
	leader := pc.byName(c.Leader)
	others := pc.others(leader)
	poll(t, "30 tasks started", 30*time.Second, func() bool {
		got, ok := others[0].tasks(ids)
		if !ok {
			return false
		}
		n := 0
		for _, r := range got {
			if _, ok := firstAssigned(r); ok {
				n++
			}
		}
		return n >= 30
	})
	pc.kill(leader)
	for _, p := range others {
		recs := waitTasks(t, client.StateSucceeded, 120*time.Second, ids, p)
		var starts []time.Time
		for _, id := range ids {
			at, ok := firstAssigned(recs[id])
			if !ok {
				t.Fatalf("%s: task %s succeeded without an assigned event", p.Name, id)
			}
			starts = append(starts, at)
		}
		slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
		span := starts[len(starts)-1].Sub(starts[0])
		if span < 9*time.Second {
			t.Errorf("%s: 100 starts over %s, want at least 9 s", p.Name, span)
		}
		for i := range starts {
			for j := i; j < len(starts); j++ {
				if n, allowed := float64(j-i+1), 10+10*starts[j].Sub(starts[i]).Seconds(); n > allowed+1e-9 {
					t.Fatalf("%s: %v starts in %s, at most %.2f allowed", p.Name, n, starts[j].Sub(starts[i]), allowed)
				}
			}
		}
		t.Logf("%s: 100 starts over %s, the leader killed after 30", p.Name, span)
	}
	if out, _, code := subCLI(t, pc, others[0], "rate-limit", "delete", "ten"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("rate-limit delete: exit %d, %q", code, out)
	}
	if _, _, code := subCLI(t, pc, others[0], "rate-limit", "get", "ten"); code != 1 {
		t.Errorf("rate-limit get of a deleted limit: exit %d, want 1 (not found)", code)
	}
}

// Debounced submits through the CLI of real processes: each answers the one waiting task's ID,
// which runs once, with the last input.
func TestProcessDebounceRunsOnceWithTheLastInput(t *testing.T) {
	pc := startProcCluster(t, 3)
	threeVoters(t, pc)
	var id string
	for i := range 5 {
		p := pc.procs[i%3]
		out, errOut, code := pc.cli(p, "submit", "--debounce-key", "k", "--debounce", "2s", "echo", fmt.Sprintf(`{"n": %d}`, i))
		got := strings.TrimSpace(out)
		if code != 0 || got == "" || id != "" && got != id {
			t.Fatalf("submit %d: exit %d, %q %q; want the task %q", i, code, out, errOut, id)
		}
		id = got
	}
	if _, errOut, code := pc.cli(pc.procs[0], "submit", "--debounce-key", "k", "--debounce", "-1s", "echo"); code != 2 || !strings.Contains(errOut, "invalid_debounce") {
		t.Fatalf("submit with debounce -1s: exit %d, %q", code, errOut)
	}
	recs := waitTasks(t, client.StateSucceeded, 60*time.Second, []string{id}, pc.procs...)
	if got := string(recs[id].Result); got != `{"n":4}` {
		t.Errorf("result %s, want the last input", got)
	}
	all, err := pc.procs[0].client().List(context.Background(), client.ListOptions{Type: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Errorf("%d echo tasks, want the one debounced task", len(all))
	}
}
