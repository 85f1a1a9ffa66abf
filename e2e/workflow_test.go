package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// bigWorkflow is a workflow of 1,000 steps: a root, a fan-out to 100 branches (98 of 9 sleeps of
// ms milliseconds, 2 of 8, each branch ending with an echo of {"branch": i}), and a fan-in step "join" whose
// input is the object of the branches' last results by step name.
func bigWorkflow(ms int) (client.WorkflowRequest, []string) {
	req := client.WorkflowRequest{Name: "big", Steps: []client.WorkflowStepRequest{
		{Name: "root", Type: "echo", Input: json.RawMessage(`"go"`)}}}
	var tails []string
	for b := range 100 {
		prev, sleeps := "root", 9
		if b >= 98 {
			sleeps = 8
		}
		for k := 1; k <= sleeps; k++ {
			name := fmt.Sprintf("b%02d-%d", b, k)
			req.Steps = append(req.Steps, client.WorkflowStepRequest{Name: name, Type: "sleep", DependsOn: []string{prev},
				Input: json.RawMessage(fmt.Sprintf(`{"ms": %d}`, ms)), Timeout: "5m"})
			prev = name
		}
		tail := fmt.Sprintf("b%02d-tail", b)
		req.Steps = append(req.Steps, client.WorkflowStepRequest{Name: tail, Type: "echo", DependsOn: []string{prev},
			Input: json.RawMessage(fmt.Sprintf(`{"branch": %d}`, b))})
		tails = append(tails, tail)
	}
	req.Steps = append(req.Steps, client.WorkflowStepRequest{Name: "join", Type: "echo", InputFrom: api.InputFrom{Sources: tails, Object: true}})
	return req, tails
}

// TestProcessWorkflowThousandStepsAcrossTwoLeaderKills runs a 1,000-step workflow (fan-out 100,
// fan-in) on five processes and SIGKILLs the leader twice while it runs. Every step's task
// succeeds exactly once: its history holds one success, and any other attempt was interrupted on
// a killed node; the cluster holds no task but the steps'; the fan-in step gets every branch's
// result.
func TestProcessWorkflowThousandStepsAcrossTwoLeaderKills(t *testing.T) {
	pc := startProcCluster(t, 5, "--capacity", "4")
	voters := func(p *proc) int {
		c := p.view()
		if c == nil || c.Leader == "" {
			return 0
		}
		n := 0
		for _, node := range c.Nodes {
			if node.State == "alive" && (node.RaftRole == "leader" || node.RaftRole == "voter") {
				n++
			}
		}
		return n
	}
	live := pc.procs
	poll(t, "three live raft voters", 60*time.Second, func() bool { return voters(live[0]) >= 3 })

	req, tails := bigWorkflow(300)
	ctx := context.Background()
	w, err := live[1].client().SubmitWorkflow(ctx, req)
	if err != nil || len(w.Steps) != 1000 {
		t.Fatalf("submit: %v (%+v)", err, w)
	}
	turn := 0
	ask := func() *proc { turn++; return live[turn%len(live)] }
	progress := func() (int, string) {
		wf, err := ask().client().Workflow(ctx, w.ID)
		if err != nil {
			return 0, ""
		}
		return wf.StepsDone, wf.State
	}

	killed := map[string]bool{}
	for _, at := range []int{150, 500} {
		poll(t, fmt.Sprintf("%d steps done", at), 3*time.Minute, func() bool { n, _ := progress(); return n >= at })
		c := ask().view()
		if c == nil || c.Leader == "" {
			t.Fatal("no leader to kill")
		}
		victim := pc.byName(c.Leader)
		if n, state := progress(); state != api.WorkflowRunning {
			t.Fatalf("the workflow is %s (%d steps done) before the kill at %d", state, n, at)
		}
		pc.kill(victim)
		killed[victim.Name] = true
		live = pc.running()
		n, _ := progress()
		t.Logf("SIGKILLed leader %s at %d steps done", victim.Name, n)
		poll(t, "a new leader and three live voters", 2*time.Minute, func() bool {
			c := ask().view()
			return c != nil && c.Leader != "" && !killed[c.Leader] && voters(ask()) >= 3
		})
	}
	var final *client.Workflow
	poll(t, "the workflow finished", 5*time.Minute, func() bool {
		wf, err := ask().client().Workflow(ctx, w.ID)
		if err == nil && wf.State != api.WorkflowRunning {
			final = wf
		}
		return final != nil
	})
	if final.State != api.WorkflowSucceeded || final.StepsDone != 1000 {
		t.Fatalf("workflow %s with %d steps done: %s", final.State, final.StepsDone, final.Error)
	}

	// Exactly once: one success per step's task, any other attempt interrupted on a killed node.
	reader := live[0]
	interrupted := 0
	for _, s := range final.Steps {
		if s.TaskID != w.ID+"."+s.Name || s.State != api.StateSucceeded {
			t.Fatalf("step %s: task %q %s", s.Name, s.TaskID, s.State)
		}
		var r taskRec
		if err := reader.getJSON("/v1/tasks/"+s.TaskID, &r); err != nil {
			t.Fatal(err)
		}
		attempts := map[int]string{}
		succeeded := 0
		for _, h := range r.History {
			switch h.Event {
			case "started", "assigned":
				if attempts[h.Attempt] == "" {
					attempts[h.Attempt] = h.Node
				}
			case "succeeded":
				succeeded++
			case "interrupted":
				if !killed[h.Node] {
					t.Errorf("step %s: attempt %d interrupted on %s, which was not killed", s.Name, h.Attempt, h.Node)
				}
				interrupted++
			case "failed":
				t.Errorf("step %s: attempt %d failed: %s", s.Name, h.Attempt, h.Error)
			}
		}
		for a, node := range attempts {
			if a != r.Attempt && (!killed[node] || !hasHistory(r, "interrupted", node)) {
				t.Errorf("step %s: attempt %d on %s besides the one that succeeded (%d); history %v", s.Name, a, node, r.Attempt, killHistory(r))
			}
		}
		if succeeded != 1 || r.State != client.StateSucceeded {
			t.Errorf("step %s: %s with %d successes", s.Name, r.State, succeeded)
		}
	}
	t.Logf("1000 steps succeeded once each; %d attempts interrupted by the kills", interrupted)
	c := reader.view()
	total := 0
	for _, n := range c.Tasks {
		total += n
	}
	if total != 1000 || c.Tasks[client.StateSucceeded] != 1000 {
		t.Errorf("the cluster holds tasks %v, want the 1000 steps', succeeded", c.Tasks)
	}

	var join taskRec
	if err := reader.getJSON("/v1/tasks/"+w.ID+".join", &join); err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]int
	if err := json.Unmarshal(join.Input, &got); err != nil || len(got) != 100 {
		t.Fatalf("join's input holds %d results (%v)", len(got), err)
	}
	for b, tail := range tails {
		if v, ok := got[tail]; !ok || v["branch"] != b {
			t.Errorf("join's input for %s is %v, want branch %d", tail, v, b)
		}
	}
}
