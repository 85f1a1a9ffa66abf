package node

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// gate is a task type whose runs block until the test releases them, per node, so a test decides
// exactly when an attempt finishes. Its result names the node that ran it.
type gate struct {
	mu      sync.Mutex
	release map[string]chan struct{}
}

func newGate() *gate { return &gate{release: map[string]chan struct{}{}} }

func (g *gate) ch(node string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.release[node]
	if !ok {
		c = make(chan struct{})
		g.release[node] = c
	}
	return c
}

func (g *gate) open(node string) { close(g.ch(node)) }

// registry returns a registry with the built-ins and "gate" for node i.
func (g *gate) registry(t *testing.T) func(i int) *tasks.Registry {
	return func(i int) *tasks.Registry {
		name := fmt.Sprintf("n%d", i+1)
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := tasks.Func(tasks.Definition{Name: "gate", Version: "1", Description: "blocks until released"},
			func(ctx *tasks.Context, _ any) (string, error) {
				select {
				case <-g.ch(name):
					return name, nil
				case <-ctx.Done():
					return "", ctx.Err()
				}
			})
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

func (tc *testCluster) node(name string) *Node {
	for _, n := range tc.nodes {
		if n.Name() == name && !n.stopped() {
			return n
		}
	}
	tc.t.Fatalf("no live node %s", name)
	return nil
}

// task reads a task from the leader's FSM.
func (tc *testCluster) task(id string) fsm.Task {
	tc.t.Helper()
	var l *Node
	waitFor(tc.t, "a leader", 30*time.Second, func() bool { l = tc.leader(); return l != nil })
	t, _ := l.FSM().Task(id)
	return t
}

func waitState(t *testing.T, tc *testCluster, id string, timeout time.Duration, cond func(fsm.Task) bool) fsm.Task {
	t.Helper()
	var got fsm.Task
	waitFor(t, "task "+id+" condition", timeout, func() bool {
		if l := tc.leader(); l != nil {
			got, _ = l.FSM().Task(id)
			return cond(got)
		}
		return false
	})
	return got
}

func hasEvent(t fsm.Task, event string, attempt int) bool {
	return slices.ContainsFunc(t.History, func(h fsm.HistoryEntry) bool { return h.Event == event && h.Attempt == attempt })
}

// crashMovesTasks runs two gate tasks on each of three nodes (one slot left free on each),
// crashes the chosen node, and checks its tasks run again elsewhere without counting a failure.
func crashMovesTasks(t *testing.T, pickLeader bool) {
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t)})
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, submit(t, tc.nodes[i%3], "gate", nil, "").ID)
	}
	for _, id := range ids {
		waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	}
	victim := tc.leader()
	if !pickLeader {
		victim = tc.follower()
	}
	var moved []string
	for _, id := range ids {
		if tc.task(id).Node == victim.Name() {
			moved = append(moved, id)
		}
	}
	if len(moved) == 0 {
		t.Fatalf("victim %s runs nothing", victim.Name())
	}
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, id := range moved {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool {
			return t.State == fsm.Running && t.Node != victim.Name()
		})
		if !hasEvent(got, fsm.EventInterrupted, 1) || got.Attempt != 2 || got.Failures != 0 {
			t.Fatalf("moved task %s: attempt %d failures %d history %+v", id, got.Attempt, got.Failures, got.History)
		}
	}
	for _, n := range tc.live() {
		g.open(n.Name())
	}
	for _, id := range ids {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded || got.Node == victim.Name() {
			t.Fatalf("task %s ended %s on %s", id, got.State, got.Node)
		}
	}
	if n := len(tc.leader().FSM().Active(victim.Name())); n != 0 {
		t.Fatalf("%d tasks still held by dead node", n)
	}
}

func TestCrashedWorkerTasksRunElsewhere(t *testing.T) { crashMovesTasks(t, false) }

func TestCrashedLeaderTasksRunElsewhere(t *testing.T) { crashMovesTasks(t, true) }

