package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// t0 is built with time.Unix so it has the same location as the times msgpack decodes, which
// lets restored and raft-applied state compare with reflect.DeepEqual.
var t0 = time.Unix(1_700_000_000, 0)

// harness applies commands at increasing indexes; a command without Now gets t0+index seconds.
type harness struct {
	t   *testing.T
	f   *FSM
	idx uint64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{t: t, f: New()}
}

func (h *harness) apply(c *Command) *Result {
	h.t.Helper()
	h.idx++
	if c.Now.IsZero() {
		c.Now = t0.Add(time.Duration(h.idx) * time.Second)
	}
	return h.f.ApplyCommand(h.idx, c)
}

// must applies c and fails the test on any command or item error.
func (h *harness) must(c *Command) *Result {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil {
		h.t.Fatalf("apply %s: %v", c.Type(), r.Err)
	}
	for _, it := range r.Items {
		if it.Err != nil {
			h.t.Fatalf("apply %s item %s: %v", c.Type(), it.ID, it.Err)
		}
	}
	return r
}

func (h *harness) task(id string) Task {
	h.t.Helper()
	tk, ok := h.f.Task(id)
	if !ok {
		h.t.Fatalf("task %s not found", id)
	}
	return tk
}

func (h *harness) node(name string) Node {
	h.t.Helper()
	n, ok := h.f.Node(name)
	if !ok {
		h.t.Fatalf("node %s not found", name)
	}
	return n
}

// item applies a single-item command and returns that item's result.
func (h *harness) item(c *Command) ItemResult {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil || len(r.Items) != 1 {
		h.t.Fatalf("apply %s: err %v, %d items", c.Type(), r.Err, len(r.Items))
	}
	return r.Items[0]
}

// Command builders.

func sub(id, typ string) Submit { return Submit{ID: id, Type: typ, MaxAttempts: 3} }

func submitCmd(s ...Submit) *Command { return &Command{Body: &SubmitBatch{Items: s}} }

func registerCmd(name, boot string, capacity int) *Command {
	return &Command{Body: &Register{Node: Node{Name: name, BootID: boot, Capacity: capacity,
		Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}}
}

func assignCmd(id, node, boot string) *Command {
	return &Command{Body: &AssignBatch{Items: []Assign{{TaskID: id, Node: node, BootID: boot}}}}
}

func rep(id string, attempt int, node, boot string, kind ReportKind) Report {
	return Report{TaskID: id, Attempt: attempt, Node: node, BootID: boot, Kind: kind}
}

func reportCmd(r ...Report) *Command { return &Command{Body: &ReportBatch{Items: r}} }

func downCmd(name string, left bool) *Command {
	return &Command{Body: &Down{Name: name, Left: left}}
}

func drainCmd(name string, on bool) *Command {
	return &Command{Body: &Drain{Name: name, Draining: on}}
}

func cancelCmd(ids ...string) *Command { return &Command{Body: &Cancel{IDs: ids}} }

func removeCmd(ids ...string) *Command { return &Command{Body: &Remove{IDs: ids}} }

// assigned returns a harness with node n1 (boot b1) up and task "a" (max 3 attempts) assigned to it.
func assigned(t *testing.T) *harness {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	h.must(submitCmd(sub("a", "echo")))
	h.must(assignCmd("a", "n1", "b1"))
	return h
}

// running is assigned plus a started report.
func running(t *testing.T) *harness {
	h := assigned(t)
	h.must(reportCmd(rep("a", 1, "n1", "b1", ReportStarted)))
	return h
}

func events(tk Task) []string {
	var out []string
	for _, e := range tk.History {
		out = append(out, e.Event)
	}
	return out
}

func TestSubmitAppliesDefaultsAndValidates(t *testing.T) {
	tests := []struct {
		name     string
		before   []Submit
		submit   Submit
		wantErr  error
		wantID   string
		existing bool
		check    func(t *testing.T, tk Task)
	}{
		{name: "max_attempts 0 becomes 1", submit: Submit{ID: "a", Type: "echo"}, wantID: "a",
			check: func(t *testing.T, tk Task) {
				if tk.MaxAttempts != 1 {
					t.Errorf("MaxAttempts = %d, want 1", tk.MaxAttempts)
				}
			}},
		{name: "negative max_attempts becomes 1", submit: Submit{ID: "a", Type: "echo", MaxAttempts: -4}, wantID: "a",
			check: func(t *testing.T, tk Task) {
				if tk.MaxAttempts != 1 {
					t.Errorf("MaxAttempts = %d, want 1", tk.MaxAttempts)
				}
			}},
		{name: "fields are copied and task is pending", wantID: "a",
			submit: Submit{ID: "a", Type: "echo", Version: "v2", Input: json.RawMessage(`{"x":1}`), MaxAttempts: 5,
				Timeout: Duration(30 * time.Second), ExecutionID: "e1", ParentID: "p"},
			check: func(t *testing.T, tk Task) {
				want := Task{ID: "a", Type: "echo", Version: "v2", Input: json.RawMessage(`{"x":1}`), State: Pending,
					MaxAttempts: 5, Timeout: Duration(30 * time.Second), ExecutionID: "e1", ParentID: "p",
					CreatedAt: t0.Add(time.Second), CreateIndex: 1, ModifyIndex: 1}
				if !reflect.DeepEqual(tk, want) {
					t.Errorf("task = %+v\nwant %+v", tk, want)
				}
			}},
		{name: "execution id defaults to the task id", submit: Submit{ID: "a", Type: "echo"}, wantID: "a",
			check: func(t *testing.T, tk Task) {
				if tk.ExecutionID != "a" {
					t.Errorf("ExecutionID = %q, want a", tk.ExecutionID)
				}
			}},
		{name: "idempotency key returns the first task", before: []Submit{{ID: "a", Type: "echo", IdempotencyKey: "k"}},
			submit: Submit{ID: "b", Type: "echo", IdempotencyKey: "k"}, wantID: "a", existing: true},
		{name: "a second copy of a keyed submit is its own duplicate, not an idempotent hit",
			before: []Submit{{ID: "a", Type: "echo", IdempotencyKey: "k"}},
			submit: Submit{ID: "a", Type: "echo", IdempotencyKey: "k"}, wantID: "a", wantErr: ErrDuplicateID},
		{name: "duplicate id is refused", before: []Submit{sub("a", "echo")},
			submit: sub("a", "other"), wantID: "a", wantErr: ErrDuplicateID},
		{name: "missing id is a bad command", submit: Submit{Type: "echo"}, wantErr: ErrBadCommand},
		{name: "missing type is a bad command", submit: Submit{ID: "a"}, wantID: "a", wantErr: ErrBadCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if len(tc.before) > 0 {
				h.must(submitCmd(tc.before...))
			}
			before := h.f.List(Filter{})
			it := h.item(submitCmd(tc.submit))
			if !errors.Is(it.Err, tc.wantErr) || (tc.wantErr == nil && it.Err != nil) {
				t.Fatalf("err = %v, want %v", it.Err, tc.wantErr)
			}
			if it.ID != tc.wantID || it.Existing != tc.existing {
				t.Errorf("item = %+v, want ID %q existing %v", it, tc.wantID, tc.existing)
			}
			if tc.wantErr != nil || tc.existing {
				if after := h.f.List(Filter{}); !reflect.DeepEqual(after, before) {
					t.Errorf("refused submit changed tasks: %+v", after)
				}
				return
			}
			if tc.check != nil {
				tc.check(t, h.task(tc.wantID))
			}
		})
	}
}

