package main

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// Multi-process graceful leave: SIGTERM drains a node. Tasks that fit in the drain timeout finish
// there; longer ones are handed back and run elsewhere; the process exits 0 and the survivors
// record the node as left.

// drainRec is the task record plus the failure count the client package does not decode.
type drainRec struct {
	client.Task
	Failures int `json:"failures"`
}

// drainGet reads task records from p; ok is false on any error (say, a 503 during an election).
func drainGet(p *proc, ids []string) (map[string]drainRec, bool) {
	out := make(map[string]drainRec, len(ids))
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAd+"/v1/tasks/"+id, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return nil, false
		}
		var rec drainRec
		err = json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		cancel()
		if resp.StatusCode != http.StatusOK || err != nil {
			return nil, false
		}
		out[id] = rec
	}
	return out, true
}

// drainView returns p's GET /v1/cluster, or nil on error.
func drainView(p *proc) *client.Cluster {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := p.client().Cluster(ctx)
	if err != nil {
		return nil
	}
	return c
}

func nodeIn(c *client.Cluster, name string) (client.NodeInfo, bool) {
	if c == nil {
		return client.NodeInfo{}, false
	}
	i := slices.IndexFunc(c.Nodes, func(n client.NodeInfo) bool { return n.Name == name })
	if i < 0 {
		return client.NodeInfo{}, false
	}
	return c.Nodes[i], true
}

func hasHistory(r drainRec, event, node string) bool {
	return slices.ContainsFunc(r.History, func(h client.HistoryEntry) bool { return h.Event == event && h.Node == node })
}

// sigtermExits sends SIGTERM and checks the process exits with status 0 in time.
func (pc *procCluster) sigtermExits(p *proc, timeout time.Duration) {
	pc.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		pc.t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			pc.t.Fatalf("%s after SIGTERM: %v, want exit status 0", p.name, err)
		}
	case <-time.After(timeout):
		pc.t.Fatalf("%s still running %s after SIGTERM", p.name, timeout)
	}
}

// checkLeft checks that `status --json` on a survivor shows the node left (never dead), and
// that nothing is left running on it.
func (pc *procCluster) checkLeft(obs, gone *proc) {
	pc.t.Helper()
	poll(pc.t, obs.name+" sees "+gone.name+" left", 30*time.Second, func() bool {
		n, ok := nodeIn(drainView(obs), gone.name)
		if ok && n.State == "dead" {
			pc.t.Fatalf("%s shows %s dead after a graceful leave", obs.name, gone.name)
		}
		return ok && n.State == "left"
	})
	var cl client.Cluster
	poll(pc.t, "status --json on "+obs.name+" shows "+gone.name+" left and out of raft", 30*time.Second, func() bool {
		out, errOut, code := pc.cli(obs, "status", "--json")
		if err := json.Unmarshal([]byte(out), &cl); err != nil {
			pc.t.Fatalf("status --json: code %d %v %q %q", code, err, out, errOut)
		}
		n, ok := nodeIn(&cl, gone.name)
		if ok && n.State == "dead" {
			pc.t.Fatalf("status --json on %s shows %s dead after a graceful leave", obs.name, gone.name)
		}
		return ok && n.State == "left" && n.Running == 0 && n.RaftRole == "none" && cl.Leader != "" && cl.Leader != gone.name
	})
}

