package fsm

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Workflows: a graph of steps, each a task, submitted in one entry. A step's task is created in
// the same apply that makes its last dependency succeed, with an ID derived from the workflow's
// ID and the step's name (StepTaskID) and the command's time, so every replica creates the same
// task at the same index. A step's input may be a parent's result (or part of it, by a JSON
// pointer), or an object of several parents' results by step name.
//
// A step whose task fails for good or is cancelled never lets its descendants run. With
// on_failure "cancel" (the default) the whole workflow stops: every step not finished is
// cancelled. With "continue" the steps that do not depend on it go on.
//
// A step's task that finishes after its step was settled (retried by hand after a failure, say)
// changes nothing in the workflow.

// Command types of the workflows table.
const (
	CmdWorkflowSubmit CommandType = 26
	CmdWorkflowCancel CommandType = 27
)

// WorkflowProtocol is the protocol that introduced workflows.
const WorkflowProtocol = 7

// Workflow limits.
const (
	// MaxWorkflowSteps is the most steps one workflow may have.
	MaxWorkflowSteps = 10_000
	// MaxStepInputBytes bounds the input a step's task gets from its parents' results: a fan-in
	// of thousands of large results must not build one enormous record in Apply. A step whose
	// input would be larger fails.
	MaxStepInputBytes = 4 << 20
	// MaxFinishedWorkflows is how many finished workflows the table keeps: past it the one
	// finished longest ago goes (its tasks stay, under the tasks' own retention).
	MaxFinishedWorkflows = 1000
)

// OnFailure is what a workflow does when a step fails for good or is cancelled.
type OnFailure string

// On-failure policies.
const (
	OnFailureCancel   OnFailure = "cancel"   // cancel every step not finished (the default)
	OnFailureContinue OnFailure = "continue" // run the steps that do not depend on the failed one
)

// WorkflowState is a workflow's state.
type WorkflowState string

// Workflow states.
const (
	WorkflowRunning   WorkflowState = "running"
	WorkflowSucceeded WorkflowState = "succeeded" // every step succeeded
	WorkflowFailed    WorkflowState = "failed"    // a step failed for good
	WorkflowCancelled WorkflowState = "cancelled" // cancelled, or a step was cancelled
)

// StepState is a step's state. A running step has a task, in whatever state the task is.
type StepState string

// Step states.
const (
	StepWaiting   StepState = "waiting" // its dependencies have not all succeeded: no task yet
	StepRunning   StepState = "running" // its task exists and has not finished
	StepSucceeded StepState = "succeeded"
	StepFailed    StepState = "failed"
	StepCancelled StepState = "cancelled" // its task was cancelled, or it will never run
)

// Done reports whether s is final.
func (s StepState) Done() bool { return s == StepSucceeded || s == StepFailed || s == StepCancelled }

// Workflow is a workflow as the FSM keeps it; its JSON form is api.Workflow.
type Workflow struct {
	ID          string         `msgpack:"id"`
	Name        string         `msgpack:"name,omitempty"`
	OnFailure   OnFailure      `msgpack:"on_failure,omitempty"`
	State       WorkflowState  `msgpack:"state"`
	Steps       []WorkflowStep `msgpack:"steps"`
	SubmittedBy string         `msgpack:"submitted_by,omitempty"`
	// Error says why the workflow failed or was cancelled.
	Error       string     `msgpack:"error,omitempty"`
	CreatedAt   time.Time  `msgpack:"created_at"`
	FinishedAt  *time.Time `msgpack:"finished_at,omitempty"`
	CreateIndex uint64     `msgpack:"create_index"`
	ModifyIndex uint64     `msgpack:"modify_index"`
}

