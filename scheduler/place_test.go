package scheduler

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

var now0 = time.Unix(1_700_000_000, 0)

// node builds an up node offering the given "type@version" pairs (default echo@v1).
func node(name string, capacity int, offers ...string) fsm.Node {
	if len(offers) == 0 {
		offers = []string{"echo@v1"}
	}
	n := fsm.Node{Name: name, BootID: "boot-" + name, Capacity: capacity, Status: fsm.NodeUp}
	for _, o := range offers {
		typ, ver, _ := strings.Cut(o, "@")
		n.Types = append(n.Types, fsm.TypeInfo{Type: typ, Version: ver})
	}
	return n
}

func task(id, typ, version string) fsm.Task {
	return fsm.Task{ID: id, Type: typ, Version: version, State: fsm.Pending}
}

func tasks(ids ...string) []fsm.Task {
	var out []fsm.Task
	for _, id := range ids {
		out = append(out, task(id, "echo", ""))
	}
	return out
}

func at(d time.Duration) *time.Time { t := now0.Add(d); return &t }

func assign(id, node string) fsm.Assign {
	return fsm.Assign{TaskID: id, Node: node, BootID: "boot-" + node}
}

func allAlive(nodes []fsm.Node) map[string]bool {
	m := map[string]bool{}
	for _, n := range nodes {
		m[n.Name] = true
	}
	return m
}

