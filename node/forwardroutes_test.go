package node

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// apiCall is one request through node n's public API, with the name of the node that served it
// (X-Taskworker-Served-By, set on a forwarded write).
func apiCall(t *testing.T, n *Node, method, path, secret, body string) (int, []byte, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header.Get(forward.HeaderServedBy)
}

// Every write route of the API, sent to a follower, runs on the leader with the caller's own
// credential: a token without the right is refused there (so the leader authorized it, as it
// would a request of its own), and the management token is let through (so the credential
// travelled with the request). The walk covers httpapi.Routes(): a new write route without a
// request here fails the test.
func TestEveryForwardedWriteIsAuthorizedOnTheLeader(t *testing.T) {
	tc := aclCluster(t)
	l, f := tc.leader(), tc.follower()
	mgmt := bootstrapACL(t, f)
	weak := teamToken(t, f, mgmt.SecretID) // echo tasks only, no cluster rights
	// Nothing runs while the test walks: a write let in changes the state once, at its reply, so
	// a refused one can be seen to change nothing.
	if code, b := aclCall(t, f, "POST", "/v1/queues/"+api.DefaultQueue, mgmt.SecretID, `{"paused": true}`); code != http.StatusOK {
		t.Fatalf("pause the default queue: %d %s", code, b)
	}
	code, b := aclCall(t, f, "POST", "/v1/tasks", mgmt.SecretID, `{"type": "sleep", "input": {"ms": 60000}}`)
	var sleeper api.Task
	mustJSON(t, b, &sleeper)
	if code != http.StatusCreated {
		t.Fatalf("submit sleep: %d %s", code, b)
	}
	schedule := `{"cron": "@every 1h", "type": "sleep", "input": {"ms": 1}}`
	if code, b := aclCall(t, f, "PUT", "/v1/schedules/nightly", mgmt.SecretID, schedule); code != http.StatusOK && code != http.StatusCreated {
		t.Fatalf("schedule put: %d %s", code, b)
	}
	code, b = aclCall(t, f, "POST", "/v1/acl/tokens", mgmt.SecretID, `{"policies": ["team"]}`)
	var victim api.ACLToken
	mustJSON(t, b, &victim)
	if code != http.StatusCreated {
		t.Fatalf("token create: %d %s", code, b)
	}

	code, b = aclCall(t, f, "POST", "/v1/workflows", mgmt.SecretID, `{"steps": [{"name": "a", "type": "sleep", "input": {"ms": 60000}}]}`)
	var wf api.Workflow
	mustJSON(t, b, &wf)
	if code != http.StatusCreated {
		t.Fatalf("workflow submit: %d %s", code, b)
	}

	type call struct{ path, body string }
	calls := map[string]call{
		"POST /v1/tasks":                      {"/v1/tasks", `{"type": "sleep", "input": {"ms": 1}}`},
		"POST /v1/tasks/batch":                {"/v1/tasks/batch", `{"tasks": [{"type": "sleep", "input": {"ms": 1}}]}`},
		"POST /v1/tasks/{id}/cancel":          {"/v1/tasks/" + sleeper.ID + "/cancel", ""},
		"POST /v1/tasks/{id}/retry":           {"/v1/tasks/" + sleeper.ID + "/retry", ""},
		"POST /v1/tasks/purge":                {"/v1/tasks/purge", `{"type": "sleep"}`},
		"PUT /v1/acl/policy/{name}":           {"/v1/acl/policy/more", `{"rules": [{"task_type": "*", "capabilities": ["submit"]}]}`},
		"DELETE /v1/acl/policy/{name}":        {"/v1/acl/policy/team", ""},
		"POST /v1/acl/tokens":                 {"/v1/acl/tokens", `{"policies": ["team"]}`},
		"DELETE /v1/acl/token/{accessor}":     {"/v1/acl/token/" + victim.AccessorID, ""},
		"PUT /v1/schedules/{name}":            {"/v1/schedules/nightly", schedule},
		"DELETE /v1/schedules/{name}":         {"/v1/schedules/nightly", ""},
		"POST /v1/schedules/{name}/pause":     {"/v1/schedules/nightly/pause", ""},
		"POST /v1/schedules/{name}/resume":    {"/v1/schedules/nightly/resume", ""},
		"POST /v1/schedules/{name}/trigger":   {"/v1/schedules/nightly/trigger", ""},
		"POST /v1/operator/join-token/rotate": {"/v1/operator/join-token/rotate", ""},
		"POST /v1/operator/keyring":           {"/v1/operator/keyring", `{"op": "use", "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`},
		"POST /v1/queues/{name}":              {"/v1/queues/bulk", `{"limit": 5}`},
		"POST /v1/type-limits/{type}":         {"/v1/type-limits/sleep", `{"limit": 5}`},
		"POST /v1/workflows":                  {"/v1/workflows", `{"steps": [{"name": "a", "type": "sleep", "input": {"ms": 1}}]}`},
		"POST /v1/workflows/{id}/cancel":      {"/v1/workflows/" + wf.ID + "/cancel", ""},
		"POST /v1/rate-limits/{name}":         {"/v1/rate-limits/slow", `{"rate": "1/s", "burst": 2}`},
		"DELETE /v1/rate-limits/{name}":       {"/v1/rate-limits/slow", ""},
	}
	// Open by design: anyone may try to bootstrap, once per cluster.
	open := map[string]bool{"POST /v1/acl/bootstrap": true}
	walked := 0
	_, batchedBefore := f.fwd.Batched()
	for _, r := range httpapi.Routes() {
		if !r.Write {
			continue
		}
		walked++
		method, _, _ := strings.Cut(r.Pattern, " ")
		if open[r.Pattern] {
			_, _, by := apiCall(t, f, method, strings.TrimPrefix(r.Pattern, method+" "), "", "")
			if by != l.Name() {
				t.Errorf("%s: served by %q, want the leader %s", r.Pattern, by, l.Name())
			}
			continue
		}
		c, ok := calls[r.Pattern]
		if !ok {
			t.Errorf("write route %s has no request in this test: add one", r.Pattern)
			continue
		}
		t.Run(r.Pattern, func(t *testing.T) {
			// The tasks the management calls submit run meanwhile, and their reports change the
			// state too: a change in every one of three tries, each after the state held still
			// for a poll (or 3 s passed), is the refused write's. The state is what a write could
			// change (writeState), not the whole digest, which holds the applied index and the
			// node records: an entry of the cluster's own (a register after a membership flap
			// under load, a new leader's no-op) moves it without any request.
			changed := 0
			for range 3 {
				prev := ""
				_ = localcluster.Until(3*time.Second, 50*time.Millisecond, func() bool {
					d := writeState(t, l.FSM())
					still := d == prev
					prev = d
					return still
				})
				before := writeState(t, l.FSM())
				code, b, by := apiCall(t, f, method, c.path, weak.SecretID, c.body)
				if r.Pattern == "POST "+api.PathTasksBatch && code == http.StatusOK { // refused item by item
					var reply api.BatchSubmitReply
					mustJSON(t, b, &reply)
					if len(reply.Results) == 1 && reply.Results[0].Status == http.StatusForbidden {
						code = http.StatusForbidden
					}
				}
				// 404 for what the caller may not see: a schedule of a type it may not read.
				if by != l.Name() || code != http.StatusForbidden && code != http.StatusNotFound {
					t.Fatalf("with a token without the right: %d %s, served by %q; want 403 or 404 from the leader %s", code, b, by, l.Name())
				}
				if after := writeState(t, l.FSM()); after == before {
					break
				}
				changed++
			}
			if changed == 3 {
				t.Fatal("a refused write changed the leader's state")
			}
			code, b, by := apiCall(t, f, method, c.path, mgmt.SecretID, c.body)
			if by != l.Name() || code == http.StatusUnauthorized || code == http.StatusForbidden {
				t.Fatalf("with the management token: %d %s, served by %q; want it let in by the leader %s", code, b, by, l.Name())
			}
		})

	}
	if walked < len(calls) {
		t.Fatalf("walked %d write routes, fewer than the %d this test knows: httpapi.Routes is broken", walked, len(calls))
	}
	// The follower sends its forwards in batch calls (internal/forward's batch.go): the leader's
	// checks above ran on that path.
	if _, batched := f.fwd.Batched(); batched-batchedBefore < int64(2*len(calls)) {
		t.Fatalf("%d forwards went in batch calls, want at least the %d this test made", batched-batchedBefore, 2*len(calls))
	}
}