func TestPartitionedNodeLateResultIsRejected(t *testing.T) {
	longTest(t)
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 1, twin: true, registry: g.registry(t)})
	task := submit(t, tc.follower(), "gate", nil, "")
	first := waitState(t, tc, task.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	x := tc.node(first.Node)
	tc.twin.partition(x.Name())

	// The majority declares x dead and runs the task again elsewhere.
	waitState(t, tc, task.ID, 30*time.Second, func(t fsm.Task) bool {
		return t.State == fsm.Running && t.Node != x.Name() && t.Attempt == 2
	})
	// x finishes its stale attempt while cut off, then comes back and tries to report it.
	g.open(x.Name())
	tc.twin.heal(x.Name())
	stale := x.work.Reporter().Finished(context.Background(), tasks.RunRef{TaskID: task.ID, Attempt: 1}, tasks.OutcomeSucceeded, []byte(`"late"`), nil)
	if stale == nil {
		t.Fatal("late report of attempt 1 was accepted")
	}
	waitFor(t, "x caught up after the partition", 30*time.Second, func() bool {
		got, _ := x.FSM().Task(task.ID)
		return got.Attempt >= 2
	})
	if got := tc.task(task.ID); got.Attempt < 2 || hasEvent(got, fsm.EventSucceeded, 1) {
		t.Fatalf("after heal: %s attempt %d history %+v: the stale attempt's result got in", got.State, got.Attempt, got.History)
	}
	for _, n := range tc.nodes {
		if n != x {
			g.open(n.Name())
		}
	}
	done := waitState(t, tc, task.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if done.State != fsm.Succeeded || done.Attempt < 2 || string(done.Result) == `"late"` || hasEvent(done, fsm.EventSucceeded, 1) {
		t.Fatalf("final: %s attempt %d result %s history %+v", done.State, done.Attempt, done.Result, done.History)
	}
}

func TestRestartBeforeDetectionRequeuesOldIncarnation(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 1, registry: g.registry(t)})
	var task fsm.Task
	for i := 0; i < 3; i++ { // one per node; restart a follower that runs one
		sub := submit(t, tc.leader(), "gate", nil, "")
		got := waitState(t, tc, sub.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
		if got.Node != tc.leader().Name() {
			task = got
		}
	}
	x := tc.node(task.Node)
	cfg := x.cfg
	oldBoot := x.BootID()
	if err := x.Shutdown(); err != nil {
		t.Fatal(err)
	}
	cfg.Logger = testLogger(t)
	// Same addresses, as a process restarted by its supervisor has.
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = x.GossipAddr(), x.RaftAddr(), x.HTTPAddr()
	y := tc.start(cfg)
	if y.BootID() == oldBoot {
		t.Fatal("restart kept the boot ID")
	}
	got := waitState(t, tc, task.ID, 30*time.Second, func(t fsm.Task) bool { return t.Attempt >= 2 && t.State == fsm.Running })
	if !hasEvent(got, fsm.EventInterrupted, 1) || got.Failures != 0 {
		t.Fatalf("history %+v failures %d", got.History, got.Failures)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		g.open(n)
	}
	if done := waitState(t, tc, task.ID, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() }); done.State != fsm.Succeeded {
		t.Fatalf("ended %s", done.State)
	}
}

// raftServers is raft's configuration on n with each server's ID replaced by the name of its
// node as n maps it (raftnode.Names), so tests can find servers by node name.
func raftServers(t *testing.T, n *Node) []raft.Server {
	servers := rawRaftServers(n)
	for i := range servers {
		servers[i].ID = raft.ServerID(n.rn.ServerName(servers[i].ID))
	}
	return servers
}

// rawRaftServers is raft's configuration on n, with raft IDs.
func rawRaftServers(n *Node) []raft.Server {
	if n == nil {
		return nil
	}
	f := n.rn.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		return nil
	}
	// A copy: raft hands out its own slice, which its goroutines read.
	return slices.Clone(f.Configuration().Servers)
}

func raftIDs(n *Node) []raft.ServerID {
	var ids []raft.ServerID
	for _, s := range rawRaftServers(n) {
		ids = append(ids, s.ID)
	}
	return ids
}

