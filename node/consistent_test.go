package node

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// cutRaft cuts a node's raft traffic only, both ways: it stops receiving the log (it lags) while
// gossip and the internode channel still reach it.
func (tn *twinNet) cutRaft(name string) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	me := tn.raft[name]
	me.DisconnectAll()
	for _, other := range tn.raft {
		if other != me {
			other.Disconnect(me.LocalAddr())
		}
	}
}

// healRaft reconnects a node's raft traffic.
func (tn *twinNet) healRaft(name string) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	me := tn.raft[name]
	for _, other := range tn.raft {
		if other != me {
			me.Connect(other.LocalAddr(), other)
			other.Connect(me.LocalAddr(), me)
		}
	}
}

// A follower that no longer receives the log serves a stale read: a task acknowledged by the
// leader is not found there. The same read with ?consistent answers what the leader holds, for
// the task and for the list, and through the leader's own access checks.
func TestConsistentReadOnALaggingFollower(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.Token = "s3cret" }})
	leader := tc.leader()
	var lagging *Node
	for _, n := range tc.live() {
		if n != leader {
			lagging = n
			break
		}
	}
	tc.twin.cutRaft(lagging.Name())
	healed := false
	heal := func() {
		if !healed {
			healed = true
			tc.twin.healRaft(lagging.Name())
		}
	}
	t.Cleanup(heal)

	get := func(n *Node, path, token string, out any) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+n.HTTPAddr()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return doJSON(t, req, out)
	}
	var task api.Task
	req, _ := http.NewRequest("POST", "http://"+leader.HTTPAddr()+"/v1/tasks", strings.NewReader(`{"type":"echo","input":"fresh"}`))
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Content-Type", "application/json")
	if code := doJSON(t, req, &task); code != http.StatusCreated || task.ID == "" {
		t.Fatalf("submit on the leader: %d %+v", code, task)
	}

	// The stale read: the lagging follower never got the entry.
	var e api.Error
	if code := get(lagging, "/v1/tasks/"+task.ID, "s3cret", &e); code != http.StatusNotFound {
		t.Fatalf("a plain read on the lagging follower: %d %+v, want the stale 404 (is it lagging?)", code, e)
	}
	// The consistent read: the leader's answer.
	var got api.Task
	req, _ = http.NewRequest("GET", "http://"+lagging.HTTPAddr()+"/v1/tasks/"+task.ID+"?consistent", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK || got.ID != task.ID || got.Type != "echo" {
		t.Fatalf("a consistent read on the lagging follower: %d %+v %v", resp.StatusCode, got, err)
	}
	// The index header is the record's, for a blocking query that follows, as on any read.
	if h := resp.Header.Get(api.HeaderIndex); h != strconv.FormatUint(got.ModifyIndex, 10) {
		t.Fatalf("index header %q, the record's modify_index %d", h, got.ModifyIndex)
	}
	var page []api.Task
	if code := get(lagging, "/v1/tasks?consistent=true&type=echo", "s3cret", &page); code != http.StatusOK || len(page) == 0 || page[0].ID != task.ID {
		t.Fatalf("a consistent list on the lagging follower: %d %+v", code, page)
	}
	// The follower forwards before any credential is checked; the leader checks it, as for a write.
	if code := get(lagging, "/v1/tasks/"+task.ID+"?consistent", "", &e); code != http.StatusUnauthorized || e.Code != api.CodeUnauthorized {
		t.Fatalf("a consistent read without the token: %d %+v", code, e)
	}
	if code := get(lagging, "/v1/tasks/"+task.ID+"?consistent", "wrong", &e); code != http.StatusForbidden || e.Code != api.CodeForbidden {
		t.Fatalf("a consistent read with a wrong token: %d %+v", code, e)
	}
	if code := get(lagging, "/v1/tasks/"+task.ID+"?consistent=perhaps", "s3cret", &e); code != http.StatusBadRequest || e.Code != api.CodeInvalidRequest {
		t.Fatalf("a bad consistent value: %d %+v", code, e)
	}

	// Once the log reaches it again, its own replica catches up.
	heal()
	waitFor(t, "the follower caught up", 30*time.Second, func() bool {
		return get(lagging, "/v1/tasks/"+task.ID, "s3cret", nil) == http.StatusOK
	})
}

// doJSON sends req and decodes the reply into out (when not nil).
func doJSON(t *testing.T, req *http.Request, out any) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: decode: %v", req.Method, req.URL, err)
		}
	}
	return resp.StatusCode
}
