package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// serve starts a fake of the API answering with mux and returns a client for it.
func serve(t *testing.T, mux *http.ServeMux, opts ...client.Option) *client.Client {
	t.Helper()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return client.New(srv.URL, opts...)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func TestNewAcceptsBareHostPort(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]string{"status": "ok", "leader": "n1"})
	}))
	defer srv.Close()
	leader, err := client.New(strings.TrimPrefix(srv.URL, "http://") + "/").Health(context.Background())
	if err != nil || leader != "n1" {
		t.Fatalf("Health = %q, %v; want n1", leader, err)
	}
}

func TestSubmitSendsBodyAndTokenAndReportsCreated(t *testing.T) {
	seen := map[string]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer s3cret" {
			t.Errorf("Authorization = %q", got)
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type = %q", got)
		}
		body, _ := io.ReadAll(r.Body)
		want := `{"type":"sleep","input":{"ms":5},"idempotency_key":"k","max_attempts":2,"timeout":"1s"}`
		if string(body) != want {
			t.Errorf("body = %s, want %s", body, want)
		}
		status := http.StatusCreated
		if seen["k"] {
			status = http.StatusOK
		}
		seen["k"] = true
		writeJSON(w, status, client.Task{ID: "t1", Type: "sleep", State: "pending", Input: json.RawMessage(`{"ms":5}`)})
	})
	c := serve(t, mux, client.WithToken("s3cret"))
	req := client.SubmitRequest{Type: "sleep", Input: json.RawMessage(`{"ms": 5}`), IdempotencyKey: "k", MaxAttempts: 2, Timeout: "1s"}
	for i, wantCreated := range []bool{true, false} {
		task, created, err := c.Submit(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if task.ID != "t1" || created != wantCreated {
			t.Errorf("submit %d: id %q created %v, want t1 %v", i, task.ID, created, wantCreated)
		}
	}
}

func TestSubmitWaitPassesWait(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("wait"); got != "2s" {
			t.Errorf("wait = %q, want 2s", got)
		}
		writeJSON(w, http.StatusCreated, client.Task{ID: "t1", State: "succeeded", Result: json.RawMessage(`4`)})
	})
	task, err := serve(t, mux).SubmitWait(context.Background(), client.SubmitRequest{Type: "calc-square", Input: json.RawMessage(`2`)}, 2*time.Second)
	if err != nil || string(task.Result) != "4" {
		t.Fatalf("SubmitWait = %+v, %v", task, err)
	}
}

func TestErrorsDecodeIntoAPIError(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no task " + r.PathValue("id"), "code": "not_found"})
	})
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream broke", http.StatusBadGateway) // not JSON
	})
	c := serve(t, mux)

	_, err := c.Get(context.Background(), "nope")
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("Get error %v is not an *APIError", err)
	}
	want := client.APIError{StatusCode: 404, Message: "no task nope", Code: "not_found"}
	if *apiErr != want || !client.IsNotFound(err) {
		t.Errorf("APIError = %+v, want %+v", *apiErr, want)
	}
	if !strings.Contains(err.Error(), "no task nope (404 not_found)") {
		t.Errorf("message %q lacks the API's sentence", err)
	}

	_, _, err = c.Submit(context.Background(), client.SubmitRequest{Type: "echo"})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || apiErr.Message != "Bad Gateway" || client.IsNotFound(err) {
		t.Errorf("non-JSON error = %#v, want status text", err)
	}
}

func TestWaitDoneFollowsModifyIndexAndRetries503(t *testing.T) {
	var calls atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		q := r.URL.Query()
		if q.Get("wait") == "" {
			t.Errorf("call %d is not a blocking query: %s", n, r.URL.RawQuery)
		}
		wantIndex := map[int32]string{1: "0", 2: "5", 3: "5", 4: "5"}[n]
		if got := q.Get("index"); got != wantIndex {
			t.Errorf("call %d: index = %s, want %s", n, got, wantIndex)
		}
		switch n {
		case 1:
			writeJSON(w, 200, client.Task{ID: "t1", State: "running", ModifyIndex: 5})
		case 2:
			writeJSON(w, 200, client.Task{ID: "t1", State: "running", ModifyIndex: 5}) // the wait elapsed
		case 3:
			writeJSON(w, 503, map[string]string{"error": "no leader", "code": "no_leader"})
		default:
			writeJSON(w, 200, client.Task{ID: "t1", State: "succeeded", ModifyIndex: 9})
		}
	})
	task, err := serve(t, mux).WaitDone(context.Background(), "t1")
	if err != nil || task.State != "succeeded" || calls.Load() != 4 {
		t.Fatalf("WaitDone = %+v, %v after %d calls", task, err, calls.Load())
	}
}