func TestFiveNodesSurviveTwoCrashesInARow(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 5, clusterOpts{inmem: true})
	voters := tc.voters
	waitFor(t, "3 voters", 30*time.Second, func() bool { a, n := voters(); return a == 3 && n == 3 })
	for round := 0; round < 2; round++ {
		var victim *Node
		for _, s := range raftServers(t, tc.leader()) {
			if n := tc.find(string(s.ID)); s.Suffrage == raft.Voter && n != nil && !n.IsLeader() && !n.stopped() {
				victim = n
				break
			}
		}
		if err := victim.Shutdown(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "dead voter replaced", 30*time.Second, func() bool { a, n := voters(); return a == 3 && n == 3 })
	}
	task := submit(t, tc.live()[0], "calc-square", 9, "20s")
	if task.State != api.StateSucceeded || string(task.Result) != "81" {
		t.Fatalf("after two crashes: %s %s", task.State, task.Result)
	}
}

// voters counts the raft voters the leader's configuration holds, and those of them still running.
func (tc *testCluster) voters() (alive, total int) {
	l := tc.leader()
	if l == nil {
		return 0, 0
	}
	for _, s := range raftServers(tc.t, l) {
		if s.Suffrage == raft.Voter {
			total++
			if n := tc.find(string(s.ID)); n != nil && !n.stopped() {
				alive++
			}
		}
	}
	return alive, total
}

func (tc *testCluster) find(name string) *Node {
	for i := len(tc.nodes) - 1; i >= 0; i-- {
		if tc.nodes[i].Name() == name {
			return tc.nodes[i]
		}
	}
	return nil
}

func TestRetriesBackOffUntilMaxAttempts(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	var flaky api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks", map[string]any{"type": "flaky", "input": map[string]int{"fail_attempts": 2}, "max_attempts": 3}, &flaky); code != 201 && code != 200 {
		t.Fatalf("submit flaky: %d", code)
	}
	// Follow every change of the task in the node's FSM, to see the retry deadline (NotBefore)
	// each failure was given while the task waits for it. The FSM is read right after each apply
	// (a blocking HTTP read could come back after the one-second wait was over, on a loaded
	// machine, and miss it).
	notBefore := map[int]time.Time{} // by failures so far
	deadline := time.After(60 * time.Second)
	for {
		changed := n.FSM().Changed()
		rec, ok := n.FSM().Task(flaky.ID)
		if !ok {
			t.Fatalf("flaky task %s not in the FSM", flaky.ID)
		}
		if rec.State == fsm.Pending && rec.NotBefore != nil {
			notBefore[rec.Failures] = *rec.NotBefore
		}
		if rec.State.Terminal() {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("flaky: not finished in 60 s: %s attempt %d", rec.State, rec.Attempt)
		}
	}
	httpCall(t, n, "GET", "/v1/tasks/"+flaky.ID, nil, &flaky)
	if flaky.State != api.StateSucceeded || flaky.Attempt != 3 || flaky.Failures != 2 || string(flaky.Result) != `{"attempt":3}` {
		t.Fatalf("flaky: %s attempt %d failures %d result %s", flaky.State, flaky.Attempt, flaky.Failures, flaky.Result)
	}
	// Backoff: the retry after failure k may start 2^(k-1) s (±20 %) after that failure, by the
	// leader's clock, and the scheduler holds it until then. Both times come from the leader's
	// clock and the history, so no wall-clock bound of this test is involved.
	for failures, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second} {
		var failedAt, assignedAt time.Time
		for _, h := range flaky.History {
			if h.Event == fsm.EventFailed && h.Attempt == failures {
				failedAt = h.At
			}
			if h.Event == fsm.EventAssigned && h.Attempt == failures+1 {
				assignedAt = h.At
			}
		}
		nb, ok := notBefore[failures]
		if !ok || failedAt.IsZero() || assignedAt.IsZero() {
			t.Fatalf("after failure %d: retry deadline seen %v, failed at %v, next assigned at %v; history %+v", failures, ok, failedAt, assignedAt, flaky.History)
		}
		if wait := nb.Sub(failedAt); wait < base*8/10 || wait > base*12/10 {
			t.Errorf("after failure %d: retry deadline %s after the failure, want %s ±20 %%", failures, wait, base)
		}
		if assignedAt.Before(nb) {
			t.Errorf("after failure %d: retried at %s, before its deadline %s", failures, assignedAt, nb)
		}
	}
	var failing api.Task
	httpCall(t, n, "POST", "/v1/tasks?wait=30s", map[string]any{"type": "fail", "input": "boom", "max_attempts": 2}, &failing)
	if failing.State != api.StateFailed || failing.Attempt != 2 || failing.Error == nil || failing.Error.Message != "boom" {
		t.Fatalf("fail: %s attempt %d error %+v", failing.State, failing.Attempt, failing.Error)
	}
}

