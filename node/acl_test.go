package node

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// aclCall sends a request with a credential ("" for none) and returns status and body.
func aclCall(t *testing.T, n *Node, method, path, secret, body string) (int, []byte) {
	t.Helper()
	code, b, _ := apiCall(t, n, method, path, secret, body)
	return code, b
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func wantAPIError(t *testing.T, what string, status int, b []byte, wantStatus int, code api.Code, says string) {
	t.Helper()
	var e api.Error
	_ = json.Unmarshal(b, &e)
	if status != wantStatus || e.Code != code || !strings.Contains(e.Message, says) {
		t.Fatalf("%s: %d %s, want %d %s saying %q", what, status, b, wantStatus, code, says)
	}
}

func aclCluster(t *testing.T) *testCluster {
	return startCluster(t, 3, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.ACL = true }})
}

// bootstrapACL bootstraps through n and returns the management token.
func bootstrapACL(t *testing.T, n *Node) api.ACLToken {
	t.Helper()
	code, b := aclCall(t, n, "POST", "/v1/acl/bootstrap", "", "")
	var tok api.ACLToken
	mustJSON(t, b, &tok)
	if code != http.StatusOK || tok.SecretID == "" || !tok.Management {
		t.Fatalf("bootstrap through %s: %d %s", n.Name(), code, b)
	}
	return tok
}

// teamToken applies a policy granting echo (and only echo) and makes a token for it, through n.
func teamToken(t *testing.T, n *Node, mgmt string) api.ACLToken {
	t.Helper()
	code, b := aclCall(t, n, "PUT", "/v1/acl/policy/team", mgmt,
		`{"description": "the echo team", "rules": [{"task_type": "echo", "capabilities": ["submit", "read", "cancel", "logs"]}]}`)
	if code != http.StatusOK {
		t.Fatalf("policy apply: %d %s", code, b)
	}
	code, b = aclCall(t, n, "POST", "/v1/acl/tokens", mgmt, `{"policies": ["team"], "description": "team", "ttl": "1h"}`)
	var tok api.ACLToken
	mustJSON(t, b, &tok)
	if code != http.StatusCreated || tok.SecretID == "" || tok.ExpirationTime == nil {
		t.Fatalf("token create: %d %s", code, b)
	}
	return tok
}

func TestACLClusterAuthorizesThroughFollowers(t *testing.T) {
	tc := aclCluster(t)
	f := tc.follower()
	code, b := aclCall(t, f, "GET", "/v1/cluster", "", "")
	wantAPIError(t, "before bootstrap", code, b, 401, api.CodeUnauthorized, "no token")

	mgmt := bootstrapACL(t, f)
	code, b = aclCall(t, f, "POST", "/v1/acl/bootstrap", mgmt.SecretID, "")
	wantAPIError(t, "second bootstrap", code, b, 409, api.CodeACLBootstrapped, "already")
	team := teamToken(t, f, mgmt.SecretID)

	// The team token submits its type through a follower, and nothing else.
	code, b = aclCall(t, f, "POST", "/v1/tasks?wait=20s", team.SecretID, `{"type": "echo", "input": "hi"}`)
	var echo api.Task
	mustJSON(t, b, &echo)
	if code != http.StatusCreated || echo.State != api.StateSucceeded || echo.SubmittedBy != team.AccessorID {
		t.Fatalf("team submit echo: %d %s", code, b)
	}
	code, b = aclCall(t, f, "POST", "/v1/tasks", team.SecretID, `{"type": "calc-square", "input": 3}`)
	wantAPIError(t, "team submit calc-square", code, b, 403, api.CodeForbidden, `missing capability "submit" on task type "calc-square"`)
	code, b = aclCall(t, f, "POST", "/v1/tasks?wait=20s", mgmt.SecretID, `{"type": "calc-square", "input": 3}`)
	var square api.Task
	mustJSON(t, b, &square)
	if code != http.StatusCreated || square.SubmittedBy != mgmt.AccessorID {
		t.Fatalf("management submit: %d %s", code, b)
	}

	// Lists show the team only its type; reads of another type are refused.
	code, b = aclCall(t, f, "GET", "/v1/tasks", team.SecretID, "")
	var list []api.Task
	mustJSON(t, b, &list)
	if code != http.StatusOK || len(list) != 1 || list[0].ID != echo.ID {
		t.Fatalf("team list: %d %s", code, b)
	}
	code, b = aclCall(t, f, "GET", "/v1/tasks?limit=1&type=calc-square", mgmt.SecretID, "")
	mustJSON(t, b, &list)
	if code != http.StatusOK || len(list) != 1 || list[0].ID != square.ID {
		t.Fatalf("management list: %s", b)
	}
	code, b = aclCall(t, f, "GET", "/v1/tasks/"+square.ID, team.SecretID, "")
	wantAPIError(t, "team get calc-square", code, b, 404, api.CodeNotFound, "not found")

	// Every replica records the submitter.
	for _, n := range tc.nodes {
		waitFor(t, n.Name()+" has both tasks", 20*time.Second, func() bool {
			e, ok1 := n.FSM().Task(echo.ID)
			s, ok2 := n.FSM().Task(square.ID)
			return ok1 && ok2 && e.SubmittedBy == team.AccessorID && s.SubmittedBy == mgmt.AccessorID
		})
	}

	// A deleted token stops working on every node.
	if code, b := aclCall(t, f, "DELETE", "/v1/acl/token/"+team.AccessorID, mgmt.SecretID, ""); code != http.StatusNoContent {
		t.Fatalf("token delete: %d %s", code, b)
	}
	for _, n := range tc.nodes {
		waitFor(t, n.Name()+" forgets the team token", 20*time.Second, func() bool {
			code, _ := aclCall(t, n, "GET", "/v1/acl/token/self", team.SecretID, "")
			return code == http.StatusUnauthorized
		})
	}
}