func TestPlace(t *testing.T) {
	draining := node("n1", 4)
	draining.Draining = true
	down := node("n1", 4)
	down.Status = fsm.NodeDown
	left := node("n1", 4)
	left.Status = fsm.NodeLeft
	cancelReq := task("a", "echo", "")
	cancelReq.CancelRequested = true
	future, past, exact := task("a", "echo", ""), task("b", "echo", ""), task("c", "echo", "")
	future.NotBefore, past.NotBefore, exact.NotBefore = at(time.Second), at(-time.Second), at(0)

	tests := []struct {
		name    string
		nodes   []fsm.Node
		load    map[string]int
		alive   map[string]bool // nil: all nodes alive
		last    string          // the node the previous placement went to
		pending []fsm.Task
		want    []fsm.Assign
	}{
		{name: "capacity minus load is respected", nodes: []fsm.Node{node("n1", 3)}, load: map[string]int{"n1": 1},
			pending: tasks("a", "b", "c", "d"), want: []fsm.Assign{assign("a", "n1"), assign("b", "n1")}},
		{name: "nothing on a full node", nodes: []fsm.Node{node("n1", 2)}, load: map[string]int{"n1": 2},
			pending: tasks("a")},
		{name: "nothing on an overloaded node", nodes: []fsm.Node{node("n1", 2)}, load: map[string]int{"n1": 3},
			pending: tasks("a")},
		{name: "nothing on a zero-capacity node", nodes: []fsm.Node{node("n1", 0)}, pending: tasks("a")},
		{name: "nothing on a draining node", nodes: []fsm.Node{draining}, pending: tasks("a")},
		{name: "nothing on a down node", nodes: []fsm.Node{down}, pending: tasks("a")},
		{name: "nothing on a left node", nodes: []fsm.Node{left}, pending: tasks("a")},
		{name: "nothing on a gossip-dead node", nodes: []fsm.Node{node("n1", 4)}, alive: map[string]bool{"n1": false},
			pending: tasks("a")},
		{name: "nothing on a node gossip does not know", nodes: []fsm.Node{node("n1", 4)}, alive: map[string]bool{},
			pending: tasks("a")},
		{name: "nothing without nodes", pending: tasks("a")},
		{name: "type must be offered", nodes: []fsm.Node{node("n1", 4, "other@v1")}, pending: tasks("a")},
		{name: "pinned version must match", nodes: []fsm.Node{node("n1", 4, "echo@v1")},
			pending: []fsm.Task{task("a", "echo", "v2")}},
		{name: "pinned version goes to the node offering it", nodes: []fsm.Node{node("n1", 4, "echo@v1"), node("n2", 4, "echo@v2")},
			pending: []fsm.Task{task("a", "echo", "v2"), task("b", "echo", "v1")},
			want:    []fsm.Assign{assign("a", "n2"), assign("b", "n1")}},
		{name: "unpinned task takes any version", nodes: []fsm.Node{node("n1", 4, "echo@v7")},
			pending: tasks("a"), want: []fsm.Assign{assign("a", "n1")}},
		{name: "oldest first when slots are scarce", nodes: []fsm.Node{node("n1", 2)},
			pending: tasks("old", "mid", "new"), want: []fsm.Assign{assign("old", "n1"), assign("mid", "n1")}},
		{name: "least loaded by ratio", nodes: []fsm.Node{node("n1", 4), node("n2", 10)},
			load:    map[string]int{"n1": 2, "n2": 4}, // 0.5 vs 0.4
			pending: tasks("a"), want: []fsm.Assign{assign("a", "n2")}},
		{name: "equal ratio goes to the lower name", nodes: []fsm.Node{node("n1", 2), node("n2", 4)},
			load:    map[string]int{"n1": 1, "n2": 2},
			pending: tasks("a"), want: []fsm.Assign{assign("a", "n1")}},
		{name: "spreads across idle nodes", nodes: []fsm.Node{node("n1", 2), node("n2", 2)},
			pending: tasks("a", "b", "c", "d", "e"),
			want:    []fsm.Assign{assign("a", "n1"), assign("b", "n2"), assign("c", "n1"), assign("d", "n2")}},
		{name: "placements update the ratio", nodes: []fsm.Node{node("a", 1), node("b", 4)},
			pending: tasks("t1", "t2", "t3"),
			want:    []fsm.Assign{assign("t1", "a"), assign("t2", "b"), assign("t3", "b")}},
		{name: "retry backoff not elapsed is skipped", nodes: []fsm.Node{node("n1", 4)},
			pending: []fsm.Task{future, past, exact}, want: []fsm.Assign{assign("b", "n1"), assign("c", "n1")}},
		{name: "cancel-requested is skipped", nodes: []fsm.Node{node("n1", 4)},
			pending: []fsm.Task{cancelReq, task("b", "echo", "")}, want: []fsm.Assign{assign("b", "n1")}},
		{name: "a task that fits nowhere does not block others", nodes: []fsm.Node{node("n1", 1, "echo@v1", "big@v1"), node("n2", 4)},
			load:    map[string]int{"n1": 1},
			pending: []fsm.Task{task("x", "big", ""), task("y", "nope", ""), task("a", "echo", "")},
			want:    []fsm.Assign{assign("a", "n2")}},
		{name: "tie goes to the node after the last one placed on", nodes: []fsm.Node{node("n1", 2), node("n2", 2), node("n3", 2)},
			last: "n1", pending: tasks("a"), want: []fsm.Assign{assign("a", "n2")}},
		{name: "tie wraps around after the highest name", nodes: []fsm.Node{node("n1", 2), node("n2", 2), node("n3", 2)},
			last: "n3", pending: tasks("a"), want: []fsm.Assign{assign("a", "n1")}},
		{name: "last node gone: the next name after it", nodes: []fsm.Node{node("n1", 2), node("n3", 2)},
			last: "n2", pending: tasks("a"), want: []fsm.Assign{assign("a", "n3")}},
		{name: "round robin only breaks ties: load wins", nodes: []fsm.Node{node("n1", 2), node("n2", 2), node("n3", 2)},
			load: map[string]int{"n2": 1}, last: "n1", pending: tasks("a"), want: []fsm.Assign{assign("a", "n3")}},
		{name: "round robin skips a node that does not offer the type", nodes: []fsm.Node{node("n1", 2), node("n2", 2, "other@v1"), node("n3", 2)},
			last: "n1", pending: tasks("a"), want: []fsm.Assign{assign("a", "n3")}},
		{name: "round robin continues within one placement", nodes: []fsm.Node{node("n1", 1), node("n2", 1), node("n3", 1)},
			last: "n2", pending: tasks("a", "b", "c"), want: []fsm.Assign{assign("a", "n3"), assign("b", "n1"), assign("c", "n2")}},
		{name: "boot id of the node is used", nodes: []fsm.Node{func() fsm.Node { n := node("n1", 1); n.BootID = "xyz"; return n }()},
			pending: tasks("a"), want: []fsm.Assign{{TaskID: "a", Node: "n1", BootID: "xyz"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			alive := tc.alive
			if alive == nil {
				alive = allAlive(tc.nodes)
			}
			v := fsm.View{Nodes: tc.nodes, Load: tc.load, Pending: tc.pending}
			if got := Place(v, alive, now0, tc.last); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Place = %v, want %v", got, tc.want)
			}
		})
	}
}