// The leader takes a node's own commands only on their routes, only of the route's type, and
// only about the calling node: a command of another type, a report for another node and a child
// of a task that does not run on the caller are refused without a change. (That each route
// decodes only its own type is internal/internode's unit test.)
func TestNodeRoutesTakeOnlyTheCallersOwnCommands(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	l, f := tc.leader(), tc.follower()
	// A command of another type on a node route, sent by hand as a node that skipped Send's own
	// check would: the leader refuses it.
	body, err := fsm.Encode(&fsm.Command{Now: time.Now(), Body: &fsm.Cancel{IDs: []string{"x"}}})
	if err != nil {
		t.Fatal(err)
	}
	req, err := f.internode.Request(t.Context(), http.MethodPost, f.internode.Addr(l.Name()), "/v1/internode/report", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.internode.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a cancel on the report route: %d, want 400", resp.StatusCode)
	}
	// What a child submit could change: the tasks (taskState). Not the whole digest, which holds
	// the applied index and the node records.
	before := taskState(t, l.FSM())
	child := &fsm.SubmitBatch{Items: []fsm.Submit{{ID: "forged", Type: "echo", Version: "1", Input: []byte(`"x"`), MaxAttempts: 1,
		Timeout: fsm.Duration(time.Minute), ExecutionID: "nope", ParentID: "nope"}}}
	_, err = f.internode.Send(t.Context(), f.internode.Addr(l.Name()), &fsm.Command{Body: child})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Fatalf("a child of a task that does not run: %v, want forbidden", err)
	}
	if after := taskState(t, l.FSM()); after != before {
		t.Fatalf("a refused command changed the leader's tasks: %s, then %s", before, after)
	}
}