func TestSubmitBatchDeduplicatesWithinItself(t *testing.T) {
	h := newHarness(t)
	r := h.apply(submitCmd(Submit{ID: "a", Type: "echo", IdempotencyKey: "k"}, Submit{ID: "b", Type: "echo", IdempotencyKey: "k"}))
	want := []ItemResult{{ID: "a"}, {ID: "a", Existing: true}}
	if !reflect.DeepEqual(r.Items, want) {
		t.Fatalf("items = %+v, want %+v", r.Items, want)
	}
	if _, ok := h.f.Task("b"); ok {
		t.Error("deduplicated submit created task b")
	}
}

func TestAssignMovesPendingToAssigned(t *testing.T) {
	h := assigned(t)
	tk := h.task("a")
	if tk.State != Assigned || tk.Node != "n1" || tk.BootID != "b1" || tk.Attempt != 1 || tk.ModifyIndex != 3 {
		t.Fatalf("task = %+v", tk)
	}
	want := []HistoryEntry{{Attempt: 1, Node: "n1", Event: EventAssigned, At: t0.Add(3 * time.Second)}}
	if !reflect.DeepEqual(tk.History, want) {
		t.Errorf("history = %+v, want %+v", tk.History, want)
	}
}

func TestAssignRefusesUnplaceable(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(h *harness)
		assign  *Command
		wantErr error
	}{
		{name: "unknown task", assign: assignCmd("zz", "n1", "b1"), wantErr: ErrNotFound},
		{name: "unknown node", assign: assignCmd("a", "n9", "b1"), wantErr: ErrNotPlaceable},
		{name: "node down", setup: func(h *harness) { h.must(downCmd("n1", false)) },
			assign: assignCmd("a", "n1", "b1"), wantErr: ErrNotPlaceable},
		{name: "node left", setup: func(h *harness) { h.must(downCmd("n1", true)) },
			assign: assignCmd("a", "n1", "b1"), wantErr: ErrNotPlaceable},
		{name: "node draining", setup: func(h *harness) { h.must(drainCmd("n1", true)) },
			assign: assignCmd("a", "n1", "b1"), wantErr: ErrNotPlaceable},
		{name: "boot id mismatch", assign: assignCmd("a", "n1", "b0"), wantErr: ErrNotPlaceable},
		{name: "task already assigned", setup: func(h *harness) { h.must(assignCmd("a", "n1", "b1")) },
			assign: assignCmd("a", "n1", "b1"), wantErr: ErrNotPlaceable},
		{name: "task finished", setup: func(h *harness) { h.must(cancelCmd("a")) },
			assign: assignCmd("a", "n1", "b1"), wantErr: ErrNotPlaceable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.must(registerCmd("n1", "b1", 4))
			h.must(submitCmd(sub("a", "echo")))
			if tc.setup != nil {
				tc.setup(h)
			}
			before, _ := h.f.Task("a")
			if it := h.item(tc.assign); !errors.Is(it.Err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", it.Err, tc.wantErr)
			}
			if after, _ := h.f.Task("a"); !reflect.DeepEqual(after, before) {
				t.Errorf("refused assign changed task:\n%+v\nwas %+v", after, before)
			}
		})
	}
}

// A pending task with CancelRequested cannot be reached through commands, so the state is
// restored from a hand-built snapshot.
func TestAssignRefusesCancelRequestedTask(t *testing.T) {
	f := New()
	s := snapshotState{Index: 5,
		Tasks: []Task{{ID: "a", Type: "echo", State: Pending, MaxAttempts: 1, CancelRequested: true, CreateIndex: 1}},
		Nodes: []Node{{Name: "n1", BootID: "b1", Capacity: 1, Status: NodeUp}}}
	b, err := msgpack.Marshal(&s)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if r := f.ApplyCommand(6, assignCmd("a", "n1", "b1")); !errors.Is(r.Items[0].Err, ErrNotPlaceable) {
		t.Fatalf("err = %v, want ErrNotPlaceable", r.Items[0].Err)
	}
	if tk, _ := f.Task("a"); tk.State != Pending {
		t.Errorf("state = %s, want pending", tk.State)
	}
}

