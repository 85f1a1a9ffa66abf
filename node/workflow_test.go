package node

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

func submitWorkflow(t *testing.T, n *Node, body string) api.Workflow {
	t.Helper()
	var w api.Workflow
	if code := httpCall(t, n, "POST", "/v1/workflows", json.RawMessage(body), &w); code != http.StatusCreated || w.ID == "" {
		t.Fatalf("submit workflow: %d %+v", code, w)
	}
	return w
}

// waitWorkflow returns the workflow, read through n, once it has finished.
func waitWorkflow(t *testing.T, n *Node, id string, timeout time.Duration) api.Workflow {
	t.Helper()
	var w api.Workflow
	waitFor(t, "workflow "+id+" finished", timeout, func() bool {
		httpCall(t, n, "GET", "/v1/workflows/"+id, nil, &w)
		return w.State != "" && w.State != api.WorkflowRunning
	})
	return w
}

func stepOf(t *testing.T, w api.Workflow, name string) api.WorkflowStep {
	t.Helper()
	for _, s := range w.Steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("workflow %s has no step %s", w.ID, name)
	return api.WorkflowStep{}
}

// A chain a → b → c of calc-square passes each result on (3, 9, 81, 6561), and a fan-in step gets
// an object of its parents' results; both submitted and read through a follower, every replica
// the same at the end.
func TestWorkflowChainAndFanInThroughAFollower(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	f := tc.follower()
	chain := submitWorkflow(t, f, `{"name": "chain", "steps": [
		{"name": "a", "type": "calc-square", "input": 3},
		{"name": "b", "type": "calc-square", "depends_on": ["a"], "input_from": "a"},
		{"name": "c", "type": "calc-square", "input_from": "b"}]}`)
	fanIn := submitWorkflow(t, f, `{"name": "fan-in", "steps": [
		{"name": "p1", "type": "calc-square", "input": 2},
		{"name": "p2", "type": "calc-square", "input": 3},
		{"name": "p3", "type": "echo", "input": {"items": [5, 6]}},
		{"name": "j", "type": "echo", "input_from": ["p1", "p2", "p3#/items/1"]}]}`)

	w := waitWorkflow(t, f, chain.ID, 60*time.Second)
	if w.State != api.WorkflowSucceeded || string(w.Result) != "6561" {
		t.Fatalf("chain %s, result %s: %+v", w.State, w.Result, w.Steps)
	}
	for name, want := range map[string]string{"a": "9", "b": "81", "c": "6561"} {
		s := stepOf(t, w, name)
		if string(s.Result) != want || s.State != string(fsm.Succeeded) || s.TaskID != chain.ID+"."+name {
			t.Errorf("step %s: %s %s task %s, want result %s", name, s.State, s.Result, s.TaskID, want)
		}
	}
	var b api.Task
	httpCall(t, f, "GET", "/v1/tasks/"+chain.ID+".b", nil, &b)
	if string(b.Input) != "9" {
		t.Errorf("b's task input %s, want a's result 9", b.Input)
	}

	w = waitWorkflow(t, f, fanIn.ID, 60*time.Second)
	var got map[string]int
	if err := json.Unmarshal(w.Result, &got); err != nil || w.State != api.WorkflowSucceeded ||
		len(got) != 3 || got["p1"] != 4 || got["p2"] != 9 || got["p3"] != 6 {
		t.Fatalf("fan-in %s, result %s (%v)", w.State, w.Result, err)
	}

	var page api.WorkflowPage
	if code := httpCall(t, f, "GET", "/v1/workflows?limit=1", nil, &page); code != http.StatusOK ||
		len(page.Workflows) != 1 || page.Workflows[0].ID != fanIn.ID || page.Next == "" {
		t.Fatalf("list: %d %+v", code, page)
	}
	var bad api.Error
	if code := httpCall(t, f, "POST", "/v1/workflows", json.RawMessage(`{"steps": [{"name": "a", "type": "no-such-type"}]}`), &bad); code != http.StatusBadRequest || bad.Code != api.CodeUnknownTaskType {
		t.Fatalf("unknown type: %d %+v", code, bad)
	}
	if code := httpCall(t, f, "POST", "/v1/workflows", json.RawMessage(`{"steps": [{"name": "a", "type": "echo", "depends_on": ["b"]}, {"name": "b", "type": "echo", "input_from": "a"}]}`), &bad); code != http.StatusBadRequest || bad.Code != api.CodeInvalidWorkflow {
		t.Fatalf("cycle: %d %+v", code, bad)
	}
}

// The node running a step's task crashes mid-workflow: the task runs again on another node, and
// the workflow carries on with its result.
func TestWorkflowStepSurvivesACrash(t *testing.T) {
	longTest(t)
	g := newGate()
	tc := startCluster(t, 3, clusterOpts{capacity: 3, registry: g.registry(t)})
	w := submitWorkflow(t, tc.follower(), `{"steps": [
		{"name": "a", "type": "calc-square", "input": 3},
		{"name": "g", "type": "gate", "depends_on": ["a"]},
		{"name": "c", "type": "echo", "input_from": "g"}]}`)
	gateID := fsm.StepTaskID(w.ID, "g")
	running := waitState(t, tc, gateID, 30*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	victim := tc.node(running.Node)
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, n := range tc.live() {
		g.open(n.Name())
	}
	var reader *Node
	for _, n := range tc.live() {
		reader = n
	}
	done := waitWorkflow(t, reader, w.ID, 60*time.Second)
	if done.State != api.WorkflowSucceeded {
		t.Fatalf("workflow %s: %+v", done.State, done.Steps)
	}
	gt := tc.task(gateID)
	if gt.Node == victim.Name() || gt.Attempt != 2 || gt.Failures != 0 {
		t.Fatalf("gate task ran on %s, attempt %d, failures %d", gt.Node, gt.Attempt, gt.Failures)
	}
	if c := stepOf(t, done, "c"); string(c.Result) != string(gt.Result) || string(done.Result) != string(gt.Result) {
		t.Fatalf("c's result %s, the workflow's %s; want the gate's %s", c.Result, done.Result, gt.Result)
	}
}
