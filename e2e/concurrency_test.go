package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	ulidgen "github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/fsm"
)

// assignedAt is when r's latest attempt was assigned (zero if never).
func assignedAt(r taskRec) time.Time {
	var at time.Time
	for _, h := range r.History {
		if h.Event == "assigned" {
			at = h.At
		}
	}
	return at
}

// mostHoldingASlot is the most attempts of recs that held a slot at once, from their histories:
// an attempt holds one from its assigned event to its next interrupted or end event.
func mostHoldingASlot(recs map[string]taskRec) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, r := range recs {
		var open *time.Time
		for _, h := range r.History {
			switch h.Event {
			case "assigned":
				at := h.At
				open = &at
			case "interrupted", "succeeded", "failed", "cancelled":
				if open != nil {
					edges = append(edges, edge{*open, 1}, edge{h.At, -1})
					open = nil
				}
			}
		}
	}
	sort.Slice(edges, func(i, j int) bool {
		if !edges[i].at.Equal(edges[j].at) {
			return edges[i].at.Before(edges[j].at)
		}
		return edges[i].delta < edges[j].delta
	})
	most, n := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// 20 tasks with concurrency key "tenant-a" and limit 2, submitted with the CLI through every node
// of three with 6 free slots, across a SIGKILL of a follower running one: no poll of the cluster
// ever sees more than 2 running, the histories never show more than 2 holding a slot at once,
// and the limit was reached.
func TestProcessConcurrencyKeyLimitAcrossNodeKill(t *testing.T) {
	pc := startProcCluster(t, 3)
	c := threeVoters(t, pc)
	var ids []string
	for i := range 20 {
		out, errOut, code := pc.cli(pc.procs[i%3], "submit", "--concurrency-key", "tenant-a", "--concurrency-limit", "2",
			"--timeout", "60s", "sleep", `{"ms": 700}`)
		if code != 0 {
			t.Fatalf("submit: exit %d: %s", code, errOut)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	seen := 0
	watch := func(p *proc) bool {
		recs, ok := p.tasksAtOnce(ids)
		if !ok {
			return false
		}
		running := 0
		for _, r := range recs {
			if r.State == client.StateRunning || r.State == client.StateAssigned {
				running++
			}
			if r.ConcurrencyKey != "tenant-a" || r.ConcurrencyLimit != 2 {
				t.Fatalf("record %s: key %q limit %d", r.ID, r.ConcurrencyKey, r.ConcurrencyLimit)
			}
		}
		if running > 2 {
			t.Fatalf("%d tasks of the key assigned or running at once, limit 2", running)
		}
		seen = max(seen, running)
		return true
	}
	var victim *proc
	poll(t, "a follower running a task of the key", 30*time.Second, func() bool {
		recs, ok := pc.procs[0].tasks(ids)
		if !ok {
			return false
		}
		watch(pc.procs[0])
		for _, r := range recs {
			if r.State == client.StateRunning && r.Node != c.Leader {
				victim = pc.byName(r.Node)
				return true
			}
		}
		return false
	})
	pc.kill(victim)
	alive := pc.others(victim)
	turn := 0
	poll(t, "all 20 succeeded", 120*time.Second, func() bool {
		turn++
		p := alive[turn%len(alive)]
		if !watch(p) {
			return false
		}
		recs, _ := p.tasks(ids)
		for _, r := range recs {
			if r.State != client.StateSucceeded {
				return false
			}
		}
		return true
	})
	recs := waitTasks(t, client.StateSucceeded, 10*time.Second, ids, alive...)
	if most := mostHoldingASlot(recs); most != 2 {
		t.Errorf("the histories show at most %d tasks of the key holding a slot at once, want exactly the limit, 2", most)
	}
	t.Logf("at most %d running seen by polls; %s killed", seen, victim.Name)
}

// A queue's key template set with the CLI: six tasks of tenant a, then three of tenant b, wait
// behind a busy slot of a one-slot node; they run a, b, a, b, a, b, a, a, a.
func TestProcessTwoKeysOfAQueueAlternate(t *testing.T) {
	pc := startProcCluster(t, 1, "--capacity", "1")
	p := pc.procs[0]
	cmd := exec.Command(pc.c.Bin, "queue", "set-concurrency", "--addr", "http://"+p.HTTP, "tenants", "tenant-{/t}", "5")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "concurrency key tenant-{/t} at most 5") {
		t.Fatalf("queue set-concurrency: %v: %s", err, out)
	}
	ctx := context.Background()
	busy, _, err := p.client().Submit(ctx, client.SubmitRequest{Type: "sleep", Input: json.RawMessage(`{"ms": 1500}`)})
	if err != nil {
		t.Fatal(err)
	}
	waitTasks(t, client.StateRunning, 20*time.Second, []string{busy.ID}, p)
	var ids []string
	for i, tenant := range strings.Split("aaaaaabbb", "") {
		task, _, err := p.client().Submit(ctx, client.SubmitRequest{Type: "echo", Queue: "tenants", Input: json.RawMessage(fmt.Sprintf(`{"t":%q,"i":%d}`, tenant, i))})
		if err != nil {
			t.Fatal(err)
		}
		if task.ConcurrencyKey != "tenant-"+tenant || task.ConcurrencyLimit != 5 {
			t.Fatalf("record key %q limit %d", task.ConcurrencyKey, task.ConcurrencyLimit)
		}
		ids = append(ids, task.ID)
	}
	recs := waitTasks(t, client.StateSucceeded, 60*time.Second, ids, p)
	order := slices.Clone(ids)
	sort.SliceStable(order, func(i, j int) bool { return assignedAt(recs[order[i]]).Before(assignedAt(recs[order[j]])) })
	var keys []string
	for _, id := range order {
		keys = append(keys, strings.TrimPrefix(recs[id].ConcurrencyKey, "tenant-"))
	}
	if got := strings.Join(keys, ""); got != "abababaaa" {
		t.Errorf("run order by key %s, want abababaaa", got)
	}
}

// A priority-10 task submitted while 500 priority-0 tasks have been pending for 150 s at capacity
// 2 is placed at the next free slot, before every one of them still waiting. The backlog's age
// is that of the raft entry that created it: the node is stopped, its raft log replaced by one
// whose submit entry carries a timestamp 150 s back (what a leader that took those submits then
// wrote), and started again on it; nothing waits 150 s.
func TestProcessPriorityTenGoesBeforeABacklogPendingFor150s(t *testing.T) {
	pc := startProcCluster(t, 1, "--insecure", "--capacity", "2", "--http-rate-limit", "0")
	p := pc.procs[0]
	raftID, err := os.ReadFile(filepath.Join(p.DataDir, "raft-id"))
	if err != nil {
		t.Fatal(err)
	}
	pc.sigtermExits(p, 30*time.Second)

	created := time.Now().UTC().Add(-150 * time.Second)
	backlog := make([]fsm.Submit, 500)
	for i := range backlog {
		id := ulidgen.Make().String()
		// 5 s each: the two the node places at its start hold both slots while the priority-10
		// task is submitted, so no placement pass is in flight then, and the next free slot is
		// the one it must take.
		backlog[i] = fsm.Submit{ID: id, Type: "sleep", Version: "1", Input: json.RawMessage(`{"ms": 5000}`), MaxAttempts: 1,
			Timeout: fsm.Duration(time.Minute), ExecutionID: id}
	}
	entry, err := fsm.Encode(&fsm.Command{Now: created, Body: &fsm.SubmitBatch{Items: backlog}})
	if err != nil {
		t.Fatal(err)
	}
	writeRaftLog(t, filepath.Join(p.DataDir, "raft"), raft.ServerID(strings.TrimSpace(string(raftID))), raft.ServerAddress(p.Raft), entry)
	pc.restart(p)
	pc.waitCluster(p, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	urgent, _, err := p.client().Submit(ctx, client.SubmitRequest{Type: "calc-square", Input: json.RawMessage("7"), Priority: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := waitTasks(t, client.StateSucceeded, 60*time.Second, []string{urgent.ID}, p)[urgent.ID]
	at := assignedAt(got)
	ids := make([]string, len(backlog))
	for i, s := range backlog {
		ids[i] = s.ID
	}
	recs, ok := p.tasks(ids)
	if !ok {
		t.Fatal("read the backlog")
	}
	jumped, before, pending := 0, 0, 0
	for _, r := range recs {
		if r.CreatedAt.After(created.Add(time.Second)) || r.Priority != 0 {
			t.Fatalf("backlog task %s created %v priority %d, want %v and 0", r.ID, r.CreatedAt, r.Priority, created)
		}
		a := assignedAt(r)
		switch {
		case a.IsZero():
			pending++
		case a.After(got.CreatedAt) && a.Before(at): // the same instant: the same assignment entry
			jumped++
		case !a.After(got.CreatedAt):
			before++
		}
	}
	if jumped > 0 {
		t.Errorf("%d backlog tasks were placed after the priority-10 task was submitted and before it was placed", jumped)
	}
	if at.Sub(got.CreatedAt) > 30*time.Second {
		t.Errorf("the priority-10 task waited %v: it did not take the next free slot", at.Sub(got.CreatedAt))
	}
	if pending < 400 {
		t.Errorf("only %d backlog tasks still pending: the backlog did not wait behind it", pending)
	}
	t.Logf("placed %v after its submit; %d backlog tasks placed before it was submitted, %d pending", at.Sub(got.CreatedAt), before, pending)
}

// writeRaftLog replaces the raft state in dir with a new one: a cluster of the one voter id at
// addr, and entry as its first command (index 2). The node reads it as the log of an earlier
// release (raft.db, which it moves into its WAL at start).
func writeRaftLog(t *testing.T, dir string, id raft.ServerID, addr raft.ServerAddress, entry []byte) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	snaps, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = id
	_, trans := raft.NewInmemTransport(addr)
	cf := raft.Configuration{Servers: []raft.Server{{ID: id, Address: addr, Suffrage: raft.Voter}}}
	if err := raft.BootstrapCluster(rc, st, st, snaps, trans, cf); err != nil {
		t.Fatal(err)
	}
	if err := st.StoreLog(&raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: entry}); err != nil {
		t.Fatal(err)
	}
}
