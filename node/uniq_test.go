package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// submitUnique posts a unique submit and returns the status, the record or the error body, and
// the existing-task header.
func submitUnique(t *testing.T, n *Node, key, window string) (int, api.Task, api.Error, string) {
	t.Helper()
	body := map[string]any{"type": "echo", "input": key, "unique_key": key, "unique_for": window}
	b, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/tasks", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var task api.Task
	var apiErr api.Error
	var into any = &apiErr
	if resp.StatusCode < 300 {
		into = &task
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("decode submit reply (%d): %v", resp.StatusCode, err)
	}
	return resp.StatusCode, task, apiErr, resp.Header.Get(api.HeaderExistingTask)
}

func TestUniqueKeyRefusesInsideItsWindowAndAcceptsAfter(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 3, clusterOpts{twin: true})
	f := tc.follower()
	code, first, _, _ := submitUnique(t, f, "k1", "1s")
	if code != http.StatusCreated || first.UniqueKey != "k1" || first.UniqueUntil == nil {
		t.Fatalf("first submit: %d %+v", code, first)
	}
	code, _, e, hdr := submitUnique(t, tc.leader(), "k1", "1s")
	if code != http.StatusConflict || e.Code != api.CodeDuplicateUniqueKey || e.ExistingTask != first.ID || hdr != first.ID {
		t.Fatalf("second submit: %d %+v header %q, want 409 duplicate_unique_key naming %s", code, e, hdr, first.ID)
	}
	if code, _, _, _ := submitUnique(t, f, "k2", "1s"); code != http.StatusCreated {
		t.Errorf("another key: %d", code)
	}
	// After the window (polled: the leader's clock decides) the key is free again.
	var second api.Task
	waitFor(t, "the key free after its window", 20*time.Second, func() bool {
		code, task, e, _ := submitUnique(t, f, "k1", "1s")
		if code != http.StatusCreated && e.Code != api.CodeDuplicateUniqueKey {
			t.Fatalf("submit after the window: %d %+v", code, e)
		}
		second = task
		return code == http.StatusCreated
	})
	if second.ID == first.ID || second.CreatedAt.Sub(first.CreatedAt) < time.Second {
		t.Errorf("accepted %s created %s, first %s created %s: inside the window", second.ID, second.CreatedAt, first.ID, first.CreatedAt)
	}

	// A batch applies the rule per item, the batch's own items included.
	var reply api.BatchSubmitReply
	batch := api.BatchSubmitRequest{Tasks: []api.SubmitRequest{
		{Type: "echo", UniqueKey: "b1", UniqueFor: "1h"}, {Type: "echo", UniqueKey: "b1", UniqueFor: "1h"},
		{Type: "echo", UniqueKey: "k1", UniqueFor: "1h"}, {Type: "echo", UniqueKey: "b1"},
	}}
	if code := httpCall(t, f, "POST", api.PathTasksBatch, batch, &reply); code != http.StatusOK || len(reply.Results) != 4 {
		t.Fatalf("batch: %d %+v", code, reply)
	}
	r := reply.Results
	if r[0].Status != http.StatusCreated || r[1].Status != http.StatusConflict || r[1].Error.ExistingTask != r[0].Task.ID ||
		r[2].Status != http.StatusConflict || r[2].Error.ExistingTask != second.ID || r[3].Status != http.StatusBadRequest {
		t.Errorf("batch results = %+v", r)
	}
	tc.verifyReplicas()
}