// Random views never overfill a node or use an ineligible one.
func TestPlaceNeverExceedsFreeSlotsOrUsesIneligibleNodes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	types := []string{"a@v1", "a@v2", "b@v1"}
	for iter := range 500 {
		var nodes []fsm.Node
		load, alive := map[string]int{}, map[string]bool{}
		for i := range r.IntN(5) {
			n := node(fmt.Sprintf("n%d", i), r.IntN(5), types[r.IntN(3)], types[r.IntN(3)])
			n.Draining = r.IntN(5) == 0
			if r.IntN(5) == 0 {
				n.Status = fsm.NodeDown
			}
			load[n.Name] = r.IntN(4)
			alive[n.Name] = r.IntN(6) != 0
			nodes = append(nodes, n)
		}
		var pending []fsm.Task
		for i := range r.IntN(12) {
			pending = append(pending, task(fmt.Sprintf("t%d", i), []string{"a", "b"}[r.IntN(2)], []string{"", "v1", "v2"}[r.IntN(3)]))
		}
		got := Place(fsm.View{Nodes: nodes, Load: load, Pending: pending}, alive, now0, "")
		placed := map[string]int{}
		seen := map[string]bool{}
		for _, a := range got {
			if seen[a.TaskID] {
				t.Fatalf("iter %d: %s placed twice", iter, a.TaskID)
			}
			seen[a.TaskID] = true
			placed[a.Node]++
		}
		for _, n := range nodes {
			if placed[n.Name] == 0 {
				continue
			}
			if n.Status != fsm.NodeUp || n.Draining || !alive[n.Name] {
				t.Fatalf("iter %d: placed on ineligible node %+v", iter, n)
			}
			if placed[n.Name] > n.Capacity-load[n.Name] {
				t.Fatalf("iter %d: %d placed on %s with capacity %d load %d", iter, placed[n.Name], n.Name, n.Capacity, load[n.Name])
			}
		}
		byID := map[string]fsm.Task{}
		for _, p := range pending {
			byID[p.ID] = p
		}
		for _, a := range got {
			for _, n := range nodes {
				if n.Name == a.Node && !n.Offers(byID[a.TaskID].Type, byID[a.TaskID].Version) {
					t.Fatalf("iter %d: %s placed on %s which does not offer it", iter, a.TaskID, a.Node)
				}
			}
		}
	}
}