// WorkflowStep is one step: its task's template and where its input comes from, and its state.
type WorkflowStep struct {
	Name string `msgpack:"name"`
	// Task is the step's task as submitted, but for its ID (StepTaskID) and, when InputFrom is
	// set, its input.
	Task      Submit   `msgpack:"task"`
	DependsOn []string `msgpack:"depends_on,omitempty"`
	// InputFrom are the sources of the step's input, each "step" or "step#/json/pointer"; every
	// source is among DependsOn. With InputObject the input is an object of the sources' values
	// by step name; without, it is the one source's value.
	InputFrom   []string `msgpack:"input_from,omitempty"`
	InputObject bool     `msgpack:"input_object,omitempty"`

	State  StepState       `msgpack:"state"`
	TaskID string          `msgpack:"task_id,omitempty"`
	Result json.RawMessage `msgpack:"result,omitempty"`
	Error  string          `msgpack:"error,omitempty"`
}

// WorkflowSubmit adds a workflow: its steps are validated (CheckWorkflow), and those without
// dependencies get their tasks in the same apply.
type WorkflowSubmit struct {
	Workflow Workflow `msgpack:"workflow"`
}

// NeedsProtocol implements NeedsProtocol: TraceProtocol when a step's task carries a trace
// context.
func (p *WorkflowSubmit) NeedsProtocol() int {
	for i := range p.Workflow.Steps {
		if p.Workflow.Steps[i].Task.Trace != nil {
			return TraceProtocol
		}
	}
	return 0
}

// prepareWorkflowSubmit drops the steps' trace contexts while a node older than TraceProtocol is
// up: the workflow is accepted without them.
func prepareWorkflowSubmit(f *FSM, _ time.Time, p *WorkflowSubmit, _ PrepareEnv) {
	steps := p.Workflow.Steps
	for i := range steps {
		if steps[i].Task.Trace != nil {
			if lowest, _ := f.lowestProtocol(); lowest < TraceProtocol {
				for j := range steps {
					steps[j].Task.Trace = nil
				}
			}
			return
		}
	}
}

// WorkflowCancel cancels every step of a workflow that has not finished.
type WorkflowCancel struct {
	ID string `msgpack:"id"`
	By string `msgpack:"by,omitempty"`
}

// Errors of the workflow commands.
var (
	ErrWorkflowInvalid  = newError("invalid_workflow", "invalid workflow")
	ErrWorkflowNotFound = newError("workflow_not_found", "workflow not found")
)

