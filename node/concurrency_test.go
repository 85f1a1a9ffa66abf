package node

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// keyWatch records, on every replica and after every applied entry, the most tasks of each
// concurrency key assigned or running, and every entry after which a key was over limit.
type keyWatch struct {
	mu    sync.Mutex
	peak  map[string]map[string]int // node -> key -> most active
	over  []string
	limit map[string]int
}

func watchKeys(tc *testCluster, limit map[string]int) *keyWatch {
	w := &keyWatch{peak: map[string]map[string]int{}, limit: limit}
	for _, n := range tc.nodes {
		name := n.Name()
		w.peak[name] = map[string]int{}
		n.FSM().SetKeyObserver(func(index uint64, active map[string]int) {
			w.mu.Lock()
			defer w.mu.Unlock()
			for k, c := range active {
				w.peak[name][k] = max(w.peak[name][k], c)
				if l, ok := w.limit[k]; ok && c > l {
					w.over = append(w.over, fmt.Sprintf("%s@%d: %s has %d active, limit %d", name, index, k, c, l))
				}
			}
		})
		tc.t.Cleanup(func() { n.FSM().SetKeyObserver(nil) })
	}
	return w
}

// check fails t if a key passed its limit on any replica, or if a replica never saw a key reach
// want active tasks (a test that never reaches the limit proves nothing).
func (w *keyWatch) check(t *testing.T, key string, want int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.over {
		t.Error(o)
	}
	for name, p := range w.peak {
		if p[key] != want {
			t.Errorf("%s: key %s peaked at %d active tasks, want %d", name, key, p[key], want)
		}
	}
}

// TestTwentyTasksWithLimitTwoNeverRunMoreThanTwoOnAnyReplica: 20 tasks with one key and limit
// 2, on three nodes with 12 free slots, submitted through every node: never more than 2 assigned
// or running at once on any replica after any entry, the other 18 wait with a pending_reason that
// names the key, and all 20 run.
func TestTwentyTasksWithLimitTwoNeverRunMoreThanTwoOnAnyReplica(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 4, twin: true, registry: g.registry(t)})
	w := watchKeys(tc, map[string]int{"tenant-a": 2})
	var ids []string
	for i := range 20 {
		task := submitReq(t, tc.nodes[i%3], api.SubmitRequest{Type: "gate", ConcurrencyKey: "tenant-a", ConcurrencyLimit: 2})
		if task.ConcurrencyKey != "tenant-a" || task.ConcurrencyLimit != 2 {
			t.Fatalf("record key %q limit %d", task.ConcurrencyKey, task.ConcurrencyLimit)
		}
		ids = append(ids, task.ID)
	}
	waitFor(t, "2 tasks of the key running", 20*time.Second, func() bool {
		return tc.leader().FSM().ConcurrencyActive("tenant-a") == 2
	})
	var waiting api.Task
	for _, id := range ids {
		if code := httpCall(t, tc.follower(), "GET", "/v1/tasks/"+id, nil, &waiting); code != http.StatusOK {
			t.Fatalf("get %s: %d", id, code)
		}
		if waiting.State == api.StatePending {
			break
		}
	}
	if want := `concurrency key "tenant-a" has its limit of 2 tasks running`; waiting.PendingReason != want {
		t.Errorf("pending_reason %q, want %q", waiting.PendingReason, want)
	}
	for _, n := range tc.nodes {
		g.open(n.Name())
	}
	var tasks []fsm.Task
	for _, id := range ids {
		got := waitState(t, tc, id, 60*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded {
			t.Fatalf("%s ended %s", id, got.State)
		}
		tasks = append(tasks, got)
	}
	if most := mostAtOnce(tasks); most > 2 {
		t.Errorf("the histories show %d tasks of the key at once, limit 2", most)
	}
	waitFor(t, "every replica applied the last report", 30*time.Second, func() bool {
		for _, n := range tc.nodes {
			if n.FSM().Counts()[fsm.Succeeded] != 20 {
				return false
			}
		}
		return true
	})
	w.check(t, "tenant-a", 2)
}

