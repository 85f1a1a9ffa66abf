package node

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// storageFaultCluster starts three nodes with two gate tasks running on each, and returns the
// cluster, a follower and the tasks it runs.
func storageFaultCluster(t *testing.T) (*testCluster, *gate, *Node, []string) {
	t.Helper()
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t)})
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, submit(t, tc.nodes[i%3], "gate", nil, "").ID)
	}
	for _, id := range ids {
		waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	}
	victim := tc.follower()
	var mine []string
	for _, id := range ids {
		if tc.task(id).Node == victim.Name() {
			mine = append(mine, id)
		}
	}
	if len(mine) == 0 {
		t.Fatalf("follower %s runs nothing", victim.Name())
	}
	return tc, g, victim, mine
}

// waitHealth polls a node's /v1/health until it answers code, and returns the body.
func waitHealth(t *testing.T, n *Node, code int, what string) api.Health {
	t.Helper()
	var h api.Health
	waitFor(t, n.Name()+" health "+what, 30*time.Second, func() bool {
		h = api.Health{}
		return httpCall(t, n, "GET", "/v1/health", nil, &h) == code
	})
	return h
}

// waitMoved waits until every task in ids runs on a node other than victim, after an interruption.
func waitMoved(t *testing.T, tc *testCluster, victim *Node, ids []string) {
	t.Helper()
	for _, id := range ids {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool {
			return t.State == fsm.Running && t.Node != victim.Name()
		})
		if !hasEvent(got, fsm.EventInterrupted, 1) || got.Failures != 0 {
			t.Fatalf("moved task %s: attempt %d failures %d history %+v", id, got.Attempt, got.Failures, got.History)
		}
	}
}

func TestNodeThatCannotPersistIsUnhealthyLosesItsTasksAndRecovers(t *testing.T) {
	tc, g, victim, mine := storageFaultCluster(t)

	victim.storage.Inject(syscall.ENOSPC) // every raft write and the probe now fail, as on a full disk
	h := waitHealth(t, victim, 503, "503 storage_fault")
	if h.Status != api.HealthStorageFault || !strings.Contains(h.Reason, "no space left on device") {
		t.Fatalf("health = %+v, want storage_fault naming ENOSPC", h)
	}
	var e api.Error
	if code := httpCall(t, victim, "POST", "/v1/tasks", api.SubmitRequest{Type: "echo"}, &e); code != 503 || e.Code != api.CodeStorageUnavailable {
		t.Errorf("submit to the faulty node = %d %+v, want 503 storage_unavailable", code, e)
	}
	waitMoved(t, tc, victim, mine)
	// Nothing new is placed there while it cannot persist, and it stays in raft.
	l := tc.leader()
	if nd, _ := l.FSM().Node(victim.Name()); nd.Status == fsm.NodeUp {
		t.Errorf("the leader still holds %s up", victim.Name())
	}
	if !slicesContainsServer(raftServers(t, l), victim.Name()) {
		t.Errorf("%s was removed from raft", victim.Name())
	}

	victim.storage.Inject(nil)
	waitHealth(t, victim, 200, "200 again")
	waitFor(t, victim.Name()+" up again in the leader's FSM", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, ok := l.FSM().Node(victim.Name())
		return ok && nd.Status == fsm.NodeUp
	})
	if code := httpCall(t, victim, "POST", "/v1/tasks?wait=20s", api.SubmitRequest{Type: "echo"}, &api.Task{}); code != 201 {
		t.Errorf("submit after recovery = %d, want 201", code)
	}
	for _, n := range tc.live() {
		g.open(n.Name())
	}
	for _, id := range mine {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded || got.Node == victim.Name() {
			t.Fatalf("task %s ended %s on %s", id, got.State, got.Node)
		}
	}
}

func TestNodeWhoseDataDirIsRemovedIsUnhealthyAndLosesItsTasks(t *testing.T) {
	tc, g, victim, mine := storageFaultCluster(t)
	if err := os.RemoveAll(victim.cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	h := waitHealth(t, victim, 503, "503 storage_fault")
	if h.Status != api.HealthStorageFault || !strings.Contains(h.Reason, victim.cfg.DataDir) {
		t.Fatalf("health = %+v, want storage_fault naming the data dir", h)
	}
	waitMoved(t, tc, victim, mine)
	// Recreating the directory does not fool the watchdog: raft.db is not the file raft writes.
	if err := os.MkdirAll(victim.cfg.DataDir+"/raft", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim.cfg.DataDir+"/raft/raft.db", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	victim.checkStorage()
	if h := waitHealth(t, victim, 503, "still 503"); !strings.Contains(h.Reason, "raft.db") {
		t.Errorf("health after the dir was recreated = %+v, want it to name raft.db", h)
	}
	for _, n := range tc.live() {
		g.open(n.Name())
	}
	for _, id := range mine {
		got := waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
		if got.State != fsm.Succeeded || got.Node == victim.Name() {
			t.Fatalf("task %s ended %s on %s", id, got.State, got.Node)
		}
	}
}

func slicesContainsServer(servers []raft.Server, name string) bool {
	for _, s := range servers {
		if string(s.ID) == name {
			return true
		}
	}
	return false
}