func TestReportTransitions(t *testing.T) {
	retryAt := t0.Add(time.Hour)
	boom := &TaskError{Type: "boom", Message: "it broke"}
	tests := []struct {
		name   string
		start  func(*testing.T) *harness
		report Report
		check  func(t *testing.T, tk Task)
	}{
		{name: "started moves assigned to running and sets StartedAt", start: assigned,
			report: rep("a", 1, "n1", "b1", ReportStarted),
			check: func(t *testing.T, tk Task) {
				if tk.State != Running || tk.StartedAt == nil || !tk.StartedAt.Equal(t0.Add(4*time.Second)) {
					t.Errorf("state %s started %v", tk.State, tk.StartedAt)
				}
				if got := events(tk); !reflect.DeepEqual(got, []string{EventAssigned, EventStarted}) {
					t.Errorf("history = %v", got)
				}
			}},
		{name: "started again on a running task changes nothing", start: running,
			report: rep("a", 1, "n1", "b1", ReportStarted),
			check: func(t *testing.T, tk Task) {
				if tk.State != Running || !tk.StartedAt.Equal(t0.Add(4*time.Second)) || len(tk.History) != 2 {
					t.Errorf("task = %+v", tk)
				}
			}},
		{name: "checkpoint is stored", start: running,
			report: Report{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportCheckpoint, Checkpoint: json.RawMessage(`{"step":2}`)},
			check: func(t *testing.T, tk Task) {
				if tk.State != Running || string(tk.Checkpoint) != `{"step":2}` || tk.ModifyIndex != 5 {
					t.Errorf("task = %+v", tk)
				}
			}},
		{name: "succeeded stores the result and finishes", start: running,
			report: Report{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportSucceeded, Result: json.RawMessage(`42`)},
			check: func(t *testing.T, tk Task) {
				if tk.State != Succeeded || string(tk.Result) != "42" || tk.FinishedAt == nil || !tk.FinishedAt.Equal(t0.Add(5*time.Second)) {
					t.Errorf("task = %+v", tk)
				}
			}},
		{name: "failed below max_attempts is pending again with the report's NotBefore", start: running,
			report: Report{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportFailed, Error: boom, NotBefore: &retryAt},
			check: func(t *testing.T, tk Task) {
				if tk.State != Pending || tk.Node != "" || tk.BootID != "" || tk.Failures != 1 || tk.FinishedAt != nil {
					t.Errorf("task = %+v", tk)
				}
				if tk.NotBefore == nil || !tk.NotBefore.Equal(retryAt) {
					t.Errorf("NotBefore = %v, want %v", tk.NotBefore, retryAt)
				}
				if !reflect.DeepEqual(tk.Error, boom) {
					t.Errorf("Error = %+v", tk.Error)
				}
				last := tk.History[len(tk.History)-1]
				if last.Event != EventFailed || last.Error != "it broke" || last.Node != "n1" || last.Attempt != 1 {
					t.Errorf("last history = %+v", last)
				}
			}},
		{name: "failed at max_attempts fails the task", start: func(t *testing.T) *harness {
			h := newHarness(t)
			h.must(registerCmd("n1", "b1", 4))
			h.must(submitCmd(Submit{ID: "a", Type: "echo", MaxAttempts: 1}))
			h.must(assignCmd("a", "n1", "b1"))
			return h
		}, report: Report{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportFailed, Error: boom, NotBefore: &retryAt},
			check: func(t *testing.T, tk Task) {
				if tk.State != Failed || tk.Failures != 1 || tk.FinishedAt == nil || tk.NotBefore != nil || !reflect.DeepEqual(tk.Error, boom) {
					t.Errorf("task = %+v", tk)
				}
			}},
		{name: "failed without an error gets a default one", start: running,
			report: rep("a", 1, "n1", "b1", ReportFailed),
			check: func(t *testing.T, tk Task) {
				if tk.Error == nil || tk.Error.Type != "task_error" {
					t.Errorf("Error = %+v", tk.Error)
				}
			}},
		{name: "cancelled finishes the task cancelled", start: running,
			report: rep("a", 1, "n1", "b1", ReportCancelled),
			check: func(t *testing.T, tk Task) {
				if tk.State != Cancelled || tk.FinishedAt == nil || events(tk)[len(tk.History)-1] != EventCancelled {
					t.Errorf("task = %+v", tk)
				}
			}},
		{name: "interrupted is pending again without counting a failure", start: running,
			report: rep("a", 1, "n1", "b1", ReportInterrupted),
			check: func(t *testing.T, tk Task) {
				if tk.State != Pending || tk.Failures != 0 || tk.Node != "" || tk.Attempt != 1 {
					t.Errorf("task = %+v", tk)
				}
				if got := events(tk); !reflect.DeepEqual(got, []string{EventAssigned, EventStarted, EventInterrupted}) {
					t.Errorf("history = %v", got)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.start(t)
			if it := h.item(reportCmd(tc.report)); it.Err != nil || it.ID != "a" {
				t.Fatalf("item = %+v", it)
			}
			tc.check(t, h.task("a"))
		})
	}
}

func TestFailedTaskIsRetriedUntilMaxAttempts(t *testing.T) {
	h := assigned(t) // max 3 attempts
	for attempt := 1; attempt <= 3; attempt++ {
		if attempt > 1 {
			h.must(assignCmd("a", "n1", "b1"))
		}
		h.must(reportCmd(rep("a", attempt, "n1", "b1", ReportFailed)))
		tk := h.task("a")
		want := Pending
		if attempt == 3 {
			want = Failed
		}
		if tk.State != want || tk.Attempt != attempt || tk.Failures != attempt {
			t.Fatalf("after attempt %d: state %s attempt %d failures %d", attempt, tk.State, tk.Attempt, tk.Failures)
		}
	}
}

func TestReportRejectsUnknownKind(t *testing.T) {
	h := running(t)
	before := h.task("a")
	if it := h.item(reportCmd(rep("a", 1, "n1", "b1", ReportKind(99)))); !errors.Is(it.Err, ErrInvalidReport) {
		t.Fatalf("err = %v, want ErrInvalidReport", it.Err)
	}
	if after := h.task("a"); !reflect.DeepEqual(after, before) {
		t.Errorf("invalid report changed task")
	}
}

func TestReportFencingRejectsStaleReports(t *testing.T) {
	tests := []struct {
		name    string
		start   func(*testing.T) *harness
		report  Report
		wantErr error
	}{
		{name: "wrong attempt", start: running, report: rep("a", 2, "n1", "b1", ReportSucceeded), wantErr: ErrStale},
		{name: "earlier attempt on the same node", start: func(t *testing.T) *harness {
			h := running(t)
			h.must(reportCmd(rep("a", 1, "n1", "b1", ReportInterrupted)))
			h.must(assignCmd("a", "n1", "b1"))
			return h
		}, report: rep("a", 1, "n1", "b1", ReportSucceeded), wantErr: ErrStale},
		{name: "wrong node", start: running, report: rep("a", 1, "n2", "b1", ReportSucceeded), wantErr: ErrStale},
		{name: "wrong boot id", start: running, report: rep("a", 1, "n1", "b0", ReportSucceeded), wantErr: ErrStale},
		{name: "pending task", start: func(t *testing.T) *harness {
			h := running(t)
			h.must(reportCmd(rep("a", 1, "n1", "b1", ReportInterrupted)))
			return h
		}, report: rep("a", 1, "n1", "b1", ReportStarted), wantErr: ErrStale},
		{name: "terminal task", start: func(t *testing.T) *harness {
			h := running(t)
			h.must(reportCmd(rep("a", 1, "n1", "b1", ReportSucceeded)))
			return h
		}, report: rep("a", 1, "n1", "b1", ReportFailed), wantErr: ErrStale},
		{name: "unknown task", start: running, report: rep("zz", 1, "n1", "b1", ReportStarted), wantErr: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.start(t)
			before := h.f.List(Filter{})
			if it := h.item(reportCmd(tc.report)); !errors.Is(it.Err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", it.Err, tc.wantErr)
			}
			if after := h.f.List(Filter{}); !reflect.DeepEqual(after, before) {
				t.Errorf("stale report changed state:\n%+v\nwas %+v", after, before)
			}
		})
	}
}

