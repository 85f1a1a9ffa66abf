package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// policyToken applies a policy granting caps on each type and returns a token for it, through n.
func policyToken(t *testing.T, n *Node, mgmt, name string, caps string, types ...string) api.ACLToken {
	t.Helper()
	var rules []string
	for _, typ := range types {
		rules = append(rules, fmt.Sprintf(`{"task_type": %q, "capabilities": [%s]}`, typ, caps))
	}
	code, b := aclCall(t, n, "PUT", "/v1/acl/policy/"+name, mgmt, `{"rules": [`+strings.Join(rules, ",")+`]}`)
	if code != http.StatusOK {
		t.Fatalf("policy %s: %d %s", name, code, b)
	}
	code, b = aclCall(t, n, "POST", "/v1/acl/tokens", mgmt, fmt.Sprintf(`{"policies": [%q]}`, name))
	var tok api.ACLToken
	mustJSON(t, b, &tok)
	if code != http.StatusCreated {
		t.Fatalf("token %s: %d %s", name, code, b)
	}
	return tok
}

// parent_id and execution_id put a task into another principal's execution only for a caller that
// may read it, or for the parent's running attempt: refused on the node that takes the request and
// again on the leader, for a follower's forward that skipped the check.
func TestExecutionJoinNeedsTheParentsAttemptOrAReader(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true, registry: parentRegistry(t), tweak: func(_ int, c *Config) { c.ACL = true }})
	l, f := tc.leader(), tc.follower()
	mgmt := bootstrapACL(t, f).SecretID
	victim := policyToken(t, f, mgmt, "victim", `"submit", "read", "cancel", "logs"`, "sleep", "parent", "echo")
	attacker := policyToken(t, f, mgmt, "attacker", `"submit"`, "calc-square")

	code, b := aclCall(t, f, "POST", "/v1/tasks", victim.SecretID, `{"type": "sleep", "input": {"ms": 60000}}`)
	var root api.Task
	mustJSON(t, b, &root)
	if code != http.StatusCreated {
		t.Fatalf("victim submit: %d %s", code, b)
	}
	// Running everywhere: its start report is in, so nothing about it changes the state while the
	// leader's digest is compared below.
	waitFor(t, "every node has the victim's task running", 20*time.Second, func() bool {
		for _, n := range tc.nodes {
			if tk, ok := n.FSM().Task(root.ID); !ok || tk.State != fsm.Running {
				return false
			}
		}
		return true
	})
	for _, n := range []*Node{f, l} {
		for _, body := range []string{
			fmt.Sprintf(`{"type": "calc-square", "input": 2, "parent_id": %q, "execution_id": %q}`, root.ID, root.ID),
			fmt.Sprintf(`{"type": "calc-square", "input": 2, "execution_id": %q}`, root.ID),
			fmt.Sprintf(`{"type": "calc-square", "input": 2, "parent_id": %q}`, root.ID),
			`{"type": "calc-square", "input": 2, "parent_id": "01NOSUCHTASK", "execution_id": "01NOSUCHTASK"}`,
		} {
			code, b := aclCall(t, n, "POST", "/v1/tasks", attacker.SecretID, body)
			wantAPIError(t, "attacker joins through "+n.Name(), code, b, 403, api.CodeForbidden, "parent_id and execution_id")
			code, b = aclCall(t, n, "POST", api.PathTasksBatch, attacker.SecretID, `{"tasks": [`+body+`]}`)
			var reply api.BatchSubmitReply
			mustJSON(t, b, &reply)
			if code != http.StatusOK || len(reply.Results) != 1 || reply.Results[0].Status != 403 {
				t.Fatalf("attacker batch through %s: %d %s", n.Name(), code, b)
			}
		}
	}

	// Straight to the leader, as a follower that skipped its check would forward it.
	// What a join could change: the tasks (a child, its parent's record). Not the whole digest,
	// which holds the applied index and the node records (taskState).
	before := taskState(t, l.FSM())
	body := fmt.Sprintf(`{"type": "calc-square", "input": 2, "parent_id": %q, "execution_id": %q}`, root.ID, root.ID)
	code, b = forwardAs(t, f, l, "POST", "/v1/tasks", attacker.SecretID, body)
	wantAPIError(t, "forwarded join with the attacker's credential", code, b, 403, api.CodeForbidden, "parent_id and execution_id")
	// As a node's own child submit, only the parent's attempt may: same submitter, same execution.
	child := fsm.Submit{ID: "forged-2", Type: "echo", Version: "1", Input: json.RawMessage(`"x"`), MaxAttempts: 1,
		Timeout: fsm.Duration(time.Minute), ExecutionID: "01OTHEREXECUTION", ParentID: root.ID, SubmittedBy: victim.AccessorID}
	var ae *api.Error
	if _, err := f.internode.Send(t.Context(), f.internode.Addr(l.Name()), &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{child}}}); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Fatalf("forwarded child into another execution: %v", err)
	}
	if after := taskState(t, l.FSM()); after != before {
		t.Fatalf("a refused join changed the leader's tasks: %s, then %s", before, after)
	}

	// The victim's execution shows only the victim's task.
	code, b = aclCall(t, f, "GET", "/v1/tasks?execution="+root.ID, victim.SecretID, "")
	var list []api.Task
	mustJSON(t, b, &list)
	if code != http.StatusOK || len(list) != 1 || list[0].ID != root.ID {
		t.Fatalf("victim's execution: %d %s", code, b)
	}

	// A caller that may read the parent may join it; a running task's children still join theirs.
	code, b = aclCall(t, f, "POST", "/v1/tasks", victim.SecretID, fmt.Sprintf(`{"type": "echo", "input": 1, "parent_id": %q, "execution_id": %q}`, root.ID, root.ID))
	if code != http.StatusCreated {
		t.Fatalf("victim joins its own execution: %d %s", code, b)
	}
	code, b = aclCall(t, f, "POST", "/v1/tasks?wait=30s", victim.SecretID, `{"type": "parent"}`)
	var parent api.Task
	mustJSON(t, b, &parent)
	if code != http.StatusCreated || parent.State != api.StateSucceeded {
		t.Fatalf("a task that submits a child: %d %s", code, b)
	}
	var childID string
	_ = json.Unmarshal(parent.Result, &childID)
	if tk, ok := f.FSM().Task(childID); !ok || tk.ParentID != parent.ID || tk.SubmittedBy != victim.AccessorID {
		t.Fatalf("child %q: %+v", childID, tk)
	}
}