func TestTimeoutFailsTheAttempt(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	var task api.Task
	httpCall(t, tc.nodes[0], "POST", "/v1/tasks?wait=30s", map[string]any{"type": "sleep", "input": map[string]int{"ms": 10000}, "timeout": "200ms", "max_attempts": 1}, &task)
	if task.State != api.StateFailed || task.Error == nil || task.Error.Type != "timeout" {
		t.Fatalf("got %s %+v", task.State, task.Error)
	}
}

func TestCancelPendingAndRunning(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 1, clusterOpts{inmem: true, capacity: 1, registry: g.registry(t)})
	n := tc.nodes[0]
	running := submit(t, n, "gate", nil, "")
	waitState(t, tc, running.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	pending := submit(t, n, "gate", nil, "") // no free slot: stays pending

	var got api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks/"+pending.ID+"/cancel", nil, &got); code != http.StatusAccepted || got.State != api.StateCancelled {
		t.Fatalf("cancel pending: %d %s", code, got.State)
	}
	if code := httpCall(t, n, "POST", "/v1/tasks/"+running.ID+"/cancel", nil, &got); code != http.StatusAccepted {
		t.Fatalf("cancel running: %d", code)
	}
	done := waitState(t, tc, running.ID, 20*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
	if done.State != fsm.Cancelled {
		t.Fatalf("running task ended %s", done.State)
	}
	if p := tc.task(pending.ID); p.Attempt != 0 {
		t.Fatalf("cancelled pending task ran: attempt %d", p.Attempt)
	}
	// Cancel is idempotent: a cancelled task answers another cancel (a retry of the first, say)
	// as one that took effect, with its record; a task that ended otherwise answers 409
	// already_finished (e2e/openapi_test.go).
	var again api.Task
	if code := httpCall(t, n, "POST", "/v1/tasks/"+running.ID+"/cancel", nil, &again); code != http.StatusAccepted || again.State != api.StateCancelled {
		t.Fatalf("cancel of the cancelled task: %d %s, want 202 cancelled", code, again.State)
	}
	if after := tc.task(running.ID); after.ModifyIndex != done.ModifyIndex {
		t.Fatalf("a second cancel changed the cancelled task: index %d, was %d", after.ModifyIndex, done.ModifyIndex)
	}
}

func TestVoterTargetKeepsExtraNodesAsNonVoters(t *testing.T) {
	longTest(t)
	for _, tt := range []struct{ nodes, voters int }{{4, 3}, {6, 5}} {
		t.Run(fmt.Sprintf("%d nodes %d voters", tt.nodes, tt.voters), func(t *testing.T) {
			tc := startCluster(t, tt.nodes, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.Voters = tt.voters }})
			waitFor(t, "raft configuration settled", 30*time.Second, func() bool {
				voters, nonvoters := 0, 0
				for _, s := range raftServers(t, tc.leader()) {
					if s.Suffrage == raft.Voter {
						voters++
					} else {
						nonvoters++
					}
				}
				return voters == tt.voters && nonvoters == tt.nodes-tt.voters
			})
		})
	}
}

func TestNodeBackOnNewAddressesIsReadded(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 1})
	x := tc.follower()
	cfg := x.cfg
	oldRaft := x.RaftAddr()
	if err := x.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "crash noticed", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil { // between leaders on a loaded machine
			return false
		}
		nd, _ := l.FSM().Node(cfg.Name)
		return nd.Status == fsm.NodeDown
	})
	cfg.Logger = testLogger(t)
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	y := tc.start(cfg)
	if y.RaftAddr() == oldRaft {
		t.Fatal("restart kept the raft address")
	}
	waitFor(t, "node back in raft under its new address", 30*time.Second, func() bool {
		for _, s := range raftServers(t, tc.leader()) {
			if string(s.ID) == cfg.Name {
				return string(s.Address) == y.RaftAddr()
			}
		}
		return false
	})
	tc.waitHealthy(3)
	task := submit(t, y, "calc-square", 5, "20s")
	if task.State != api.StateSucceeded || string(task.Result) != "25" {
		t.Fatalf("task via returned node: %s %s", task.State, task.Result)
	}
	waitFor(t, "returned node replicates", 20*time.Second, func() bool {
		got, ok := y.FSM().Task(task.ID)
		return ok && got.State == fsm.Succeeded
	})
}

