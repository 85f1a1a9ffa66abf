package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// waitHarness has node n1 (boot b1) up and parent task "p" (max_attempts 1) running on it with
// n children c0..c(n-1), pending.
func waitHarness(t *testing.T, n int) (*harness, []string) {
	h := newHarness(t)
	reg := registerCmd("n1", "b1", 100)
	reg.Body.(*Register).Node.Protocol = Protocol
	h.must(reg)
	p := sub("p", "echo")
	p.MaxAttempts = 1
	h.must(submitCmd(p))
	h.must(assignCmd("p", "n1", "b1"))
	h.must(reportCmd(rep("p", 1, "n1", "b1", ReportStarted)))
	var ids []string
	for i := range n {
		c := sub(fmt.Sprint("c", i), "echo")
		c.ParentID, c.ExecutionID, c.MaxAttempts = "p", "p", 1
		h.must(submitCmd(c))
		ids = append(ids, c.ID)
	}
	return h, ids
}

func waitRep(id string, attempt int, children ...string) Report {
	r := rep(id, attempt, "n1", "b1", ReportWait)
	r.WaitFor = children
	return r
}

// finishChild runs a child on n1 to the outcome kind (succeeded with its ID as result, failed
// for good, or cancelled).
func (h *harness) finishChild(id string, kind ReportKind) {
	h.t.Helper()
	h.must(assignCmd(id, "n1", "b1"))
	r := rep(id, h.task(id).Attempt, "n1", "b1", kind)
	switch kind {
	case ReportSucceeded:
		r.Result = json.RawMessage(`"` + id + `"`)
	case ReportFailed:
		r.Error = &TaskError{Type: "task_error", Message: "child " + id + " broke", Final: true}
	}
	h.must(reportCmd(r))
}

func TestWaitGivesTheSlotBackAndTheLastChildToFinishResumesTheParent(t *testing.T) {
	h, ids := waitHarness(t, 3)
	h.must(reportCmd(waitRep("p", 1, ids[2], ids[0], ids[1], ids[0])))
	p := h.task("p")
	if p.State != Waiting || p.Node != "" || p.BootID != "" || p.WaitLeft != 3 || !slices.Equal(p.WaitFor, ids) {
		t.Fatalf("after the wait: state %s node %q wait_left %d wait_for %v", p.State, p.Node, p.WaitLeft, p.WaitFor)
	}
	if p.Failures != 0 || p.Attempt != 1 {
		t.Errorf("a wait counted as a failure: failures %d attempt %d", p.Failures, p.Attempt)
	}
	for _, a := range h.f.Active("n1") {
		if a.ID == "p" {
			t.Fatal("the waiting parent still holds a slot on n1")
		}
	}
	h.finishChild(ids[0], ReportSucceeded)
	h.finishChild(ids[1], ReportFailed)
	if p := h.task("p"); p.State != Waiting || p.WaitLeft != 1 {
		t.Fatalf("with one child left: state %s wait_left %d", p.State, p.WaitLeft)
	}
	h.finishChild(ids[2], ReportCancelled)
	p = h.task("p")
	if p.State != Pending || p.WaitLeft != 0 || !slices.Equal(p.WaitFor, ids) {
		t.Fatalf("after the last child: state %s wait_left %d wait_for %v", p.State, p.WaitLeft, p.WaitFor)
	}
	if got, want := events(p), []string{EventAssigned, EventStarted, EventWaiting, EventResumed}; !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
	// max_attempts is 1: the resumed run is not a retry, so it runs, and its outcome stands.
	h.must(assignCmd("p", "n1", "b1"))
	r := rep("p", 2, "n1", "b1", ReportSucceeded)
	r.Result = json.RawMessage(`3`)
	h.must(reportCmd(r))
	if p := h.task("p"); p.State != Succeeded || p.Attempt != 2 || p.Failures != 0 {
		t.Fatalf("resumed run: state %s attempt %d failures %d", p.State, p.Attempt, p.Failures)
	}
}