// Idempotency keys are cluster-wide, unique keys per type: a submit that reuses another
// principal's key must not be answered with that principal's task, nor its ID, when the caller may
// not read it.
func TestReusedIdempotencyKeyDoesNotShowAnotherPrincipalsTask(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.ACL = true }})
	n := tc.nodes[0]
	mgmt := bootstrapACL(t, n).SecretID
	victim := policyToken(t, n, mgmt, "victim", `"submit", "read"`, "echo")
	attacker := policyToken(t, n, mgmt, "attacker", `"submit"`, "echo", "calc-square")

	code, b := aclCall(t, n, "POST", "/v1/tasks", victim.SecretID, `{"type": "echo", "input": "victim-secret", "idempotency_key": "k1"}`)
	var first api.Task
	mustJSON(t, b, &first)
	if code != http.StatusCreated {
		t.Fatalf("victim submit: %d %s", code, b)
	}
	for _, body := range []string{
		`{"type": "calc-square", "input": 2, "idempotency_key": "k1"}`,
		`{"type": "echo", "input": 1, "idempotency_key": "k1"}`,
	} {
		code, b := aclCall(t, n, "POST", "/v1/tasks", attacker.SecretID, body)
		wantAPIError(t, "attacker reuses the key", code, b, 403, api.CodeForbidden, "idempotency_key")
		if strings.Contains(string(b), "victim-secret") || strings.Contains(string(b), first.ID) {
			t.Fatalf("the refusal shows the victim's task: %s", b)
		}
		code, b = aclCall(t, n, "POST", api.PathTasksBatch, attacker.SecretID, `{"tasks": [`+body+`]}`)
		if code != http.StatusOK || !strings.Contains(string(b), `"status":403`) || strings.Contains(string(b), "victim-secret") {
			t.Fatalf("attacker batch reuses the key: %d %s", code, b)
		}
	}
	// The key's holder gets its task back, as before; so does a submitter that may not read its
	// own type, for its own task.
	code, b = aclCall(t, n, "POST", "/v1/tasks", victim.SecretID, `{"type": "echo", "input": "again", "idempotency_key": "k1"}`)
	if code != http.StatusOK || !strings.Contains(string(b), first.ID) {
		t.Fatalf("victim resubmits: %d %s", code, b)
	}
	if code, b := aclCall(t, n, "POST", "/v1/tasks", attacker.SecretID, `{"type": "calc-square", "input": 2, "idempotency_key": "k2"}`); code != http.StatusCreated {
		t.Fatalf("attacker submit: %d %s", code, b)
	}
	if code, b := aclCall(t, n, "POST", "/v1/tasks", attacker.SecretID, `{"type": "calc-square", "input": 2, "idempotency_key": "k2"}`); code != http.StatusOK {
		t.Fatalf("attacker resubmits its own: %d %s", code, b)
	}

	// A unique key's conflict names the holder only to a caller that may read it.
	unique := `{"type": "echo", "input": 3, "unique_key": "u1", "unique_for": "1h"}`
	code, b = aclCall(t, n, "POST", "/v1/tasks", victim.SecretID, unique)
	var holder api.Task
	mustJSON(t, b, &holder)
	if code != http.StatusCreated {
		t.Fatalf("victim unique submit: %d %s", code, b)
	}
	code, b = aclCall(t, n, "POST", "/v1/tasks", attacker.SecretID, unique)
	wantAPIError(t, "attacker's unique conflict", code, b, 409, api.CodeDuplicateUniqueKey, "unique key")
	if strings.Contains(string(b), holder.ID) {
		t.Fatalf("the conflict names the victim's task: %s", b)
	}
	code, b = aclCall(t, n, "POST", api.PathTasksBatch, attacker.SecretID, `{"tasks": [`+unique+`]}`)
	if code != http.StatusOK || !strings.Contains(string(b), `"status":409`) || strings.Contains(string(b), holder.ID) {
		t.Fatalf("attacker's unique conflict in a batch: %d %s", code, b)
	}
	code, b = aclCall(t, n, "POST", "/v1/tasks", victim.SecretID, unique)
	if code != http.StatusConflict || !strings.Contains(string(b), holder.ID) {
		t.Fatalf("victim's own unique conflict: %d %s, want it to name %s", code, b, holder.ID)
	}
}