// A voter cut off long enough is declared down and removed from raft (a spare takes its place)
// while its own FSM, stopped before the verdict, still says it is up (a SIGSTOP of a few seconds
// does this to a real process). Once it can talk again it must come back as a member and catch
// up, not stay outside for good.
func TestNodeRemovedWhileCutOffComesBack(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 4, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.Voters = 3 }})
	x := voterFollower(t, tc)
	tc.twin.partition(x.Name())
	inConfig := func() bool {
		l := tc.leader()
		if l == nil || l == x {
			return true
		}
		for _, s := range raftServers(t, l) {
			if string(s.ID) == x.Name() {
				return true
			}
		}
		return false
	}
	waitFor(t, "the leader removes the cut-off node from raft", 30*time.Second, func() bool { return !inConfig() })
	waitFor(t, "the leader marks the cut-off node down", 30*time.Second, func() bool {
		nd, ok := tc.leader().FSM().Node(x.Name())
		return ok && nd.Status != fsm.NodeUp
	})
	// One more committed entry: by then the leader has made its last attempt to replicate to the
	// removed node (which fails, it is cut off), so nothing it wrote meanwhile reaches the node
	// when the network heals — as for a process that stayed frozen past that attempt.
	during := submit(t, tc.leader(), "echo", "during", "5s")
	if _, ok := x.FSM().Task(during.ID); ok {
		t.Fatal("the cut-off node got an entry written after its removal")
	}
	if nd, ok := x.FSM().Node(x.Name()); !ok || nd.Status != fsm.NodeUp {
		t.Fatalf("the cut-off node's own FSM should still read up, got %+v", nd)
	}
	tc.twin.heal(x.Name())
	waitFor(t, "the node is a raft member again", 30*time.Second, inConfig)
	task := submit(t, tc.leader(), "echo", "back", "")
	waitFor(t, "the node catches up", 30*time.Second, func() bool {
		_, ok := x.FSM().Task(task.ID)
		return ok
	})
	if nd, ok := tc.leader().FSM().Node(x.Name()); !ok || nd.Status != fsm.NodeUp {
		t.Fatalf("leader's record of the node: %+v", nd)
	}
}

// voterFollower waits for the raft configuration to settle and returns a voter that does not lead.
func voterFollower(t *testing.T, tc *testCluster) *Node {
	t.Helper()
	var x *Node
	waitFor(t, "a voter that is not the leader", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		for _, s := range raftServers(t, l) {
			if n := tc.find(string(s.ID)); s.Suffrage == raft.Voter && n != nil && n != l {
				x = n
				return true
			}
		}
		return false
	})
	return x
}

// Three voters and no spare: a crashed voter stays in raft's configuration (removing it would
// leave two, which survive no more failures than three with one down), so when it comes back it
// counts again at once, without being added back.
func TestCrashedVoterWithoutSpareIsKept(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 3, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.DeadServerGrace = 200 * time.Millisecond }})
	x := voterFollower(t, tc)
	tc.twin.partition(x.Name())
	var downAt time.Time
	waitFor(t, "the leader marks the cut-off node down", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil || l == x {
			return false
		}
		nd, ok := l.FSM().Node(x.Name())
		downAt = time.Now()
		return ok && nd.Status != fsm.NodeUp
	})
	// Several reconcile rounds (one a second) past the grace: the voter must still be there.
	waitFor(t, "reconcile rounds past the grace", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		voters := 0
		for _, s := range raftServers(t, l) {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
		if voters != 3 {
			t.Fatalf("the leader shrank raft to %d voters with no spare to replace the crashed one", voters)
		}
		return time.Since(downAt) > 3*time.Second
	})
	tc.twin.heal(x.Name())
	task := submit(t, tc.leader(), "echo", "back", "")
	waitFor(t, "the node catches up", 30*time.Second, func() bool {
		_, ok := x.FSM().Task(task.ID)
		return ok
	})
}