func init() {
	register(Spec[WorkflowSubmit]{Type: CmdWorkflowSubmit, Name: "workflow_submit", Since: WorkflowProtocol, Apply: (*FSM).applyWorkflowSubmit, Prepare: prepareWorkflowSubmit})
	register(Spec[WorkflowCancel]{Type: CmdWorkflowCancel, Name: "workflow_cancel", Since: WorkflowProtocol, Apply: (*FSM).applyWorkflowCancel})

	registerTable(Table[[]Workflow]{
		Name: "workflows",
		Pos:  80,
		// Absent while there are none: snapshots and digests of clusters without workflows are
		// those of releases before them.
		Capture: func(f *FSM) ([]Workflow, bool) {
			out := make([]Workflow, 0, len(f.workflows.byID))
			for _, id := range sortedKeys(f.workflows.byID) {
				out = append(out, f.workflows.byID[id].clone())
			}
			return out, len(out) > 0
		},
		Check: func(s *[]Workflow) error {
			for i := range *s {
				if err := CheckWorkflow(&(*s)[i]); err != nil {
					return err
				}
			}
			return nil
		},
		Install: func(f *FSM, s *[]Workflow) {
			f.workflows = workflowTable{byID: map[string]*Workflow{}, byTask: map[string]stepRef{}, graphs: map[string]*graph{}}
			if s == nil {
				return
			}
			for i := range *s {
				w := (*s)[i].clone()
				f.workflows.add(&w)
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if len(f.workflows.byID) > 0 {
				put("workflows")
				for _, id := range sortedKeys(f.workflows.byID) {
					put(f.workflows.byID[id])
				}
			}
		},
	})
}

// workflowTable holds the workflows by ID, and which step each created task is.
type workflowTable struct {
	byID   map[string]*Workflow
	byTask map[string]stepRef
	// graphs index each workflow's graph, by ID: derived from the records, rebuilt on restore.
	graphs map[string]*graph
	// finished are the task IDs of steps whose tasks finished in the entry being applied, for
	// advanceWorkflows; scratch, never part of the replicated state.
	finished []string
}

type stepRef struct {
	wf   *Workflow
	step int
}

// graph indexes a workflow's steps, so that settling a step costs its number of children, and a
// workflow's life the number of its edges, whatever its shape.
type graph struct {
	at       map[string]int // step index by name
	children [][]int        // the steps that depend on each step
	// waitingOn counts, per step, its dependencies that have not succeeded.
	waitingOn []int
	// done counts the steps in a final state, so that telling whether the workflow has finished
	// costs nothing per settled step.
	done int
}

func newGraph(w *Workflow) *graph {
	g := &graph{at: make(map[string]int, len(w.Steps)), children: make([][]int, len(w.Steps)), waitingOn: make([]int, len(w.Steps))}
	for i := range w.Steps {
		g.at[w.Steps[i].Name] = i
		if w.Steps[i].State.Done() {
			g.done++
		}
	}
	for i := range w.Steps {
		for _, d := range w.Steps[i].DependsOn {
			j, ok := g.at[d]
			if !ok {
				continue // CheckWorkflow refuses it first
			}
			g.children[j] = append(g.children[j], i)
			if w.Steps[j].State != StepSucceeded {
				g.waitingOn[i]++
			}
		}
	}
	return g
}

// settle gives step s the state state, counting it done when it reaches a final state; every
// change of a step's state after the workflow is added goes through it.
func (g *graph) settle(s *WorkflowStep, state StepState) {
	if state.Done() && !s.State.Done() {
		g.done++
	}
	s.State = state
}

func (t *workflowTable) add(w *Workflow) {
	t.byID[w.ID] = w
	t.graphs[w.ID] = newGraph(w)
	for i := range w.Steps {
		if w.Steps[i].TaskID != "" {
			t.byTask[w.Steps[i].TaskID] = stepRef{w, i}
		}
	}
}

func (t *workflowTable) drop(w *Workflow) {
	delete(t.byID, w.ID)
	delete(t.graphs, w.ID)
	for i := range w.Steps {
		if id := w.Steps[i].TaskID; id != "" {
			delete(t.byTask, id)
		}
	}
}

func (w *Workflow) clone() Workflow {
	c := *w
	c.Steps = slices.Clone(w.Steps)
	for i := range c.Steps {
		s := &c.Steps[i]
		s.DependsOn = slices.Clone(s.DependsOn)
		s.InputFrom = slices.Clone(s.InputFrom)
	}
	return c
}

// StepTaskID is the ID of the task of a workflow's step.
func StepTaskID(workflowID, step string) string { return workflowID + "." + step }

var stepName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// SplitSource splits an input_from source "step" or "step#/pointer" into the step and the
// pointer ("" for the whole result).
func SplitSource(src string) (step, pointer string) {
	step, pointer, _ = strings.Cut(src, "#")
	return step, pointer
}

// CheckWorkflow validates a workflow's graph: an ID, 1 to MaxWorkflowSteps steps with unique
// names (letters, digits, '_' and '-', at most 64, starting with a letter or digit), each with a
// type, dependencies on steps of the workflow without a cycle, and input sources among its
// dependencies with well-formed JSON pointers. The API checks the rest of each step's task as it
// checks a submit's.
func CheckWorkflow(w *Workflow) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrWorkflowInvalid, fmt.Sprintf(format, args...))
	}
	if w.ID == "" {
		return bad("a workflow needs an id")
	}
	switch w.OnFailure {
	case "", OnFailureCancel, OnFailureContinue:
	default:
		return bad("on_failure must be %q or %q", OnFailureCancel, OnFailureContinue)
	}
	if len(w.Steps) == 0 || len(w.Steps) > MaxWorkflowSteps {
		return bad("a workflow needs 1 to %d steps, it has %d", MaxWorkflowSteps, len(w.Steps))
	}
	at := make(map[string]int, len(w.Steps))
	for i := range w.Steps {
		s := &w.Steps[i]
		if !stepName.MatchString(s.Name) {
			return bad("step name %q: use letters, digits, '_' and '-' (at most 64, starting with a letter or digit)", truncate(s.Name))
		}
		if _, dup := at[s.Name]; dup {
			return bad("two steps are named %q", s.Name)
		}
		if s.Task.Type == "" {
			return bad("step %q needs a type", s.Name)
		}
		at[s.Name] = i
	}
	for i := range w.Steps {
		s := &w.Steps[i]
		deps := make(map[string]bool, len(s.DependsOn))
		for _, d := range s.DependsOn {
			if _, ok := at[d]; !ok {
				return bad("step %q depends on %q, which is not a step of the workflow", s.Name, truncate(d))
			}
			if d == s.Name {
				return bad("step %q depends on itself", s.Name)
			}
			if deps[d] {
				return bad("step %q names %q twice in depends_on", s.Name, d)
			}
			deps[d] = true
		}
		seen := map[string]bool{}
		for _, src := range s.InputFrom {
			step, ptr := SplitSource(src)
			if !deps[step] {
				return bad("step %q takes input from %q, which is not one of its dependencies", s.Name, truncate(step))
			}
			if seen[step] {
				return bad("step %q takes input from %q twice", s.Name, step)
			}
			seen[step] = true
			if ptr != "" && ptr[0] != '/' {
				return bad("step %q: the JSON pointer in %q must start with '/'", s.Name, truncate(src))
			}
		}
		if !s.InputObject && len(s.InputFrom) > 1 {
			return bad("step %q takes input from several steps but not as an object", s.Name)
		}
		if s.State != "" && s.State != StepWaiting && s.State != StepRunning && !s.State.Done() {
			return bad("step %q has state %q", s.Name, s.State)
		}
	}
	// Kahn's algorithm: every step is taken once its dependencies are; any left form a cycle.
	indeg := make([]int, len(w.Steps))
	children := make([][]int, len(w.Steps))
	for i := range w.Steps {
		indeg[i] = len(w.Steps[i].DependsOn)
		for _, d := range w.Steps[i].DependsOn {
			children[at[d]] = append(children[at[d]], i)
		}
	}
	var queue []int
	for i, n := range indeg {
		if n == 0 {
			queue = append(queue, i)
		}
	}
	taken := 0
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		taken++
		for _, c := range children[i] {
			if indeg[c]--; indeg[c] == 0 {
				queue = append(queue, c)
			}
		}
	}
	if taken != len(w.Steps) {
		for i, n := range indeg {
			if n > 0 {
				return bad("the steps form a cycle through %q", w.Steps[i].Name)
			}
		}
	}
	return nil
}

