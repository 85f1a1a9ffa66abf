package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// A leaving node answers its clients: health says draining for the whole drain, held waits get
// the record as it is and held log follows end cleanly before the node goes, and new requests
// then get 503 shutting_down with the leader's address.

type heldReply struct {
	code int
	body []byte
	err  error
}

// hold sends a request in the background; its reply (or transport error) arrives on the channel.
func hold(method, url string, body any) <-chan heldReply {
	out := make(chan heldReply, 1)
	go func() {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, url, rd)
		if err != nil {
			out <- heldReply{err: err}
			return
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- heldReply{err: err}
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		out <- heldReply{code: resp.StatusCode, body: data, err: err}
	}()
	return out
}

func answered(t *testing.T, what string, ch <-chan heldReply) heldReply {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s: %v, want an answer before the node went", what, r.err)
		}
		return r
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer 30s after the node left", what)
	}
	return heldReply{}
}

func TestLeavingNodeAnswersHeldRequestsAndSaysDraining(t *testing.T) {
	g := newGate()
	o := newOpener(g)
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t),
		tweak: func(_ int, c *Config) { c.DrainTimeout = 30 * time.Second }})
	// Six gates on three nodes of capacity 3 run on two nodes at least, so a follower runs some.
	ids, on := runGates(t, tc, 6)
	var victim *Node
	for _, n := range tc.live() {
		if !n.IsLeader() && len(on[n.Name()]) > 0 {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("no follower runs a gate; placement %v", on)
	}
	// elsewhere runs on another node and outlives the victim's leave.
	var elsewhere string
	for _, id := range ids {
		if tc.task(id).Node != victim.Name() {
			elsewhere = id
		}
	}
	rec := tc.task(elsewhere)
	base := "http://" + victim.HTTPAddr()

	wait := hold("GET", base+"/v1/tasks/"+elsewhere+"?wait=5m&index="+strconv.FormatUint(rec.ModifyIndex, 10), nil)
	follow := hold("GET", base+"/v1/tasks/"+elsewhere+"/logs?follow=true", nil)

	var h api.Health
	if code := httpCall(t, victim, "GET", "/v1/health", nil, &h); code != http.StatusOK || h.Status != api.HealthOK {
		t.Fatalf("health before the leave: %d %+v", code, h)
	}
	if err := victim.Leave(context.Background(), false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	// The victim's own gate task holds the drain open.
	if code := httpCall(t, victim, "GET", "/v1/health", nil, &h); code != http.StatusServiceUnavailable || h.Status != api.HealthDraining {
		t.Fatalf("health while draining: %d %+v, want 503 draining", code, h)
	}
	waitDrainRecorded(t, tc, victim.Name())
	// A draining node still takes requests; this task lands elsewhere and outlives the leave.
	submitWait := hold("POST", base+"/v1/tasks?wait=5m", map[string]any{"type": "gate"})
	// Let the submit be stored (so its handler is holding the wait) before the drain can end: a
	// request still on its way to the leader when the node goes is not a held one.
	waitFor(t, "the held submit stored", 30*time.Second, func() bool {
		l := tc.leader()
		return l != nil && len(l.FSM().List(fsm.Filter{Type: "gate"})) == len(ids)+1
	})
	if code := httpCall(t, victim, "GET", "/v1/health", nil, &h); code != http.StatusServiceUnavailable || h.Status != api.HealthDraining {
		t.Fatalf("health with the drain recorded: %d %+v, want 503 draining", code, h)
	}
	for what, ch := range map[string]<-chan heldReply{"wait": wait, "follow": follow, "submit?wait": submitWait} {
		select {
		case r := <-ch:
			t.Fatalf("held %s answered while the node still drains: %d %s %v", what, r.code, r.body, r.err)
		default:
		}
	}

	o.open(victim.Name())
	waitDone(t, victim, 30*time.Second)

	// The wait is answered as one that elapsed: 200 with the record as it is (still running).
	r := answered(t, "held GET ?wait&index", wait)
	var got api.Task
	if err := json.Unmarshal(r.body, &got); r.code != http.StatusOK || err != nil || got.ID != elsewhere || got.State != api.StateRunning {
		t.Fatalf("held wait: %d %s (%v), want 200 with %s running", r.code, r.body, err, elsewhere)
	}
	// The follow ends cleanly: a 200 stream whose every line is a log line.
	r = answered(t, "held logs?follow", follow)
	if r.code != http.StatusOK {
		t.Fatalf("held follow: %d %s", r.code, r.body)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(r.body)), "\n") {
		var l api.LogLine
		if line != "" && json.Unmarshal([]byte(line), &l) != nil {
			t.Fatalf("held follow ended with a broken line %q", line)
		}
	}
	// The submit was stored, and its wait answered with the record as it was.
	r = answered(t, "held POST ?wait", submitWait)
	if err := json.Unmarshal(r.body, &got); r.code != http.StatusCreated || err != nil || got.ID == "" || api.IsTerminal(got.State) {
		t.Fatalf("held submit: %d %s (%v), want 201 with the task in progress", r.code, r.body, err)
	}
	submitted := got.ID

	// The task is intact, runs elsewhere, and ends well once its gate opens.
	for _, n := range tc.live() {
		o.open(n.Name())
	}
	for _, id := range append(ids, submitted) {
		if got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() }); got.State != fsm.Succeeded {
			t.Fatalf("task %s ended %s", id, got.State)
		}
	}
	checkGone(t, tc, victim.Name())
}

func TestReleasedNodeRefusesNewRequestsWithTheLeaderAddress(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	tc.waitHealthy(3)
	f := tc.follower()
	l := tc.leader()
	f.work.Release("test")

	var e api.Error
	resp, err := http.Get("http://" + f.HTTPAddr() + "/v1/tasks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || e.Code != api.CodeShuttingDown ||
		resp.Header.Get(api.HeaderLeaderAddr) != l.HTTPAddr() || !strings.Contains(e.Message, l.HTTPAddr()) {
		t.Fatalf("request on a released node: %d %+v header %q, want 503 shutting_down naming %s",
			resp.StatusCode, e, resp.Header.Get(api.HeaderLeaderAddr), l.HTTPAddr())
	}
	// Health and metrics stay open for probes and scrapers.
	var h api.Health
	if code := httpCall(t, f, "GET", "/v1/health", nil, &h); h.Status == "" {
		t.Fatalf("health on a released node: %d %+v", code, h)
	}
}
