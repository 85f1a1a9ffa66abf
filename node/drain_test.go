package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// Graceful leave (drain): no new tasks land on a draining node, its running tasks finish within
// the drain timeout or are handed back as interrupted, a leader hands leadership over first, and
// the node ends up out of raft and recorded as left.

// opener releases gate runs per node at most once (closing a gate twice panics).
type opener struct {
	g      *gate
	mu     sync.Mutex
	opened map[string]bool
}

func newOpener(g *gate) *opener { return &opener{g: g, opened: map[string]bool{}} }

func (o *opener) open(names ...string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, name := range names {
		if !o.opened[name] {
			o.opened[name] = true
			o.g.open(name)
		}
	}
}

// waitDone waits for a node's graceful leave to finish.
func waitDone(t *testing.T, n *Node, timeout time.Duration) {
	t.Helper()
	select {
	case <-n.Done():
	case <-time.After(timeout):
		t.Fatalf("%s did not finish leaving within %s", n.Name(), timeout)
	}
}

// waitDrainRecorded waits until the leader's FSM marks the node draining (or already gone).
func waitDrainRecorded(t *testing.T, tc *testCluster, name string) {
	t.Helper()
	waitFor(t, name+" recorded as draining", 20*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, ok := l.FSM().Node(name)
		return ok && (nd.Draining || nd.Status != fsm.NodeUp)
	})
}

// checkGone checks that the survivors record the node as left (not dead) in the FSM and in
// GET /v1/cluster, and that it is no longer in the leader's raft configuration.
func checkGone(t *testing.T, tc *testCluster, name string) {
	t.Helper()
	waitFor(t, name+" left in the leader's FSM", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, ok := l.FSM().Node(name)
		return ok && nd.Status == fsm.NodeLeft
	})
	waitFor(t, name+" out of raft's configuration", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		for _, s := range raftServers(t, l) {
			if string(s.ID) == name {
				return false
			}
		}
		return true
	})
	for _, n := range tc.live() {
		var info api.Cluster
		waitFor(t, n.Name()+" shows "+name+" left", 30*time.Second, func() bool {
			if httpCall(t, n, "GET", "/v1/cluster", nil, &info) != http.StatusOK {
				return false
			}
			for _, ni := range info.Nodes {
				if ni.Name == name {
					if ni.State == "dead" {
						t.Fatalf("%s shows %s dead after a graceful leave: %+v", n.Name(), name, ni)
					}
					return ni.State == "left"
				}
			}
			return false
		})
	}
	if l := tc.leader(); l != nil {
		if held := l.FSM().Active(name); len(held) != 0 {
			t.Fatalf("%d tasks still held by %s after it left", len(held), name)
		}
	}
}

// runGates submits size*per gate tasks on a cluster of size nodes and waits until all run;
// placement is least loaded first, so each node runs per of them.
func runGates(t *testing.T, tc *testCluster, count int) (ids []string, on map[string][]string) {
	t.Helper()
	for i := 0; i < count; i++ {
		ids = append(ids, submit(t, tc.nodes[i%len(tc.nodes)], "gate", nil, "").ID)
	}
	on = map[string][]string{}
	for _, id := range ids {
		got := waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
		on[got.Node] = append(on[got.Node], id)
	}
	return ids, on
}

func ranOn(tk fsm.Task, name string) bool {
	return tk.Node == name || slices.ContainsFunc(tk.History, func(h fsm.HistoryEntry) bool { return h.Node == name })
}

func TestDrainLetsShortTasksFinishOnTheLeavingNode(t *testing.T) {
	g := newGate()
	o := newOpener(g)
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t),
		tweak: func(_ int, c *Config) { c.DrainTimeout = 30 * time.Second }})
	ids, on := runGates(t, tc, 6)
	victim := tc.follower()
	mine := on[victim.Name()]
	if len(mine) == 0 {
		t.Fatalf("follower %s runs nothing; placement %v", victim.Name(), on)
	}

	if err := victim.Leave(context.Background(), false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitDrainRecorded(t, tc, victim.Name())
	// Draining, not gone: its tasks are still running there.
	for _, id := range mine {
		if got := tc.task(id); got.State != fsm.Running || got.Node != victim.Name() {
			t.Fatalf("task %s while draining: %s on %s", id, got.State, got.Node)
		}
	}
	// The tasks end well within the drain timeout.
	o.open(victim.Name())
	waitDone(t, victim, 30*time.Second)

	for _, id := range mine {
		got := tc.task(id)
		if got.State != fsm.Succeeded || got.Node != victim.Name() || got.Attempt != 1 ||
			string(got.Result) != fmt.Sprintf("%q", victim.Name()) || hasEvent(got, fsm.EventInterrupted, 1) {
			t.Fatalf("task %s: %s on %s attempt %d result %s history %+v, want succeeded on %s at attempt 1 without interruption",
				id, got.State, got.Node, got.Attempt, got.Result, got.History, victim.Name())
		}
	}
	checkGone(t, tc, victim.Name())

	for _, n := range tc.live() {
		o.open(n.Name())
	}
	for _, id := range ids {
		if got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() }); got.State != fsm.Succeeded {
			t.Fatalf("task %s ended %s", id, got.State)
		}
	}
}

