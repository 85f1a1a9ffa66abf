package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// Multi-process crash tests: a node running tasks is SIGKILLed, and every task it held must run
// again elsewhere, counted as an interruption, never as a failure.

// killTaskRec is the task record with the fields the client package does not decode.
type killTaskRec struct {
	client.Task
	Failures int `json:"failures"`
}

// readKillTask reads one task record from p; ok is false on any error (say, a 503 during an election).
func readKillTask(p *proc, id string) (killTaskRec, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAd+"/v1/tasks/"+id, nil)
	if err != nil {
		return killTaskRec{}, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return killTaskRec{}, false
	}
	defer resp.Body.Close()
	var rec killTaskRec
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&rec) != nil {
		return killTaskRec{}, false
	}
	return rec, true
}

// readKillTasks reads every task in ids from p, or returns false if any read fails.
func readKillTasks(p *proc, ids []string) (map[string]killTaskRec, bool) {
	out := make(map[string]killTaskRec, len(ids))
	for _, id := range ids {
		rec, ok := readKillTask(p, id)
		if !ok {
			return nil, false
		}
		out[id] = rec
	}
	return out, true
}

// clusterView returns p's view of the cluster, or nil on error.
func (p *proc) clusterView() *client.Cluster {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := p.client().Cluster(ctx)
	if err != nil {
		return nil
	}
	return c
}

func killHistory(t killTaskRec) []string {
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
	pc := newProcCluster(t)
	for i := 0; i < nodes; i++ {
		pc.add()
	}
	pc.waitCluster(pc.procs[0], nodes)
	// Let raft settle (a leader and two more voters) so that losing any one node keeps quorum.
	poll(t, "three raft voters", 60*time.Second, func() bool {
		c := pc.procs[0].clusterView()
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
	var ids []string
	for i := 0; i < tasks; i++ {
		task, _, err := pc.procs[i%nodes].client().Submit(ctx, client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(`{"ms": 4000}`), Timeout: "60s"})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, task.ID)
	}

	// All ten running: with ten slots in all, every node (the leader too) runs two.
	var before map[string]killTaskRec
	poll(t, "all tasks running", 60*time.Second, func() bool {
		recs, ok := readKillTasks(pc.procs[0], ids)
		if !ok {
			return false
		}
		for _, r := range recs {
			if r.State != client.StateRunning {
				return false
			}
		}
		before = recs
		return true
	})
	perNode := map[string][]string{}
	for id, r := range before {
		perNode[r.Node] = append(perNode[r.Node], id)
	}

	c := pc.procs[0].clusterView()
	if c == nil || c.Leader == "" {
		t.Fatal("no cluster view or no leader")
	}
	var victim *proc
	for _, p := range pc.procs {
		if (p.name == c.Leader) == killLeader && len(perNode[p.name]) > 0 {
			victim = p
			break
		}
	}
	if victim == nil {
		t.Fatalf("no %s node runs tasks (leader %s, placement %v)", map[bool]string{false: "non-leader", true: "leader"}[killLeader], c.Leader, perNode)
	}
	moved := perNode[victim.name]
	t.Logf("leader %s; killing %s, which runs %d tasks; placement %v", c.Leader, victim.name, len(moved), perNode)
	killedAt := time.Now()
	pc.kill(victim)

	var survivors []*proc
	for _, p := range pc.procs {
		if p != victim {
			survivors = append(survivors, p)
		}
	}
	// Any survivor that answers will do: round-robin over them.
	turn := 0
	ask := func() *proc { turn++; return survivors[turn%len(survivors)] }

	if killLeader {
		poll(t, "a new leader", 60*time.Second, func() bool {
			c := ask().clusterView()
			return c != nil && c.Leader != "" && c.Leader != victim.name
		})
		t.Logf("new leader after %s", time.Since(killedAt).Round(time.Millisecond))
	}

	var after map[string]killTaskRec
	poll(t, "all tasks succeeded", 60*time.Second, func() bool {
		recs, ok := readKillTasks(ask(), ids)
		if !ok {
			return false
		}
		for _, r := range recs {
			if r.State != client.StateSucceeded {
				return false
			}
		}
		after = recs
		return true
	})
	t.Logf("all %d tasks succeeded %s after the kill", tasks, time.Since(killedAt).Round(time.Millisecond))

	for _, id := range ids {
		r := after[id]
		evs := killHistory(r)
		if r.Failures != 0 || r.Error != nil || slices.ContainsFunc(r.History, func(h client.HistoryEntry) bool { return h.Event == "failed" }) {
			t.Errorf("task %s (was on %s) counts a failure: failures %d error %v history %v", id, before[id].Node, r.Failures, r.Error, evs)
		}
		if slices.Contains(moved, id) {
			interrupted := slices.ContainsFunc(r.History, func(h client.HistoryEntry) bool {
				return h.Event == "interrupted" && h.Node == victim.name
			})
			if !interrupted || r.Node == victim.name || r.Attempt != 2 {
				t.Errorf("moved task %s: node %s attempt %d, want another node than %s, attempt 2 and an interruption; history %v",
					id, r.Node, r.Attempt, victim.name, evs)
			}
		} else if r.Node != before[id].Node || r.Attempt != 1 ||
			slices.ContainsFunc(r.History, func(h client.HistoryEntry) bool { return h.Event == "interrupted" }) {
			t.Errorf("task %s on survivor %s was disturbed: now node %s attempt %d history %v", id, before[id].Node, r.Node, r.Attempt, evs)
		}
	}

	// Nothing is left held by the dead node, and the survivors agree it is dead.
	obs := survivors[0]
	if c := obs.clusterView(); c == nil {
		t.Error("no cluster view from a survivor")
	} else {
		for _, n := range c.Nodes {
			if n.Name == victim.name && (n.State == "alive" || n.Running != 0) {
				t.Errorf("dead node %s still shows state %s running %d", n.Name, n.State, n.Running)
			}
		}
		if c.Tasks[client.StateRunning] != 0 || c.Tasks[client.StateAssigned] != 0 || c.Tasks[client.StatePending] != 0 {
			t.Errorf("task counts after the run: %v", c.Tasks)
		}
	}
	for _, state := range []string{client.StateRunning, client.StateAssigned} {
		left, err := obs.client().List(ctx, client.ListOptions{Node: victim.name, State: state})
		if err != nil {
			t.Errorf("list %s tasks of %s: %v", state, victim.name, err)
		} else if len(left) > 0 {
			var s []string
			for _, tk := range left {
				s = append(s, tk.ID)
			}
			t.Errorf("%d tasks still %s on dead node %s: %s", len(left), state, victim.name, strings.Join(s, ", "))
		}
	}
	if killLeader {
		if c := obs.clusterView(); c != nil && (c.Leader == "" || c.Leader == victim.name) {
			t.Errorf("leader after the run: %q", c.Leader)
		}
	}
}
