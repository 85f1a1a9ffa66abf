package node

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// longWorkflow submits, through n, a workflow whose one step sleeps a minute: it stays running.
func longWorkflow(t *testing.T, n *Node) api.Workflow {
	t.Helper()
	return submitWorkflow(t, n, `{"steps": [{"name": "a", "type": "sleep", "input": {"ms": 60000}}]}`)
}

// retried sends the forward of one write from a follower to the leader twice with the same
// request ID, as internal/forward retries a write whose first try committed and whose reply was
// lost; both answers must be want.
func retried(t *testing.T, from, leader *Node, method, path, body string, want int) []byte {
	t.Helper()
	id := ulid.Make().String()
	code, b := forwardTry(t, from, leader, method, path, "", body, id)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	code, b = forwardTry(t, from, leader, method, path, "", body, id)
	if code != want {
		t.Fatalf("%s %s retried after its first try applied: %d %s, want %d as the first try", method, path, code, b, want)
	}
	return b
}

// A write whose forward is retried after its first try applied (the reply was lost) answers as
// the write that took effect: the leader does not apply it again (fsm/once.go). Before the table
// of applied request IDs, the retried deletes answered 404 not_found, and a retry of a cancelled
// task's retry 409 not_retryable.
func TestRetriedForwardAnswersAsTheWriteThatTookEffect(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l := leaderOf(t, tc)
	f := tc.follower()

	putSchedule(t, f, "nightly", api.ScheduleRequest{Cron: "0 3 * * *", Type: "echo", Input: json.RawMessage(`{}`)})
	retried(t, f, l, "DELETE", "/v1/schedules/nightly", "", http.StatusNoContent)
	if _, ok := l.FSM().Schedule("nightly"); ok {
		t.Fatal("the schedule is still there")
	}

	if code := httpCall(t, f, "POST", "/v1/rate-limits/ten", api.RateLimitUpdate{Rate: "10/s"}, nil); code != http.StatusOK {
		t.Fatalf("set rate limit: %d", code)
	}
	retried(t, f, l, "DELETE", "/v1/rate-limits/ten", "", http.StatusNoContent)

	// A task retried: its retry's retry finds it pending (or running) again.
	task := submit(t, f, "sleep", map[string]int{"ms": 60000}, "")
	if code := httpCall(t, f, "POST", "/v1/tasks/"+task.ID+"/cancel", nil, nil); code != http.StatusAccepted {
		t.Fatalf("cancel: %d", code)
	}
	var again api.Task
	if err := json.Unmarshal(retried(t, f, l, "POST", "/v1/tasks/"+task.ID+"/retry", "", http.StatusAccepted), &again); err != nil || again.ID != task.ID {
		t.Fatalf("retried retry answered %+v (%v)", again, err)
	}

	// A workflow cancel answers the cancelled workflow, both times.
	w := longWorkflow(t, f)
	var cancelled api.Workflow
	if err := json.Unmarshal(retried(t, f, l, "POST", "/v1/workflows/"+w.ID+"/cancel", "", http.StatusAccepted), &cancelled); err != nil ||
		cancelled.ID != w.ID || cancelled.State != string(fsm.WorkflowCancelled) {
		t.Fatalf("retried workflow cancel answered %+v (%v)", cancelled, err)
	}
	// And a cancel of the cancelled workflow by another request (a client's own retry) is a
	// cancel that took effect too, as a task's is, without changing it. (Its running step
	// settles once its task ends cancelled, which changes the workflow: wait for that first.)
	var before fsm.Workflow
	waitFor(t, "the cancelled workflow's step settled", 20*time.Second, func() bool {
		before, _ = l.FSM().Workflow(w.ID)
		return len(before.Steps) == 1 && before.Steps[0].State.Done()
	})
	var other api.Workflow
	if code := httpCall(t, f, "POST", "/v1/workflows/"+w.ID+"/cancel", nil, &other); code != http.StatusAccepted || other.State != string(fsm.WorkflowCancelled) {
		t.Fatalf("another cancel of the cancelled workflow: %d %+v", code, other)
	}
	if after, _ := l.FSM().Workflow(w.ID); after.ModifyIndex != before.ModifyIndex {
		t.Fatalf("a second cancel changed the workflow: index %d, was %d", after.ModifyIndex, before.ModifyIndex)
	}
	// A delete of what never existed is still not_found.
	if code, b := forwardTry(t, f, l, "DELETE", "/v1/schedules/never", "", "", ulid.Make().String()); code != http.StatusNotFound {
		t.Fatalf("delete of an unknown schedule: %d %s", code, b)
	}
}

