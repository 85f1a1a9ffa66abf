package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
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
	_, on := runGates(t, tc, 6)
	victim := tc.follower()
	mine := on[victim.Name()]
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

	victim.rn.Health().Inject(syscall.ENOSPC) // every raft write and the probe now fail, as on a full disk
	faultAt := time.Now()
	h := waitHealth(t, victim, 503, "503 storage_fault")
	t.Logf("fault -> health 503: %s", time.Since(faultAt).Round(time.Millisecond))
	if h.Status != api.HealthStorageFault || !strings.Contains(h.Reason, "no space left on device") {
		t.Fatalf("health = %+v, want storage_fault naming ENOSPC", h)
	}
	var e api.Error
	if code := httpCall(t, victim, "POST", "/v1/tasks", api.SubmitRequest{Type: "echo"}, &e); code != 503 || e.Code != api.CodeStorageUnavailable {
		t.Errorf("submit to the faulty node = %d %+v, want 503 storage_unavailable", code, e)
	}
	waitMoved(t, tc, victim, mine)
	t.Logf("fault -> its %d tasks running elsewhere: %s", len(mine), time.Since(faultAt).Round(time.Millisecond))
	// Nothing new is placed there while it cannot persist, and it stays in raft.
	l := tc.leader()
	if nd, _ := l.FSM().Node(victim.Name()); nd.Status == fsm.NodeUp {
		t.Errorf("the leader still holds %s up", victim.Name())
	}
	if !slicesContainsServer(raftServers(t, l), victim.Name()) {
		t.Errorf("%s was removed from raft", victim.Name())
	}

	victim.rn.Health().Inject(nil)
	clearedAt := time.Now()
	waitHealth(t, victim, 200, "200 again")
	t.Logf("writes succeed -> health 200: %s", time.Since(clearedAt).Round(time.Millisecond))
	waitFor(t, victim.Name()+" up again in the leader's FSM", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, ok := l.FSM().Node(victim.Name())
		return ok && nd.Status == fsm.NodeUp
	})
	t.Logf("writes succeed -> registered up again: %s", time.Since(clearedAt).Round(time.Millisecond))
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
	removedAt := time.Now()
	h := waitHealth(t, victim, 503, "503 storage_fault")
	if h.Status != api.HealthStorageFault || !strings.Contains(h.Reason, victim.cfg.DataDir) {
		t.Fatalf("health = %+v, want storage_fault naming the data dir", h)
	}
	waitMoved(t, tc, victim, mine)
	t.Logf("data dir removed -> its %d tasks running elsewhere: %s", len(mine), time.Since(removedAt).Round(time.Millisecond))
	// Recreating the directories does not fool the watchdog: raft/wal is not the dir raft writes.
	walDir := victim.cfg.DataDir + "/raft/wal"
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(walDir+"/wal-meta.db", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	victim.rn.CheckStorage()
	if h := waitHealth(t, victim, 503, "still 503"); !strings.Contains(h.Reason, walDir+" was replaced") {
		t.Errorf("health after the dirs were recreated = %+v, want it to name %s replaced", h, walDir)
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

func TestDigestRouteLetsReplicasBeCompared(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	submit(t, tc.nodes[1], "echo", "digest me", "20s")
	waitFor(t, "every node to answer the same digest at the same index", 30*time.Second, func() bool {
		var first api.Digest
		for i, n := range tc.nodes {
			var d api.Digest
			if httpCall(t, n, "GET", api.PathDigest, nil, &d) != 200 || d.Node != n.Name() || len(d.Digest) != 64 {
				t.Fatalf("GET %s on %s = %+v", api.PathDigest, n.Name(), d)
			}
			if i == 0 {
				first = d
			} else if d.Index != first.Index || d.Digest != first.Digest {
				return false
			}
		}
		return first.Index > 0
	})
	// The route answers the FSM's own digest. An entry applied between the two reads moves the
	// index: ask again until both are of one index, and only then compare.
	n := tc.nodes[0]
	waitFor(t, "the route and the FSM to be read at one index", 30*time.Second, func() bool {
		var d api.Digest
		if code := httpCall(t, n, "GET", api.PathDigest, nil, &d); code != 200 {
			t.Fatalf("GET %s on %s: status %d", api.PathDigest, n.Name(), code)
		}
		index, sum := n.FSM().Digest()
		if index != d.Index {
			return false
		}
		if sum != d.Digest {
			t.Fatalf("route digest %s at %d, FSM %s at the same index", d.Digest, d.Index, sum)
		}
		return true
	})
}

// mountTmpfs mounts a small tmpfs for a real full disk; it skips the test when mounting is
// refused (not root, no privilege), unless TASKWORKER_REQUIRE_TMPFS=1 demands it.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0700,size="+size); err != nil {
		if os.Getenv("TASKWORKER_REQUIRE_TMPFS") == "1" {
			t.Fatalf("mount -t tmpfs -o size=%s %s: %v (TASKWORKER_REQUIRE_TMPFS=1)", size, dir, err)
		}
		t.Skipf("skipping the real full-disk test: mount -t tmpfs refused (%v); run as root, or set TASKWORKER_REQUIRE_TMPFS=1 to make this a failure", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func TestNodeOnAFullTmpfsIsUnhealthyLosesItsTasksAndRecovers(t *testing.T) {
	// Every node on a tmpfs of its own, so that whichever node leads, a follower's disk can be
	// filled: the test never has to skip for the leader being the one on a tmpfs.
	disks := []string{mountTmpfs(t, "8m"), mountTmpfs(t, "8m"), mountTmpfs(t, "8m")}
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t), tweak: func(i int, c *Config) {
		c.DataDir = disks[i] + "/data"
	}})
	var victim *Node
	var disk string
	for i := len(tc.nodes) - 1; i >= 0 && victim == nil; i-- {
		if !tc.nodes[i].IsLeader() {
			victim, disk = tc.nodes[i], disks[i]
		}
	}
	var mine []string
	for len(mine) < 2 {
		id := submit(t, tc.nodes[0], "gate", nil, "").ID
		got := waitState(t, tc, id, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
		if got.Node == victim.Name() {
			mine = append(mine, id)
		}
	}
	// Fill the disk: write until the file system refuses.
	filler := disk + "/filler"
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errorsIsENOSPC(err) {
				t.Fatalf("fill: %v", err)
			}
			break
		}
	}
	f.Close()
	filledAt := time.Now()
	h := waitHealth(t, victim, 503, "503 storage_fault")
	if h.Status != api.HealthStorageFault || !strings.Contains(h.Reason, "no space left on device") {
		t.Fatalf("health on a full disk = %+v", h)
	}
	waitMoved(t, tc, victim, mine)
	t.Logf("disk full -> its %d tasks running elsewhere: %s", len(mine), time.Since(filledAt).Round(time.Millisecond))
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freedAt := time.Now()
	waitHealth(t, victim, 200, "200 after space was freed")
	t.Logf("space freed -> health 200: %s", time.Since(freedAt).Round(time.Millisecond))
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

