package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func wfStep(name string, deps ...string) WorkflowStep {
	return WorkflowStep{Name: name, Task: Submit{Type: "echo", MaxAttempts: 1, Input: json.RawMessage(`3`)}, DependsOn: deps}
}

func wfCmd(id string, onFailure OnFailure, steps ...WorkflowStep) *Command {
	return &Command{Body: &WorkflowSubmit{Workflow: Workflow{ID: id, Name: "test", OnFailure: onFailure, Steps: steps}}}
}

// wfHarness has node n1 up with room for many tasks.
func wfHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 1000))
	return h
}

// run assigns a step's task, and reports it succeeded with result (or failed when result is "").
func (h *harness) run(id, result string) {
	h.t.Helper()
	h.must(assignCmd(id, "n1", "b1"))
	att := h.task(id).Attempt
	if result == "" {
		r := rep(id, att, "n1", "b1", ReportFailed)
		r.Error = &TaskError{Type: "task_error", Message: "boom", Final: true}
		h.must(reportCmd(r))
		return
	}
	r := rep(id, att, "n1", "b1", ReportSucceeded)
	r.Result = json.RawMessage(result)
	h.must(reportCmd(r))
}

func (h *harness) wf(id string) Workflow {
	h.t.Helper()
	w, ok := h.f.Workflow(id)
	if !ok {
		h.t.Fatalf("workflow %s not found", id)
	}
	return w
}

func (h *harness) exists(id string) bool {
	_, ok := h.f.Task(id)
	return ok
}

func stepStates(w Workflow) string {
	var out []string
	for _, s := range w.Steps {
		out = append(out, s.Name+"="+string(s.State))
	}
	return strings.Join(out, " ")
}

func TestWorkflowRunsInOrderAndPassesResults(t *testing.T) {
	h := wfHarness(t)
	b := wfStep("b", "a")
	b.InputFrom = []string{"a#/items/1"}
	c := wfStep("c", "b")
	c.InputFrom = []string{"b"}
	h.must(wfCmd("w1", "", wfStep("a"), b, c))

	a, bID, cID := StepTaskID("w1", "a"), StepTaskID("w1", "b"), StepTaskID("w1", "c")
	if !h.exists(a) || h.exists(bID) || h.exists(cID) {
		t.Fatalf("after submit: only a's task should exist (a %v b %v c %v)", h.exists(a), h.exists(bID), h.exists(cID))
	}
	if got := string(h.task(a).Input); got != "3" {
		t.Errorf("a's input = %s, want 3", got)
	}
	h.run(a, `{"items": [1, {"x": 9}]}`)
	if got := string(h.task(bID).Input); got != `{"x": 9}` {
		t.Errorf("b's input = %s, want a's /items/1", got)
	}
	if h.exists(cID) {
		t.Fatal("c created before b succeeded")
	}
	h.run(bID, `81`)
	if got := string(h.task(cID).Input); got != "81" {
		t.Errorf("c's input = %s, want 81", got)
	}
	if w := h.wf("w1"); w.State != WorkflowRunning || w.FinalResult() != nil {
		t.Fatalf("workflow %s with a step left, final result %s", w.State, w.FinalResult())
	}
	h.run(cID, `6561`)
	w := h.wf("w1")
	if w.State != WorkflowSucceeded || w.FinishedAt == nil {
		t.Fatalf("workflow %s (finished %v), want succeeded: %s", w.State, w.FinishedAt, stepStates(w))
	}
	if got := string(w.FinalResult()); got != "6561" {
		t.Errorf("final result %s, want c's 6561", got)
	}
}

