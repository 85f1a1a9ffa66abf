package node

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// submitReq submits a full request and returns the record (201 expected).
func submitReq(t *testing.T, n *Node, req api.SubmitRequest) api.Task {
	t.Helper()
	var task api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks", req, &task); code != http.StatusCreated {
		t.Fatalf("submit %+v: status %d", req, code)
	}
	return task
}

// assignedAt is when the task's latest attempt was assigned.
func assignedAt(t fsm.Task) time.Time {
	for i := len(t.History) - 1; i >= 0; i-- {
		if t.History[i].Event == fsm.EventAssigned {
			return t.History[i].At
		}
	}
	return time.Time{}
}

func TestDelayedTaskRunsAfterItsTime(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{twin: true})
	n := tc.follower()
	task := submitReq(t, n, api.SubmitRequest{Type: "echo", Input: []byte(`"later"`), Delay: "1500ms"})
	if task.State != api.StateScheduled || task.RunAt == nil {
		t.Fatalf("submitted: state %s run_at %v, want scheduled", task.State, task.RunAt)
	}
	// Cancel works while scheduled.
	other := submitReq(t, n, api.SubmitRequest{Type: "echo", Delay: "1h"})
	var cancelled api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks/"+other.ID+"/cancel", nil, &cancelled); code != http.StatusAccepted || cancelled.State != api.StateCancelled {
		t.Fatalf("cancel while scheduled: %d %s", code, cancelled.State)
	}
	got := waitState(t, tc, task.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	at := assignedAt(got)
	if got.State != fsm.Succeeded || at.Before(*task.RunAt) {
		t.Fatalf("task ended %s, assigned at %v, run_at %v: placed before its time", got.State, at, task.RunAt)
	}
	t.Logf("placed %v after run_at (the bound is ~50 ms on an idle machine)", at.Sub(*task.RunAt))
}

// The leader that took the delayed task dies before it is due: the next leader's scheduler finds
// it in the run_at index and places it.
func TestDelayedTaskRunsAfterTheLeaderDies(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 3, clusterOpts{twin: true})
	leader := tc.leader()
	task := submitReq(t, leader, api.SubmitRequest{Type: "echo", Input: []byte(`"later"`), Delay: "3s"})
	if err := leader.Shutdown(); err != nil {
		t.Fatal(err)
	}
	got := waitState(t, tc, task.ID, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	at := assignedAt(got)
	if got.State != fsm.Succeeded || at.Before(*task.RunAt) {
		t.Fatalf("task ended %s, assigned at %v, run_at %v", got.State, at, task.RunAt)
	}
	t.Logf("placed %v after run_at, across a leader change", at.Sub(*task.RunAt))
}

// With one slot busy, low-priority tasks submitted first still run after high-priority ones.
func TestPriorityOrderHoldsUnderABacklog(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 1, clusterOpts{capacity: 1, twin: true, registry: g.registry(t)})
	n := tc.nodes[0]
	busy := submit(t, n, "gate", nil, "")
	waitState(t, tc, busy.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	var low, high []string
	for i := range 3 {
		low = append(low, submitReq(t, n, api.SubmitRequest{Type: "echo", Input: []byte(fmt.Sprint(i))}).ID)
	}
	for i := range 3 {
		high = append(high, submitReq(t, n, api.SubmitRequest{Type: "echo", Input: []byte(fmt.Sprint(i)), Priority: 5}).ID)
	}
	g.open(n.Name())
	started := map[string]time.Time{}
	for _, id := range append(slices.Clone(low), high...) {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded {
			t.Fatalf("%s ended %s", id, got.State)
		}
		started[id] = assignedAt(got)
	}
	order := append(slices.Clone(low), high...)
	sort.SliceStable(order, func(i, j int) bool { return started[order[i]].Before(started[order[j]]) })
	if want := append(slices.Clone(high), low...); !slices.Equal(order, want) {
		t.Fatalf("run order %v, want the high ones first, each band in submit order: %v", order, want)
	}
}

// A queue limit of 3 holds while tasks move off a node that died: never 4 of the queue assigned
// or running at once, checked at every change of a surviving FSM and from the tasks' histories.
func TestQueueLimitHoldsAcrossANodeKill(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 4, registry: g.registry(t)})
	var q api.Queue
	if code := httpCall(t, tc.nodes[0], "POST", "/v1/queues/limited", api.QueueUpdate{Limit: ptrTo(3)}, &q); code != http.StatusOK || q.Limit != 3 {
		t.Fatalf("set limit: %d %+v", code, q)
	}
	// A watcher on every FSM records the most active tasks of the queue it ever saw.
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(halt)
	peak := make(chan int, len(tc.nodes))
	for _, n := range tc.nodes {
		f := n.FSM()
		go func() {
			most := 0
			defer func() { peak <- most }()
			for {
				ch := f.Changed()
				most = max(most, f.Queue("limited").Active)
				select {
				case <-ch:
				case <-stop:
					return
				}
			}
		}()
	}
	var ids []string
	for i := range 8 {
		ids = append(ids, submitReq(t, tc.nodes[i%3], api.SubmitRequest{Type: "gate", Queue: "limited"}).ID)
	}
	waitFor(t, "3 running", 20*time.Second, func() bool { return tc.leader().FSM().Queue("limited").Active == 3 })
	// Kill a node that runs some of them (a follower, so the test also keeps its leader).
	var victim *Node
	for _, n := range tc.live() {
		if !n.IsLeader() && len(tc.leader().FSM().Active(n.Name())) > 0 {
			victim = n
		}
	}
	if victim == nil {
		victim = tc.leader()
	}
	moved := len(tc.leader().FSM().Active(victim.Name()))
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead node's tasks moved", 30*time.Second, func() bool {
		l := tc.leader()
		return l != nil && len(l.FSM().Active(victim.Name())) == 0 && l.FSM().Queue("limited").Active == 3
	})
	t.Logf("%d tasks moved off %s", moved, victim.Name())
	for _, n := range tc.live() {
		g.open(n.Name())
	}
	var tasks []fsm.Task
	for _, id := range ids {
		got := waitState(t, tc, id, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded {
			t.Fatalf("%s ended %s", id, got.State)
		}
		tasks = append(tasks, got)
	}
	if most := mostAtOnce(tasks); most > 3 {
		t.Errorf("the histories show %d tasks of the queue assigned or running at once, limit 3", most)
	}
	halt()
	for range tc.nodes {
		if most := <-peak; most > 3 {
			t.Errorf("an FSM saw %d tasks of the queue active at once, limit 3", most)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// mostAtOnce is the most attempts of tasks that overlap, from their histories: an attempt holds
// a slot from its assigned event until the next interrupted or end event.
func mostAtOnce(tasks []fsm.Task) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, t := range tasks {
		var open *time.Time
		for _, h := range t.History {
			switch h.Event {
			case fsm.EventAssigned:
				at := h.At
				open = &at
			case fsm.EventInterrupted, fsm.EventSucceeded, fsm.EventFailed, fsm.EventCancelled:
				if open != nil {
					edges = append(edges, edge{*open, 1}, edge{h.At, -1})
					open = nil
				}
			}
		}
	}
	sort.Slice(edges, func(i, j int) bool {
		if !edges[i].at.Equal(edges[j].at) {
			return edges[i].at.Before(edges[j].at)
		}
		return edges[i].delta < edges[j].delta // an end before a start at the same instant
	})
	most, n := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}