// TestTwoKeysOfAQueueTemplateAlternate: a queue whose template makes the key from the input;
// six tasks of tenant a, then three of tenant b, wait behind a busy slot; they then run a, b, a,
// b, a, b, a, a, a, not b's after all of a's.
func TestTwoKeysOfAQueueTemplateAlternate(t *testing.T) {
	g := newGate()
	tc := startCluster(t, 1, clusterOpts{capacity: 1, twin: true, registry: g.registry(t)})
	n := tc.nodes[0]
	var q api.Queue
	if code := httpCall(t, n, "POST", "/v1/queues/tenants", api.QueueUpdate{ConcurrencyKey: ptrTo("tenant-{/t}"), ConcurrencyLimit: ptrTo(5)}, &q); code != http.StatusOK ||
		q.ConcurrencyKey != "tenant-{/t}" || q.ConcurrencyLimit != 5 {
		t.Fatalf("set template: %d %+v", code, q)
	}
	busy := submit(t, n, "gate", nil, "")
	waitState(t, tc, busy.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	var ids []string
	for i, tenant := range strings.Split("aaaaaabbb", "") {
		task := submitReq(t, n, api.SubmitRequest{Type: "echo", Queue: "tenants", Input: []byte(fmt.Sprintf(`{"t":%q,"i":%d}`, tenant, i))})
		if task.ConcurrencyKey != "tenant-"+tenant || task.ConcurrencyLimit != 5 {
			t.Fatalf("record key %q limit %d, want tenant-%s and 5", task.ConcurrencyKey, task.ConcurrencyLimit, tenant)
		}
		ids = append(ids, task.ID)
	}
	g.open(n.Name())
	started := map[string]time.Time{}
	key := map[string]string{}
	for _, id := range ids {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded {
			t.Fatalf("%s ended %s", id, got.State)
		}
		started[id], key[id] = assignedAt(got), strings.TrimPrefix(got.ConcurrencyKey, "tenant-")
	}
	order := slices.Clone(ids)
	sort.SliceStable(order, func(i, j int) bool { return started[order[i]].Before(started[order[j]]) })
	var keys []string
	for _, id := range order {
		keys = append(keys, key[id])
	}
	if got := strings.Join(keys, ""); got != "abababaaa" {
		t.Errorf("run order by key %s, want abababaaa", got)
	}
}

// TestConcurrencyKeysAreRefusedWhileAnOlderNodeIsUp: with a node of protocol 7 up, a submit with
// a concurrency key and a queue's key template answer 409 upgrade_required and store nothing;
// once that node is gone, both work.
func TestConcurrencyKeysAreRefusedWhileAnOlderNodeIsUp(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{twin: true})
	l := tc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopOld := upOldNode(t, l, fsm.ConcurrencyProtocol-1)
	before := l.FSM().Counts()
	for _, n := range tc.nodes {
		var e api.Error
		if code := httpCall(t, n, "POST", "/v1/tasks", api.SubmitRequest{Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: 1}, &e); code != http.StatusConflict || e.Code != api.CodeUpgradeRequired {
			t.Errorf("%s: keyed submit with an older node up: %d %+v, want 409 upgrade_required", n.Name(), code, e)
		}
		var b api.BatchSubmitReply
		httpCall(t, n, "POST", api.PathTasksBatch, api.BatchSubmitRequest{Tasks: []api.SubmitRequest{{Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: 1}}}, &b)
		if len(b.Results) == 1 && b.Results[0].Error == nil {
			t.Errorf("%s: keyed batch submit stored with an older node up: %+v", n.Name(), b.Results[0])
		}
		e = api.Error{}
		if code := httpCall(t, n, "POST", "/v1/queues/tenants", api.QueueUpdate{ConcurrencyKey: ptrTo("{/t}"), ConcurrencyLimit: ptrTo(2)}, &e); code != http.StatusConflict || e.Code != api.CodeUpgradeRequired {
			t.Errorf("%s: key template with an older node up: %d %+v, want 409 upgrade_required", n.Name(), code, e)
		}
	}
	if d, ok := l.FSM().Node("old"); !ok || d.Status != fsm.NodeUp {
		t.Fatalf("the older node is not up any more (%+v): the refusals prove nothing", d)
	}
	if after := l.FSM().Counts(); after[fsm.Pending]+after[fsm.Assigned]+after[fsm.Running]+after[fsm.Succeeded] !=
		before[fsm.Pending]+before[fsm.Assigned]+before[fsm.Running]+before[fsm.Succeeded] {
		t.Errorf("refused submits stored tasks: %v, before %v", after, before)
	}
	if q := l.FSM().Queue("tenants"); q.ConcurrencyKey != "" {
		t.Errorf("refused template stored: %+v", q)
	}
	// A plain submit still works while the older node is up.
	if task := submit(t, tc.follower(), "echo", 1, "20s"); task.State != api.StateSucceeded {
		t.Fatalf("plain submit with an older node up: %s", task.State)
	}
	stopOld()
	if _, err := l.internode.Propose(ctx, &fsm.Command{Body: &fsm.Down{Name: "old", Left: true}}); err != nil {
		t.Fatal(err)
	}
	task := submitReq(t, tc.follower(), api.SubmitRequest{Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: 1})
	if got := waitState(t, tc, task.ID, 20*time.Second, func(t fsm.Task) bool { return t.State.Terminal() }); got.State != fsm.Succeeded || got.ConcurrencyKey != "k" {
		t.Errorf("keyed task once the older node left: %s key %q", got.State, got.ConcurrencyKey)
	}
}

