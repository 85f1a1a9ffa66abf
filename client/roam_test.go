package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

func TestNodeGoneTellsALeavingNodeFromAFailedRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", &url.Error{Op: "Get", URL: "http://x", Err: errors.New("connection refused")}, true},
		{"stream cut", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"shutting down", fmt.Errorf("GET /v1/tasks/x: %w", api.Errorf(api.CodeShuttingDown, "bye")), true},
		{"no leader during an election", api.Errorf(api.CodeNoLeader, "election"), false},
		{"not found", api.Errorf(api.CodeNotFound, "no task"), false},
		{"caller gave up", fmt.Errorf("wait: %w", context.Canceled), false},
		{"no error", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := client.NodeGone(tc.err); got != tc.want {
				t.Fatalf("NodeGone(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// twoNodes fakes a leaving node A and a healthy node B, both listed by A's /v1/cluster; A's
// follow sends the first line and ends, then A answers shutting_down; B has the whole story.
func twoNodes(t *testing.T) (a *client.Client, submitsOnB *atomic.Int32) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lines := []api.LogLine{
		{TS: t0, Attempt: 1, Node: "b", Stream: "stdout", Line: "one"},
		{TS: t0.Add(time.Second), Attempt: 1, Node: "b", Stream: "stdout", Line: "two"},
	}
	running := api.Task{ID: "T1", State: api.StateRunning, ModifyIndex: 5}
	done := api.Task{ID: "T1", State: api.StateSucceeded, ModifyIndex: 9, Result: json.RawMessage(`42`)}
	submitsOnB = new(atomic.Int32)

	muxB := http.NewServeMux()
	srvB := httptest.NewServer(muxB)
	t.Cleanup(srvB.Close)
	muxB.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		submitsOnB.Add(1)
		writeJSON(w, 500, api.Error{Message: "no", Code: api.CodeInternal})
	})
	muxB.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Cluster{Leader: "b"})
	})
	muxB.HandleFunc("GET /v1/tasks/T1", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, done) })
	muxB.HandleFunc("GET /v1/tasks/T1/logs", func(w http.ResponseWriter, r *http.Request) {
		for _, l := range lines {
			_ = json.NewEncoder(w).Encode(l)
		}
	})

	var leaving atomic.Bool
	muxA := http.NewServeMux()
	srvA := httptest.NewServer(muxA)
	t.Cleanup(srvA.Close)
	shuttingDown := func(w http.ResponseWriter) {
		w.Header().Set(api.HeaderLeaderAddr, "") // A knows no leader: B comes from the member list
		writeJSON(w, 503, api.Error{Message: "a is shutting down", Code: api.CodeShuttingDown})
	}
	muxA.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 201, running) })
	muxA.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if leaving.Load() {
			shuttingDown(w)
			return
		}
		writeJSON(w, 200, api.Cluster{Leader: "b", Nodes: []api.NodeInfo{
			{Name: "a", HTTPAddr: strings.TrimPrefix(srvA.URL, "http://"), State: api.NodeAlive},
			{Name: "gone", HTTPAddr: "127.0.0.1:1", State: api.NodeLeft},
			{Name: "b", HTTPAddr: strings.TrimPrefix(srvB.URL, "http://"), State: api.NodeAlive},
		}})
	})
	muxA.HandleFunc("GET /v1/tasks/T1", func(w http.ResponseWriter, r *http.Request) {
		if leaving.Load() {
			shuttingDown(w)
			return
		}
		writeJSON(w, 200, running) // a held wait released as the node leaves
		leaving.Store(true)
	})
	muxA.HandleFunc("GET /v1/tasks/T1/logs", func(w http.ResponseWriter, r *http.Request) {
		if leaving.Load() {
			shuttingDown(w)
			return
		}
		_ = json.NewEncoder(w).Encode(lines[0]) // then a clean end, as the node lets go
		leaving.Store(true)
	})
	return client.New(srvA.URL), submitsOnB
}

func TestExecCarriesOnAtAnotherNodeWhenItsNodeLeaves(t *testing.T) {
	a, submitsOnB := twoNodes(t)
	var got []string
	var submitted string
	var moves []string
	task, err := a.ExecWith(context.Background(), client.SubmitRequest{Type: "x"}, client.ExecHooks{
		OnSubmit: func(t *client.Task, _ bool) { submitted = t.ID },
		OnLog:    func(l client.LogLine) { got = append(got, l.Line) },
		OnMove:   func(from, to string, why error) { moves = append(moves, to) },
	})
	if err != nil {
		t.Fatalf("ExecWith: %v", err)
	}
	if task.State != client.StateSucceeded || string(task.Result) != "42" || submitted != "T1" {
		t.Fatalf("ExecWith = %+v (submitted %q), want T1 succeeded with 42", task, submitted)
	}
	if strings.Join(got, ",") != "one,two" {
		t.Fatalf("lines %q, want each line once: one,two", got)
	}
	if len(moves) != 1 || !strings.HasPrefix(moves[0], "b (") {
		t.Fatalf("moves %q, want one to b", moves)
	}
	if n := submitsOnB.Load(); n != 0 {
		t.Fatalf("%d submits reached b: a move must never submit again", n)
	}
}

func TestRoamingWaitSaysWhenNoOtherNodeIsLeft(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Cluster{Nodes: []api.NodeInfo{{Name: "other", HTTPAddr: "127.0.0.1:1", State: api.NodeAlive}}})
	})
	mux.HandleFunc("GET /v1/tasks/T1", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 503, api.Error{Message: "bye", Code: api.CodeShuttingDown})
	})
	c := serve(t, mux)
	_, err := c.Roaming(context.Background(), nil).WaitDone(context.Background(), "T1")
	if !errors.Is(err, client.ErrNoOtherNode) || !errors.Is(err, &client.APIError{Code: api.CodeShuttingDown}) {
		t.Fatalf("WaitDone = %v, want ErrNoOtherNode wrapping shutting_down", err)
	}
}

func TestRoamingFollowCarriesOnAtAnotherNodeWithoutRepeats(t *testing.T) {
	a, _ := twoNodes(t)
	var got []string
	var moves int
	r := a.Roaming(context.Background(), func(string, string, error) { moves++ })
	err := r.FollowLogs(context.Background(), "T1", func(l client.LogLine) error {
		got = append(got, l.Line)
		return nil
	})
	if err != nil || strings.Join(got, ",") != "one,two" || moves != 1 {
		t.Fatalf("FollowLogs = %v, lines %q, %d moves; want one,two after one move", err, got, moves)
	}
	if r.Client().Addr() == a.Addr() {
		t.Fatalf("still at %s after the move", a.Addr())
	}
}
