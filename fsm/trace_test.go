package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func testTrace() *TraceContext {
	return &TraceContext{TraceID: [16]byte{0x4b, 0xf9, 1}, SpanID: [8]byte{0x00, 0xf0, 7}, Flags: 1}
}

// A submit's trace context reaches its task record, and so its workflow steps' tasks, and
// survives a snapshot.
func TestTraceContextIsStoredWithTheTask(t *testing.T) {
	h := newHarness(t)
	tc := testTrace()
	h.must(&Command{Body: &SubmitBatch{Items: []Submit{{ID: "t1", Type: "echo", MaxAttempts: 1, ExecutionID: "t1", Trace: tc}}}})
	got, ok := h.f.Task("t1")
	if !ok || got.Trace == nil || *got.Trace != *tc {
		t.Fatalf("task trace = %+v, want %+v", got.Trace, tc)
	}
	wf := wfCmd("w", "", wfStep("a"))
	wf.Body.(*WorkflowSubmit).Workflow.Steps[0].Task.Trace = tc
	h.must(wf)
	step, ok := h.f.Task(StepTaskID("w", "a"))
	if !ok || step.Trace == nil || *step.Trace != *tc {
		t.Fatalf("workflow step's task trace = %+v, want %+v", step.Trace, tc)
	}
	restored := New()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if got, _ := restored.Task("t1"); got.Trace == nil || *got.Trace != *tc {
		t.Fatalf("restored task trace = %+v, want %+v", got.Trace, tc)
	}
}

// While a node older than TraceProtocol is up, the leader's Prepare drops the trace contexts of
// submits and workflows, so the command is accepted (without them) instead of refused; a
// command that kept one anyway is refused by Emit, never written for the old node to halt on.
func TestTraceContextIsDroppedWhileAnOldProtocolNodeIsUp(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: TraceProtocol - 1}}})
	sub := &Command{Body: &SubmitBatch{Items: []Submit{{ID: "t1", Type: "echo", MaxAttempts: 1, Trace: testTrace()}}}}
	if _, err := h.f.Emit(sub); !errors.Is(err, ErrProtocolTooOld) {
		t.Fatalf("emit a submit with a trace context, protocol %d node up: %v", TraceProtocol-1, err)
	}
	h.f.Prepare(sub, t0, PrepareEnv{})
	if tr := sub.Body.(*SubmitBatch).Items[0].Trace; tr != nil {
		t.Fatalf("prepare kept the trace context with an old node up: %+v", tr)
	}
	if _, err := h.f.Emit(sub); err != nil {
		t.Fatalf("emit the prepared submit: %v", err)
	}
	wf := wfCmd("w", "", wfStep("a"))
	wf.Body.(*WorkflowSubmit).Workflow.Steps[0].Task.Trace = testTrace()
	if _, err := h.f.Emit(wf); !errors.Is(err, ErrProtocolTooOld) {
		t.Fatalf("emit a workflow with a trace context, protocol %d node up: %v", TraceProtocol-1, err)
	}
	h.f.Prepare(wf, t0, PrepareEnv{})
	if _, err := h.f.Emit(wf); err != nil {
		t.Fatalf("emit the prepared workflow: %v", err)
	}

	// Once every node speaks TraceProtocol the context is kept.
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b2", Protocol: Protocol}}})
	sub = &Command{Body: &SubmitBatch{Items: []Submit{{ID: "t2", Type: "echo", MaxAttempts: 1, Trace: testTrace()}}}}
	h.f.Prepare(sub, t0, PrepareEnv{})
	if sub.Body.(*SubmitBatch).Items[0].Trace == nil {
		t.Fatal("prepare dropped the trace context with every node new")
	}
	if _, err := h.f.Emit(sub); err != nil {
		t.Fatalf("emit with every node at protocol %d: %v", Protocol, err)
	}
}