func TestDrainTimeoutHandsBackLongTasks(t *testing.T) {
	g := newGate()
	o := newOpener(g)
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t),
		tweak: func(_ int, c *Config) { c.DrainTimeout = time.Second }})
	ids, on := runGates(t, tc, 6)
	victim := tc.follower()
	moved := on[victim.Name()]
	if len(moved) == 0 {
		t.Fatalf("follower %s runs nothing; placement %v", victim.Name(), on)
	}

	// The victim's gate is never opened: its tasks outlive the drain timeout.
	if err := victim.Leave(context.Background(), false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitDone(t, victim, 30*time.Second)

	for _, id := range moved {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool {
			return t.State == fsm.Running && t.Node != victim.Name()
		})
		if !hasEvent(got, fsm.EventInterrupted, 1) || got.Attempt != 2 || got.Failures != 0 ||
			slices.ContainsFunc(got.History, func(h fsm.HistoryEntry) bool { return h.Event == fsm.EventFailed }) {
			t.Fatalf("handed back task %s: attempt %d failures %d history %+v", id, got.Attempt, got.Failures, got.History)
		}
	}
	checkGone(t, tc, victim.Name())

	for _, n := range tc.live() {
		o.open(n.Name())
	}
	for _, id := range ids {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded || got.Node == victim.Name() || got.Failures != 0 {
			t.Fatalf("task %s ended %s on %s failures %d", id, got.State, got.Node, got.Failures)
		}
	}
}

func TestNoTasksPlacedOnDrainingNode(t *testing.T) {
	testNoPlacementWhileDraining(t, false)
}

func TestNoTasksPlacedOnDrainingNodeRightAfterLeaveAccepted(t *testing.T) {
	testNoPlacementWhileDraining(t, true)
}

// testNoPlacementWhileDraining keeps a node draining (a gate task it runs is not released, and
// it has free slots) and submits tasks to every node, the draining one included; none may run
// there. With atOnce, the first batch goes out as soon as the leave is accepted, before the
// test has seen the drain recorded.
func testNoPlacementWhileDraining(t *testing.T, atOnce bool) {
	g := newGate()
	o := newOpener(g)
	tc := startCluster(t, 3, clusterOpts{capacity: 4, registry: g.registry(t),
		tweak: func(_ int, c *Config) { c.DrainTimeout = 60 * time.Second }})
	// One gate per node keeps the victim draining (and leaves it free slots) while we submit.
	_, on := runGates(t, tc, 3)
	victim := tc.follower()
	if len(on[victim.Name()]) != 1 {
		t.Fatalf("placement %v, want one task on %s", on, victim.Name())
	}
	var accepted map[string]string
	if code := httpCall(t, victim, "POST", "/v1/agent/leave", nil, &accepted); code != http.StatusAccepted {
		t.Fatalf("leave: %d %v", code, accepted)
	}
	var ids []string
	if atOnce {
		for i := 0; i < 9; i++ {
			ids = append(ids, submit(t, tc.nodes[i%3], "echo", i, "").ID)
		}
	}
	waitDrainRecorded(t, tc, victim.Name())
	for i := 0; i < 9; i++ {
		ids = append(ids, submit(t, tc.nodes[i%3], "echo", i, "").ID)
	}
	for _, id := range ids {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded || ranOn(got, victim.Name()) {
			t.Fatalf("task %s submitted during the drain: %s on %s, history %+v (draining node %s)",
				id, got.State, got.Node, got.History, victim.Name())
		}
	}
	select {
	case <-victim.Done():
		t.Fatal("victim left before its running task finished")
	default:
	}
	// Status shows the node draining while it drains, with the deadline of its drain (a minute
	// from the leave), once gossip has carried it to the leader.
	waitFor(t, "the leader shows the drain and its deadline", 20*time.Second, func() bool {
		var info api.Cluster
		httpCall(t, tc.leader(), "GET", "/v1/cluster", nil, &info)
		i := slices.IndexFunc(info.Nodes, func(ni api.NodeInfo) bool { return ni.Name == victim.Name() })
		if i < 0 || !info.Nodes[i].Draining || info.Nodes[i].State != "alive" {
			t.Fatalf("cluster view of the draining node: %+v", info.Nodes)
		}
		d := info.Nodes[i].DrainDeadline
		if d != nil && (time.Until(*d) > 60*time.Second || time.Until(*d) < 0) {
			t.Fatalf("drain deadline %v: want within the minute of --drain-timeout", d)
		}
		return d != nil
	})
	o.open(victim.Name())
	waitDone(t, victim, 30*time.Second)
	checkGone(t, tc, victim.Name())
	for _, n := range tc.live() {
		o.open(n.Name())
	}
}