// The table of applied request IDs is replicated: a write whose first try applied on one leader
// and whose retry reaches the next (the reply was lost in the leader change) answers as the write
// that took effect there too.
func TestRetryOnTheNewLeaderAnswersAsTheWriteThatTookEffect(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	old := leaderOf(t, tc)
	f := tc.follower()
	putSchedule(t, f, "weekly", api.ScheduleRequest{Cron: "0 3 * * 1", Type: "echo", Input: json.RawMessage(`{}`)})
	if code := httpCall(t, f, "POST", "/v1/rate-limits/five", api.RateLimitUpdate{Rate: "5/s"}, nil); code != http.StatusOK {
		t.Fatalf("set rate limit: %d", code)
	}
	w := longWorkflow(t, f)

	type try struct{ method, path, id string }
	tries := []try{
		{"DELETE", "/v1/schedules/weekly", ulid.Make().String()},
		{"DELETE", "/v1/rate-limits/five", ulid.Make().String()},
		{"POST", "/v1/workflows/" + w.ID + "/cancel", ulid.Make().String()},
	}
	want := map[string]int{"DELETE": http.StatusNoContent, "POST": http.StatusAccepted}
	for _, tr := range tries {
		if code, b := forwardTry(t, f, old, tr.method, tr.path, "", "", tr.id); code != want[tr.method] {
			t.Fatalf("%s %s: %d %s", tr.method, tr.path, code, b)
		}
	}

	if err := old.rn.Raft().LeadershipTransfer().Error(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	var nl *Node
	waitFor(t, "a new leader", 30*time.Second, func() bool {
		nl = tc.leader()
		return nl != nil && nl != old
	})
	from := old // a follower now
	for _, tr := range tries {
		if code, b := forwardTry(t, from, nl, tr.method, tr.path, "", "", tr.id); code != want[tr.method] {
			t.Fatalf("%s %s retried on the new leader %s: %d %s, want %d as its first try on %s",
				tr.method, tr.path, nl.Name(), code, b, want[tr.method], old.Name())
		}
	}
}

// While a node of protocol 12 (before fsm.OnceProtocol) is up, the leader writes an API write's
// command without its request ID, which that node's build would halt on: the write still
// succeeds, only without the guard against a retry; the table stays empty on every replica.
func TestAWriteWithANodeBeforeOnceProtocolGoesWithoutItsRequestID(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{inmem: true, tweak: func(i int, c *Config) {
		if i == 1 {
			c.Protocol = fsm.OnceProtocol - 1
		}
	}})
	waitFor(t, "the old node registered", 30*time.Second, func() bool {
		d, ok := tc.nodes[0].FSM().Node("n2")
		return ok && d.Status == fsm.NodeUp && d.Protocol == fsm.OnceProtocol-1
	})
	l := leaderOf(t, tc)
	var from *Node
	for _, n := range tc.nodes {
		if n != l {
			from = n
		}
	}
	putSchedule(t, from, "hourly", api.ScheduleRequest{Cron: "@hourly", Type: "echo", Input: json.RawMessage(`{}`)})
	id := ulid.Make()
	if code, b := forwardTry(t, from, l, "DELETE", "/v1/schedules/hourly", "", "", id.String()); code != http.StatusNoContent {
		t.Fatalf("delete with a protocol %d node up: %d %s", fsm.OnceProtocol-1, code, b)
	}
	if _, ok := l.FSM().Schedule("hourly"); ok {
		t.Fatal("the schedule is still there")
	}
	for _, n := range tc.nodes {
		if n.FSM().RequestApplied(id[:]) {
			t.Fatalf("%s recorded the request ID written with a protocol %d node up", n.Name(), fsm.OnceProtocol-1)
		}
	}
}
