package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// A parent that waits for its children (examples/custom's sum-squares) outlives the SIGKILL of
// the node that ran it: it waits without a slot anywhere, resumes on another node once its
// children are done, and succeeds once, with every child's result.
func TestWaitingParentSurvivesTheSIGKILLOfItsNode(t *testing.T) {
	binary(t) // skips in -short mode
	bin, err := localcluster.Build(localcluster.Module+"/examples/custom", filepath.Join(t.TempDir(), "custom"))
	if err != nil {
		t.Fatalf("build example: %v", err)
	}
	pc := newProcCluster(t, bin)
	for range 3 {
		pc.add()
	}
	pc.waitCluster(pc.procs[0], 3)
	// Three raft voters, so that losing any one node keeps quorum.
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
		return voters == 3
	})
	ctx := context.Background()
	c := pc.procs[0].client()
	parent, _, err := c.Submit(ctx, client.SubmitRequest{Type: "sum-squares", Input: json.RawMessage(`{"n": 10, "ms": 1500}`), MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	var waiting *client.Task
	poll(t, "the parent waiting", 60*time.Second, func() bool {
		waiting, err = c.Get(ctx, parent.ID)
		return err == nil && waiting.State == api.StateWaiting
	})
	if len(waiting.WaitFor) != 10 || waiting.WaitLeft == 0 || waiting.Node != "" {
		t.Fatalf("waiting parent: wait_for %v, wait_left %d, node %q", waiting.WaitFor, waiting.WaitLeft, waiting.Node)
	}
	ran := ""
	for _, h := range waiting.History {
		if h.Event == api.EventWaiting {
			ran = h.Node
		}
	}
	victim := pc.byName(ran)
	pc.kill(victim)
	survivor := pc.others(victim)[0]
	sc := survivor.client()

	var done *client.Task
	poll(t, "the parent done", 120*time.Second, func() bool {
		done, err = sc.Get(ctx, parent.ID)
		return err == nil && client.IsTerminal(done.State)
	})
	if done.State != api.StateSucceeded || string(done.Result) != `{"sum":385,"failed":[]}` || done.Node == victim.Name || done.Failures != 0 {
		t.Fatalf("parent %s on %s: result %s error %+v", done.State, done.Node, done.Result, done.Error)
	}
	events := map[string]int{}
	for _, h := range done.History {
		events[h.Event]++
	}
	if events[api.EventWaiting] < 1 || events[api.EventResumed] < 1 || events[api.EventSucceeded] != 1 {
		t.Fatalf("parent history %+v", done.History)
	}
	for _, id := range done.WaitFor {
		child, err := sc.Get(ctx, id)
		if err != nil || child.State != api.StateSucceeded || child.ParentID != parent.ID {
			t.Fatalf("child %s: %+v (%v)", id, child, err)
		}
	}
}