func TestWaitForChildrenThatFinishedAlreadyResumesAtOnce(t *testing.T) {
	h, ids := waitHarness(t, 2)
	h.finishChild(ids[0], ReportSucceeded)
	h.finishChild(ids[1], ReportSucceeded)
	h.must(reportCmd(waitRep("p", 1, ids...)))
	if p := h.task("p"); p.State != Pending || p.WaitLeft != 0 {
		t.Fatalf("state %s wait_left %d", p.State, p.WaitLeft)
	}
}

// A child that finishes in the same entry as its parent's wait, before it, is counted once.
func TestWaitAndAChildsOutcomeInOneEntry(t *testing.T) {
	h, ids := waitHarness(t, 2)
	h.must(assignCmd(ids[0], "n1", "b1"))
	done := rep(ids[0], 1, "n1", "b1", ReportSucceeded)
	done.Result = json.RawMessage(`1`)
	h.must(reportCmd(done, waitRep("p", 1, ids...)))
	if p := h.task("p"); p.State != Waiting || p.WaitLeft != 1 {
		t.Fatalf("state %s wait_left %d, want waiting for 1", p.State, p.WaitLeft)
	}
	h.finishChild(ids[1], ReportSucceeded)
	if p := h.task("p"); p.State != Pending {
		t.Fatalf("state %s after the last child", p.State)
	}
}

func TestAStaleWaitReportIsRefused(t *testing.T) {
	h, ids := waitHarness(t, 1)
	for name, r := range map[string]Report{
		"old attempt": waitRep("p", 0, ids...),
		"other boot":  {TaskID: "p", Attempt: 1, Node: "n1", BootID: "b0", Kind: ReportWait, WaitFor: ids},
		"other node":  {TaskID: "p", Attempt: 1, Node: "n2", BootID: "b1", Kind: ReportWait, WaitFor: ids},
	} {
		if it := h.item(reportCmd(r)); !errors.Is(it.Err, ErrStale) {
			t.Errorf("%s: %v, want stale", name, it.Err)
		}
	}
	if p := h.task("p"); p.State != Running || p.WaitFor != nil {
		t.Fatalf("a refused wait changed the parent: %s %v", p.State, p.WaitFor)
	}
	// Once the parent waits, its attempt is over: a second wait of it is stale too.
	h.must(reportCmd(waitRep("p", 1, ids...)))
	if it := h.item(reportCmd(waitRep("p", 1, ids...))); !errors.Is(it.Err, ErrStale) {
		t.Errorf("a second wait of the same attempt: %v", it.Err)
	}
}

func TestAWaitForTasksThatAreNotChildrenFailsTheParent(t *testing.T) {
	for name, children := range map[string][]string{
		"no child":      nil,
		"unknown":       {"c0", "nope"},
		"not its child": {"c0", "other"},
		"itself":        {"p"},
	} {
		t.Run(name, func(t *testing.T) {
			h, _ := waitHarness(t, 1)
			h.must(submitCmd(sub("other", "echo")))
			h.must(reportCmd(waitRep("p", 1, children...)))
			p := h.task("p")
			if p.State != Failed || p.Error == nil || p.Error.Type != ErrTypeInvalidWait || !p.Error.Final {
				t.Fatalf("state %s error %+v", p.State, p.Error)
			}
			if o := h.task("other"); o.State != Pending {
				t.Errorf("the other task changed: %s", o.State)
			}
		})
	}
	h, _ := waitHarness(t, 0)
	many := make([]string, MaxWaitChildren+1)
	for i := range many {
		many[i] = fmt.Sprint("x", i)
	}
	h.must(reportCmd(waitRep("p", 1, many...)))
	if p := h.task("p"); p.State != Failed || p.Error.Type != ErrTypeInvalidWait {
		t.Fatalf("a wait over the cap: %s %+v", p.State, p.Error)
	}
}