// applyWorkflowSubmit returns one item: the workflow's ID (Existing when it was submitted before).
func (f *FSM) applyWorkflowSubmit(index uint64, now time.Time, p *WorkflowSubmit) ([]ItemResult, error) {
	w := p.Workflow.clone()
	if err := CheckWorkflow(&w); err != nil {
		return nil, err
	}
	if _, ok := f.workflows.byID[w.ID]; ok {
		return []ItemResult{{ID: w.ID, Existing: true}}, nil
	}
	for i := range w.Steps {
		if _, ok := f.tasks.get(StepTaskID(w.ID, w.Steps[i].Name)); ok {
			return nil, fmt.Errorf("%w: a task with the ID of step %q exists", ErrDuplicateID, w.Steps[i].Name)
		}
	}
	if w.OnFailure == "" {
		w.OnFailure = OnFailureCancel
	}
	w.State, w.Error, w.FinishedAt = WorkflowRunning, "", nil
	w.CreatedAt, w.CreateIndex, w.ModifyIndex = now, index, index
	for i := range w.Steps {
		s := &w.Steps[i]
		s.State, s.TaskID, s.Result, s.Error = StepWaiting, "", nil, ""
	}
	f.workflows.add(&w)
	for i := range w.Steps {
		if len(w.Steps[i].DependsOn) == 0 {
			f.startStep(index, now, &w, i)
		}
	}
	f.advanceWorkflows(index, now)
	return []ItemResult{{ID: w.ID}}, nil
}

