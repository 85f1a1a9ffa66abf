package node

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// With free slots and nothing waiting, the leader proposes a task's assignment right behind its
// submit: the assignment carries the submit's own time (the scheduler loop's would be later),
// and the counter says so.
func TestIdleClusterPlacesTasksWithTheirSubmit(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 2})
	for i := 0; i < 6; i++ {
		task := submit(t, tc.nodes[i%3], "echo", i, "10s")
		if task.State != api.StateSucceeded {
			t.Fatalf("task %d: %s", i, task.State)
		}
		if h := task.History[0]; h.Event != "assigned" || !h.At.Equal(task.CreatedAt) {
			t.Errorf("task %d: first event %s at %v, created %v: not placed with its submit", i, h.Event, h.At, task.CreatedAt)
		}
		// The next submit must find the cluster idle as the leader sees it: a follower answers
		// ?wait once its own replica holds the outcome, which the leader's FSM may apply later.
		waitState(t, tc, task.ID, 10*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	}
	if got := scrape(t, tc.leader())["taskworker_placed_at_submit_total"]; got < 6 {
		t.Errorf("placed at submit: %v, want 6", got)
	}
}

// Submits racing each other and the scheduler loop for few slots never put more tasks on a node
// than its capacity: a watcher reads every node's assigned and running tasks from a replica's FSM
// at each change (an over-full node would stay so for a whole 30 ms task), and all tasks succeed.
func TestPlacingAtSubmitNeverOverfillsANode(t *testing.T) {
	longTest(t)
	const capacity = 1
	tc := startCluster(t, 3, clusterOpts{capacity: capacity})
	f := tc.nodes[0].fsm
	stop := make(chan struct{})
	worst := make(chan string, 1)
	go func() {
		defer close(worst)
		for {
			ch := f.Changed()
			for _, nd := range f.Nodes() {
				if held := len(f.Active(nd.Name)); held > capacity {
					worst <- fmt.Sprintf("node %s held %d tasks at index %d, capacity %d", nd.Name, held, f.Index(), capacity)
					return
				}
			}
			select {
			case <-ch:
			case <-stop:
				return
			}
		}
	}()
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				var task api.Task
				if code := httpCall(t, tc.nodes[(g+i)%3], "POST", "/v1/tasks", map[string]any{"type": "sleep", "input": map[string]int{"ms": 30}}, &task); code != 201 {
					t.Errorf("submit: %d", code)
					return
				}
				mu.Lock()
				ids = append(ids, task.ID)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if task := waitTaskEnded(t, tc.nodes[0], id); task.State != api.StateSucceeded {
			t.Fatalf("task %s ended %s", id, task.State)
		}
	}
	close(stop)
	if msg, ok := <-worst; ok {
		t.Fatal(msg)
	}
	if len(ids) != 30 {
		t.Fatalf("%d tasks submitted, want 30", len(ids))
	}
}

// logAbout reads n's log from index from to its last index and returns, for task id, the
// indexes of the submit entries that create it, of those that carry its assignment in the
// submit (SubmitBatch.Place), and of the AssignBatch entries that name it.
func logAbout(t *testing.T, n *Node, from uint64, id string) (submits, placed, assigns []uint64) {
	t.Helper()
	last := n.rn.Raft().LastIndex()
	for i := from; i <= last; i++ {
		l, err := n.rn.Entry(i)
		if err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := fsm.Decode(l.Data)
		if err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		names := func(as []fsm.Assign) bool {
			return slices.ContainsFunc(as, func(a fsm.Assign) bool { return a.TaskID == id })
		}
		switch b := c.Body.(type) {
		case *fsm.SubmitBatch:
			if slices.ContainsFunc(b.Items, func(s fsm.Submit) bool { return s.ID == id }) {
				submits = append(submits, i)
			}
			if names(b.Place) {
				placed = append(placed, i)
			}
		case *fsm.AssignBatch:
			if names(b.Items) {
				assigns = append(assigns, i)
			}
		}
	}
	return submits, placed, assigns
}

