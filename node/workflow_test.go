package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
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

// runLog records every invocation of the "tally" task type, on every node of a test cluster,
// and can hold the runs that start while it is paused.
type runLog struct {
	mu   sync.Mutex
	runs map[string][]run // by task ID
	hold chan struct{}    // non-nil while paused; closed on resume
}

func (l *runLog) pause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold = make(chan struct{})
}

func (l *runLog) resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.hold)
	l.hold = nil
}

type run struct {
	node    string
	attempt int
}

// registry returns node i's registry: the built-ins and "tally", which takes {"branch", "n"}
// and answers {"branch", "n" + 1}, and answers any other input as it came (a fan-in's object).
func (l *runLog) registry(t *testing.T) func(i int) *tasks.Registry {
	return func(i int) *tasks.Registry {
		name := fmt.Sprintf("n%d", i+1)
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := tasks.Func(tasks.Definition{Name: "tally", Version: "1", Description: "counts its runs"},
			func(ctx *tasks.Context, in map[string]any) (map[string]any, error) {
				l.mu.Lock()
				l.runs[ctx.TaskID] = append(l.runs[ctx.TaskID], run{name, ctx.Attempt})
				hold := l.hold
				l.mu.Unlock()
				if hold != nil {
					select {
					case <-hold:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				}
				if n, ok := in["n"].(float64); ok {
					return map[string]any{"branch": in["branch"], "n": n + 1}, nil
				}
				return in, nil
			})
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

// bigDAG is a workflow of 1,000 steps: a root, a fan-out to 100 branches, each a chain of
// steps passing {"branch": i, "n": k} on (98 branches of 10 steps, 2 of 9), and a fan-in
// step "join" taking the object of the 100 branches' last results. It returns the body, and the
// result each branch's last step must pass to join, by step name.
func bigDAG(typ string) (string, map[string]map[string]int) {
	type step struct {
		Name      string   `json:"name"`
		Type      string   `json:"type"`
		DependsOn []string `json:"depends_on,omitempty"`
		InputFrom any      `json:"input_from,omitempty"`
		Input     any      `json:"input,omitempty"`
		Timeout   string   `json:"timeout"`
	}
	steps := []step{{Name: "root", Type: typ, Input: map[string]any{"root": true}, Timeout: "10m"}}
	tails := map[string]map[string]int{}
	var tailNames []string
	for b := range 100 {
		length := 10
		if b >= 98 {
			length = 9
		}
		prev := ""
		for k := 1; k <= length; k++ {
			s := step{Name: fmt.Sprintf("b%02d-%d", b, k), Type: typ, Timeout: "10m"}
			if k == 1 {
				s.DependsOn, s.Input = []string{"root"}, map[string]int{"branch": b, "n": 0}
			} else {
				s.InputFrom = prev
			}
			steps = append(steps, s)
			prev = s.Name
		}
		tails[prev], tailNames = map[string]int{"branch": b, "n": length}, append(tailNames, prev)
	}
	steps = append(steps, step{Name: "join", Type: typ, InputFrom: tailNames, Timeout: "10m"})
	body, _ := json.Marshal(map[string]any{"name": "big", "steps": steps})
	return string(body), tails
}

// A 1,000-step workflow (fan-out 100, then fan-in) runs every step's work exactly once while
// the leader is killed twice (the steps' runs held meanwhile, so that the kills land mid-way and
// cut runs in flight): each step's task succeeds once, and the only other runs of a step
// are attempts on a killed node, which its task's history marks interrupted. The fan-in step
// gets every branch's result. Runs are counted by the task type (tally) itself, on every node.
func TestWorkflowThousandStepsRunOnceAcrossTwoLeaderKills(t *testing.T) {
	longTest(t)
	log := &runLog{runs: map[string][]run{}}
	tc := startCluster(t, 5, clusterOpts{capacity: 8, registry: log.registry(t)})
	voters := func() (alive, total int) {
		l := tc.leader()
		if l == nil {
			return 0, 0
		}
		for _, s := range raftServers(t, l) {
			if s.Suffrage == raft.Voter {
				total++
				if n := tc.find(string(s.ID)); n != nil && !n.stopped() {
					alive++
				}
			}
		}
		return alive, total
	}
	body, tails := bigDAG("tally")
	w := submitWorkflow(t, tc.follower(), body)
	if len(w.Steps) != 1000 {
		t.Fatalf("the workflow has %d steps", len(w.Steps))
	}
	done := func() int {
		l := tc.leader()
		if l == nil {
			return 0
		}
		wf, _ := l.FSM().Workflow(w.ID)
		n := 0
		for _, s := range wf.Steps {
			if s.State.Done() {
				n++
			}
		}
		return n
	}
	killed := map[string]bool{}
	for _, at := range []int{150, 500} {
		waitFor(t, fmt.Sprintf("%d steps done", at), 120*time.Second, func() bool { return done() >= at })
		log.pause()
		var victim *Node
		waitFor(t, "a leader", 60*time.Second, func() bool { victim = tc.leader(); return victim != nil })
		if n := done(); n >= 1000 {
			t.Fatalf("the workflow finished before the leader could be killed at %d steps", at)
		}
		killed[victim.Name()] = true
		if err := victim.Shutdown(); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed leader %s with %d steps done", victim.Name(), done())
		waitFor(t, "3 live voters", 60*time.Second, func() bool { a, n := voters(); return a == 3 && n == 3 })
		log.resume()
	}
	var reader *Node
	for _, n := range tc.live() {
		reader = n
	}
	final := waitWorkflow(t, reader, w.ID, 300*time.Second)
	if final.State != api.WorkflowSucceeded || final.StepsDone != 1000 || final.StepsTotal != 1000 {
		t.Fatalf("workflow %s, %d of %d steps done: %s", final.State, final.StepsDone, final.StepsTotal, final.Error)
	}

	// Every step's task succeeded once; its runs are that attempt's, plus attempts cut by a kill.
	l := tc.leader()
	log.mu.Lock()
	defer log.mu.Unlock()
	extra := 0
	for _, s := range final.Steps {
		task, ok := l.FSM().Task(s.TaskID)
		if !ok || s.TaskID != w.ID+"."+s.Name || task.State != fsm.Succeeded {
			t.Fatalf("step %s: task %q found %v, %s", s.Name, s.TaskID, ok, task.State)
		}
		succeeded := 0
		for _, h := range task.History {
			if h.Event == fsm.EventSucceeded {
				succeeded++
			}
		}
		runs := log.runs[s.TaskID]
		ofAttempt := 0
		for _, r := range runs {
			if r.attempt == task.Attempt {
				ofAttempt++
				continue
			}
			extra++
			if !killed[r.node] || !hasEvent(task, fsm.EventInterrupted, r.attempt) && hasEvent(task, fsm.EventStarted, r.attempt) {
				t.Errorf("step %s ran attempt %d on %s besides its succeeded attempt %d (history %+v)", s.Name, r.attempt, r.node, task.Attempt, task.History)
			}
		}
		if succeeded != 1 || ofAttempt != 1 {
			t.Errorf("step %s: %d succeeded events, its succeeded attempt %d ran %d times (runs %+v)", s.Name, succeeded, task.Attempt, ofAttempt, runs)
		}
	}
	if len(log.runs) != 1000 {
		t.Errorf("%d tasks of type tally ran, want the 1000 steps'", len(log.runs))
	}
	t.Logf("1000 steps, %d runs more, each an attempt on a killed leader", extra)

	// The fan-in step got every branch's result, and its result is the workflow's.
	var join api.Task
	httpCall(t, reader, "GET", "/v1/tasks/"+w.ID+".join", nil, &join)
	var got map[string]map[string]int
	if err := json.Unmarshal(join.Input, &got); err != nil || len(got) != 100 {
		t.Fatalf("join's input has %d results (%v): %.200s", len(got), err, join.Input)
	}
	for tail, want := range tails {
		if g := got[tail]; g["branch"] != want["branch"] || g["n"] != want["n"] {
			t.Errorf("join got %v from %s, want %v", g, tail, want)
		}
	}
	var result map[string]map[string]int
	if err := json.Unmarshal(final.Result, &result); err != nil || len(result) != 100 {
		t.Errorf("the workflow's result has %d entries (%v)", len(result), err)
	}
}

// on_failure with real tasks: a step that fails for good (a) never lets its dependant (b) run.
// With cancel the step running beside it (c, a long sleep) is cancelled and its dependant (d)
// never created; with continue c finishes and d runs once, on c's result. Both workflows end
// failed.
func TestWorkflowOnFailureCancelAndContinue(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	n := tc.follower()
	shape := func(policy string, sleepMS int) string {
		return fmt.Sprintf(`{"on_failure": %q, "steps": [
			{"name": "a", "type": "fail", "input": "boom", "max_attempts": 1},
			{"name": "b", "type": "echo", "input_from": "a"},
			{"name": "c", "type": "sleep", "input": {"ms": %d}, "timeout": "5m"},
			{"name": "d", "type": "echo", "input_from": "c"}]}`, policy, sleepMS)
	}
	exists := func(id string) bool {
		_, ok := tc.leader().FSM().Task(id)
		return ok
	}
	states := func(w api.Workflow) map[string]string {
		out := map[string]string{}
		for _, s := range w.Steps {
			out[s.Name] = s.State
		}
		return out
	}

	cancel := submitWorkflow(t, n, shape("cancel", 120_000))
	waitState(t, tc, cancel.ID+".c", 30*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running || t.State.Terminal() })
	w := waitWorkflow(t, n, cancel.ID, 60*time.Second)
	// The workflow is failed from the entry that failed a; c's task is cancelled then, and its
	// run reports the cancel after that: wait for the step to settle.
	waitFor(t, "step c settled", 60*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/workflows/"+cancel.ID, nil, &w)
		s := states(w)["c"]
		return s != "running" && s != "assigned" && s != "pending"
	})
	if got := states(w); w.State != api.WorkflowFailed || got["a"] != "failed" || got["b"] != "cancelled" || got["c"] != "cancelled" || got["d"] != "cancelled" {
		t.Fatalf("on_failure cancel: workflow %s, steps %v (%s)", w.State, got, w.Error)
	}
	if exists(cancel.ID+".b") || exists(cancel.ID+".d") {
		t.Errorf("on_failure cancel: a step after a failed or cancelled one has a task")
	}
	if c := tc.task(cancel.ID + ".c"); c.State != fsm.Cancelled || c.Attempt != 1 {
		t.Errorf("on_failure cancel: c's task %s at attempt %d, want cancelled in its first", c.State, c.Attempt)
	}

	cont := submitWorkflow(t, n, shape("continue", 300))
	w = waitWorkflow(t, n, cont.ID, 60*time.Second)
	if got := states(w); w.State != api.WorkflowFailed || got["a"] != "failed" || got["b"] != "cancelled" || got["c"] != "succeeded" || got["d"] != "succeeded" {
		t.Fatalf("on_failure continue: workflow %s, steps %v (%s)", w.State, got, w.Error)
	}
	if exists(cont.ID + ".b") {
		t.Errorf("on_failure continue: b, after the failed a, has a task")
	}
	c, d := tc.task(cont.ID+".c"), tc.task(cont.ID+".d")
	started := 0
	for _, h := range d.History {
		if h.Event == fsm.EventStarted {
			started++
		}
	}
	if d.Attempt != 1 || started != 1 || string(d.Result) != string(c.Result) || string(d.Input) != string(c.Result) {
		t.Errorf("on_failure continue: d ran %d times (attempt %d), input %s result %s, c's result %s", started, d.Attempt, d.Input, d.Result, c.Result)
	}
}