func (f *FSM) applyWorkflowCancel(index uint64, now time.Time, p *WorkflowCancel) ([]ItemResult, error) {
	w, ok := f.workflows.byID[p.ID]
	if !ok {
		return nil, ErrWorkflowNotFound
	}
	if w.State != WorkflowRunning {
		return nil, ErrFinished
	}
	reason := "workflow cancelled"
	if p.By != "" {
		reason += " by " + p.By
	}
	f.stopWorkflow(index, now, w, WorkflowCancelled, reason)
	f.advanceWorkflows(index, now)
	return []ItemResult{{ID: w.ID}}, nil
}

// stopWorkflow settles w as state: waiting steps are cancelled, and running steps' tasks are
// asked to cancel (their steps settle as their tasks finish).
func (f *FSM) stopWorkflow(index uint64, now time.Time, w *Workflow, state WorkflowState, reason string) {
	w.State, w.Error = state, reason
	w.ModifyIndex = index
	g := f.workflows.graphs[w.ID]
	for i := range w.Steps {
		s := &w.Steps[i]
		switch s.State {
		case StepWaiting:
			g.settle(s, StepCancelled)
			s.Error = reason
		case StepRunning:
			f.cancel(index, now, s.TaskID)
		}
	}
	f.settleWorkflow(index, now, w)
}

// noteStepFinished records that a step's task has just finished, for advanceWorkflows. f.mu is held.
func (f *FSM) noteStepFinished(id string) {
	if _, ok := f.workflows.byTask[id]; ok {
		f.workflows.finished = append(f.workflows.finished, id)
	}
}

// advanceWorkflows settles the steps whose tasks finished in this entry, and starts the steps
// they make ready, until nothing more changes. applyLocked calls it after every command.
func (f *FSM) advanceWorkflows(index uint64, now time.Time) {
	for len(f.workflows.finished) > 0 {
		id := f.workflows.finished[0]
		f.workflows.finished = f.workflows.finished[1:]
		ref, ok := f.workflows.byTask[id]
		t, found := f.tasks.get(id)
		if !ok || !found {
			continue
		}
		w, i := ref.wf, ref.step
		s := &w.Steps[i]
		if s.State != StepRunning || !t.State.Terminal() {
			continue // settled before (a task retried by hand and finished again)
		}
		w.ModifyIndex = index
		g := f.workflows.graphs[w.ID]
		switch t.State {
		case Succeeded:
			g.settle(s, StepSucceeded)
			s.Result = t.Result
			for _, c := range g.children[i] {
				if g.waitingOn[c]--; g.waitingOn[c] == 0 && w.State == WorkflowRunning && w.Steps[c].State == StepWaiting {
					f.startStep(index, now, w, c)
				}
			}
		case Failed:
			g.settle(s, StepFailed)
			if t.Error != nil {
				s.Error = t.Error.Message
			}
			f.stepFailed(index, now, w, i, WorkflowFailed)
		default:
			g.settle(s, StepCancelled)
			s.Error = "task cancelled"
			f.stepFailed(index, now, w, i, WorkflowCancelled)
		}
		f.settleWorkflow(index, now, w)
	}
}

// stepFailed applies w's on_failure policy to step i, which failed or was cancelled (state is
// what the workflow becomes for it).
func (f *FSM) stepFailed(index uint64, now time.Time, w *Workflow, i int, state WorkflowState) {
	if w.State != WorkflowRunning {
		return
	}
	reason := fmt.Sprintf("step %s %s", w.Steps[i].Name, w.Steps[i].State)
	if w.OnFailure != OnFailureContinue {
		f.stopWorkflow(index, now, w, state, reason)
		return
	}
	// Continue: its descendants can never run; the others go on.
	g := f.workflows.graphs[w.ID]
	queue := []int{i}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range g.children[p] {
			if sc := &w.Steps[c]; sc.State == StepWaiting {
				g.settle(sc, StepCancelled)
				sc.Error = "depends on " + reason
				queue = append(queue, c)
			}
		}
	}
}

