package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// threeVoters waits until the cluster seen by p has a leader and three voters, so losing any one
// process keeps quorum.
func threeVoters(t *testing.T, pc *procCluster) *client.Cluster {
	t.Helper()
	var c *client.Cluster
	poll(t, "three raft voters", 60*time.Second, func() bool {
		c = pc.procs[0].view()
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
	return c
}

// A delayed task survives a SIGKILL of the leader that took it, before it is due: the next
// leader places it, not before its run_at.
func TestProcessDelayedTaskAfterLeaderKill(t *testing.T) {
	pc := startProcCluster(t, 3)
	c := threeVoters(t, pc)
	leader := pc.byName(c.Leader)
	task, _, err := leader.client().Submit(context.Background(), client.SubmitRequest{Type: "echo", Input: json.RawMessage(`"later"`), Delay: "4s"})
	if err != nil {
		t.Fatal(err)
	}
	if task.State != client.StateScheduled || task.RunAt == nil {
		t.Fatalf("submitted: %s, run_at %v", task.State, task.RunAt)
	}
	pc.kill(leader)
	recs := waitTasks(t, client.StateSucceeded, 90*time.Second, []string{task.ID}, pc.others(leader)...)
	r := recs[task.ID]
	var assigned time.Time
	for _, h := range r.History {
		if h.Event == "assigned" {
			assigned = h.At
		}
	}
	if assigned.Before(*task.RunAt) {
		t.Fatalf("assigned at %v, before its run_at %v", assigned, *task.RunAt)
	}
	t.Logf("placed %v after run_at, across a leader kill", assigned.Sub(*task.RunAt))
}

// A queue limit of 3 holds across a SIGKILL of a node that runs some of the queue's tasks: the
// histories never show 4 attempts of the queue holding a slot at once.
func TestProcessQueueLimitAcrossNodeKill(t *testing.T) {
	pc := startProcCluster(t, 3)
	c := threeVoters(t, pc)
	ctx := context.Background()
	if _, err := pc.procs[0].client().UpdateQueue(ctx, "limited", client.QueueUpdate{Limit: ptr(3)}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 9 {
		task, _, err := pc.procs[i%3].client().Submit(ctx, client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(`{"ms": 3000}`), Queue: "limited", Timeout: "60s"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.ID)
	}
	// Kill a follower that runs one of them.
	var victim *proc
	poll(t, "a follower running a task of the queue", 30*time.Second, func() bool {
		recs, ok := pc.procs[0].tasks(ids)
		if !ok {
			return false
		}
		for _, r := range recs {
			if r.State == client.StateRunning && r.Node != c.Leader {
				victim = pc.byName(r.Node)
				return true
			}
		}
		return false
	})
	pc.kill(victim)
	recs := waitTasks(t, client.StateSucceeded, 120*time.Second, ids, pc.others(victim)...)
	moved := 0
	for _, r := range recs {
		for _, h := range r.History {
			if h.Event == "interrupted" {
				moved++
			}
		}
	}
	most := mostHoldingASlot(recs)
	if most > 3 {
		t.Fatalf("%d attempts of the queue held a slot at once, limit 3", most)
	}
	if moved == 0 {
		t.Fatalf("no task was interrupted by the kill of %s", victim.Name)
	}
	t.Logf("at most %d at once; %d attempts interrupted by the kill of %s", most, moved, victim.Name)
}

func ptr[T any](v T) *T { return &v }