// TestBadConcurrencyInputIsRefused: each bad key, limit or template is a 400 invalid_concurrency
// and changes nothing.
func TestBadConcurrencyInputIsRefused(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{twin: true})
	n := tc.nodes[0]
	for name, req := range map[string]api.SubmitRequest{
		"key without limit": {Type: "echo", ConcurrencyKey: "k"},
		"limit without key": {Type: "echo", ConcurrencyLimit: 2},
		"limit 0 with key":  {Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: 0},
		"negative limit":    {Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: -1},
		"limit too high":    {Type: "echo", ConcurrencyKey: "k", ConcurrencyLimit: api.MaxConcurrencyLimit + 1},
		"key too long":      {Type: "echo", ConcurrencyKey: strings.Repeat("k", api.MaxConcurrencyKey+1), ConcurrencyLimit: 1},
	} {
		var e api.Error
		if code := httpCall(t, n, "POST", "/v1/tasks", req, &e); code != http.StatusBadRequest || e.Code != api.CodeInvalidConcurrency {
			t.Errorf("%s: %d %+v, want 400 invalid_concurrency", name, code, e)
		}
	}
	for name, u := range map[string]api.QueueUpdate{
		"template without limit":    {ConcurrencyKey: ptrTo("{/t}")},
		"limit without template":    {ConcurrencyLimit: ptrTo(2)},
		"placeholder not a pointer": {ConcurrencyKey: ptrTo("{t}"), ConcurrencyLimit: ptrTo(2)},
		"unclosed placeholder":      {ConcurrencyKey: ptrTo("x-{/t"), ConcurrencyLimit: ptrTo(2)},
		"template too long":         {ConcurrencyKey: ptrTo(strings.Repeat("x", api.MaxKeyTemplate+1)), ConcurrencyLimit: ptrTo(2)},
		"too many placeholders":     {ConcurrencyKey: ptrTo(strings.Repeat("{/t}", 9)), ConcurrencyLimit: ptrTo(2)},
		"limit zero":                {ConcurrencyKey: ptrTo("{/t}"), ConcurrencyLimit: ptrTo(0)},
		"limit too high":            {ConcurrencyKey: ptrTo("{/t}"), ConcurrencyLimit: ptrTo(api.MaxConcurrencyLimit + 1)},
		"removal with a limit":      {ConcurrencyKey: ptrTo(""), ConcurrencyLimit: ptrTo(3)},
	} {
		var e api.Error
		if code := httpCall(t, n, "POST", "/v1/queues/tenants", u, &e); code != http.StatusBadRequest || e.Code != api.CodeInvalidConcurrency {
			t.Errorf("%s: %d %+v, want 400 invalid_concurrency", name, code, e)
		}
	}
	if c := n.FSM().Counts(); c[fsm.Pending]+c[fsm.Succeeded]+c[fsm.Assigned]+c[fsm.Running] != 0 {
		t.Errorf("refused submits stored tasks: %v", c)
	}
	if q := n.FSM().Queue("tenants"); q.QueueConfig != (fsm.QueueConfig{}) {
		t.Errorf("refused templates changed the queue: %+v", q.QueueConfig)
	}
	// Removing a template that is not there, without a limit, is fine.
	var q api.Queue
	if code := httpCall(t, n, "POST", "/v1/queues/tenants", api.QueueUpdate{ConcurrencyKey: ptrTo("")}, &q); code != http.StatusOK || q.ConcurrencyKey != "" {
		t.Errorf("removing the template: %d %+v", code, q)
	}
}