func TestRegister(t *testing.T) {
	tests := []struct {
		name      string
		boot      string
		wantState State
		wantEvts  []string
	}{
		{name: "same boot id keeps the node's tasks", boot: "b1", wantState: Running,
			wantEvts: []string{EventAssigned, EventStarted}},
		{name: "new boot id takes back tasks of the old incarnation", boot: "b2", wantState: Pending,
			wantEvts: []string{EventAssigned, EventStarted, EventInterrupted}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := running(t)
			h.must(registerCmd("n1", tc.boot, 8))
			tk := h.task("a")
			if tk.State != tc.wantState || tk.Failures != 0 || !reflect.DeepEqual(events(tk), tc.wantEvts) {
				t.Errorf("task state %s failures %d history %v", tk.State, tk.Failures, events(tk))
			}
			n := h.node("n1")
			if n.BootID != tc.boot || n.Capacity != 8 || n.Status != NodeUp || n.ModifyIndex != h.idx || !n.RegisteredAt.Equal(t0.Add(time.Duration(h.idx)*time.Second)) {
				t.Errorf("node = %+v", n)
			}
		})
	}
}

func TestRegisterNewNodeIsUp(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 2))
	n := h.node("n1")
	if n.Status != NodeUp || n.Draining || !n.Offers("echo", "v1") || n.Offers("echo", "v2") || !n.Offers("echo", "") {
		t.Errorf("node = %+v", n)
	}
	for _, bad := range []*Register{{}, {Node: Node{Name: "x"}}, {Node: Node{BootID: "b"}}} {
		if r := h.apply(&Command{Body: bad}); !errors.Is(r.Err, ErrBadCommand) {
			t.Errorf("register %+v: err = %v, want ErrBadCommand", bad.Node, r.Err)
		}
	}
}

func TestNodeDownTakesBackItsTasks(t *testing.T) {
	tests := []struct {
		name       string
		left       bool
		cancel     bool
		wantStatus NodeStatus
		wantState  State
		wantEvts   []string
	}{
		{name: "crash requeues", wantStatus: NodeDown, wantState: Pending,
			wantEvts: []string{EventAssigned, EventStarted, EventInterrupted}},
		{name: "leave requeues", left: true, wantStatus: NodeLeft, wantState: Pending,
			wantEvts: []string{EventAssigned, EventStarted, EventInterrupted}},
		{name: "cancel-requested task becomes cancelled", cancel: true, wantStatus: NodeDown, wantState: Cancelled,
			wantEvts: []string{EventAssigned, EventStarted, EventInterrupted, EventCancelled}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := running(t)
			// b: assigned, not started, on n1. c: on n2, untouched. d: pending, untouched.
			h.must(registerCmd("n2", "b2", 4))
			h.must(submitCmd(sub("b", "echo"), sub("c", "echo"), sub("d", "echo")))
			h.must(assignCmd("b", "n1", "b1"))
			h.must(assignCmd("c", "n2", "b2"))
			if tc.cancel {
				h.must(cancelCmd("a"))
			}
			c, d := h.task("c"), h.task("d")
			h.must(downCmd("n1", tc.left))
			if n := h.node("n1"); n.Status != tc.wantStatus {
				t.Errorf("status = %s, want %s", n.Status, tc.wantStatus)
			}
			a := h.task("a")
			if a.State != tc.wantState || a.Failures != 0 || !reflect.DeepEqual(events(a), tc.wantEvts) {
				t.Errorf("a: state %s failures %d history %v", a.State, a.Failures, events(a))
			}
			if a.State == Pending && (a.Node != "" || a.BootID != "") {
				t.Errorf("requeued task still held by %q/%q", a.Node, a.BootID)
			}
			if b := h.task("b"); b.State != Pending || b.Failures != 0 || events(b)[len(b.History)-1] != EventInterrupted {
				t.Errorf("b = %+v", b)
			}
			if !reflect.DeepEqual(h.task("c"), c) || !reflect.DeepEqual(h.task("d"), d) {
				t.Error("tasks not held by n1 changed")
			}
			if load := h.f.Load(); load["n1"] != 0 || load["n2"] != 1 {
				t.Errorf("load = %v", load)
			}
		})
	}
}

