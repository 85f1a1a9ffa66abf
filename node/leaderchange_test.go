package node

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// TestForwardHeldByAFrozenLeaderIsRetriedOnTheNewOne: a follower forwards a submit to the leader,
// and the leader freezes with the forward in hand (its internode side holds every request, its
// raft and gossip are cut off, as under SIGSTOP). The follower must give the forward up once raft
// stops naming that leader and get the submit applied by the new one: the submit succeeds, the
// follower counts an abandoned forward, and the task is in the new leader's state exactly once.
func TestForwardHeldByAFrozenLeaderIsRetriedOnTheNewOne(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{twin: true})
	old := tc.leader()
	var f *Node
	for _, n := range tc.live() {
		if n != old {
			f = n
			break
		}
	}
	release := make(chan struct{})
	old.internode.Hold(release)
	var thawOnce sync.Once
	thaw := func() {
		thawOnce.Do(func() {
			old.internode.Hold(nil)
			close(release)
			_ = old.Shutdown() // a frozen leader's fate is not this test's subject
		})
	}
	t.Cleanup(thaw)

	type reply struct {
		code int
		body []byte
		err  error
	}
	done := make(chan reply, 1)
	go func() {
		b, _ := json.Marshal(api.SubmitRequest{Type: "calc-square", Input: json.RawMessage("7"), IdempotencyKey: ""})
		resp, err := http.Post("http://"+f.HTTPAddr()+"/v1/tasks", "application/json", bytes.NewReader(b))
		if err != nil {
			done <- reply{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- reply{code: resp.StatusCode, body: body, err: err}
	}()
	waitFor(t, "the submit's forward held by the leader", 20*time.Second, func() bool { return old.internode.Held() > 0 })
	tc.twin.partition(old.Name())

	var r reply
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the submit did not return within 60s")
	}
	if r.err != nil || r.code != http.StatusCreated {
		t.Fatalf("submit via %s with the leader frozen: %d %s %v", f.Name(), r.code, r.body, r.err)
	}
	var task api.Task
	if err := json.Unmarshal(r.body, &task); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, f)["taskworker_forwards_abandoned_total"]; got < 1 {
		t.Errorf("%s abandoned %v forwards: the submit did not take the retry path", f.Name(), got)
	}
	var leader *Node
	waitFor(t, "a new leader", 30*time.Second, func() bool {
		for _, n := range tc.live() {
			if n != old && n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	waitFor(t, "the task on the new leader", 20*time.Second, func() bool {
		_, ok := leader.FSM().Task(task.ID)
		return ok
	})
	if counts := leader.FSM().Counts(); sumCounts(counts) != 1 {
		t.Errorf("the new leader holds %v tasks, want the one submit", counts)
	}
	thaw()
}

func sumCounts[K comparable](m map[K]int) int {
	total := 0
	for _, c := range m {
		total += c
	}
	return total
}

// TestReportHeldByAFrozenLeaderIsRetriedOnTheNewOne: the same for an executor report. A follower
// finishes a task while the leader is frozen with the report in hand; the report must reach the
// new leader, and the task end succeeded on the follower, attempt 1.
func TestReportHeldByAFrozenLeaderIsRetriedOnTheNewOne(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 1, twin: true, registry: g.registry(t)})
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, submit(t, tc.nodes[i], "gate", nil, "").ID)
	}
	old := tc.leader()
	var f *Node
	var id string
	waitFor(t, "a gate task running on a follower", 30*time.Second, func() bool {
		for _, tid := range ids {
			got, _ := old.FSM().Task(tid)
			if got.State == fsm.Running && got.Node != old.Name() {
				f, id = tc.node(got.Node), tid
				return true
			}
		}
		return false
	})
	release := make(chan struct{})
	old.internode.Hold(release)
	var thawOnce sync.Once
	thaw := func() {
		thawOnce.Do(func() {
			old.internode.Hold(nil)
			close(release)
			_ = old.Shutdown()
		})
	}
	t.Cleanup(thaw)

	g.open(f.Name())
	waitFor(t, "the report held by the leader", 20*time.Second, func() bool { return old.internode.Held() > 0 })
	tc.twin.partition(old.Name())
	var done fsm.Task
	waitFor(t, "the task ended on a new leader", 30*time.Second, func() bool {
		for _, n := range tc.live() {
			if n != old && n.IsLeader() {
				got, ok := n.FSM().Task(id)
				done = got
				return ok && got.State.Terminal()
			}
		}
		return false
	})
	if done.State != fsm.Succeeded || done.Node != f.Name() || done.Attempt != 1 {
		t.Fatalf("task %s: %s on %s attempt %d, want succeeded on %s attempt 1", id, done.State, done.Node, done.Attempt, f.Name())
	}
	if got := scrape(t, f)["taskworker_forwards_abandoned_total"]; got < 1 {
		t.Errorf("%s abandoned %v forwards: the report did not take the retry path", f.Name(), got)
	}
	thaw()
}