// A follower that skipped its own check (or was lied to) cannot get a write past the leader: the
// leader's API handlers resolve and authorize the forwarded credential, and validate the request.
func TestLeaderAuthorizesForwardedCommandsAgain(t *testing.T) {
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
	// Once it runs, its record holds still, so the leader's tasks change only if a forward applies.
	waitFor(t, "sleep running", 20*time.Second, func() bool {
		tk, _ := l.FSM().Task(sleeper.ID)
		return tk.State == fsm.Running
	})
	submitSquare := `{"type": "calc-square", "input": 2}`
	// A submit the API would refuse, sent straight to the leader by an authorized caller.
	badSubmit := func(fields string) string { return `{"type": "calc-square", "input": 2, ` + fields + `}` }
	tests := []struct {
		name               string
		secret             string
		method, path, body string
		code               api.Code
		says               string
	}{
		{"submit of a type the token lacks", team.SecretID, "POST", "/v1/tasks", submitSquare, api.CodeForbidden, `"submit" on task type "calc-square"`},
		{"submit without a credential", "", "POST", "/v1/tasks", submitSquare, api.CodeUnauthorized, "token"},
		{"submit with an unknown credential", "tws_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "POST", "/v1/tasks", submitSquare, api.CodeUnauthorized, "unknown token"},
		// A task the caller may not read is not found, as it is for a request to the leader itself.
		{"cancel of a type the token may not read", team.SecretID, "POST", "/v1/tasks/" + sleeper.ID + "/cancel", "", api.CodeNotFound, "not found"},
		{"policy write without the acl right", team.SecretID, "PUT", "/v1/acl/policy/all", `{"rules": [{"task_type": "*", "capabilities": ["submit"]}]}`, api.CodeForbidden, `"acl"`},
		{"token delete without a credential", "", "DELETE", "/v1/acl/token/" + mgmt.AccessorID, "", api.CodeUnauthorized, "token"},
		// Validated on the leader, whatever the follower checked.
		{"submit with an input of the wrong shape", mgmt.SecretID, "POST", "/v1/tasks", `{"type": "calc-square", "input": "x"}`, api.CodeInvalidInput, "calc-square"},
		{"submit of an unknown type", mgmt.SecretID, "POST", "/v1/tasks", `{"type": "no-such-type"}`, api.CodeUnknownTaskType, "no-such-type"},
		{"submit with too many attempts", mgmt.SecretID, "POST", "/v1/tasks", badSubmit(`"max_attempts": 1000`), api.CodeInvalidMaxAttempts, "max_attempts"},
		{"submit with a bad timeout", mgmt.SecretID, "POST", "/v1/tasks", badSubmit(`"timeout": "-1s"`), api.CodeInvalidTimeout, "timeout"},
		{"submit with a bad version", mgmt.SecretID, "POST", "/v1/tasks", badSubmit(`"version": "1 2"`), api.CodeInvalidVersion, "version"},
		{"submit with an oversized input", mgmt.SecretID, "POST", "/v1/tasks", `{"type": "calc-square", "input": ` + strings.Repeat("1", 260<<10) + `}`, api.CodeInputTooLarge, "input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// What these requests could change: the tasks (submits, a cancel) and the ACL.
			state := func() string { return taskState(t, l.FSM()) + aclState(t, l.FSM()) }
			before := state()
			code, b := forwardAs(t, f, l, tt.method, tt.path, tt.secret, tt.body)
			wantAPIError(t, tt.name, code, b, api.Status(tt.code), tt.code, tt.says)
			if after := state(); after != before {
				t.Errorf("a refused forward changed the leader's state: %s, then %s", before, after)
			}
		})
	}
	// The same path works for a credential that may: the leader records whom it resolved.
	code, b = forwardAs(t, f, l, "POST", "/v1/tasks", mgmt.SecretID, submitSquare)
	var sq api.Task
	mustJSON(t, b, &sq)
	if tk, ok := l.FSM().Task(sq.ID); code != http.StatusCreated || !ok || tk.SubmittedBy != mgmt.AccessorID {
		t.Fatalf("allowed forward: %d %s %+v", code, b, tk)
	}
}