func TestNodeDownAndDrainRejectUnknownNode(t *testing.T) {
	h := newHarness(t)
	for _, c := range []*Command{downCmd("nx", false), drainCmd("nx", true)} {
		if r := h.apply(c); !errors.Is(r.Err, ErrUnknownNode) {
			t.Errorf("%s: err = %v, want ErrUnknownNode", c.Type(), r.Err)
		}
	}
}

func TestDrainSetsAndClearsFlag(t *testing.T) {
	h := running(t)
	for _, on := range []bool{true, false, true} {
		h.must(drainCmd("n1", on))
		if n := h.node("n1"); n.Draining != on || n.ModifyIndex != h.idx {
			t.Errorf("drain %v: node = %+v", on, n)
		}
	}
	if tk := h.task("a"); tk.State != Running {
		t.Errorf("drain changed a running task: %s", tk.State)
	}
}

func TestCancel(t *testing.T) {
	tests := []struct {
		name      string
		start     func(*testing.T) *harness
		wantErr   error
		wantState State
		requested bool
	}{
		{name: "pending is cancelled at once", start: func(t *testing.T) *harness {
			h := newHarness(t)
			h.must(submitCmd(sub("a", "echo")))
			return h
		}, wantState: Cancelled},
		{name: "assigned is asked to cancel", start: assigned, wantState: Assigned, requested: true},
		{name: "running is asked to cancel", start: running, wantState: Running, requested: true},
		{name: "finished is refused", start: func(t *testing.T) *harness {
			h := running(t)
			h.must(reportCmd(rep("a", 1, "n1", "b1", ReportSucceeded)))
			return h
		}, wantErr: ErrFinished, wantState: Succeeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.start(t)
			if it := h.item(cancelCmd("a")); !errors.Is(it.Err, tc.wantErr) || (tc.wantErr == nil && it.Err != nil) {
				t.Fatalf("err = %v, want %v", it.Err, tc.wantErr)
			}
			tk := h.task("a")
			if tk.State != tc.wantState || tk.CancelRequested != tc.requested {
				t.Errorf("state %s requested %v", tk.State, tk.CancelRequested)
			}
			if tk.State == Cancelled && (tk.FinishedAt == nil || events(tk)[len(tk.History)-1] != EventCancelled) {
				t.Errorf("cancelled task = %+v", tk)
			}
		})
	}
}

func TestCancelRequestedRunEndsCancelled(t *testing.T) {
	for _, kind := range []ReportKind{ReportCancelled, ReportFailed, ReportInterrupted} {
		h := running(t)
		h.must(cancelCmd("a"))
		h.must(reportCmd(rep("a", 1, "n1", "b1", kind)))
		if tk := h.task("a"); tk.State != Cancelled || tk.FinishedAt == nil {
			t.Errorf("report kind %d after cancel: state %s", kind, tk.State)
		}
	}
}

func TestCancelUnknownTask(t *testing.T) {
	h := newHarness(t)
	if it := h.item(cancelCmd("zz")); !errors.Is(it.Err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", it.Err)
	}
}

func TestRemove(t *testing.T) {
	h := running(t)
	h.must(submitCmd(Submit{ID: "k1", Type: "echo", IdempotencyKey: "key"}, sub("p", "echo")))
	h.must(cancelCmd("k1"))
	r := h.apply(removeCmd("a", "p", "k1", "zz"))
	for i, wantErr := range []error{ErrBadCommand, ErrBadCommand, nil, ErrNotFound} {
		if it := r.Items[i]; !errors.Is(it.Err, wantErr) || (wantErr == nil && it.Err != nil) {
			t.Errorf("item %s: err = %v, want %v", it.ID, it.Err, wantErr)
		}
	}
	if _, ok := h.f.Task("k1"); ok {
		t.Error("removed task still present")
	}
	if got := ids(h.f.List(Filter{})); !reflect.DeepEqual(got, []string{"p", "a"}) {
		t.Errorf("list = %v", got)
	}
	// The idempotency key is free again.
	if it := h.item(submitCmd(Submit{ID: "k2", Type: "echo", IdempotencyKey: "key"})); it.Existing || it.Err != nil || it.ID != "k2" {
		t.Errorf("resubmit with freed key = %+v", it)
	}
}

func TestRemoveManyKeepsListConsistent(t *testing.T) {
	h := newHarness(t)
	var all []string
	for i := range 10 {
		id := string(rune('a' + i))
		all = append(all, id)
		h.must(submitCmd(sub(id, "echo")))
	}
	h.must(cancelCmd(all...))
	h.must(removeCmd(all[:7]...)) // past half: order is compacted
	if got := ids(h.f.List(Filter{})); !reflect.DeepEqual(got, []string{"j", "i", "h"}) {
		t.Errorf("list = %v", got)
	}
	if got := h.f.Expired(t0.Add(time.Hour), 0); !reflect.DeepEqual(got, []string{"h", "i", "j"}) {
		t.Errorf("expired = %v", got)
	}
}

// IDs are ULIDs made by the leader, so reuse is not reachable through the HTTP API today; the FSM
// still accepts it and then lists the task twice because the removed ID stays in order.
func TestSubmitReusingRemovedIDListsItOnce(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(sub("a", "echo"), sub("b", "echo"), sub("c", "echo")))
	h.must(cancelCmd("a"))
	h.must(removeCmd("a")) // 1 of 3 removed: no compaction
	h.must(submitCmd(sub("a", "echo")))
	if got := ids(h.f.List(Filter{})); !reflect.DeepEqual(got, []string{"a", "c", "b"}) {
		t.Errorf("list = %v, want [a c b]", got)
	}
}

func TestUnregisteredPayloadIsBadCommand(t *testing.T) {
	h := newHarness(t)
	if r := h.apply(&Command{Body: &struct{ X int }{}}); !errors.Is(r.Err, ErrBadCommand) || r.Index != 1 {
		t.Fatalf("result = %+v", r)
	}
	if got := CommandType(42).String(); got != "command(42)" {
		t.Errorf("String = %q", got)
	}
}

func raftLog(t *testing.T, i uint64, c *Command) *raft.Log {
	t.Helper()
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Type: raft.LogCommand, Index: i, Data: b}
}