func TestWaitDoneStopsWithContext(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, client.Task{ID: "t1", State: "running", ModifyIndex: 1})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := serve(t, mux).WaitDone(ctx, "t1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitDone error = %v, want deadline exceeded", err)
	}
}

func TestWaitSendsIndex(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.RawQuery; got != "index=7&wait=1m0s" {
			t.Errorf("query = %q", got)
		}
		writeJSON(w, 200, client.Task{ID: r.PathValue("id"), ModifyIndex: 8})
	})
	task, err := serve(t, mux).Wait(context.Background(), "t1", 7, time.Minute)
	if err != nil || task.ModifyIndex != 8 {
		t.Fatalf("Wait = %+v, %v", task, err)
	}
}

func TestListSendsFiltersAndAcceptsBothEnvelopes(t *testing.T) {
	for _, body := range []string{`[{"id":"b"},{"id":"a"}]`, `{"tasks":[{"id":"b"},{"id":"a"}]}`} {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
			want := "after=c&execution=e1&limit=2&node=n1&state=running&type=sleep"
			if got := r.URL.RawQuery; got != want {
				t.Errorf("query = %q, want %q", got, want)
			}
			fmt.Fprint(w, body)
		})
		tasks, err := serve(t, mux).List(context.Background(), client.ListOptions{
			State: "running", Type: "sleep", Node: "n1", Execution: "e1", Limit: 2, After: "c",
		})
		if err != nil || len(tasks) != 2 || tasks[0].ID != "b" {
			t.Errorf("List of %s = %+v, %v", body, tasks, err)
		}
	}
}

func TestListPageAndListAllFollowTheCursor(t *testing.T) {
	pages := map[string]struct{ body, next string }{
		"":   {`[{"id":"c"},{"id":"b"}]`, "p2"},
		"p2": {`[{"id":"a"}]`, ""},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		p, ok := pages[r.URL.Query().Get("next")]
		if !ok || r.URL.Query().Get("limit") != "2" || r.URL.Query().Get("state") != "pending" {
			http.Error(w, "bad query "+r.URL.RawQuery, 400)
			return
		}
		if p.next != "" {
			w.Header().Set(api.HeaderNext, p.next)
		}
		w.Header().Set(api.HeaderTotal, "3")
		fmt.Fprint(w, p.body)
	})
	c := serve(t, mux)
	opts := client.ListOptions{State: "pending", Limit: 2}
	page, err := c.ListPage(context.Background(), opts)
	if err != nil || len(page.Tasks) != 2 || page.Next != "p2" || page.Total != 3 {
		t.Fatalf("ListPage = %+v, %v", page, err)
	}
	var got []string
	for task, err := range c.ListAll(context.Background(), opts) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, task.ID)
	}
	if !reflect.DeepEqual(got, []string{"c", "b", "a"}) {
		t.Errorf("ListAll = %v, want [c b a]", got)
	}
}

func TestCancel(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "done" {
			writeJSON(w, 409, map[string]string{"error": "task has ended", "code": "conflict"})
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	c := serve(t, mux)
	if err := c.Cancel(context.Background(), "t1"); err != nil {
		t.Errorf("Cancel = %v", err)
	}
	var apiErr *client.APIError
	if err := c.Cancel(context.Background(), "done"); !errors.As(err, &apiErr) || apiErr.Code != "conflict" {
		t.Errorf("Cancel of ended task = %v, want conflict", err)
	}
}

// logServer streams lines one at a time, writing the next only after next is
// signalled, so a test can prove each line reaches the caller before the
// stream ends.
func logServer(t *testing.T, lines []client.LogLine, next <-chan struct{}) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "true" {
			t.Errorf("logs not followed: %q", r.URL.RawQuery)
		}
		enc := json.NewEncoder(w)
		for _, l := range lines {
			_ = enc.Encode(l)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	})
	return mux
}