// aclCoverage adds the ACL routes' replies, and a task record with submitted_by, to the wire
// coverage of TestEveryRouteMatchesItsAPIType.
func aclCoverage(t *testing.T, cov coverage) {
	n := startCluster(t, 1, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.ACL = true }}).nodes[0]
	add := func(what string, code, want int, b []byte, v any) {
		t.Helper()
		if code != want {
			t.Fatalf("%s: %d %s", what, code, b)
		}
		decodeExact(t, what, b, v)
		cov.add(t, reflect.TypeOf(v).Elem(), b)
	}
	code, b := aclCall(t, n, "POST", "/v1/acl/bootstrap", "", "")
	var mgmt api.ACLToken
	add("POST /v1/acl/bootstrap", code, 200, b, &mgmt)
	_ = json.Unmarshal(b, &mgmt)
	team := teamToken(t, n, mgmt.SecretID)
	if code, b := aclCall(t, n, "PUT", "/v1/acl/policy/ops", mgmt.SecretID, `{"name": "ops", "cluster": ["operator"],
		"quota": {"pending": 1000, "schedules": 10, "schedule_min_interval": "5s", "schedule_input_bytes": 4096, "retained": 5000}}`); code != 200 {
		t.Fatalf("policy apply: %d %s", code, b)
	}
	code, b = aclCall(t, n, "GET", "/v1/acl/policies", mgmt.SecretID, "")
	add("GET /v1/acl/policies", code, 200, b, new([]api.ACLPolicy))
	code, b = aclCall(t, n, "GET", "/v1/acl/tokens", mgmt.SecretID, "")
	add("GET /v1/acl/tokens", code, 200, b, new([]api.ACLToken))
	if bytes.Contains(b, []byte(team.SecretID)) || bytes.Contains(b, []byte("secret")) {
		t.Fatalf("token list shows secrets: %s", b)
	}
	code, b = aclCall(t, n, "POST", "/v1/acl/tokens", mgmt.SecretID, `{"policies": ["team"], "ttl": "24h"}`)
	add("POST /v1/acl/tokens", code, 201, b, new(api.ACLToken))
	for _, secret := range []string{mgmt.SecretID, team.SecretID} {
		code, b = aclCall(t, n, "GET", "/v1/acl/token/self", secret, "")
		add("GET /v1/acl/token/self", code, 200, b, new(api.ACLSelf))
	}
	code, b = aclCall(t, n, "POST", "/v1/tasks?wait=20s", team.SecretID, `{"type": "echo", "input": 1}`)
	add("POST /v1/tasks with ACLs", code, 201, b, new(api.Task))
}
