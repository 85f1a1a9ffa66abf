package clicmd

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// queueNode fakes the queue routes and the submit route, recording each request body.
func queueNode(t *testing.T) (*[]string, string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		b, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(b)))
		if r.Header.Get("Authorization") == "Bearer guest" && r.Method == "POST" {
			reply(w, 403, api.Errorf(api.CodeForbidden, "operator right needed"))
			return
		}
		switch {
		case r.URL.Path == api.PathQueues:
			reply(w, 200, api.QueueList{Queues: []api.Queue{{Name: "default", Pending: 4}, {Name: "mail", Limit: 3, Paused: true, Running: 2}}})
		case r.URL.Path == api.PathTypeLimits:
			reply(w, 200, api.TypeLimitList{Limits: []api.TypeLimit{{Type: "echo", Limit: 2, Running: 1}}})
		case strings.HasPrefix(r.URL.Path, api.PathQueues+"/"):
			var u api.QueueUpdate
			_ = json.Unmarshal(b, &u)
			q := api.Queue{Name: strings.TrimPrefix(r.URL.Path, api.PathQueues+"/")}
			if u.Limit != nil {
				q.Limit = *u.Limit
			}
			if u.Paused != nil {
				q.Paused = *u.Paused
			}
			if u.ConcurrencyKey != nil {
				q.ConcurrencyKey, q.ConcurrencyLimit = *u.ConcurrencyKey, *u.ConcurrencyLimit
			}
			reply(w, 200, q)
		case strings.HasPrefix(r.URL.Path, api.PathTypeLimits+"/"):
			var u api.TypeLimitUpdate
			_ = json.Unmarshal(b, &u)
			reply(w, 200, api.TypeLimit{Type: strings.TrimPrefix(r.URL.Path, api.PathTypeLimits+"/"), Limit: u.Limit})
		case r.URL.Path == "/v1/tasks":
			reply(w, 201, api.Task{ID: "01JTASK", State: api.StateScheduled})
		default:
			reply(w, 404, api.Errorf(api.CodeNotFound, "no route"))
		}
	}))
	t.Cleanup(srv.Close)
	return &got, srv.URL
}

func TestQueueCommands(t *testing.T) {
	got, addr := queueNode(t)
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdoutIn string
		request  string // the request it sends last ("" for none)
	}{
		{name: "list", args: []string{"queue", "list", "--addr", addr}, stdoutIn: "mail     3      yes     0          0        2",
			request: "GET /v1/type-limits "},
		{name: "pause", args: []string{"queue", "pause", "--addr", addr, "mail"}, stdoutIn: "queue mail: paused",
			request: `POST /v1/queues/mail {"paused":true}`},
		{name: "resume", args: []string{"queue", "resume", "--addr", addr, "mail"}, stdoutIn: "queue mail: running",
			request: `POST /v1/queues/mail {"paused":false}`},
		{name: "set-limit", args: []string{"queue", "set-limit", "--addr", addr, "mail", "3"}, stdoutIn: "limit 3",
			request: `POST /v1/queues/mail {"limit":3}`},
		{name: "set-limit 0 is no limit", args: []string{"queue", "set-limit", "--addr", addr, "mail", "0"}, stdoutIn: "limit none",
			request: `POST /v1/queues/mail {"limit":0}`},
		{name: "set-type-limit", args: []string{"queue", "set-type-limit", "--addr", addr, "echo", "2"}, stdoutIn: "type echo: limit 2",
			request: `POST /v1/type-limits/echo {"limit":2}`},
		{name: "bad limit", args: []string{"queue", "set-limit", "--addr", addr, "mail", "-1"}, code: 2},
		{name: "bad name", args: []string{"queue", "pause", "--addr", addr, "no/slash"}, code: 2},
		{name: "without operator rights", args: []string{"queue", "pause", "--addr", addr, "--token", "guest", "mail"}, code: 1,
			request: `POST /v1/queues/mail {"paused":true}`},
		{name: "submit with schedule flags", args: []string{"submit", "--addr", addr, "--delay", "2s", "--priority", "5", "--queue", "mail", "echo", `"hi"`},
			stdoutIn: "01JTASK", request: `POST /v1/tasks {"type":"echo","input":"hi","delay":"2s","priority":5,"queue":"mail"}`},
		{name: "set-concurrency", args: []string{"queue", "set-concurrency", "--addr", addr, "mail", "tenant-{/t}", "4"},
			stdoutIn: "concurrency key tenant-{/t} at most 4", request: `POST /v1/queues/mail {"concurrency_key":"tenant-{/t}","concurrency_limit":4}`},
		{name: "set-concurrency removes", args: []string{"queue", "set-concurrency", "--addr", addr, "mail", "", "0"},
			stdoutIn: "queue mail: running, limit none, 0", request: `POST /v1/queues/mail {"concurrency_key":"","concurrency_limit":0}`},
		{name: "set-concurrency bad limit", args: []string{"queue", "set-concurrency", "--addr", addr, "mail", "{/t}", "x"}, code: 2},
		{name: "submit with a concurrency key", args: []string{"submit", "--addr", addr, "--concurrency-key", "k", "--concurrency-limit", "2", "echo"},
			stdoutIn: "01JTASK", request: `POST /v1/tasks {"type":"echo","input":null,"concurrency_key":"k","concurrency_limit":2}`},
		{name: "concurrency key without limit", args: []string{"submit", "--addr", addr, "--concurrency-key", "k", "echo"}, code: 2},
		{name: "delay and run-at", args: []string{"submit", "--addr", addr, "--delay", "2s", "--run-at", "2030-01-01T00:00:00Z", "echo"}, code: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(*got)
			stdout, stderr, code := run(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdoutIn) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d and stdout with %q", code, stdout, stderr, tc.code, tc.stdoutIn)
			}
			last := ""
			if len(*got) > before {
				last = (*got)[len(*got)-1]
			}
			if last != tc.request {
				t.Errorf("request %q, want %q", last, tc.request)
			}
		})
	}
}