func TestLogsStreamsLineByLine(t *testing.T) {
	lines := []client.LogLine{
		{Attempt: 1, Node: "n1", Stream: "stdout", Line: "hello"},
		{Attempt: 1, Node: "n1", Stream: "log", Level: "info", Line: "Calculating square of 3"},
	}
	next := make(chan struct{})
	var got []client.LogLine
	err := serve(t, logServer(t, lines, next)).Logs(context.Background(), "t1", true, func(l client.LogLine) error {
		got = append(got, l)
		next <- struct{}{} // the server holds the next line until this one arrived
		return nil
	})
	if err != nil || !reflect.DeepEqual(got, lines) {
		t.Fatalf("Logs = %+v, %v; want %+v", got, err, lines)
	}
}

func TestLogsStopsOnCallbackError(t *testing.T) {
	stop := errors.New("enough")
	lines := []client.LogLine{{Line: "a"}, {Line: "b"}}
	next := make(chan struct{}, len(lines))
	n := 0
	err := serve(t, logServer(t, lines, next)).Logs(context.Background(), "t1", true, func(client.LogLine) error {
		n++
		next <- struct{}{}
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Logs = %v after %d lines, want the callback's error after 1", err, n)
	}
}

// execServer fakes a task that succeeds with result 9 after writing lines;
// followLogs decides what the follow stream does.
func execServer(t *testing.T, lines []client.LogLine, followLogs http.HandlerFunc) *http.ServeMux {
	var done atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, client.Task{ID: "t1", State: "pending", ModifyIndex: 1})
	})
	mux.HandleFunc("GET /v1/tasks/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") == "true" {
			followLogs(w, r)
			done.Store(true)
			return
		}
		for _, l := range lines {
			_ = json.NewEncoder(w).Encode(l)
		}
	})
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		// Exec follows the record (for retries) while the logs stream: the task runs until
		// its log stream has ended, as on a node.
		if !done.Load() {
			writeJSON(w, 200, client.Task{ID: "t1", State: "running", ModifyIndex: 2})
			return
		}
		writeJSON(w, 200, client.Task{ID: "t1", State: "succeeded", Result: json.RawMessage(`9`), ModifyIndex: 4})
	})
	return mux
}

func TestExecStreamsLogsThenReturnsTheEndedTask(t *testing.T) {
	lines := []client.LogLine{{Stream: "log", Level: "info", Line: "one"}, {Stream: "stdout", Line: "two"}}
	cases := map[string]http.HandlerFunc{
		"follow streams every line": func(w http.ResponseWriter, r *http.Request) {
			for _, l := range lines {
				_ = json.NewEncoder(w).Encode(l)
			}
		},
		"follow unsupported, lines fetched after the end": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 404, map[string]string{"error": "no such route", "code": "not_found"})
		},
		"follow breaks after one line, the rest fetched after the end": func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewEncoder(w).Encode(lines[0])
			fmt.Fprint(w, `{"line": "tru`)
		},
	}
	for name, follow := range cases {
		t.Run(name, func(t *testing.T) {
			var got []string
			task, err := serve(t, execServer(t, lines, follow)).Exec(context.Background(),
				client.SubmitRequest{Type: "calc-square", Input: json.RawMessage(`3`)},
				func(l client.LogLine) { got = append(got, l.Line) })
			if err != nil || task.State != "succeeded" || string(task.Result) != "9" {
				t.Fatalf("Exec = %+v, %v", task, err)
			}
			if want := []string{"one", "two"}; !reflect.DeepEqual(got, want) {
				t.Errorf("lines = %q, want %q", got, want)
			}
		})
	}
}

