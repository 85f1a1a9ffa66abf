package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// Multi-process crash tests: a node running tasks is SIGKILLed, and every task it held must run
// again elsewhere, counted as an interruption, never as a failure.

func killHistory(t taskRec) []string {
	var evs []string
	for _, h := range t.History {
		evs = append(evs, fmt.Sprintf("%s@%s#%d", h.Event, h.Node, h.Attempt))
	}
	return evs
}

func TestProcessWorkerKillMovesTasks(t *testing.T) { testKillMovesTasks(t, false) }

func TestProcessLeaderKillMovesTasks(t *testing.T) { testKillMovesTasks(t, true) }

// testKillMovesTasks fills every slot of a 5-node cluster (capacity 2 each) with 4 s sleeps,
// SIGKILLs a node that runs some (the leader when killLeader), and checks that all ten succeed,
// the victim's tasks after one interruption and a second attempt elsewhere, the others untouched.
func testKillMovesTasks(t *testing.T, killLeader bool) {
	const nodes, tasks = 5, 10
	pc := startProcCluster(t, nodes)
	// Let raft settle (a leader and two more voters) so that losing any one node keeps quorum.
	poll(t, "three raft voters", 60*time.Second, func() bool {
		c := pc.procs[0].view()
		if c == nil || c.Leader == "" {
			return false
		}
		voters := 0
		for _, n := range c.Nodes {
			if n.RaftRole == "leader" || n.RaftRole == "voter" {
				voters++
			}
		}
		return voters >= 3
	})

	ctx := context.Background()
	ids := submitSleeps(t, tasks, 4000, pc.procs...)

	// All ten running: with ten slots in all, every node (the leader too) runs two.
	before := waitTasks(t, client.StateRunning, 60*time.Second, ids, pc.procs[0])
	perNode := map[string][]string{}
	for id, r := range before {
		perNode[r.Node] = append(perNode[r.Node], id)
	}

	c := pc.procs[0].view()
	if c == nil || c.Leader == "" {
		t.Fatal("no cluster view or no leader")
	}
	var victim *proc
	for _, p := range pc.procs {
		if (p.Name == c.Leader) == killLeader && len(perNode[p.Name]) > 0 {
			victim = p
			break
		}
	}
	if victim == nil {
		t.Fatalf("no %s node runs tasks (leader %s, placement %v)", map[bool]string{false: "non-leader", true: "leader"}[killLeader], c.Leader, perNode)
	}
	moved := perNode[victim.Name]
	t.Logf("leader %s; killing %s, which runs %d tasks; placement %v", c.Leader, victim.Name, len(moved), perNode)
	killedAt := time.Now()
	pc.kill(victim)

	survivors := pc.others(victim)
	// Any survivor that answers will do: round-robin over them.
	turn := 0
	ask := func() *proc { turn++; return survivors[turn%len(survivors)] }

	if killLeader {
		poll(t, "a new leader", 60*time.Second, func() bool {
			c := ask().view()
			return c != nil && c.Leader != "" && c.Leader != victim.Name
		})
		t.Logf("new leader after %s", time.Since(killedAt).Round(time.Millisecond))
	}

	after := waitTasks(t, client.StateSucceeded, 60*time.Second, ids, survivors...)
	t.Logf("all %d tasks succeeded %s after the kill", tasks, time.Since(killedAt).Round(time.Millisecond))

	for _, id := range ids {
		r := after[id]
		evs := killHistory(r)
		if r.Failures != 0 || r.Error != nil || hasHistory(r, "failed", "") {
			t.Errorf("task %s (was on %s) counts a failure: failures %d error %v history %v", id, before[id].Node, r.Failures, r.Error, evs)
		}
		if slices.Contains(moved, id) {
			if !hasHistory(r, "interrupted", victim.Name) || r.Node == victim.Name || r.Attempt != 2 {
				t.Errorf("moved task %s: node %s attempt %d, want another node than %s, attempt 2 and an interruption; history %v",
					id, r.Node, r.Attempt, victim.Name, evs)
			}
		} else if r.Node != before[id].Node || r.Attempt != 1 || hasHistory(r, "interrupted", "") {
			t.Errorf("task %s on survivor %s was disturbed: now node %s attempt %d history %v", id, before[id].Node, r.Node, r.Attempt, evs)
		}
	}

	// Nothing is left held by the dead node, and the survivors agree it is dead.
	obs := survivors[0]
	// waitTasks may have read the outcomes from another survivor, whose FSM can be a few entries
	// ahead of this one's: give the observer time to catch up before judging what it holds.
	_ = localcluster.Until(30*time.Second, 50*time.Millisecond, func() bool {
		c := obs.view()
		return c != nil && c.Tasks[client.StateRunning]+c.Tasks[client.StateAssigned]+c.Tasks[client.StatePending] == 0
	})
	if c := obs.view(); c == nil {
		t.Error("no cluster view from a survivor")
	} else {
		for _, n := range c.Nodes {
			if n.Name == victim.Name && (n.State == "alive" || n.Running != 0) {
				t.Errorf("dead node %s still shows state %s running %d", n.Name, n.State, n.Running)
			}
		}
		if c.Tasks[client.StateRunning] != 0 || c.Tasks[client.StateAssigned] != 0 || c.Tasks[client.StatePending] != 0 {
			t.Errorf("task counts after the run: %v", c.Tasks)
		}
	}
	for _, state := range []string{client.StateRunning, client.StateAssigned} {
		left, err := obs.client().List(ctx, client.ListOptions{Node: victim.Name, State: state})
		if err != nil {
			t.Errorf("list %s tasks of %s: %v", state, victim.Name, err)
		} else if len(left) > 0 {
			var s []string
			for _, tk := range left {
				s = append(s, tk.ID)
			}
			t.Errorf("%d tasks still %s on dead node %s: %s", len(left), state, victim.Name, strings.Join(s, ", "))
		}
	}
	if killLeader {
		if c := obs.view(); c != nil && (c.Leader == "" || c.Leader == victim.Name) {
			t.Errorf("leader after the run: %q", c.Leader)
		}
	}
}