func TestWorkflowFanOutAndFanIn(t *testing.T) {
	h := wfHarness(t)
	steps := []WorkflowStep{wfStep("root")}
	join := wfStep("join")
	join.InputObject = true
	for i := range 5 {
		name := fmt.Sprintf("p%d", i)
		s := wfStep(name, "root")
		s.InputFrom = []string{"root"}
		steps = append(steps, s)
		join.DependsOn = append(join.DependsOn, name)
		join.InputFrom = append(join.InputFrom, name)
	}
	other := wfStep("other", "root") // a second sink
	steps = append(steps, join, other)
	h.must(wfCmd("w", "", steps...))
	h.run(StepTaskID("w", "root"), `2`)
	for i := range 5 {
		id := StepTaskID("w", fmt.Sprintf("p%d", i))
		if got := string(h.task(id).Input); got != "2" {
			t.Fatalf("%s input %s, want root's 2", id, got)
		}
	}
	for i := range 5 {
		if h.exists(StepTaskID("w", "join")) {
			t.Fatalf("join created with %d of 5 parents done", i)
		}
		h.run(StepTaskID("w", fmt.Sprintf("p%d", i)), fmt.Sprint(i*10))
	}
	want := `{"p0":0,"p1":10,"p2":20,"p3":30,"p4":40}`
	if got := string(h.task(StepTaskID("w", "join")).Input); got != want {
		t.Errorf("join input %s, want %s", got, want)
	}
	h.run(StepTaskID("w", "join"), `"joined"`)
	h.run(StepTaskID("w", "other"), `7`)
	w := h.wf("w")
	if got := string(w.FinalResult()); w.State != WorkflowSucceeded || got != `{"join":"joined","other":7}` {
		t.Errorf("workflow %s, final %s", w.State, got)
	}
}

func TestWorkflowOnFailureCancelStopsEverything(t *testing.T) {
	h := wfHarness(t)
	h.must(wfCmd("w", OnFailureCancel, wfStep("a"), wfStep("b"), wfStep("a2", "a"), wfStep("b2", "b")))
	h.must(assignCmd(StepTaskID("w", "b"), "n1", "b1")) // b is running when a fails
	h.run(StepTaskID("w", "a"), "")
	w := h.wf("w")
	if w.State != WorkflowFailed || w.Steps[2].State != StepCancelled || w.Steps[3].State != StepCancelled {
		t.Fatalf("after a failed: workflow %s, %s", w.State, stepStates(w))
	}
	if h.exists(StepTaskID("w", "a2")) || h.exists(StepTaskID("w", "b2")) {
		t.Fatal("a step downstream was created")
	}
	if !h.task(StepTaskID("w", "b")).CancelRequested || w.FinishedAt != nil {
		t.Fatalf("b's task not asked to cancel, or workflow finished with b running")
	}
	// b's executor honours the cancel.
	h.must(reportCmd(rep(StepTaskID("w", "b"), 1, "n1", "b1", ReportCancelled)))
	w = h.wf("w")
	if w.State != WorkflowFailed || w.FinishedAt == nil || w.Steps[1].State != StepCancelled || w.FinalResult() != nil {
		t.Fatalf("workflow %s finished %v: %s", w.State, w.FinishedAt, stepStates(w))
	}
}

func TestWorkflowOnFailureContinueRunsTheOthers(t *testing.T) {
	h := wfHarness(t)
	h.must(wfCmd("w", OnFailureContinue, wfStep("a"), wfStep("b"), wfStep("a2", "a"), wfStep("a3", "a2"), wfStep("b2", "b")))
	h.run(StepTaskID("w", "a"), "")
	w := h.wf("w")
	if w.State != WorkflowRunning || w.Steps[2].State != StepCancelled || w.Steps[3].State != StepCancelled {
		t.Fatalf("after a failed: workflow %s, %s", w.State, stepStates(w))
	}
	h.run(StepTaskID("w", "b"), `1`)
	h.run(StepTaskID("w", "b2"), `2`)
	w = h.wf("w")
	if w.State != WorkflowFailed || w.FinishedAt == nil || w.Steps[4].State != StepSucceeded {
		t.Fatalf("workflow %s: %s", w.State, stepStates(w))
	}
	if w.Steps[0].Error != "boom" {
		t.Errorf("a's error %q, want its task's", w.Steps[0].Error)
	}
}