func TestClusterTypesHealthLeave(t *testing.T) {
	healthy := true
	var leaves []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"leader":"n1","nodes":[{"name":"n1","gossip_addr":"10.0.0.1:7946","raft_addr":"10.0.0.1:7947",
			"http_addr":"10.0.0.1:7948","state":"alive","draining":true,"raft_role":"leader","capacity":4,"running":1,
			"version":"dev","task_types":[{"type":"echo","version":"1"}]}],"tasks":{"pending":2}}`)
	})
	mux.HandleFunc("GET /v1/types", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `[{"type":"echo","version":"1","description":"returns its input","example_input":{"a":1},"nodes":["n1"]}]`)
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		if healthy {
			writeJSON(w, 200, map[string]string{"status": "ok", "leader": "n1"})
			return
		}
		writeJSON(w, 503, map[string]string{"error": "no leader", "code": "no_leader"})
	})
	mux.HandleFunc("POST /v1/agent/leave", func(w http.ResponseWriter, r *http.Request) {
		leaves = append(leaves, r.URL.RawQuery)
		w.WriteHeader(http.StatusAccepted)
	})
	c := serve(t, mux)
	ctx := context.Background()

	cl, err := c.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantNode := client.NodeInfo{Name: "n1", GossipAddr: "10.0.0.1:7946", RaftAddr: "10.0.0.1:7947", HTTPAddr: "10.0.0.1:7948",
		State: "alive", Draining: true, RaftRole: "leader", Capacity: 4, Running: 1, Version: "dev",
		TaskTypes: []client.TypeVersion{{Type: "echo", Version: "1"}}}
	if cl.Leader != "n1" || len(cl.Nodes) != 1 || !reflect.DeepEqual(cl.Nodes[0], wantNode) || cl.Tasks["pending"] != 2 {
		t.Errorf("Cluster = %+v", cl)
	}

	types, err := c.Types(ctx)
	if err != nil || len(types) != 1 || types[0].Description != "returns its input" || string(types[0].ExampleInput) != `{"a":1}` {
		t.Errorf("Types = %+v, %v", types, err)
	}

	if leader, err := c.Health(ctx); leader != "n1" || err != nil {
		t.Errorf("Health = %q, %v", leader, err)
	}
	healthy = false
	var apiErr *client.APIError
	if _, err := c.Health(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
		t.Errorf("Health without leader = %v, want 503", err)
	}

	if err := c.Leave(ctx, false); err != nil {
		t.Error(err)
	}
	if err := c.Leave(ctx, true); err != nil {
		t.Error(err)
	}
	if want := []string{"", "force=true"}; !reflect.DeepEqual(leaves, want) {
		t.Errorf("leave queries = %q, want %q", leaves, want)
	}
}

func TestTaskRecordMatchesContract(t *testing.T) {
	// The record as the server writes it: the contract's fields plus failures, execution_id and create_index.
	record := `{"id":"01J","type":"sleep","version":"1","input":{"ms":500},"state":"failed","node":"n2",
		"attempt":1,"max_attempts":3,"failures":0,"timeout":"30s","result":null,"error":{"type":"task","message":"boom"},
		"idempotency_key":"k","execution_id":"","created_at":"2025-01-02T03:04:05.123456789Z","started_at":"2025-01-02T03:04:06Z",
		"finished_at":"2025-01-02T03:04:07Z","create_index":0,"modify_index":42,
		"history":[{"attempt":1,"node":"n3","event":"failed","at":"2025-01-02T03:04:07Z","error":"boom"}]}`
	var task client.Task
	if err := json.Unmarshal([]byte(record), &task); err != nil {
		t.Fatal(err)
	}
	if task.Error == nil || task.Error.Message != "boom" || task.MaxAttempts != 3 || task.ModifyIndex != 42 ||
		task.StartedAt == nil || task.CreatedAt.Nanosecond() != 123456789 || task.History[0].Node != "n3" {
		t.Errorf("decoded %+v", task)
	}
	again, err := json.Marshal(task)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal([]byte(record), &a)
	_ = json.Unmarshal(again, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("round trip changed the record:\n%s", again)
	}
}

func TestIsTerminal(t *testing.T) {
	for state, want := range map[string]bool{
		"pending": false, "assigned": false, "running": false,
		"succeeded": true, "failed": true, "cancelled": true,
	} {
		if got := client.IsTerminal(state); got != want {
			t.Errorf("IsTerminal(%q) = %v, want %v", state, got, want)
		}
	}
}