func TestRaftApplyDecodesCommands(t *testing.T) {
	f := New()
	cmds := []*Command{registerCmd("n1", "b1", 1), submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1")}
	for i, c := range cmds {
		c.Now = t0
		r, ok := f.Apply(raftLog(t, uint64(i+1), c)).(*Result)
		if !ok || r.Err != nil || r.Index != uint64(i+1) {
			t.Fatalf("apply %s: %#v", c.Type(), r)
		}
	}
	if tk, _ := f.Task("a"); tk.State != Assigned || tk.Node != "n1" {
		t.Errorf("task = %+v", tk)
	}
}

// Garbage in the log was written by something that meant it: the FSM halts rather than skip it.
func TestRaftApplyHaltsOnGarbage(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("garbage"), {0xc1}, {0x81, 0xa1, 't', 0xa3, 'x', 'y', 'z'}, {byte(CmdSubmit), 0xc1}} {
		f := New()
		r, ok := f.Apply(&raft.Log{Type: raft.LogCommand, Index: 7, Data: data}).(*Result)
		if !ok || !errors.Is(r.Err, ErrHalted) || r.Index != 7 {
			t.Errorf("data %q: result %#v", data, r)
			continue
		}
		if f.Index() != 0 || !errors.Is(f.Halted(), ErrHalted) {
			t.Errorf("data %q: index %d, halted %v; want 0 and halted", data, f.Index(), f.Halted())
		}
	}
}

func TestRaftApplyIgnoresNonCommandLogs(t *testing.T) {
	f := New()
	if r := f.Apply(&raft.Log{Type: raft.LogNoop, Index: 3}); r != nil {
		t.Fatalf("result = %#v, want nil", r)
	}
	if f.Index() != 0 {
		t.Errorf("index = %d", f.Index())
	}
}

// script exercises every command type and most transitions.
func script() []*Command {
	later := t0.Add(time.Hour)
	cmds := []*Command{
		registerCmd("n1", "b1", 2),
		registerCmd("n2", "b2", 2),
		submitCmd(sub("a", "echo"), sub("b", "echo"), Submit{ID: "c", Type: "sleep", IdempotencyKey: "k", Input: json.RawMessage(`{"s":1}`)}),
		{Body: &AssignBatch{Items: []Assign{{TaskID: "a", Node: "n1", BootID: "b1"}, {TaskID: "b", Node: "n2", BootID: "b2"}, {TaskID: "c", Node: "n1", BootID: "b1"}}}},
		reportCmd(rep("a", 1, "n1", "b1", ReportStarted), rep("b", 1, "n2", "b2", ReportStarted)),
		reportCmd(Report{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportCheckpoint, Checkpoint: json.RawMessage(`[1]`)}),
		reportCmd(Report{TaskID: "b", Attempt: 1, Node: "n2", BootID: "b2", Kind: ReportFailed, Error: &TaskError{Type: "x", Message: "y"}, NotBefore: &later}),
		cancelCmd("c"),
		drainCmd("n2", true),
		submitCmd(sub("d", "echo"), Submit{ID: "e", Type: "echo", IdempotencyKey: "k"}),
		downCmd("n1", false),
		registerCmd("n1", "b3", 4),
		assignCmd("a", "n1", "b3"),
		reportCmd(Report{TaskID: "a", Attempt: 2, Node: "n1", BootID: "b3", Kind: ReportSucceeded, Result: json.RawMessage(`"ok"`)}),
		removeCmd("c"),
	}
	for i, c := range cmds {
		c.Now = t0.Add(time.Duration(i) * time.Minute)
	}
	return cmds
}

func TestApplyIsDeterministic(t *testing.T) {
	direct1, direct2, viaRaft := New(), New(), New()
	for i, c := range script() {
		direct1.ApplyCommand(uint64(i+1), c)
	}
	for i, c := range script() {
		direct2.ApplyCommand(uint64(i+1), c)
		viaRaft.Apply(raftLog(t, uint64(i+1), c))
	}
	if len(direct1.List(Filter{})) != 3 {
		t.Fatalf("script left %d tasks, want 3", len(direct1.List(Filter{})))
	}
	for name, f := range map[string]*FSM{"second direct": direct2, "raft": viaRaft} {
		if !reflect.DeepEqual(f.List(Filter{}), direct1.List(Filter{})) {
			t.Errorf("%s: tasks differ:\n%+v\n%+v", name, f.List(Filter{}), direct1.List(Filter{}))
		}
		if !reflect.DeepEqual(f.Nodes(), direct1.Nodes()) {
			t.Errorf("%s: nodes differ", name)
		}
		if f.Index() != direct1.Index() || !reflect.DeepEqual(f.Counts(), direct1.Counts()) {
			t.Errorf("%s: index or counts differ", name)
		}
	}
}

// bufSink is a raft.SnapshotSink writing to memory.
type bufSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *bufSink) ID() string    { return "test" }
func (s *bufSink) Cancel() error { s.cancelled = true; return nil }
func (s *bufSink) Close() error  { s.closed = true; return nil }

func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func TestSnapshotRestoreGivesIdenticalState(t *testing.T) {
	src := New()
	for i, c := range script() {
		src.Apply(raftLog(t, uint64(i+1), c))
	}
	data := snapshotBytes(t, src)
	want, wantNodes, wantView := src.List(Filter{}), src.Nodes(), src.SchedulerView()
	src.ApplyCommand(100, submitCmd(sub("late", "echo"))) // after the snapshot: must not appear

	dst := New()
	dst.ApplyCommand(1, submitCmd(sub("stale", "echo"))) // replaced by Restore
	changed := dst.Changed()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Error("Restore did not close Changed")
	}
	if got := dst.List(Filter{}); !reflect.DeepEqual(got, want) {
		t.Errorf("tasks differ:\n%+v\nwant %+v", got, want)
	}
	if got := ids(want); !reflect.DeepEqual(got, []string{"d", "b", "a"}) {
		t.Errorf("list order = %v, want newest first [d b a]", got)
	}
	if !reflect.DeepEqual(dst.Nodes(), wantNodes) {
		t.Errorf("nodes differ:\n%+v\nwant %+v", dst.Nodes(), wantNodes)
	}
	if dst.Index() != 15 {
		t.Errorf("index = %d, want 15", dst.Index())
	}
	if !reflect.DeepEqual(dst.SchedulerView(), wantView) {
		t.Error("scheduler views differ")
	}
	// "k" was freed when "c" was removed: the first submit with it is new, the second dedupes to it.
	r := dst.ApplyCommand(16, submitCmd(Submit{ID: "f", Type: "echo", IdempotencyKey: "k"}, Submit{ID: "g", Type: "echo", IdempotencyKey: "k"}))
	if r.Items[0].Existing || !r.Items[1].Existing || r.Items[1].ID != "f" {
		t.Errorf("items after restore = %+v", r.Items)
	}
}