func TestWorkflowCancel(t *testing.T) {
	h := wfHarness(t)
	h.must(wfCmd("w", "", wfStep("a"), wfStep("b"), wfStep("c", "a", "b")))
	h.must(assignCmd(StepTaskID("w", "a"), "n1", "b1"))
	h.must(&Command{Body: &WorkflowCancel{ID: "w", By: "alice"}})
	w := h.wf("w")
	if w.State != WorkflowCancelled || w.Steps[1].State != StepCancelled || w.Steps[2].State != StepCancelled {
		t.Fatalf("workflow %s: %s", w.State, stepStates(w))
	}
	if h.task(StepTaskID("w", "b")).State != Cancelled || !h.task(StepTaskID("w", "a")).CancelRequested {
		t.Fatal("the pending task is not cancelled, or the assigned one not asked to")
	}
	// a finishes anyway (it had already succeeded): c still never runs.
	r := rep(StepTaskID("w", "a"), 1, "n1", "b1", ReportSucceeded)
	r.Result = json.RawMessage(`1`)
	h.must(reportCmd(r))
	if w = h.wf("w"); w.State != WorkflowCancelled || w.FinishedAt == nil || h.exists(StepTaskID("w", "c")) {
		t.Fatalf("workflow %s finished %v, c exists %v", w.State, w.FinishedAt, h.exists(StepTaskID("w", "c")))
	}
	if r := h.apply(&Command{Body: &WorkflowCancel{ID: "w"}}); !errors.Is(r.Err, ErrFinished) {
		t.Errorf("cancelling a finished workflow: %v, want ErrFinished", r.Err)
	}
	if r := h.apply(&Command{Body: &WorkflowCancel{ID: "nope"}}); !errors.Is(r.Err, ErrWorkflowNotFound) {
		t.Errorf("cancelling an unknown workflow: %v", r.Err)
	}
}

func TestWorkflowCancellingAStepTaskStopsTheWorkflow(t *testing.T) {
	h := wfHarness(t)
	h.must(wfCmd("w", "", wfStep("a"), wfStep("b", "a")))
	h.must(cancelCmd(StepTaskID("w", "a")))
	if w := h.wf("w"); w.State != WorkflowCancelled || w.FinishedAt == nil || w.Steps[1].State != StepCancelled {
		t.Fatalf("workflow %s: %s", w.State, stepStates(w))
	}
}

func TestWorkflowBadInputPointerFailsTheStep(t *testing.T) {
	h := wfHarness(t)
	b := wfStep("b", "a")
	b.InputFrom = []string{"a#/missing"}
	h.must(wfCmd("w", "", wfStep("a"), b))
	h.run(StepTaskID("w", "a"), `{"x": 1}`)
	w := h.wf("w")
	if w.State != WorkflowFailed || w.Steps[1].State != StepFailed || !strings.Contains(w.Steps[1].Error, "missing") || h.exists(StepTaskID("w", "b")) {
		t.Fatalf("workflow %s: %s (%q)", w.State, stepStates(w), w.Steps[1].Error)
	}
}

