package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// Multi-process graceful leave: SIGTERM drains a node. Tasks that fit in the drain timeout finish
// there; longer ones are handed back and run elsewhere; the process exits 0 and the survivors
// record the node as left.

func nodeIn(c *client.Cluster, name string) (client.NodeInfo, bool) {
	if c == nil {
		return client.NodeInfo{}, false
	}
	i := slices.IndexFunc(c.Nodes, func(n client.NodeInfo) bool { return n.Name == name })
	if i < 0 {
		return client.NodeInfo{}, false
	}
	return c.Nodes[i], true
}

// checkLeft checks that `status --json` on a survivor shows the node left (never dead), and
// that nothing is left running on it.
func (pc *procCluster) checkLeft(obs, gone *proc) {
	pc.t.Helper()
	poll(pc.t, obs.Name+" sees "+gone.Name+" left", 30*time.Second, func() bool {
		n, ok := nodeIn(obs.view(), gone.Name)
		if ok && n.State == "dead" {
			pc.t.Fatalf("%s shows %s dead after a graceful leave", obs.Name, gone.Name)
		}
		return ok && n.State == "left"
	})
	var cl client.Cluster
	poll(pc.t, "status --json on "+obs.Name+" shows "+gone.Name+" left and out of raft", 30*time.Second, func() bool {
		out, errOut, code := pc.cli(obs, "status", "--json")
		if err := json.Unmarshal([]byte(out), &cl); err != nil {
			pc.t.Fatalf("status --json: code %d %v %q %q", code, err, out, errOut)
		}
		n, ok := nodeIn(&cl, gone.Name)
		if ok && n.State == "dead" {
			pc.t.Fatalf("status --json on %s shows %s dead after a graceful leave", obs.Name, gone.Name)
		}
		return ok && n.State == "left" && n.Running == 0 && n.RaftRole == "none" && cl.Leader != "" && cl.Leader != gone.Name
	})
}

func TestProcessSIGTERMDrainsAndLeaves(t *testing.T) {
	pc := startProcCluster(t, 3)

	ids := submitSleeps(t, 4, 3000, pc.procs[0])
	var victim *proc
	var leader string
	var running map[string]taskRec
	poll(t, "a task running on a non-leader", 20*time.Second, func() bool {
		c := pc.procs[0].view()
		recs, ok := pc.procs[0].tasks(ids)
		if c == nil || c.Leader == "" || !ok {
			return false
		}
		leader, running = c.Leader, recs
		for _, r := range recs {
			if r.State == client.StateRunning && r.Node != c.Leader {
				victim = pc.byName(r.Node)
				return true
			}
		}
		return false
	})
	var mine []string
	for id, r := range running {
		if r.Node == victim.Name {
			mine = append(mine, id)
		}
	}
	survivors := pc.others(victim)
	t.Logf("leader %s; SIGTERM to %s, which runs %d of the tasks", leader, victim.Name, len(mine))

	pc.sigterm(victim)
	// While it drains (its 3 s tasks keep it busy) the survivors show it draining.
	poll(t, victim.Name+" shown draining", 10*time.Second, func() bool {
		n, ok := nodeIn(survivors[0].view(), victim.Name)
		return ok && n.Draining
	})
	pc.exitsCleanly(victim, 30*time.Second)

	after := waitTasks(t, client.StateSucceeded, 30*time.Second, ids, survivors[0])
	for id, r := range after {
		if r.Failures != 0 || r.Attempt != 1 || hasHistory(r, "interrupted", r.Node) || hasHistory(r, "interrupted", victim.Name) {
			t.Errorf("task %s: node %s attempt %d failures %d history %+v, want one undisturbed attempt", id, r.Node, r.Attempt, r.Failures, r.History)
		}
		if slices.Contains(mine, id) && r.Node != victim.Name {
			t.Errorf("task %s ran on %s, want it finished on the draining %s", id, r.Node, victim.Name)
		}
	}
	pc.checkLeft(survivors[1], victim)
	out, _, code := pc.cli(survivors[0], "exec", "calc-square", "6")
	if code != 0 || out != "36\n" {
		t.Fatalf("exec after the leave: %d %q", code, out)
	}
}

func TestProcessSIGTERMHandsBackLongTasks(t *testing.T) {
	pc := newProcCluster(t)
	pc.add()
	pc.add()
	// The flag again, after the harness's --drain-timeout 10s: the last one wins.
	short := pc.add("--drain-timeout", "1s")
	pc.waitCluster(pc.procs[0], 3)

	// Least loaded first with ties to the lower name: one task per node, n3 included.
	ids := submitSleeps(t, 3, 6000, pc.procs[0])
	var moved string
	poll(t, "a task running on "+short.Name, 20*time.Second, func() bool {
		recs, ok := pc.procs[0].tasks(ids)
		if !ok {
			return false
		}
		for id, r := range recs {
			if r.State == client.StateRunning && r.Node == short.Name {
				moved = id
				return true
			}
		}
		return false
	})
	pc.sigtermExits(short, 20*time.Second)

	after := waitTasks(t, client.StateSucceeded, 40*time.Second, ids, pc.procs[0])
	r := after[moved]
	if r.Node == short.Name || r.Attempt != 2 || r.Failures != 0 || !hasHistory(r, "interrupted", short.Name) || hasHistory(r, "failed", short.Name) {
		t.Fatalf("handed back task: node %s attempt %d failures %d history %+v, want attempt 2 elsewhere after an interruption on %s",
			r.Node, r.Attempt, r.Failures, r.History, short.Name)
	}
	// The 1 s drain timeout applied, read from what happened rather than from a clock on a shared
	// machine: the 6 s task's first attempt ended on the leaving node interrupted, never finished,
	// and only after that did its second attempt start elsewhere and succeed.
	if err := handedBackInOrder(r, short.Name); err != nil {
		t.Fatalf("handed back task %s: %v; history %+v", moved, err, r.History)
	}
	for id, r := range after {
		if r.Failures != 0 {
			t.Errorf("task %s counts %d failures", id, r.Failures)
		}
	}
	pc.checkLeft(pc.procs[1], short)
}

// handedBackInOrder checks a task's history for a hand-back from node: attempt 1 there ends
// interrupted (no success or failure there), then attempt 2 starts on another node, and the
// history ends with that attempt's success.
func handedBackInOrder(r taskRec, node string) error {
	interrupted, restarted := -1, -1
	for i, h := range r.History {
		switch {
		case h.Node == node && (h.Event == "succeeded" || h.Event == "failed"):
			return fmt.Errorf("attempt %d %s on %s, which was leaving", h.Attempt, h.Event, node)
		case h.Event == "interrupted" && h.Attempt == 1 && h.Node == node:
			interrupted = i
		case h.Event == "started" && h.Attempt == 2 && h.Node != node && restarted < 0:
			restarted = i
		}
	}
	switch {
	case interrupted < 0:
		return fmt.Errorf("attempt 1 was never interrupted on %s", node)
	case restarted < 0:
		return errors.New("attempt 2 never started on another node")
	case restarted < interrupted:
		return fmt.Errorf("attempt 2 started (entry %d) before attempt 1 was interrupted on %s (entry %d)", restarted, node, interrupted)
	}
	last := r.History[len(r.History)-1]
	if last.Event != "succeeded" || last.Attempt != 2 || last.Node == node {
		return fmt.Errorf("history ends with %s of attempt %d on %s, want attempt 2's success elsewhere", last.Event, last.Attempt, last.Node)
	}
	return nil
}