func TestSnapshotRestoreKeepsIdempotencyKeys(t *testing.T) {
	src := New()
	src.ApplyCommand(1, submitCmd(Submit{ID: "a", Type: "echo", IdempotencyKey: "k"}, sub("b", "echo")))
	src.ApplyCommand(2, submitCmd(sub("c", "echo")))
	dst := New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, src)))); err != nil {
		t.Fatal(err)
	}
	r := dst.ApplyCommand(3, submitCmd(Submit{ID: "z", Type: "echo", IdempotencyKey: "k"}))
	if it := r.Items[0]; !it.Existing || it.ID != "a" {
		t.Errorf("submit after restore = %+v, want existing a", it)
	}
	if got := ids(dst.List(Filter{})); !reflect.DeepEqual(got, []string{"c", "b", "a"}) {
		t.Errorf("list = %v", got)
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	f := New()
	f.ApplyCommand(1, submitCmd(sub("a", "echo")))
	if err := f.Restore(io.NopCloser(strings.NewReader("garbage"))); err == nil {
		t.Fatal("restore of garbage succeeded")
	}
	if _, ok := f.Task("a"); !ok {
		t.Error("failed restore dropped state")
	}
}

func ids(ts []Task) []string {
	out := []string{}
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

// queryFSM holds: n1 with p1 (running), p2 (assigned); q1 pending of type other, exec e;
// q2 succeeded; q3 pending; in creation order p1, p2, q1, q2, q3.
func queryFSM(t *testing.T) *harness {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	h.must(registerCmd("n2", "b2", 4))
	h.must(submitCmd(sub("p1", "echo"), sub("p2", "echo")))
	h.must(submitCmd(Submit{ID: "q1", Type: "other", ExecutionID: "e"}, Submit{ID: "q2", Type: "echo", ExecutionID: "e"}))
	h.must(submitCmd(sub("q3", "echo")))
	h.must(&Command{Body: &AssignBatch{Items: []Assign{{TaskID: "p1", Node: "n1", BootID: "b1"}, {TaskID: "p2", Node: "n1", BootID: "b1"}, {TaskID: "q2", Node: "n2", BootID: "b2"}}}})
	h.must(reportCmd(rep("p1", 1, "n1", "b1", ReportStarted), rep("q2", 1, "n2", "b2", ReportSucceeded)))
	return h
}

func TestListFiltersAndPages(t *testing.T) {
	h := queryFSM(t)
	tests := []struct {
		name   string
		filter Filter
		want   []string
	}{
		{name: "everything newest first", want: []string{"q3", "q2", "q1", "p2", "p1"}},
		{name: "by state", filter: Filter{State: Pending}, want: []string{"q3", "q1"}},
		{name: "by type", filter: Filter{Type: "other"}, want: []string{"q1"}},
		{name: "by node", filter: Filter{Node: "n1"}, want: []string{"p2", "p1"}},
		{name: "by execution", filter: Filter{ExecutionID: "e"}, want: []string{"q2", "q1"}},
		{name: "execution defaults to id", filter: Filter{ExecutionID: "p1"}, want: []string{"p1"}},
		{name: "combined filters", filter: Filter{Type: "echo", State: Succeeded}, want: []string{"q2"}},
		{name: "limit", filter: Filter{Limit: 2}, want: []string{"q3", "q2"}},
		{name: "after", filter: Filter{After: "q2"}, want: []string{"q1", "p2", "p1"}},
		{name: "after with limit", filter: Filter{After: "q2", Limit: 2}, want: []string{"q1", "p2"}},
		{name: "after the oldest", filter: Filter{After: "p1"}, want: []string{}},
		{name: "after with filter", filter: Filter{After: "q3", Type: "echo"}, want: []string{"q2", "p2", "p1"}},
		{name: "no match", filter: Filter{Type: "nope"}, want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ids(h.f.List(tc.filter)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("List(%+v) = %v, want %v", tc.filter, got, tc.want)
			}
		})
	}
}

func TestListPagesThroughEverything(t *testing.T) {
	h := queryFSM(t)
	var got []string
	after := ""
	for range 10 {
		page := h.f.List(Filter{After: after, Limit: 2})
		if len(page) == 0 {
			break
		}
		got = append(got, ids(page)...)
		after = page[len(page)-1].ID
	}
	if want := []string{"q3", "q2", "q1", "p2", "p1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("pages = %v, want %v", got, want)
	}
}

func TestCountsIncludesEveryState(t *testing.T) {
	h := queryFSM(t)
	want := map[State]int{Scheduled: 0, Pending: 2, Assigned: 1, Running: 1, Waiting: 0, Succeeded: 1, Failed: 0, Cancelled: 0}
	if got := h.f.Counts(); !reflect.DeepEqual(got, want) {
		t.Errorf("counts = %v, want %v", got, want)
	}
	if got := New().Counts(); len(got) != len(States) {
		t.Errorf("empty counts = %v", got)
	}
}