func TestWorkflowInvalidGraphsAreRefused(t *testing.T) {
	fromX := wfStep("b", "a")
	fromX.InputFrom = []string{"x"}
	badPtr := wfStep("b", "a")
	badPtr.InputFrom = []string{"a#items"}
	many := make([]WorkflowStep, MaxWorkflowSteps+1)
	for i := range many {
		many[i] = wfStep(fmt.Sprint("s", i))
	}
	cases := []struct {
		name  string
		steps []WorkflowStep
		want  string
	}{
		{"cycle", []WorkflowStep{wfStep("a", "c"), wfStep("b", "a"), wfStep("c", "b")}, "cycle"},
		{"self", []WorkflowStep{wfStep("a", "a")}, "itself"},
		{"unknown dependency", []WorkflowStep{wfStep("a", "zz")}, "not a step"},
		{"duplicate name", []WorkflowStep{wfStep("a"), wfStep("a")}, "two steps"},
		{"no steps", nil, "1 to"},
		{"too many steps", many, "1 to"},
		{"bad name", []WorkflowStep{wfStep("a/b")}, "step name"},
		{"input not a dependency", []WorkflowStep{wfStep("a"), fromX}, "not one of its dependencies"},
		{"bad pointer", []WorkflowStep{wfStep("a"), badPtr}, "must start with"},
		{"no type", []WorkflowStep{{Name: "a"}}, "needs a type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := wfHarness(t)
			r := h.apply(wfCmd("w", "", tc.steps...))
			if !errors.Is(r.Err, ErrWorkflowInvalid) || !strings.Contains(r.Err.Error(), tc.want) {
				t.Fatalf("err %v, want invalid_workflow with %q", r.Err, tc.want)
			}
			if _, ok := h.f.Workflow("w"); ok {
				t.Fatal("an invalid workflow was stored")
			}
			if p, _ := h.f.ListPage(Filter{Limit: 10}); len(p.Tasks) != 0 {
				t.Fatalf("%d tasks created", len(p.Tasks))
			}
		})
	}
	h := wfHarness(t)
	if r := h.apply(&Command{Body: &WorkflowSubmit{Workflow: Workflow{ID: "w", OnFailure: "maybe", Steps: []WorkflowStep{wfStep("a")}}}}); !errors.Is(r.Err, ErrWorkflowInvalid) {
		t.Errorf("unknown on_failure: %v", r.Err)
	}
}

func TestWorkflowSubmitTwiceIsOneWorkflow(t *testing.T) {
	h := wfHarness(t)
	h.must(wfCmd("w", "", wfStep("a")))
	if it := h.item(wfCmd("w", "", wfStep("a"))); !it.Existing || it.ID != "w" {
		t.Fatalf("second submit: %+v", it)
	}
}

// wfScript applies a workflow's life to h: submit, fan-out, a failure and a cancel.
func wfScript(h *harness) {
	j := wfStep("j", "a", "b")
	j.InputFrom, j.InputObject = []string{"a#/v", "b"}, true
	h.must(wfCmd("w1", "", wfStep("a"), wfStep("b"), j))
	h.must(wfCmd("w2", OnFailureContinue, wfStep("x"), wfStep("y", "x"), wfStep("z")))
	h.run(StepTaskID("w1", "a"), `{"v": [1, 2]}`)
	h.run(StepTaskID("w1", "b"), `"b"`)
	h.run(StepTaskID("w2", "x"), "")
	h.must(&Command{Body: &WorkflowCancel{ID: "w2"}})
}

func TestWorkflowSnapshotRoundTripAndDeterminism(t *testing.T) {
	h1, h2 := wfHarness(t), wfHarness(t)
	wfScript(h1)
	wfScript(h2)
	_, d1 := h1.f.Digest()
	_, d2 := h2.f.Digest()
	if d1 != d2 {
		t.Fatalf("the same commands gave two digests: %s and %s", d1, d2)
	}
	if got := string(h1.task(StepTaskID("w1", "j")).Input); got != `{"a":[1, 2],"b":"b"}` {
		t.Errorf("j input %s", got)
	}
	restored := New()
	if err := restoreBytes(restored, snapshotBytes(t, h1.f)); err != nil {
		t.Fatal(err)
	}
	if _, d := restored.Digest(); d != d1 {
		t.Fatalf("restored digest %s, want %s", d, d1)
	}
	// The restored FSM carries on as the original does.
	h3 := &harness{t: t, f: restored, idx: h1.idx}
	h1.run(StepTaskID("w1", "j"), `5`)
	h3.run(StepTaskID("w1", "j"), `5`)
	_, d1 = h1.f.Digest()
	_, d3 := h3.f.Digest()
	if d1 != d3 || h3.wf("w1").State != WorkflowSucceeded {
		t.Fatalf("after restore: digests %s vs %s, workflow %s", d1, d3, h3.wf("w1").State)
	}
}