func errorsIsENOSPC(err error) bool { return errors.Is(err, syscall.ENOSPC) }

func TestNearlyFullDiskIsAWarningAndAMetricNotAnOutage(t *testing.T) {
	var logs syncBuffer
	tc := startCluster(t, 1, clusterOpts{tweak: func(_ int, c *Config) {
		c.MinFreeDisk = "1000PiB" // every disk is below it
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	n := tc.nodes[0]
	waitFor(t, "the low-space warning", 30*time.Second, func() bool {
		return strings.Contains(logs.String(), "disk nearly full")
	})
	if h := waitHealth(t, n, 200, "200"); h.Status != api.HealthOK {
		t.Errorf("health with little free space = %+v, want ok", h)
	}
	req, _ := http.NewRequest("GET", "http://"+n.HTTPAddr()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"\ntaskworker_disk_free_bytes ", "\ntaskworker_storage_healthy 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	if c := strings.Count(logs.String(), "disk nearly full"); c > 2 {
		t.Errorf("the warning was logged %d times; the rate limit folds repeats", c)
	}
}

// A follower whose log writes fail answers appends with Success=false; once they succeed again it
// must catch up. With raft's pipelined replication a failed append could deadlock the leader's
// pipeline to that follower for good, heartbeats still flowing (hashicorp/raft#612): the node then
// never got another entry. Repeated, under a stream of writes, to give that race its chances.
func TestFollowerCatchesUpAfterFailedAppendsUnderLoad(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 4})
	victim := tc.follower()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if l := tc.leader(); l != nil {
					postEcho(hc, l, w)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for round := 0; round < 5; round++ {
		victim.rn.Health().Inject(syscall.ENOSPC)
		waitHealth(t, victim, 503, "503 storage_fault")
		before := tc.leader().rn.Raft().AppliedIndex()
		waitFor(t, "the leader commits more while the follower cannot write", 30*time.Second, func() bool {
			l := tc.leader()
			return l != nil && l.rn.Raft().AppliedIndex() > before+20
		})
		victim.rn.Health().Inject(nil)
		target := tc.leader().rn.Raft().AppliedIndex()
		waitFor(t, fmt.Sprintf("round %d: the follower catches up to index %d", round, target), 30*time.Second, func() bool {
			return victim.rn.Raft().AppliedIndex() >= target
		})
		waitHealth(t, victim, 200, "200 again")
	}
}