// A task the leader places at its submit costs one entry: the submit's entry assigns it
// (SubmitBatch.Place), no AssignBatch names it, and it runs, submitted through the leader or
// through a follower.
func TestASubmitAndItsPlacementAreOneEntry(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 2})
	for i, n := range []*Node{tc.leader(), tc.follower()} {
		task := submit(t, n, "echo", i, "10s")
		if task.State != api.StateSucceeded {
			t.Fatalf("task %d: %s", i, task.State)
		}
		rec := waitState(t, tc, task.ID, 10*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		l := tc.leader()
		submits, placed, assigns := logAbout(t, l, rec.CreateIndex, task.ID)
		if !slices.Equal(submits, []uint64{rec.CreateIndex}) || !slices.Equal(placed, submits) || len(assigns) != 0 {
			t.Fatalf("task %d (%s, created at %d): submitted in %v, placed in its submit in %v, assigned in %v; want one entry doing both",
				i, task.ID, rec.CreateIndex, submits, placed, assigns)
		}
		if h := rec.History[0]; h.Event != fsm.EventAssigned || !h.At.Equal(rec.CreatedAt) {
			t.Errorf("task %d: first event %s at %v, created %v", i, h.Event, h.At, rec.CreatedAt)
		}
	}
	if got := scrape(t, tc.leader())["taskworker_placed_at_submit_total"]; got < 2 {
		t.Errorf("placed at submit: %v, want 2", got)
	}
}

// While a node older than fsm.PlaceProtocol is up, the leader writes a submit and its placement
// as before: the submit alone, then a capped AssignBatch at the submit's time right behind it
// (the scheduler loop may add its own copy, which changes nothing); and the task runs.
func TestOldNodeUpPlacesBehindTheSubmit(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{twin: true, capacity: 2})
	l := tc.leader()
	upOldNode(t, l, fsm.PlaceProtocol-1)
	task := submit(t, tc.follower(), "echo", 1, "20s")
	if task.State != api.StateSucceeded {
		t.Fatalf("task = %s, want succeeded", task.State)
	}
	if d, ok := l.FSM().Node("old"); !ok || d.Status != fsm.NodeUp {
		t.Fatalf("the older node is not up any more (%+v): the entries prove nothing", d)
	}
	rec := waitState(t, tc, task.ID, 10*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	submits, placed, assigns := logAbout(t, l, rec.CreateIndex, task.ID)
	if !slices.Equal(submits, []uint64{rec.CreateIndex}) || len(placed) != 0 || len(assigns) == 0 {
		t.Fatalf("created at %d: submitted in %v, placed in its submit in %v, assigned in %v; want the submit alone, then its assignment",
			rec.CreateIndex, submits, placed, assigns)
	}
	// The leader's own entry for the placement is in the log, capped and at the submit's time.
	// It need not be the first assignment: the goroutine that hands it to raft right behind the
	// submit can be held off the CPU (-race, two busy cores) until the submit has applied, and
	// the scheduler loop's capped assignment of the then pending task can reach raft first; the
	// later one is refused at apply, and the task is placed once either way.
	var seen []string
	for _, i := range assigns {
		e, err := l.rn.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		c, err := fsm.Decode(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range c.Body.(*fsm.AssignBatch).Items {
			if a.TaskID != task.ID {
				continue
			}
			if a.Capped && c.Now.Equal(rec.CreatedAt) {
				return
			}
			seen = append(seen, fmt.Sprintf("%d: %+v at %v", i, a, c.Now))
		}
	}
	t.Errorf("no capped assignment at the submit's time %v (placed at submit) among %v", rec.CreatedAt, seen)
}

// A real node registered at protocol fsm.PlaceProtocol-1 applies the log beside a current one:
// its submits and their placements reach it as two entries, the tasks placed at submit run on
// either node, and the replicas agree (verifyReplicas at cleanup).
func TestANodeOfTheLastProtocolReadsSubmitAndPlacementApart(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{inmem: true, capacity: 2, tweak: func(i int, c *Config) {
		if i == 1 {
			c.Protocol = fsm.PlaceProtocol - 1
		}
	}})
	waitFor(t, "the old node registered", 30*time.Second, func() bool {
		d, ok := tc.nodes[0].FSM().Node("n2")
		return ok && d.Status == fsm.NodeUp && d.Protocol == fsm.PlaceProtocol-1
	})
	for i, n := range tc.nodes {
		task := submit(t, n, "echo", i, "20s")
		if task.State != api.StateSucceeded {
			t.Fatalf("task %d through %s: %s", i, n.Name(), task.State)
		}
		rec := waitState(t, tc, task.ID, 10*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if _, placed, _ := logAbout(t, tc.leader(), rec.CreateIndex, task.ID); len(placed) != 0 {
			t.Fatalf("task %d: placed in its submit's entry %v with a protocol %d node up", i, placed, fsm.PlaceProtocol-1)
		}
	}
}
