package node

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/taskworker/taskworker/fsm"
)

// The states below are what a refused request could change, for the tests that check, on a
// live cluster, that a refusal changed nothing. Not the whole digest (fsm.FSM.Digest), which
// holds the applied index and every node record: an entry of the cluster's own (a node's
// register after a membership flap under load, a new leader's no-op) moves it without any
// request.

// taskState is every task record f holds.
func taskState(t testing.TB, f *fsm.FSM) string {
	t.Helper()
	b, err := json.Marshal(f.List(fsm.Filter{}))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// aclState is f's ACL: its policies, its tokens and whether it was bootstrapped.
func aclState(t testing.TB, f *fsm.FSM) string {
	t.Helper()
	a := f.ACL()
	b, err := json.Marshal([]any{a.Bootstrapped(), a.Policies(), a.Tokens()})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// writeState is what any write of the API could change: the tasks and workflows, the ACL, the
// schedules, the queues and type limits, the rate limits (their settings and keyed buckets, not
// their tokens as of the last entry applied), the unique locks and the cluster's secrets.
func writeState(t testing.TB, f *fsm.FSM) string {
	t.Helper()
	workflows, _ := f.WorkflowPage("", math.MaxInt, nil)
	var rates []any
	for _, r := range f.RateLimits() {
		rates = append(rates, r.RateLimit, r.Keys)
	}
	b, err := json.Marshal([]any{workflows, f.Schedules(), f.Queues(), f.TypeLimits(), rates, f.UniqueLocks(), f.Security()})
	if err != nil {
		t.Fatal(err)
	}
	return taskState(t, f) + aclState(t, f) + string(b)
}