// brokenRegistry adds "brittle": while broken is set it fails with a final error, else it succeeds.
func brokenRegistry(t *testing.T, broken *atomic.Bool) func(int) *tasks.Registry {
	return func(int) *tasks.Registry {
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := tasks.Func(tasks.Definition{Name: "brittle", Version: "1"}, func(*tasks.Context, any) (string, error) {
			if broken.Load() {
				return "", tasks.Final(fmt.Errorf("the account is closed"))
			}
			return "done", nil
		})
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

func TestFinalErrorIsNotRetriedAndRetryRunsItAgain(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	tc := startCluster(t, 3, clusterOpts{twin: true, registry: brokenRegistry(t, &broken)})
	f := tc.follower()
	var task api.Task
	if code := httpCall(t, f, "POST", "/v1/tasks?wait=20s", map[string]any{"type": "brittle", "max_attempts": 5}, &task); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	got := waitState(t, tc, task.ID, 20*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if got.State != fsm.Failed || got.Attempt != 1 || got.Failures != 1 || got.Error == nil || !got.Error.Final {
		t.Fatalf("after a final error: %s attempt %d failures %d error %+v, want failed after one attempt", got.State, got.Attempt, got.Failures, got.Error)
	}

	// Retry now: the same task runs again, as attempt 2, and succeeds; its history is kept.
	broken.Store(false)
	var retried api.Task
	if code := httpCall(t, f, "POST", "/v1/tasks/"+task.ID+"/retry", nil, &retried); code != http.StatusAccepted {
		t.Fatalf("retry: %d", code)
	}
	// The answer is the record once the retry applied on this node: "retried" is in its history.
	// (Its state may already be past pending: a task this quick can run again, and end, before
	// the follower hears of the retry's commit, since the entries after it can arrive together.)
	if retried.ID != task.ID || !slices.ContainsFunc(retried.History, func(h api.HistoryEntry) bool { return h.Event == "retried" }) {
		t.Errorf("retry answered %s %s %+v: want the same task, retried", retried.ID, retried.State, retried.History)
	}
	got = waitState(t, tc, task.ID, 20*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	var events []string
	for _, h := range got.History {
		events = append(events, h.Event)
	}
	want := []string{"assigned", "started", "failed", "retried", "assigned", "started", "succeeded"}
	if got.State != fsm.Succeeded || got.Attempt != 2 || !slices.Equal(events, want) {
		t.Fatalf("after retry: %s attempt %d history %v, want succeeded attempt 2 %v", got.State, got.Attempt, events, want)
	}
	if !got.History[2].Final || got.History[3].By != "anonymous" {
		t.Errorf("history = %+v: the failure should be final and the retry by anonymous", got.History)
	}
	// Only failed or cancelled tasks can be retried.
	var e api.Error
	if code := httpCall(t, f, "POST", "/v1/tasks/"+task.ID+"/retry", nil, &e); code != http.StatusConflict || e.Code != api.CodeNotRetryable {
		t.Errorf("retry of a succeeded task: %d %+v", code, e)
	}
	tc.verifyReplicas()
}

func TestPurgeRemovesOnlyWhatMatches(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{twin: true})
	f := tc.follower()
	var failed, ok []string
	for i := range 3 {
		var task api.Task
		httpCall(t, f, "POST", "/v1/tasks?wait=20s", map[string]any{"type": "fail", "input": fmt.Sprint("no ", i), "max_attempts": 1}, &task)
		failed = append(failed, task.ID)
		ok = append(ok, submit(t, f, "echo", i, "20s").ID)
	}
	sleeper := submit(t, f, "sleep", map[string]any{"ms": 60000}, "")
	for _, id := range append(slices.Clone(failed), ok...) {
		waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	}

	var e api.Error
	if code := httpCall(t, f, "POST", api.PathTasksPurge, api.PurgeRequest{State: "running"}, &e); code != http.StatusBadRequest || e.Code != api.CodeInvalidPurge {
		t.Errorf("purge of running tasks: %d %+v", code, e)
	}
	var reply api.PurgeReply
	if code := httpCall(t, f, "POST", api.PathTasksPurge, api.PurgeRequest{State: "failed", Type: "fail", Limit: 2}, &reply); code != http.StatusOK || reply.Purged != 2 {
		t.Fatalf("purge with limit 2: %d %+v", code, reply)
	}
	if code := httpCall(t, f, "POST", api.PathTasksPurge, api.PurgeRequest{State: "failed"}, &reply); code != http.StatusOK || reply.Purged != 1 {
		t.Fatalf("purge of the rest: %d %+v", code, reply)
	}
	for _, n := range tc.nodes {
		waitFor(t, "purge applied on "+n.Name(), 10*time.Second, func() bool { return n.FSM().Index() >= tc.leader().FSM().Index() })
		for _, id := range failed {
			if _, found := n.FSM().Task(id); found {
				t.Errorf("%s: failed task %s still stored", n.Name(), id)
			}
		}
		for _, id := range append(slices.Clone(ok), sleeper.ID) {
			if _, found := n.FSM().Task(id); !found {
				t.Errorf("%s: task %s purged, but it did not match", n.Name(), id)
			}
		}
	}
	tc.verifyReplicas()
}

// The leader authorizes forwarded retries and purges again, and records who retried from the
// credential it resolved, not from what the follower wrote.
func TestLeaderAuthorizesForwardedRetryAndPurge(t *testing.T) {
	tc := aclCluster(t)
	l, f := tc.leader(), tc.follower()
	mgmt := bootstrapACL(t, f)
	team := teamToken(t, f, mgmt.SecretID)
	code, b := aclCall(t, f, "POST", "/v1/tasks", mgmt.SecretID, `{"type": "sleep", "input": {"ms": 60000}}`)
	var sleeper api.Task
	mustJSON(t, b, &sleeper)
	if code != http.StatusCreated {
		t.Fatalf("submit sleep: %d %s", code, b)
	}
	if code, b := aclCall(t, f, "POST", "/v1/tasks/"+sleeper.ID+"/cancel", mgmt.SecretID, ""); code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", code, b)
	}
	waitState(t, tc, sleeper.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Cancelled })
	tests := []struct {
		name               string
		secret             string
		method, path, body string
		code               api.Code
		says               string
	}{
		// A task the caller may not read is not found, as it is for a request to the leader itself.
		{"retry of a type the token may not read", team.SecretID, "POST", "/v1/tasks/" + sleeper.ID + "/retry", "", api.CodeNotFound, "not found"},
		{"retry without a credential", "", "POST", "/v1/tasks/" + sleeper.ID + "/retry", "", api.CodeUnauthorized, "token"},
		{"purge of every type without management", team.SecretID, "POST", api.PathTasksPurge, `{}`, api.CodeForbidden, "management"},
		{"purge of a type the token may not cancel", team.SecretID, "POST", api.PathTasksPurge, `{"type": "sleep"}`, api.CodeForbidden, `"cancel" on task type "sleep"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// What a retry or a purge could change: the tasks.
			before := taskState(t, l.FSM())
			code, b := forwardAs(t, f, l, tt.method, tt.path, tt.secret, tt.body)
			wantAPIError(t, tt.name, code, b, api.Status(tt.code), tt.code, tt.says)
			if after := taskState(t, l.FSM()); after != before {
				t.Errorf("a refused forward changed the leader's tasks: %s, then %s", before, after)
			}
		})
	}
	if code, b := forwardAs(t, f, l, "POST", api.PathTasksPurge, team.SecretID, `{"type": "echo"}`); code != http.StatusOK {
		t.Errorf("purge of the team's type: %d %s", code, b)
	}
	if code, b := forwardAs(t, f, l, "POST", "/v1/tasks/"+sleeper.ID+"/retry", mgmt.SecretID, ""); code >= 300 {
		t.Fatalf("retry: %d %s", code, b)
	}
	tk, _ := l.FSM().Task(sleeper.ID) // it may be running again already: find the retried event
	i := slices.IndexFunc(tk.History, func(h fsm.HistoryEntry) bool { return h.Event == fsm.EventRetried })
	if i < 0 || tk.History[i].By != mgmt.AccessorID {
		t.Errorf("history %+v, want an event retried by %s", tk.History, mgmt.AccessorID)
	}
}