// settleWorkflow gives w its final state once every step is done (a workflow already stopped
// keeps the state it stopped with), and prunes the oldest finished workflows past the cap.
func (f *FSM) settleWorkflow(index uint64, now time.Time, w *Workflow) {
	if w.FinishedAt != nil || f.workflows.graphs[w.ID].done < len(w.Steps) {
		return
	}
	if w.State == WorkflowRunning {
		w.State = WorkflowSucceeded
		for i := range w.Steps {
			switch w.Steps[i].State {
			case StepFailed:
				w.State = WorkflowFailed
			case StepCancelled:
				if w.State != WorkflowFailed {
					w.State = WorkflowCancelled
				}
			}
		}
	}
	w.FinishedAt = f.stamp(now)
	w.ModifyIndex = index
	f.pruneWorkflows()
}

// pruneWorkflows drops finished workflows beyond MaxFinishedWorkflows, finished longest ago first.
func (f *FSM) pruneWorkflows() {
	var done []*Workflow
	for _, w := range f.workflows.byID {
		if w.FinishedAt != nil {
			done = append(done, w)
		}
	}
	for _, w := range oldest(done, MaxFinishedWorkflows, func(w *Workflow) (uint64, string) { return w.ModifyIndex, w.ID }) {
		f.workflows.drop(w)
	}
}

// startStep creates step i's task, its input taken from its parents' results; a step whose input
// cannot be made, or whose task the submit refuses, fails.
func (f *FSM) startStep(index uint64, now time.Time, w *Workflow, i int) {
	s := &w.Steps[i]
	g := f.workflows.graphs[w.ID]
	sub := s.Task
	sub.ID = StepTaskID(w.ID, s.Name)
	sub.ExecutionID = sub.ID
	sub.IdempotencyKey, sub.ParentID, sub.Schedule = "", "", ""
	sub.SubmittedBy = w.SubmittedBy
	if len(s.InputFrom) > 0 {
		in, err := w.inputOf(s, g.at)
		if err != nil {
			g.settle(s, StepFailed)
			s.Error = err.Error()
			f.stepFailed(index, now, w, i, WorkflowFailed)
			return
		}
		sub.Input = in
	}
	if len(sub.Input) == 0 {
		sub.Input = json.RawMessage("null")
	}
	res := f.submit(index, now, &sub, nil)
	if res.Err != nil || res.Existing {
		g.settle(s, StepFailed)
		s.Error = "submit: " + errString(res.Err, "idempotency key taken")
		f.stepFailed(index, now, w, i, WorkflowFailed)
		return
	}
	g.settle(s, StepRunning)
	s.TaskID = sub.ID
	f.workflows.byTask[sub.ID] = stepRef{w, i}
}

func errString(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}

