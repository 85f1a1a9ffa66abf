package node

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
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
	}
	if got := scrape(t, tc.leader())["taskworker_placed_at_submit_total"]; got < 6 {
		t.Errorf("placed at submit: %v, want 6", got)
	}
}

// Submits racing each other and the scheduler loop for few slots never put more tasks on a node
// than its capacity: every node's assigned-to-finished intervals overlap at most capacity deep.
func TestPlacingAtSubmitNeverOverfillsANode(t *testing.T) {
	const capacity = 1
	tc := startCluster(t, 3, clusterOpts{capacity: capacity})
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
	type edge struct {
		at    time.Time
		delta int
	}
	byNode := map[string][]edge{}
	for _, id := range ids {
		task := waitTaskEnded(t, tc.nodes[0], id)
		if task.State != api.StateSucceeded {
			t.Fatalf("task %s ended %s", id, task.State)
		}
		var start time.Time
		for _, h := range task.History {
			switch h.Event {
			case "assigned":
				start = h.At
			case "succeeded", "failed", "interrupted", "cancelled":
				byNode[h.Node] = append(byNode[h.Node], edge{start, +1}, edge{h.At, -1})
			}
		}
	}
	for node, es := range byNode {
		// Ends before starts at the same instant: a slot freed and refilled by one entry.
		slices.SortFunc(es, func(a, b edge) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return a.delta - b.delta
		})
		depth := 0
		for _, e := range es {
			if depth += e.delta; depth > capacity {
				t.Fatalf("node %s held %d tasks at %v, capacity %d", node, depth, e.at, capacity)
			}
		}
	}
	if len(ids) != 30 {
		t.Fatalf("%d tasks submitted, want 30", len(ids))
	}
}