func submitSleeps(t *testing.T, p *proc, count, ms int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < count; i++ {
		task, _, err := p.client().Submit(context.Background(), client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(`{"ms": ` + itoa(ms) + `}`), Timeout: "60s"})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestProcessSIGTERMDrainsAndLeaves(t *testing.T) {
	pc := newProcCluster(t)
	for i := 0; i < 3; i++ {
		pc.add()
	}
	pc.waitCluster(pc.procs[0], 3)

	ids := submitSleeps(t, pc.procs[0], 4, 3000)
	var victim *proc
	var leader string
	var running map[string]drainRec
	poll(t, "a task running on a non-leader", 20*time.Second, func() bool {
		c := drainView(pc.procs[0])
		recs, ok := drainGet(pc.procs[0], ids)
		if c == nil || c.Leader == "" || !ok {
			return false
		}
		leader, running = c.Leader, recs
		for _, r := range recs {
			if r.State == client.StateRunning && r.Node != c.Leader {
				victim = pc.byNameDrain(r.Node)
				return true
			}
		}
		return false
	})
	var mine []string
	for id, r := range running {
		if r.Node == victim.name {
			mine = append(mine, id)
		}
	}
	var survivors []*proc
	for _, p := range pc.procs {
		if p != victim {
			survivors = append(survivors, p)
		}
	}
	t.Logf("leader %s; SIGTERM to %s, which runs %d of the tasks", leader, victim.name, len(mine))

	if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While it drains (its 3 s tasks keep it busy) the survivors show it draining.
	poll(t, victim.name+" shown draining", 10*time.Second, func() bool {
		n, ok := nodeIn(drainView(survivors[0]), victim.name)
		return ok && n.Draining
	})
	select {
	case err := <-victim.done:
		if err != nil {
			t.Fatalf("%s after SIGTERM: %v, want exit status 0", victim.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still running 30s after SIGTERM", victim.name)
	}

	var after map[string]drainRec
	poll(t, "all tasks succeeded", 30*time.Second, func() bool {
		recs, ok := drainGet(survivors[0], ids)
		if !ok {
			return false
		}
		for _, r := range recs {
			if r.State != client.StateSucceeded {
				return false
			}
		}
		after = recs
		return true
	})
	for id, r := range after {
		if r.Failures != 0 || r.Attempt != 1 || hasHistory(r, "interrupted", r.Node) || hasHistory(r, "interrupted", victim.name) {
			t.Errorf("task %s: node %s attempt %d failures %d history %+v, want one undisturbed attempt", id, r.Node, r.Attempt, r.Failures, r.History)
		}
		if slices.Contains(mine, id) && r.Node != victim.name {
			t.Errorf("task %s ran on %s, want it finished on the draining %s", id, r.Node, victim.name)
		}
	}
	pc.checkLeft(survivors[1], victim)
	out, _, code := pc.cli(survivors[0], "exec", "calc-square", "6")
	if code != 0 || out != "36\n" {
		t.Fatalf("exec after the leave: %d %q", code, out)
	}
}

func TestProcessSIGTERMHandsBackLongTasks(t *testing.T) {
	pc := newProcCluster(t)
	pc.add()
	pc.add()
	// The flag again, after the harness's --drain-timeout 10s: the last one wins.
	short := pc.add("--drain-timeout", "1s")
	pc.waitCluster(pc.procs[0], 3)

	// Least loaded first with ties to the lower name: one task per node, n3 included.
	ids := submitSleeps(t, pc.procs[0], 3, 6000)
	var moved string
	poll(t, "a task running on "+short.name, 20*time.Second, func() bool {
		recs, ok := drainGet(pc.procs[0], ids)
		if !ok {
			return false
		}
		for id, r := range recs {
			if r.State == client.StateRunning && r.Node == short.name {
				moved = id
				return true
			}
		}
		return false
	})
	start := time.Now()
	pc.sigtermExits(short, 20*time.Second)
	// Well before the 6 s task could have finished: the 1 s drain timeout applied.
	if took := time.Since(start); took > 5500*time.Millisecond {
		t.Errorf("%s took %s to leave; the 1s drain timeout was not applied", short.name, took.Round(time.Millisecond))
	}

	obs := pc.procs[0]
	var after map[string]drainRec
	poll(t, "all tasks succeeded", 40*time.Second, func() bool {
		recs, ok := drainGet(obs, ids)
		if !ok {
			return false
		}
		for _, r := range recs {
			if r.State != client.StateSucceeded {
				return false
			}
		}
		after = recs
		return true
	})
	r := after[moved]
	if r.Node == short.name || r.Attempt != 2 || r.Failures != 0 || !hasHistory(r, "interrupted", short.name) || hasHistory(r, "failed", short.name) {
		t.Fatalf("handed back task: node %s attempt %d failures %d history %+v, want attempt 2 elsewhere after an interruption on %s",
			r.Node, r.Attempt, r.Failures, r.History, short.name)
	}
	for id, r := range after {
		if r.Failures != 0 {
			t.Errorf("task %s counts %d failures", id, r.Failures)
		}
	}
	pc.checkLeft(pc.procs[1], short)
}

func (pc *procCluster) byNameDrain(name string) *proc {
	for _, p := range pc.procs {
		if p.name == name {
			return p
		}
	}
	pc.t.Fatalf("no process %s", name)
	return nil
}