func TestCancellingAWaitingParentCancelsTheChildrenItWaitsFor(t *testing.T) {
	h, ids := waitHarness(t, 4)
	h.finishChild(ids[0], ReportSucceeded)
	h.must(assignCmd(ids[1], "n1", "b1")) // running: asked to cancel
	// c2 is a parent itself, waiting for its own child g.
	h.must(assignCmd(ids[2], "n1", "b1"))
	g := sub("g", "echo")
	g.ParentID, g.ExecutionID = ids[2], "p"
	h.must(submitCmd(g))
	h.must(reportCmd(waitRep(ids[2], 1, "g")))
	h.must(reportCmd(waitRep("p", 1, ids[:3]...))) // c3 is not waited for
	if it := h.item(cancelCmd("p")); it.Err != nil {
		t.Fatal(it.Err)
	}
	want := map[string]State{"p": Cancelled, ids[0]: Succeeded, ids[1]: Assigned, ids[2]: Cancelled, "g": Cancelled, ids[3]: Pending}
	for id, st := range want {
		if got := h.task(id); got.State != st {
			t.Errorf("%s is %s, want %s", id, got.State, st)
		}
	}
	if !h.task(ids[1]).CancelRequested {
		t.Error("the running child was not asked to cancel")
	}
	if it := h.item(cancelCmd("p")); !errors.Is(it.Err, ErrFinished) {
		t.Errorf("cancel again: %v", it.Err)
	}
}

func TestAParentAskedToCancelThatThenWaitsIsCancelledWithItsChildren(t *testing.T) {
	h, ids := waitHarness(t, 2)
	h.must(cancelCmd("p"))
	h.must(reportCmd(waitRep("p", 1, ids...)))
	for _, id := range []string{"p", ids[0], ids[1]} {
		if st := h.task(id).State; st != Cancelled {
			t.Errorf("%s is %s", id, st)
		}
	}
}

func TestAChildRetriedWhileItsParentWaitsHoldsTheParentBack(t *testing.T) {
	h, ids := waitHarness(t, 2)
	h.must(reportCmd(waitRep("p", 1, ids...)))
	h.finishChild(ids[0], ReportFailed)
	h.must(&Command{Body: &Retry{IDs: []string{ids[0]}}})
	h.finishChild(ids[1], ReportSucceeded)
	if p := h.task("p"); p.State != Waiting || p.WaitLeft != 1 {
		t.Fatalf("with the retried child running again: %s wait_left %d", p.State, p.WaitLeft)
	}
	h.finishChild(ids[0], ReportSucceeded)
	if p := h.task("p"); p.State != Pending {
		t.Fatalf("after the retried child: %s", p.State)
	}
}

// The node that ran the parent going down changes nothing for a waiting parent: it holds no slot.
func TestAWaitingParentOutlivesItsNode(t *testing.T) {
	h, ids := waitHarness(t, 1)
	h.must(reportCmd(waitRep("p", 1, ids...)))
	h.must(downCmd("n1", false))
	if p := h.task("p"); p.State != Waiting {
		t.Fatalf("after n1 went down: %s", p.State)
	}
	h.must(registerCmd("n1", "b2", 10))
	h.must(assignCmd(ids[0], "n1", "b2"))
	r := rep(ids[0], 1, "n1", "b2", ReportSucceeded)
	h.must(reportCmd(r))
	if p := h.task("p"); p.State != Pending {
		t.Fatalf("after its child: %s", p.State)
	}
}