// inputOf builds step s's input from its sources' results; at gives each step's index by name.
func (w *Workflow) inputOf(s *WorkflowStep, at map[string]int) (json.RawMessage, error) {
	values := make(map[string]json.RawMessage, len(s.InputFrom))
	var one json.RawMessage
	size := 2
	for _, src := range s.InputFrom {
		step, ptr := SplitSource(src)
		j, ok := at[step]
		if !ok {
			return nil, fmt.Errorf("input_from: no step %q", step)
		}
		v, err := Pointer(w.Steps[j].Result, ptr)
		if err != nil {
			return nil, fmt.Errorf("input_from %q: %v", src, err)
		}
		values[step], one = v, v
		if size += len(v) + len(step) + 4; size > MaxStepInputBytes {
			return nil, fmt.Errorf("input_from: the input would be over %d bytes", MaxStepInputBytes)
		}
	}
	if !s.InputObject {
		return one, nil
	}
	// Keys sorted, so the input is the same bytes on every replica.
	var b bytes.Buffer
	b.WriteByte('{')
	for k, step := range sortedKeys(values) {
		if k > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(step)
		b.Write(name)
		b.WriteByte(':')
		b.Write(values[step])
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Pointer returns the part of the JSON document doc that the JSON pointer ptr (RFC 6901) names;
// "" names the whole document, and a missing or null document is null.
func Pointer(doc json.RawMessage, ptr string) (json.RawMessage, error) {
	if len(bytes.TrimSpace(doc)) == 0 {
		doc = json.RawMessage("null")
	}
	if ptr == "" {
		return doc, nil
	}
	if ptr[0] != '/' {
		return nil, fmt.Errorf("JSON pointer %q does not start with '/'", truncate(ptr))
	}
	cur := doc
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := firstByte(cur); c {
		case '{':
			var m map[string]json.RawMessage
			if err := json.Unmarshal(cur, &m); err != nil {
				return nil, fmt.Errorf("result is not JSON: %v", err)
			}
			v, ok := m[tok]
			if !ok {
				return nil, fmt.Errorf("no member %q at %q", truncate(tok), truncate(ptr))
			}
			cur = v
		case '[':
			var a []json.RawMessage
			if err := json.Unmarshal(cur, &a); err != nil {
				return nil, fmt.Errorf("result is not JSON: %v", err)
			}
			n, err := strconv.Atoi(tok)
			if err != nil || n < 0 || n >= len(a) || (len(tok) > 1 && tok[0] == '0') {
				return nil, fmt.Errorf("no element %q at %q", truncate(tok), truncate(ptr))
			}
			cur = a[n]
		default:
			return nil, fmt.Errorf("nothing at %q: not an object or array", truncate(ptr))
		}
	}
	return bytes.TrimSpace(cur), nil
}

func firstByte(b []byte) byte {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// FinalResult is a succeeded workflow's result: the results of the steps no other step depends
// on, an object by step name, or the one such step's result. It is nil before the workflow
// succeeds.
func (w *Workflow) FinalResult() json.RawMessage {
	if w.State != WorkflowSucceeded {
		return nil
	}
	needed := map[string]bool{}
	for i := range w.Steps {
		for _, d := range w.Steps[i].DependsOn {
			needed[d] = true
		}
	}
	sinks := &WorkflowStep{InputObject: true}
	for i := range w.Steps {
		if !needed[w.Steps[i].Name] {
			sinks.InputFrom = append(sinks.InputFrom, w.Steps[i].Name)
		}
	}
	sinks.InputObject = len(sinks.InputFrom) > 1
	out, err := w.inputOf(sinks, newGraph(w).at)
	if err != nil {
		return nil
	}
	return out
}

// Workflow returns one workflow.
func (f *FSM) Workflow(id string) (Workflow, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.workflows.byID[id]
	if !ok {
		return Workflow{}, false
	}
	return w.clone(), true
}

// WorkflowPage returns up to limit workflows that keep accepts, newest first (by creation index,
// then ID), starting after the workflow named after ("" for the first page), and the ID to ask
// after for the next page ("" on the last).
func (f *FSM) WorkflowPage(after string, limit int, keep func(*Workflow) bool) ([]Workflow, string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	all := make([]*Workflow, 0, len(f.workflows.byID))
	for _, w := range f.workflows.byID {
		all = append(all, w)
	}
	slices.SortFunc(all, func(a, b *Workflow) int {
		return cmp.Or(cmp.Compare(b.CreateIndex, a.CreateIndex), cmp.Compare(b.ID, a.ID))
	})
	start := 0
	if after != "" {
		if a, ok := f.workflows.byID[after]; ok {
			start = slices.IndexFunc(all, func(w *Workflow) bool { return w == a }) + 1
		}
	}
	var out []Workflow
	for _, w := range all[start:] {
		if keep != nil && !keep(w) {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, w.clone())
	}
	return out, ""
}
