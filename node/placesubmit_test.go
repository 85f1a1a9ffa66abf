package node

import (
	"fmt"
	"sync"
	"testing"
	"time"

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
