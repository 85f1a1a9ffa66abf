package node

import (
	"net/http"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// TestPriorityTenGoesBeforeABacklogPendingFor150s: 500 priority-0 tasks have waited 150 s at
// capacity 2 (ageing has given them all its 10 points); a priority-10 task submitted then is
// placed at the next free slot, before any of them. The backlog's age is the timestamp of the
// entry that created it: the leader's raft applies a submit entry stamped 150 s back, as the
// leader that took those submits would have, so nothing waits 150 s. With ageing unbounded the
// backlog ranked 15 and went first.
func TestPriorityTenGoesBeforeABacklogPendingFor150s(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{capacity: 2, twin: true})
	n := tc.nodes[0]
	// Both slots busy: one frees in two seconds, the other not before the test ends.
	short := submitReq(t, n, api.SubmitRequest{Type: "sleep", Input: []byte(`{"ms": 2000}`)})
	long := submitReq(t, n, api.SubmitRequest{Type: "sleep", Input: []byte(`{"ms": 60000}`), Timeout: "2m"})
	for _, id := range []string{short.ID, long.ID} {
		waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	}
	created := time.Now().UTC().Add(-150 * time.Second)
	var backlog []fsm.Submit
	for range 500 {
		id := ulid.Make().String()
		backlog = append(backlog, fsm.Submit{ID: id, Type: "echo", Version: "1", Input: []byte(`"old"`), MaxAttempts: 1,
			Timeout: fsm.Duration(30 * time.Second), ExecutionID: id})
	}
	b, err := fsm.Encode(&fsm.Command{Now: created, Body: &fsm.SubmitBatch{Items: backlog}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.rn.Raft().Apply(b, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if first, ok := n.FSM().Task(backlog[0].ID); !ok || first.State != fsm.Pending || time.Since(first.ReadyAt()) < 150*time.Second {
		t.Fatalf("the backlog is not pending since 150 s: %+v", first)
	}
	urgent := submitReq(t, n, api.SubmitRequest{Type: "echo", Input: []byte(`"urgent"`), Priority: 10})
	got := waitState(t, tc, urgent.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Succeeded {
		t.Fatalf("urgent ended %s", got.State)
	}
	at := assignedAt(got)
	// The backlog is placeable: its tasks follow the urgent one into the freed slots.
	waitFor(t, "backlog tasks placed after the urgent one", 30*time.Second, func() bool {
		for _, s := range backlog {
			if tk, _ := n.FSM().Task(s.ID); assignedAt(tk).After(at) {
				return true
			}
		}
		return false
	})
	// None of those still waiting when it was submitted went before it (the short sleep may have
	// freed its slot for one of them before, on a slow machine).
	jumped := 0
	for _, s := range backlog {
		tk, _ := n.FSM().Task(s.ID)
		if a := assignedAt(tk); a.After(got.CreatedAt) && a.Before(at) { // the same instant: the same entry
			jumped++
		}
	}
	if jumped > 0 {
		t.Errorf("%d backlog tasks were placed before the priority-10 task", jumped)
	}
	var cancelled api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks/"+long.ID+"/cancel", nil, &cancelled); code != http.StatusAccepted {
		t.Errorf("cancel the long sleep: %d", code)
	}
	t.Logf("priority-10 task placed %v after its submit", at.Sub(got.CreatedAt))
}