func TestNextWake(t *testing.T) {
	withNB := func(d time.Duration) fsm.Task { tk := task("x", "echo", ""); tk.NotBefore = at(d); return tk }
	tests := []struct {
		name    string
		pending []fsm.Task
		want    time.Time
	}{
		{name: "no pending tasks", want: time.Time{}},
		{name: "no deadlines", pending: tasks("a", "b"), want: time.Time{}},
		{name: "past and present deadlines are ignored", pending: []fsm.Task{withNB(-time.Second), withNB(0)}, want: time.Time{}},
		{name: "earliest future deadline", pending: []fsm.Task{withNB(time.Minute), withNB(-time.Second), withNB(5 * time.Second), withNB(time.Hour)},
			want: now0.Add(5 * time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NextWake(fsm.View{Pending: tc.pending}, now0); !got.Equal(tc.want) {
				t.Errorf("NextWake = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBackoffDelayDoublesUpToMax(t *testing.T) {
	b := Backoff{Initial: time.Second, Factor: 2, Max: 10 * time.Second}
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{4, 8 * time.Second}, {5, 10 * time.Second}, {6, 10 * time.Second}, {1000, 10 * time.Second},
	}
	for _, tc := range tests {
		if got := b.Delay(tc.failures, nil); got != tc.want {
			t.Errorf("Delay(%d) = %s, want %s", tc.failures, got, tc.want)
		}
	}
	// Jitter does nothing without a random source, and a random source does nothing without jitter.
	if got := DefaultBackoff.Delay(3, nil); got != 4*time.Second {
		t.Errorf("default Delay(3) without r = %s, want 4s", got)
	}
	if got := b.Delay(3, func() float64 { return 0 }); got != 4*time.Second {
		t.Errorf("Delay(3) without jitter = %s, want 4s", got)
	}
	if got := DefaultBackoff.Delay(20, nil); got != 100*time.Second {
		t.Errorf("default Delay(20) = %s, want 100s", got)
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	b := Backoff{Initial: time.Second, Factor: 2, Max: 100 * time.Second, Jitter: 0.2}
	const tol = time.Microsecond
	tests := []struct {
		name     string
		failures int
		r        float64
		lo, hi   time.Duration
	}{
		{name: "r=0 is the low bound", failures: 1, r: 0, lo: 800*time.Millisecond - tol, hi: 800*time.Millisecond + tol},
		{name: "r=0.999 is just under the high bound", failures: 1, r: 0.999, lo: 1199 * time.Millisecond, hi: 1200 * time.Millisecond},
		{name: "r=0.5 is the plain delay", failures: 3, r: 0.5, lo: 4*time.Second - tol, hi: 4*time.Second + tol},
		{name: "jitter on the cap, low", failures: 30, r: 0, lo: 80*time.Second - tol, hi: 80*time.Second + tol},
		{name: "jitter on the cap, high", failures: 30, r: 0.999, lo: 119 * time.Second, hi: 120 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := b.Delay(tc.failures, func() float64 { return tc.r })
			if got < tc.lo || got >= tc.hi {
				t.Errorf("Delay(%d, r=%v) = %s, want in [%s, %s)", tc.failures, tc.r, got, tc.lo, tc.hi)
			}
		})
	}
	for range 1000 {
		if d := DefaultBackoff.Delay(2, Jitter); d < 1600*time.Millisecond || d >= 2400*time.Millisecond {
			t.Fatalf("default Delay(2) = %s, outside [1.6s, 2.4s)", d)
		}
	}
}

// Tasks submitted one at a time, each placed and finished before the next, visit every idle
// node in turn: the loop's way of calling Place.
func TestPlaceSerialSubmitsRoundRobin(t *testing.T) {
	nodes := []fsm.Node{node("n1", 4), node("n2", 4), node("n3", 4)}
	last := ""
	var got []string
	for i := range 6 {
		as := Place(fsm.View{Nodes: nodes, Pending: tasks(fmt.Sprint(i))}, allAlive(nodes), now0, last)
		if len(as) != 1 {
			t.Fatalf("submit %d: Place = %v, want one assignment", i, as)
		}
		last = as[0].Node
		got = append(got, last)
	}
	if want := []string{"n1", "n2", "n3", "n1", "n2", "n3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("serial placements = %v, want %v", got, want)
	}
}

// TestPlaceOrderAndLimits covers what queues, priorities and delays add to placement.
func TestPlaceOrderAndLimits(t *testing.T) {
	// ready builds a pending echo task of a priority and queue, created (ready) at now0+d.
	ready := func(id string, prio int, queue string, d time.Duration) fsm.Task {
		tk := task(id, "echo", "")
		tk.Priority, tk.Queue, tk.CreatedAt = prio, queue, now0.Add(d)
		return tk
	}
	scheduled := ready("s", 9, "", 0)
	scheduled.State, scheduled.RunAt = fsm.Scheduled, at(time.Minute)
	notDue := ready("d", 9, "", 0) // pending by mistake before its time: still not placed
	notDue.RunAt = at(time.Minute)
	dueNow := ready("due", 0, "", 0)
	dueNow.RunAt = at(-time.Second)
	n1 := []fsm.Node{node("n1", 2)}

	tests := []struct {
		name       string
		nodes      []fsm.Node
		load       map[string]int
		pending    []fsm.Task
		queues     map[string]fsm.QueueConfig
		typeLimits map[string]int
		activeQ    map[string]int
		activeT    map[string]int
		want       []fsm.Assign
	}{
		{name: "higher priority first", nodes: n1,
			pending: []fsm.Task{ready("lo", 0, "", 0), ready("hi", 5, "", 0), ready("mid", 1, "", 0)},
			want:    []fsm.Assign{assign("hi", "n1"), assign("mid", "n1")}},
		{name: "fifo within a priority", nodes: n1,
			pending: []fsm.Task{ready("b", 1, "", 2*time.Second), ready("a", 1, "", time.Second), ready("c", 1, "", 3*time.Second)},
			want:    []fsm.Assign{assign("a", "n1"), assign("b", "n1")}},
		{name: "ageing: a task ready 30 s earlier outranks two priority points", nodes: []fsm.Node{node("n1", 1)},
			pending: []fsm.Task{ready("new", 2, "", 0), ready("old", 0, "", -30*time.Second)},
			want:    []fsm.Assign{assign("old", "n1")}},
		{name: "ageing: 10 s is not enough for two points", nodes: []fsm.Node{node("n1", 1)},
			pending: []fsm.Task{ready("new", 2, "", 0), ready("old", 0, "", -10*time.Second)},
			want:    []fsm.Assign{assign("new", "n1")}},
		{name: "queue limit counts active and this pass", nodes: []fsm.Node{node("n1", 4)},
			queues:  map[string]fsm.QueueConfig{"mail": {Limit: 2}},
			activeQ: map[string]int{"mail": 1},
			pending: []fsm.Task{ready("m1", 0, "mail", 0), ready("m2", 0, "mail", time.Second), ready("x", 0, "", 2*time.Second)},
			want:    []fsm.Assign{assign("m1", "n1"), assign("x", "n1")}},
		{name: "type limit", nodes: []fsm.Node{node("n1", 4)},
			typeLimits: map[string]int{"echo": 3}, activeT: map[string]int{"echo": 2},
			pending: []fsm.Task{ready("a", 0, "", 0), ready("b", 0, "q", time.Second)},
			want:    []fsm.Assign{assign("a", "n1")}},
		{name: "paused queue", nodes: n1,
			queues:  map[string]fsm.QueueConfig{"": {Paused: true}},
			pending: []fsm.Task{ready("a", 9, "", 0), ready("b", 0, "other", time.Second)},
			want:    []fsm.Assign{assign("b", "n1")}},
		{name: "scheduled and not yet due are not placed", nodes: n1,
			pending: []fsm.Task{scheduled, notDue, dueNow},
			want:    []fsm.Assign{assign("due", "n1")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := fsm.View{Nodes: tc.nodes, Load: tc.load, Pending: tc.pending, Queues: tc.queues,
				TypeLimits: tc.typeLimits, ActiveQueue: tc.activeQ, ActiveType: tc.activeT}
			got := Place(v, allAlive(tc.nodes), now0, "")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Place = %v, want %v", got, tc.want)
			}
		})
	}
}

// A worker is placed on like a node, alive while its host is: gossip never names a worker.
func TestPlaceOnWorkersAliveThroughTheirHost(t *testing.T) {
	w := node("w1", 2, "py@1")
	w.Host = "n1"
	n2 := node("n2", 2)
	v := fsm.View{Nodes: []fsm.Node{w, n2}, Pending: []fsm.Task{task("a", "py", "1"), task("b", "py", "1"), task("c", "py", "1")}}
	got := Place(v, map[string]bool{"n1": true, "n2": true}, now0, "")
	want := []fsm.Assign{assign("a", "w1"), assign("b", "w1")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("host alive: %v, want %v", got, want)
	}
	if got := Place(v, map[string]bool{"n2": true, "w1": true}, now0, ""); len(got) != 0 {
		t.Errorf("host not alive (a member named as the worker is): %v, want nothing", got)
	}
	w.Draining = true
	v.Nodes[0] = w
	if got := Place(v, map[string]bool{"n1": true, "n2": true}, now0, ""); len(got) != 0 {
		t.Errorf("draining worker: %v", got)
	}
}

// Place takes no more tasks from a rate bucket than the view says it holds, and none from a
// bucket the view says is empty; buckets are apart by key, and a task without a limit is free.
func TestPlaceTakesNoMoreThanABucketHolds(t *testing.T) {
	nodes := []fsm.Node{node("n1", 10)}
	pending := tasks("a", "b", "c", "k1", "k2", "free")
	for i := range pending {
		switch pending[i].ID {
		case "a", "b", "c":
			pending[i].RateLimit = "api"
		case "k1", "k2":
			pending[i].RateLimit, pending[i].RateKey = "api", "tenant"
		}
	}
	v := fsm.View{Pending: pending, Nodes: nodes, Load: map[string]int{},
		RateTokens: map[fsm.RateBucket]int64{{Limit: "api"}: 2, {Limit: "api", Key: "tenant"}: 0}}
	var got []string
	for _, a := range Place(v, allAlive(nodes), now0, "") {
		got = append(got, a.TaskID)
	}
	if want := []string{"a", "b", "free"}; !reflect.DeepEqual(got, want) {
		t.Errorf("placed %v, want %v", got, want)
	}
}

func TestNextWakeIncludesTheNextRateToken(t *testing.T) {
	v := fsm.View{NextRate: now0.Add(300 * time.Millisecond), NextDue: now0.Add(time.Second)}
	if got := NextWake(v, now0); !got.Equal(now0.Add(300 * time.Millisecond)) {
		t.Errorf("next wake %v", got)
	}
}
