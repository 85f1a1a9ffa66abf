package node

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// startTimes is every task's first assigned time as f recorded it (the FSM's own command
// timestamps), sorted.
func startTimes(t *testing.T, f *fsm.FSM, ids []string) []time.Time {
	t.Helper()
	var out []time.Time
	for _, id := range ids {
		tk, ok := f.Task(id)
		if !ok {
			t.Fatalf("task %s missing from a replica", id)
		}
		i := slices.IndexFunc(tk.History, func(h fsm.HistoryEntry) bool { return h.Event == fsm.EventAssigned })
		if i < 0 {
			t.Fatalf("task %s was never assigned: %+v", id, tk.History)
		}
		out = append(out, tk.History[i].At)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// checkRate reports the first window of starts that holds more than burst + rate × its length:
// for every pair of starts i <= j, the j-i+1 starts between them.
func checkRate(starts []time.Time, burst int, perSecond float64) error {
	for i := range starts {
		for j := i; j < len(starts); j++ {
			n := j - i + 1
			if allowed := float64(burst) + perSecond*starts[j].Sub(starts[i]).Seconds(); float64(n) > allowed+1e-9 {
				return fmt.Errorf("%d starts in %s (from %s), at most %.2f allowed", n, starts[j].Sub(starts[i]),
					starts[i].Format(time.RFC3339Nano), allowed)
			}
		}
	}
	return nil
}

// A rate limit of 10/s with a burst of 10 starts 100 tasks over at least 9 s, never more than
// burst + rate × t in any window, by the assignment times every replica recorded; a task held
// back says why.
func TestRateLimitPacesStartsOnEveryReplica(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 3, clusterOpts{capacity: 50, twin: true})
	f := tc.follower()
	var rl api.RateLimit
	if code := httpCall(t, f, "POST", "/v1/rate-limits/ten", api.RateLimitUpdate{Rate: "10/s", Burst: ptrTo(int64(10))}, &rl); code != http.StatusOK ||
		rl.Rate != "10/s" || rl.Burst != 10 || rl.Tokens != 10 {
		t.Fatalf("set rate limit: %d %+v", code, rl)
	}
	reqs := make([]api.SubmitRequest, 100)
	for i := range reqs {
		reqs[i] = api.SubmitRequest{Type: "echo", Input: []byte(fmt.Sprint(i)), RateLimit: "ten"}
	}
	var reply api.BatchSubmitReply
	if code := httpCall(t, f, "POST", api.PathTasksBatch, api.BatchSubmitRequest{Tasks: reqs}, &reply); code != http.StatusOK || len(reply.Results) != 100 {
		t.Fatalf("batch submit: %d, %d results", code, len(reply.Results))
	}
	var ids []string
	for _, r := range reply.Results {
		if r.Task == nil {
			t.Fatalf("batch item refused: %+v", r.Error)
		}
		ids = append(ids, r.Task.ID)
	}
	// While the bucket is empty, a waiting task says so.
	waitFor(t, "a pending task naming the empty bucket", 20*time.Second, func() bool {
		var l []api.Task
		if code := httpCall(t, f, "GET", "/v1/tasks?state=pending&limit=5", nil, &l); code != http.StatusOK {
			return false
		}
		return slices.ContainsFunc(l, func(tk api.Task) bool {
			return strings.Contains(tk.PendingReason, `rate limit "ten" has no token until`)
		})
	})
	for _, id := range ids {
		if got := waitState(t, tc, id, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() }); got.State != fsm.Succeeded {
			t.Fatalf("%s ended %s", id, got.State)
		}
	}
	var first []time.Time
	for _, n := range tc.nodes {
		waitFor(t, n.Name()+" applied every start", 30*time.Second, func() bool {
			for _, id := range ids {
				if tk, ok := n.FSM().Task(id); !ok || !tk.State.Terminal() {
					return false
				}
			}
			return true
		})
		starts := startTimes(t, n.FSM(), ids)
		if span := starts[len(starts)-1].Sub(starts[0]); span < 9*time.Second {
			t.Errorf("%s: 100 starts over %s, want at least 9 s", n.Name(), span)
		}
		if err := checkRate(starts, 10, 10); err != nil {
			t.Errorf("%s: %v", n.Name(), err)
		}
		if first == nil {
			first = starts
		} else if !slices.EqualFunc(first, starts, time.Time.Equal) {
			t.Errorf("%s recorded other start times than %s", n.Name(), tc.nodes[0].Name())
		}
	}
	t.Logf("100 starts over %s", first[len(first)-1].Sub(first[0]))
}