func TestWaitIsDeterministicAndSurvivesASnapshot(t *testing.T) {
	script := func(h *harness, ids []string) {
		h.must(reportCmd(waitRep("p", 1, ids...)))
		h.finishChild(ids[0], ReportSucceeded)
	}
	h1, ids := waitHarness(t, 3)
	h2, _ := waitHarness(t, 3)
	script(h1, ids)
	script(h2, ids)
	_, d1 := h1.f.Digest()
	_, d2 := h2.f.Digest()
	if d1 != d2 {
		t.Fatalf("the same commands gave two digests")
	}
	restored := New()
	if err := restoreBytes(restored, snapshotBytes(t, h1.f)); err != nil {
		t.Fatal(err)
	}
	if _, d := restored.Digest(); d != d1 {
		t.Fatalf("restored digest differs")
	}
	h3 := &harness{t: t, f: restored, idx: h1.idx}
	for _, h := range []*harness{h1, h3} {
		h.finishChild(ids[1], ReportFailed)
		h.finishChild(ids[2], ReportSucceeded)
	}
	_, d1 = h1.f.Digest()
	_, d3 := h3.f.Digest()
	if d1 != d3 || h3.task("p").State != Pending {
		t.Fatalf("after restore: digests equal %v, parent %s", d1 == d3, h3.task("p").State)
	}
}

func TestAWaitReportNeedsProtocol10(t *testing.T) {
	h, ids := waitHarness(t, 1)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: WaitProtocol - 1}}})
	if _, err := h.f.Emit(reportCmd(waitRep("p", 1, ids...))); !errors.Is(err, ErrProtocolTooOld) {
		t.Fatalf("emit a wait with a protocol %d node up: %v", WaitProtocol-1, err)
	}
	// Other reports still go.
	if _, err := h.f.Emit(reportCmd(rep("p", 1, "n1", "b1", ReportCheckpoint))); err != nil {
		t.Fatalf("emit a checkpoint: %v", err)
	}
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b2", Protocol: Protocol}}})
	if _, err := h.f.Emit(reportCmd(waitRep("p", 1, ids...))); err != nil {
		t.Fatalf("emit with every node at protocol %d: %v", Protocol, err)
	}
}

// BenchmarkWaitForTenThousandChildren times what the FSM does for a parent that waits for
// MaxWaitChildren children: the wait report (every child looked up), then every child's outcome
// (each counted into the parent's wait), in report batches of 100, until the last resumes it;
// "no wait" is the same children's outcomes with the parent running, for comparison. The submits
// and assignments are outside the timing.
func BenchmarkWaitForTenThousandChildren(b *testing.B) {
	for _, wait := range []bool{true, false} {
		name := "wait"
		if !wait {
			name = "no wait"
		}
		b.Run(name, func(b *testing.B) { benchWait(b, wait) })
	}
}

func benchWait(b *testing.B, wait bool) {
	const n = MaxWaitChildren
	for b.Loop() {
		b.StopTimer()
		f, idx := New(), uint64(0)
		apply := func(c *Command) {
			idx++
			if r := f.ApplyCommand(idx, c); r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		reg := registerCmd("n1", "b1", n+1)
		reg.Body.(*Register).Node.Protocol = Protocol
		apply(reg)
		apply(submitCmd(sub("p", "echo")))
		apply(assignCmd("p", "n1", "b1"))
		ids := make([]string, n)
		subs := make([]Submit, n)
		assigns := make([]Assign, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("c%05d", i)
			subs[i] = Submit{ID: ids[i], Type: "echo", MaxAttempts: 1, ParentID: "p", ExecutionID: "p"}
			assigns[i] = Assign{TaskID: ids[i], Node: "n1", BootID: "b1"}
		}
		apply(submitCmd(subs...))
		apply(&Command{Body: &AssignBatch{Items: assigns}})
		b.StartTimer()
		if wait {
			apply(reportCmd(waitRep("p", 1, ids...)))
		}
		for i := 0; i < n; i += 100 {
			reps := make([]Report, 0, 100)
			for _, id := range ids[i : i+100] {
				r := rep(id, 1, "n1", "b1", ReportSucceeded)
				r.Result = json.RawMessage(`1`)
				reps = append(reps, r)
			}
			apply(reportCmd(reps...))
		}
		b.StopTimer()
		if p, _ := f.Task("p"); wait && p.State != Pending || !wait && p.State != Assigned {
			b.Fatalf("parent %s after its children", p.State)
		}
		b.StartTimer()
	}
}