// A workflow record decodes from the snapshot form without its omitted fields.
func TestWorkflowRecordOmitsEmptyFields(t *testing.T) {
	b, err := msgpack.Marshal(&WorkflowStep{Name: "a", State: StepWaiting})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"depends_on", "input_from", "input_object", "task_id", "result", "error"} {
		if _, ok := m[k]; ok {
			t.Errorf("empty %s is encoded", k)
		}
	}
}

func TestWorkflowListNewestFirst(t *testing.T) {
	h := wfHarness(t)
	for i := range 5 {
		h.must(wfCmd(fmt.Sprint("w", i), "", wfStep("a")))
	}
	page, next := h.f.WorkflowPage("", 2, nil)
	if len(page) != 2 || page[0].ID != "w4" || page[1].ID != "w3" || next != "w3" {
		t.Fatalf("first page %v next %q", wfIDs(page), next)
	}
	page, next = h.f.WorkflowPage(next, 10, func(w *Workflow) bool { return w.ID != "w1" })
	if len(page) != 2 || page[0].ID != "w2" || page[1].ID != "w0" || next != "" {
		t.Fatalf("second page %v next %q", wfIDs(page), next)
	}
}

func wfIDs(ws []Workflow) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.ID)
	}
	return out
}

func TestPointer(t *testing.T) {
	doc := json.RawMessage(`{"a": {"b/c": [10, 20]}, "m~n": true}`)
	for ptr, want := range map[string]string{"": string(doc), "/a/b~1c/1": "20", "/m~0n": "true"} {
		got, err := Pointer(doc, ptr)
		if err != nil || string(got) != want {
			t.Errorf("Pointer(%q) = %s, %v; want %s", ptr, got, err, want)
		}
	}
	for _, ptr := range []string{"/x", "/a/b~1c/2", "/a/b~1c/01", "/a/b~1c/-1", "/m~0n/x", "a"} {
		if _, err := Pointer(doc, ptr); err == nil {
			t.Errorf("Pointer(%q) found something", ptr)
		}
	}
}

func TestWorkflowCommandsNeedProtocol7(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: WorkflowProtocol - 1}}})
	for _, c := range []*Command{wfCmd("w", "", wfStep("a")), {Body: &WorkflowCancel{ID: "w"}}} {
		if _, err := h.f.Emit(c); !errors.Is(err, ErrProtocolTooOld) {
			t.Errorf("emit %s with a protocol %d node up: %v", c.Type(), WorkflowProtocol-1, err)
		}
	}
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b2", Protocol: Protocol}}})
	if _, err := h.f.Emit(wfCmd("w", "", wfStep("a"))); err != nil {
		t.Errorf("emit with every node at protocol %d: %v", Protocol, err)
	}
}

// A fan-in whose parents' results together pass MaxStepInputBytes fails its step instead of
// building the input.
func TestWorkflowFanInInputIsCapped(t *testing.T) {
	h := wfHarness(t)
	big := `"` + strings.Repeat("x", MaxStepInputBytes/2) + `"`
	j := wfStep("j", "a", "b", "c")
	j.InputFrom, j.InputObject = []string{"a", "b", "c"}, true
	h.must(wfCmd("w", "", wfStep("a"), wfStep("b"), wfStep("c"), j))
	for _, p := range []string{"a", "b", "c"} {
		h.run(StepTaskID("w", p), big)
	}
	w := h.wf("w")
	if w.State != WorkflowFailed || w.Steps[3].State != StepFailed || !strings.Contains(w.Steps[3].Error, "over") || h.exists(StepTaskID("w", "j")) {
		t.Fatalf("workflow %s: %s (%q)", w.State, stepStates(w), w.Steps[3].Error)
	}
}