// rateState is what a refused rate limit change or debounced submit could change: the rate
// limits and the tasks. Not the whole digest, which holds the applied index: an entry of the
// cluster's own (a node's register after a membership flap under load, a new leader's no-op)
// moves it without any request.
func rateState(f *fsm.FSM) string {
	var b strings.Builder
	for _, r := range f.RateLimits() {
		fmt.Fprintf(&b, "%+v keys=%d;", r.RateLimit, r.Keys)
	}
	fmt.Fprintf(&b, "%v", f.Counts())
	return b.String()
}

// The rate limit routes through a follower, and what they refuse: bad rates, bursts and names, a
// submit naming an unknown limit or a key without a limit. A refused request changes nothing.
func TestRateLimitRoutesAndRefusals(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{twin: true})
	f := tc.follower()
	var rl api.RateLimit
	if code := httpCall(t, f, "POST", "/v1/rate-limits/api", api.RateLimitUpdate{Rate: "2/m"}, &rl); code != http.StatusOK ||
		rl.Name != "api" || rl.Rate != "2/m" || rl.Burst != 1 || rl.Tokens != 1 {
		t.Fatalf("set: %d %+v", code, rl)
	}
	state := func() string { return rateState(tc.leader().FSM()) }
	before := state()
	for _, tc := range []struct {
		method, path, body string
		code               api.Code
	}{
		{"POST", "/v1/rate-limits/api", `{"rate": "abc", "burst": 1}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "burst": 0}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "burst": 1000000000}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/rate-limits/api", `{"rate": "10000000/s"}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/rate-limits/" + strings.Repeat("x", 65), `{"rate": "10/s"}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/tasks", `{"type": "echo", "rate_limit": "nope"}`, api.CodeUnknownRateLimit},
		{"POST", "/v1/tasks", `{"type": "echo", "rate_limit_key": "t1"}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/tasks", `{"type": "echo", "rate_limit": "api", "rate_limit_key": "` + strings.Repeat("k", 200) + `"}`, api.CodeInvalidRateLimit},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "-1s"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "25h"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "soon"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce": "1s"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "1s", "delay": "1s"}`, api.CodeInvalidDebounce},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "1s", "unique_key": "u", "unique_for": "1m"}`, api.CodeInvalidDebounce},
		{"GET", "/v1/rate-limits/nope", "", api.CodeNotFound},
		{"DELETE", "/v1/rate-limits/nope", "", api.CodeNotFound},
	} {
		code, b, _ := apiCall(t, f, tc.method, tc.path, "", tc.body)
		var e api.Error
		mustJSON(t, b, &e)
		if code != api.Status(tc.code) || e.Code != tc.code {
			t.Errorf("%s %s %s: %d %s, want %d %s", tc.method, tc.path, tc.body, code, b, api.Status(tc.code), tc.code)
		}
	}
	if after := state(); after != before {
		t.Errorf("a refused request changed the state: %s, then %s", before, after)
	}
	// A task under a key draws from that key's bucket, not the limit's own.
	task := submitReq(t, f, api.SubmitRequest{Type: "echo", RateLimit: "api", RateLimitKey: "tenant-1"})
	if task.RateLimit != "api" || task.RateLimitKey != "tenant-1" {
		t.Fatalf("record: %+v", task)
	}
	waitTaskEnded(t, f, task.ID)
	waitFor(t, "the follower shows the keyed bucket taken", 10*time.Second, func() bool {
		var got api.RateLimit
		return httpCall(t, f, "GET", "/v1/rate-limits/api?key=tenant-1", nil, &got) == http.StatusOK && got.Tokens == 0 && got.Keys == 1
	})
	var own api.RateLimit
	if httpCall(t, f, "GET", "/v1/rate-limits/api", nil, &own); own.Tokens != 1 {
		t.Errorf("the limit's own bucket: %+v", own)
	}
	var list api.RateLimitList
	if code := httpCall(t, f, "GET", "/v1/rate-limits", nil, &list); code != http.StatusOK || len(list.RateLimits) != 1 || list.RateLimits[0].Name != "api" {
		t.Errorf("list: %d %+v", code, list)
	}
	if code, b, _ := apiCall(t, f, "DELETE", "/v1/rate-limits/api", "", ""); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, b)
	}
	if code := httpCall(t, f, "GET", "/v1/rate-limits", nil, &list); code != http.StatusOK || len(list.RateLimits) != 0 {
		t.Errorf("list after delete: %d %+v", code, list)
	}
}

// Ten submits 100 ms apart with one debounce key run one task, once the key was quiet for the
// window, with the last input; every submit answered with that task's ID. Once it started, the
// key makes a new task.
func TestDebounceRunsOnceWithTheLastInput(t *testing.T) {
	// The window must outlast the slowest of the submits, or the task starts between two of them:
	// one submit through a follower can take most of a second on a loaded machine.
	const window = 3 * time.Second
	tc := startCluster(t, 3, clusterOpts{twin: true})
	f := tc.follower()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var id string
	var lastSent time.Time // before the last submit left: the leader stamps it later
	for i := range 10 {
		if i > 0 {
			<-tick.C
		}
		lastSent = time.Now()
		code, b, _ := apiCall(t, tc.nodes[i%3], "POST", "/v1/tasks", "", fmt.Sprintf(`{"type": "echo", "input": {"n": %d}, "debounce_key": "save", "debounce": %q}`, i, window))
		var task api.Task
		mustJSON(t, b, &task)
		want := http.StatusOK
		if i == 0 {
			want, id = http.StatusCreated, task.ID
		}
		if code != want || task.ID != id || task.State != api.StateScheduled || task.DebounceKey != "save" {
			t.Fatalf("submit %d: %d %s; want %d with task %s", i, code, b, want, id)
		}
	}
	got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Succeeded || string(got.Result) != `{"n":9}` {
		t.Fatalf("task ended %s with %s, want succeeded with the last input", got.State, got.Result)
	}
	if at := assignedAt(got); at.Before(*got.RunAt) || got.RunAt.Before(lastSent.Add(window)) {
		t.Errorf("assigned at %v, run_at %v: not a window after the last submit (sent %v)", at, got.RunAt, lastSent)
	}
	n := 0
	for _, tk := range tc.leader().FSM().List(fsm.Filter{Type: "echo"}) {
		if tk.DebounceKey == "save" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d tasks with the key, want 1", n)
	}
	next := submitReq(t, f, api.SubmitRequest{Type: "echo", Input: []byte(`{"n": 10}`), DebounceKey: "save", Debounce: "100ms"})
	if next.ID == id {
		t.Fatalf("a submit after the run joined the finished task %s", id)
	}
	if done := waitTaskEnded(t, f, next.ID); done.State != api.StateSucceeded || string(done.Result) != `{"n":10}` {
		t.Errorf("next debounced task: %s %s", done.State, done.Result)
	}
}

// With a node of the protocol before rate limits up, the leader refuses rate limit changes and
// debounced submits (409 upgrade_required) and stores nothing; plain submits go on.
func TestRateLimitAndDebounceWaitForEveryNodeToUpgrade(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{twin: true})
	l, f := tc.leader(), tc.follower()
	upOldNode(t, l, fsm.RateLimitProtocol-1)
	before := rateState(l.FSM())
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/rate-limits/api", `{"rate": "1/s"}`},
		{"POST", "/v1/tasks", `{"type": "echo", "debounce_key": "k", "debounce": "1s"}`},
	} {
		code, b, _ := apiCall(t, f, c.method, c.path, "", c.body)
		var e api.Error
		mustJSON(t, b, &e)
		if code != http.StatusConflict || e.Code != api.CodeUpgradeRequired {
			t.Errorf("%s %s with a protocol %d node up: %d %s, want 409 upgrade_required", c.method, c.path, fsm.RateLimitProtocol-1, code, b)
		}
	}
	if after := rateState(l.FSM()); after != before {
		t.Errorf("a refused request changed the state: %s, then %s", before, after)
	}
	if rec, ok := l.FSM().Node("old"); !ok || rec.Status != fsm.NodeUp {
		t.Fatalf("the old node went down during the test, which then proves nothing: %+v", rec)
	}
	if task := submit(t, f, "calc-square", 3, "20s"); task.State != api.StateSucceeded {
		t.Errorf("a plain submit with the old node up: %s", task.State)
	}
}

// With ACLs: setting or deleting a rate limit needs the operator right, and a revoked operator
// token is refused (401) without a change; a debounce key never merges two principals' submits,
// so one cannot replace another's input nor learn its task's ID.
func TestRateLimitAndDebounceUnderACLs(t *testing.T) {
	tc := aclCluster(t)
	f := tc.follower()
	mgmt := bootstrapACL(t, f)
	team := teamToken(t, f, mgmt.SecretID)
	if code, b := aclCall(t, f, "PUT", "/v1/acl/policy/ops", mgmt.SecretID, `{"cluster": ["operator"]}`); code != http.StatusOK {
		t.Fatalf("ops policy: %d %s", code, b)
	}
	code, b := aclCall(t, f, "POST", "/v1/acl/tokens", mgmt.SecretID, `{"policies": ["ops"]}`)
	var ops api.ACLToken
	mustJSON(t, b, &ops)
	if code != http.StatusCreated {
		t.Fatalf("ops token: %d %s", code, b)
	}
	if code, b := aclCall(t, f, "POST", "/v1/rate-limits/api", ops.SecretID, `{"rate": "5/s"}`); code != http.StatusOK {
		t.Fatalf("set with the operator right: %d %s", code, b)
	}
	code, b = aclCall(t, f, "POST", "/v1/rate-limits/api", team.SecretID, `{"rate": "1000/s", "burst": 1000}`)
	wantAPIError(t, "set without the operator right", code, b, 403, api.CodeForbidden, "operator")
	code, b = aclCall(t, f, "DELETE", "/v1/rate-limits/api", team.SecretID, "")
	wantAPIError(t, "delete without the operator right", code, b, 403, api.CodeForbidden, "operator")
	if code, b := aclCall(t, f, "DELETE", "/v1/acl/token/"+ops.AccessorID, mgmt.SecretID, ""); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, b)
	}
	// The revocation is applied on every node before the revoked token is tried.
	idx := tc.leader().FSM().Index()
	waitFor(t, "every node applied the revocation", 20*time.Second, func() bool {
		for _, n := range tc.nodes {
			if n.FSM().Index() < idx {
				return false
			}
		}
		return true
	})
	code, b = aclCall(t, f, "DELETE", "/v1/rate-limits/api", ops.SecretID, "")
	wantAPIError(t, "delete with a revoked token", code, b, 401, api.CodeUnauthorized, "")
	var rl api.RateLimit
	code, b = aclCall(t, f, "GET", "/v1/rate-limits/api", team.SecretID, "")
	mustJSON(t, b, &rl)
	if code != http.StatusOK || rl.Rate != "5/s" || rl.Burst != 1 {
		t.Fatalf("the limit after the refusals: %d %s", code, b)
	}
	// Two principals, one debounce key: two tasks, each with its own input.
	submitAs := func(secret, input string) (int, api.Task) {
		code, b := aclCall(t, f, "POST", "/v1/tasks", secret, `{"type": "echo", "input": `+input+`, "debounce_key": "k", "debounce": "1h"}`)
		var task api.Task
		mustJSON(t, b, &task)
		return code, task
	}
	code1, mine := submitAs(mgmt.SecretID, `"mine"`)
	code2, theirs := submitAs(team.SecretID, `"theirs"`)
	code3, again := submitAs(team.SecretID, `"theirs again"`)
	if code1 != http.StatusCreated || code2 != http.StatusCreated || theirs.ID == mine.ID {
		t.Fatalf("two principals with one key: %d %s, %d %s; want two new tasks", code1, mine.ID, code2, theirs.ID)
	}
	if code3 != http.StatusOK || again.ID != theirs.ID {
		t.Fatalf("the same principal again: %d %s, want 200 with %s", code3, again.ID, theirs.ID)
	}
	if got, _ := tc.leader().FSM().Task(mine.ID); string(got.Input) != `"mine"` {
		t.Errorf("the first principal's input became %s", got.Input)
	}
}