func TestLoadActiveAndSchedulerView(t *testing.T) {
	h := queryFSM(t)
	if got := h.f.Load(); !reflect.DeepEqual(got, map[string]int{"n1": 2}) {
		t.Errorf("load = %v", got)
	}
	if got := ids(h.f.Active("n1")); !reflect.DeepEqual(got, []string{"p1", "p2"}) {
		t.Errorf("active n1 = %v (oldest first)", got)
	}
	if got := h.f.Active("n2"); len(got) != 0 {
		t.Errorf("active n2 = %v", got)
	}
	v := h.f.SchedulerView()
	if v.Index != h.idx || !reflect.DeepEqual(ids(v.Pending), []string{"q1", "q3"}) || !reflect.DeepEqual(v.Load, h.f.Load()) {
		t.Errorf("view = %+v", v)
	}
	if len(v.Nodes) != 2 || v.Nodes[0].Name != "n1" || v.Nodes[1].Name != "n2" {
		t.Errorf("view nodes = %+v", v.Nodes)
	}
	// The view is a copy.
	v.Pending[0].History = append(v.Pending[0].History, HistoryEntry{Event: "x"})
	v.Nodes[0].Types[0].Type = "mutated"
	if tk := h.task("q1"); len(tk.History) != 0 {
		t.Error("view shares task history")
	}
	if n := h.node("n1"); n.Types[0].Type != "echo" {
		t.Error("view shares node types")
	}
}

func TestExpiredReturnsOldFinishedTasks(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(sub("a", "echo"), sub("b", "echo"), sub("c", "echo"), sub("d", "echo"))) // t0+1s
	h.must(&Command{Body: &Cancel{IDs: []string{"a"}}, Now: t0.Add(10 * time.Second)})
	h.must(&Command{Body: &Cancel{IDs: []string{"c"}}, Now: t0.Add(20 * time.Second)})
	h.must(&Command{Body: &Cancel{IDs: []string{"b"}}, Now: t0.Add(30 * time.Second)})
	tests := []struct {
		cutoff time.Duration
		limit  int
		want   []string
	}{
		{cutoff: 10 * time.Second, limit: 10, want: nil},
		{cutoff: 11 * time.Second, limit: 10, want: []string{"a"}},
		{cutoff: time.Hour, limit: 10, want: []string{"a", "b", "c"}},
		{cutoff: time.Hour, limit: 2, want: []string{"a", "b"}},
	}
	for _, tc := range tests {
		if got := h.f.Expired(t0.Add(tc.cutoff), tc.limit); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Expired(+%s, %d) = %v, want %v", tc.cutoff, tc.limit, got, tc.want)
		}
	}
}

func TestChangedIsClosedByApply(t *testing.T) {
	h := newHarness(t)
	ch := h.f.Changed()
	select {
	case <-ch:
		t.Fatal("Changed closed before any apply")
	default:
	}
	h.apply(cancelCmd("missing")) // even a command that changes no task
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by Apply")
	}
	if next := h.f.Changed(); next == ch {
		t.Error("Changed returned the closed channel again")
	}
}

func TestTaskWatch(t *testing.T) {
	h := newHarness(t)
	if _, ok, ch := h.f.TaskWatch("a"); ok || ch == nil {
		t.Fatalf("watch of missing task: ok %v ch %v", ok, ch)
	}
	h.must(submitCmd(sub("a", "echo")))
	tk, ok, ch := h.f.TaskWatch("a")
	if !ok || tk.State != Pending {
		t.Fatalf("watch = %+v %v", tk, ok)
	}
	h.must(cancelCmd("a"))
	select {
	case <-ch:
	default:
		t.Fatal("watch channel not closed by a change")
	}
	if tk, _, _ := h.f.TaskWatch("a"); tk.State != Cancelled {
		t.Errorf("state after change = %s", tk.State)
	}
}

// A capped assignment (protocol 3: two proposers place tasks, each from its own view) applies only
// while the node has a free slot; an uncapped one is the proposer's call, as before.
func TestCappedAssignHoldsNodeCapacity(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 1))
	h.must(submitCmd(sub("a", "echo"), sub("b", "echo"), sub("c", "echo")))
	h.must(assignCmd("a", "n1", "b1"))
	capped := &Command{Now: t0, Body: &AssignBatch{Items: []Assign{{TaskID: "b", Node: "n1", BootID: "b1", Capped: true}}}}
	if it := h.item(capped); !errors.Is(it.Err, ErrNotPlaceable) {
		t.Fatalf("capped assign on a full node: err = %v, want ErrNotPlaceable", it.Err)
	}
	if tk := h.task("b"); tk.State != Pending || tk.Attempt != 0 {
		t.Fatalf("refused capped assign changed b: %+v", tk)
	}
	if it := h.item(assignCmd("c", "n1", "b1")); it.Err != nil {
		t.Fatalf("plain assign on a full node: %v (the scheduler decides capacity for those)", it.Err)
	}
	h.must(registerCmd("n2", "b2", 2))
	capped.Body.(*AssignBatch).Items[0].Node, capped.Body.(*AssignBatch).Items[0].BootID = "n2", "b2"
	if it := h.item(capped); it.Err != nil {
		t.Fatalf("capped assign with a free slot: %v", it.Err)
	}
	if tk := h.task("b"); tk.State != Assigned || tk.Node != "n2" {
		t.Fatalf("b = %+v, want assigned to n2", tk)
	}
	if got := capped.Body.(*AssignBatch).NeedsProtocol(); got != 3 {
		t.Errorf("capped assign NeedsProtocol = %d, want 3", got)
	}
}

func TestSubmitCandidatesAreThePendingTasksASubmitCreates(t *testing.T) {
	later := t0.Add(time.Minute)
	got := New().SubmitCandidates([]Submit{
		{ID: "a", Type: "echo", Version: "1", Priority: 5, Queue: DefaultQueue},
		{ID: "b", Type: "echo", RunAt: &later},
		{ID: "c", Type: "echo", RunAt: &t0, Queue: "q"},
		{ID: "", Type: "echo"},
	}, t0)
	want := []Task{
		{ID: "a", Type: "echo", Version: "1", State: Pending, Priority: 5, CreatedAt: t0, MaxAttempts: 1, ExecutionID: "a"},
		{ID: "c", Type: "echo", State: Pending, Queue: "q", CreatedAt: t0, MaxAttempts: 1, ExecutionID: "c", RunAt: &t0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("candidates = %+v\nwant %+v", got, want)
	}
}