// postEcho submits an echo task and returns the status code, without failing the test (it runs on
// a goroutine of its own).
func postEcho(hc *http.Client, n *Node, i int) (int, string) {
	b, _ := json.Marshal(map[string]any{"type": "echo", "input": i})
	resp, err := hc.Post("http://"+n.HTTPAddr()+"/v1/tasks", "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestLeaderDrainTransfersLeadershipWithoutFailingSubmits(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	victim := tc.leader()
	var target *Node // a node that stays, receiving the submits
	var survivors []*Node
	for _, n := range tc.nodes {
		if n != victim {
			survivors = append(survivors, n)
			target = n
		}
	}

	// A steady stream of submits to a node that stays.
	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		ok       int
		failures []string
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		hc := &http.Client{Timeout: 30 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			code, body := postEcho(hc, target, i)
			mu.Lock()
			if code == http.StatusCreated {
				ok++
			} else {
				failures = append(failures, fmt.Sprintf("submit %d: %d %s", i, code, body))
			}
			mu.Unlock()
		}
	}()
	succeeded := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	waitFor(t, "submits flowing", 20*time.Second, func() bool { return succeeded() >= 20 })

	// Watch the hand-over: once the old leader has stopped, another node must already lead.
	// Had it stopped while leading, the survivors would go on naming it leader (or nobody)
	// until an election timeout.
	watchDone := make(chan struct{})
	var stoppedLeading string
	go func() {
		defer close(watchDone)
		newLeader := false
		for {
			for _, s := range survivors {
				if s.IsLeader() {
					newLeader = true
				}
			}
			if victim.stopped() {
				if !newLeader {
					for _, s := range survivors {
						if s.IsLeader() {
							newLeader = true
						}
					}
				}
				if !newLeader {
					stoppedLeading = fmt.Sprintf("%s stopped before any survivor led (survivors name %q and %q as leader)",
						victim.Name(), survivors[0].Leader(), survivors[1].Leader())
				}
				return
			}
			select {
			case <-victim.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	if err := victim.Leave(context.Background(), false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitDone(t, victim, 60*time.Second)
	<-watchDone
	if stoppedLeading != "" {
		t.Fatal(stoppedLeading)
	}
	atDone := succeeded()
	waitFor(t, "submits flowing after the leave", 30*time.Second, func() bool { return succeeded() >= atDone+20 })
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d submits failed during the leader's leave; first: %s", len(failures), len(failures)+ok, failures[0])
	}
	t.Logf("%d submits, all accepted", ok)

	l := tc.leader()
	if l == nil || l == victim {
		t.Fatalf("leader after the leave: %v", l)
	}
	checkGone(t, tc, victim.Name())
	if task := submit(t, survivors[0], "calc-square", 5, "20s"); task.State != api.StateSucceeded || string(task.Result) != "25" {
		t.Fatalf("after the leave: %s %s", task.State, task.Result)
	}
}

func TestLeaveOfLastNodeIsRefusedUnlessForced(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	var e api.Error
	if code := httpCall(t, n, "POST", "/v1/agent/leave", nil, &e); code != http.StatusConflict || e.Code != "leave_refused" || e.Message == "" {
		t.Fatalf("leave of the last node: %d %+v, want 409 leave_refused", code, e)
	}
	// Refused means untouched: it still serves and still takes work.
	select {
	case <-n.Done():
		t.Fatal("refused leave stopped the node")
	default:
	}
	if nd, _ := n.FSM().Node(n.Name()); nd.Draining {
		t.Fatal("refused leave marked the node draining")
	}
	if task := submit(t, n, "calc-square", 3, "20s"); task.State != api.StateSucceeded {
		t.Fatalf("after a refused leave: %s", task.State)
	}

	var accepted map[string]string
	if code := httpCall(t, n, "POST", "/v1/agent/leave?force=true", nil, &accepted); code != http.StatusAccepted {
		t.Fatalf("forced leave: %d %v", code, accepted)
	}
	waitDone(t, n, 30*time.Second)
	if !n.stopped() {
		t.Fatal("node not stopped after a forced leave")
	}
}

func TestLeaveThatBreaksQuorumIsRefused(t *testing.T) {
	// A crashed voter stays in raft's configuration (long removal grace), so of three voters only
	// two are alive: the leave of one more would leave one of three, below quorum.
	tc := startCluster(t, 3, clusterOpts{inmem: true,
		tweak: func(_ int, c *Config) { c.DeadServerGrace = time.Hour }})
	crashed := tc.follower()
	if err := crashed.Shutdown(); err != nil {
		t.Fatal(err)
	}
	leaver := tc.follower()
	waitFor(t, leaver.Name()+" sees "+crashed.Name()+" gone", 30*time.Second, func() bool {
		return !leaver.aliveNames()[crashed.Name()]
	})
	var e api.Error
	if code := httpCall(t, leaver, "POST", "/v1/agent/leave", nil, &e); code != http.StatusConflict || e.Code != "leave_refused" {
		t.Fatalf("leave breaking quorum: %d %+v, want 409 leave_refused", code, e)
	}
	if err := leaver.Leave(context.Background(), false); err == nil {
		t.Fatal("Leave breaking quorum returned nil")
	}
	if task := submit(t, leaver, "calc-square", 4, "20s"); task.State != api.StateSucceeded {
		t.Fatalf("after a refused leave: %s", task.State)
	}
}
