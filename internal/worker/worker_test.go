package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/tasks"
)

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if localcluster.Until(timeout, 10*time.Millisecond, cond) != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// fsmWith is an FSM holding the tasks and nodes, as a snapshot restore leaves it.
func fsmWith(t *testing.T, ts []fsm.Task, ns []fsm.Node) *fsm.FSM {
	t.Helper()
	b, err := msgpack.Marshal(struct {
		Index uint64     `msgpack:"index"`
		Tasks []fsm.Task `msgpack:"tasks"`
		Nodes []fsm.Node `msgpack:"nodes"`
	}{Index: 1, Tasks: ts, Nodes: ns})
	if err != nil {
		t.Fatal(err)
	}
	f := fsm.New()
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return f
}

// proposals records the commands a worker sends, and answers each with answer (n counts the
// commands from 1), or else with success for every item.
type proposals struct {
	mu     sync.Mutex
	cmds   []*fsm.Command
	sent   []fsm.Report // copies of the reports as they were sent
	answer func(c *fsm.Command, n int) (*fsm.Result, error)
}

func (p *proposals) propose(_ context.Context, c *fsm.Command) (*fsm.Result, error) {
	p.mu.Lock()
	p.cmds = append(p.cmds, c)
	if b, ok := c.Body.(*fsm.ReportBatch); ok {
		for _, r := range b.Items {
			if r.Error != nil {
				e := *r.Error
				r.Error = &e
			}
			p.sent = append(p.sent, r)
		}
	}
	n := len(p.cmds)
	answer := p.answer
	p.mu.Unlock()
	if answer != nil {
		return answer(c, n)
	}
	res := &fsm.Result{Index: uint64(n)}
	if b, ok := c.Body.(*fsm.ReportBatch); ok {
		res.Items = make([]fsm.ItemResult, len(b.Items))
	}
	return res, nil
}

// reports is every report sent so far, in order.
func (p *proposals) reports() []fsm.Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sent)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testWorker is a Worker named "me", boot ID "b1", over f, sending its commands to p.
func testWorker(f *fsm.FSM, p *proposals, reg *tasks.Registry) *Worker {
	if reg == nil {
		reg = tasks.NewRegistry()
	}
	return New(Config{
		Name: "me", BootID: "b1", FSM: f, Logger: quiet(),
		Executor:       tasks.ExecutorConfig{Registry: reg, NodeName: "me", Logger: quiet()},
		ProposeNode:    p.propose,
		StorageFault:   func() string { return "" },
		StorageChanged: func() <-chan struct{} { return make(chan struct{}) },
	})
}

func TestOutcomeReportKinds(t *testing.T) {
	run := tasks.RunRef{TaskID: "t", Attempt: 2}
	for _, tc := range []struct {
		outcome tasks.Outcome
		terr    *tasks.TaskError
		want    fsm.ReportKind
	}{
		{tasks.OutcomeSucceeded, nil, fsm.ReportSucceeded},
		{tasks.OutcomeFailed, &tasks.TaskError{Type: "boom", Message: "it broke", Final: true}, fsm.ReportFailed},
		{tasks.OutcomeCancelled, &tasks.TaskError{Type: tasks.ErrTypeCancelled, Message: "task cancelled"}, fsm.ReportCancelled},
		{tasks.OutcomeInterrupted, &tasks.TaskError{Type: "interrupted", Message: "drained"}, fsm.ReportInterrupted},
	} {
		rep := outcomeReport(run, tc.outcome, json.RawMessage(`1`), tc.terr)
		if rep.Kind != tc.want || rep.TaskID != "t" || rep.Attempt != 2 || string(rep.Result) != "1" {
			t.Errorf("outcome %v: report %+v, want kind %v for t attempt 2 with the result", tc.outcome, rep, tc.want)
		}
		switch {
		case tc.terr == nil && rep.Error != nil:
			t.Errorf("outcome %v: error %+v without a task error", tc.outcome, rep.Error)
		case tc.terr != nil && (rep.Error == nil || rep.Error.Type != tc.terr.Type || rep.Error.Message != tc.terr.Message || rep.Error.Final != tc.terr.Final):
			t.Errorf("outcome %v: error %+v, want %+v", tc.outcome, rep.Error, tc.terr)
		}
	}
}

func TestAttemptEndedReadsTheAttemptsLastEvent(t *testing.T) {
	h := func(attempt int, ev string) fsm.HistoryEntry { return fsm.HistoryEntry{Attempt: attempt, Event: ev} }
	for _, tc := range []struct {
		name    string
		history []fsm.HistoryEntry
		attempt int
		want    bool
	}{
		{"running", []fsm.HistoryEntry{h(1, fsm.EventAssigned), h(1, fsm.EventStarted)}, 1, false},
		{"succeeded", []fsm.HistoryEntry{h(1, fsm.EventStarted), h(1, fsm.EventSucceeded)}, 1, true},
		{"failed", []fsm.HistoryEntry{h(1, fsm.EventStarted), h(1, fsm.EventFailed)}, 1, true},
		{"cancelled", []fsm.HistoryEntry{h(1, fsm.EventCancelled)}, 1, true},
		{"retried after failing", []fsm.HistoryEntry{h(1, fsm.EventFailed), h(1, fsm.EventRetried)}, 1, true},
		{"interrupted", []fsm.HistoryEntry{h(1, fsm.EventStarted), h(1, fsm.EventInterrupted)}, 1, false},
		{"another attempt ended", []fsm.HistoryEntry{h(1, fsm.EventFailed), h(2, fsm.EventStarted)}, 2, false},
		{"no history", nil, 1, false},
	} {
		if got := attemptEnded(&fsm.Task{History: tc.history}, tc.attempt); got != tc.want {
			t.Errorf("%s: attemptEnded = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSameRegistrationComparesWhatTheNodeRegisters(t *testing.T) {
	want := fsm.Node{Name: "me", Status: fsm.NodeUp, BootID: "b1", HTTPAddr: "h", RaftAddr: "r", GossipAddr: "g",
		Capacity: 4, Protocol: fsm.Protocol, Types: []fsm.TypeInfo{{Type: "echo", Version: "1", Description: "x"}}}
	if !sameRegistration(want, want) {
		t.Fatal("a registration differs from itself")
	}
	described := want
	described.Types = []fsm.TypeInfo{{Type: "echo", Version: "1", Description: "other words"}}
	if !sameRegistration(described, want) {
		t.Error("a changed description alone asks for a new registration")
	}
	for name, change := range map[string]func(*fsm.Node){
		"down":        func(n *fsm.Node) { n.Status = fsm.NodeDown },
		"boot ID":     func(n *fsm.Node) { n.BootID = "b0" },
		"HTTP":        func(n *fsm.Node) { n.HTTPAddr = "h2" },
		"raft":        func(n *fsm.Node) { n.RaftAddr = "r2" },
		"gossip":      func(n *fsm.Node) { n.GossipAddr = "g2" },
		"capacity":    func(n *fsm.Node) { n.Capacity = 5 },
		"protocol":    func(n *fsm.Node) { n.Protocol = fsm.Protocol - 1 },
		"type":        func(n *fsm.Node) { n.Types = []fsm.TypeInfo{{Type: "sleep", Version: "1"}} },
		"version":     func(n *fsm.Node) { n.Types = []fsm.TypeInfo{{Type: "echo", Version: "2"}} },
		"fewer types": func(n *fsm.Node) { n.Types = nil },
	} {
		cur := want
		change(&cur)
		if sameRegistration(cur, want) {
			t.Errorf("a registration with another %s counts as the same", name)
		}
	}
}

func TestReporterSignsReportsAndFencesStaleOnes(t *testing.T) {
	for _, cause := range []error{fsm.ErrStale, fsm.ErrNotFound} {
		p := &proposals{}
		w := testWorker(fsm.New(), p, nil)
		run := tasks.RunRef{TaskID: "t", Attempt: 1}
		if err := w.Reporter().Started(context.Background(), run); err != nil {
			t.Fatal(err)
		}
		if reps := p.reports(); len(reps) != 1 || reps[0].Node != "me" || reps[0].BootID != "b1" || reps[0].Kind != fsm.ReportStarted {
			t.Fatalf("reports %+v, want one started report from me, boot b1", reps)
		}
		p.mu.Lock()
		p.answer = func(*fsm.Command, int) (*fsm.Result, error) {
			return &fsm.Result{Items: []fsm.ItemResult{{Err: cause}}}, nil
		}
		p.mu.Unlock()
		err := w.Reporter().Finished(context.Background(), run, tasks.OutcomeSucceeded, nil, nil)
		if !errors.Is(err, tasks.ErrFenced) || !errors.Is(err, cause) {
			t.Errorf("a report refused with %v: %v, want tasks.ErrFenced and the cause", cause, err)
		}
	}
}

func TestReporterRefusesAResultThatDoesNotMatchItsReports(t *testing.T) {
	p := &proposals{answer: func(*fsm.Command, int) (*fsm.Result, error) { return &fsm.Result{}, nil }}
	w := testWorker(fsm.New(), p, nil)
	if err := w.Reporter().Started(context.Background(), tasks.RunRef{TaskID: "t", Attempt: 1}); err == nil {
		t.Fatal("a result without items was taken as the report's success")
	}
}

func TestFinalErrorIsSentAgainAsAnOrdinaryFailureWhileAnOlderNodeIsUp(t *testing.T) {
	p := &proposals{}
	p.answer = func(c *fsm.Command, n int) (*fsm.Result, error) {
		if n == 1 {
			return nil, fsm.ErrProtocolTooOld
		}
		return &fsm.Result{Items: make([]fsm.ItemResult, len(c.Body.(*fsm.ReportBatch).Items))}, nil
	}
	w := testWorker(fsm.New(), p, nil)
	run := tasks.RunRef{TaskID: "t", Attempt: 1}
	sf := w.Reporter().(tasks.StartFinisher)
	if err := sf.StartedAndFinished(context.Background(), run, tasks.OutcomeFailed, nil, &tasks.TaskError{Type: "bad", Message: "no", Final: true}); err != nil {
		t.Fatal(err)
	}
	reps := p.reports()
	if len(reps) != 4 || reps[0].Kind != fsm.ReportStarted || reps[1].Kind != fsm.ReportFailed || !reps[1].Error.Final {
		t.Fatalf("reports %+v, want started and a final failure, then both again", reps)
	}
	if reps[2].Kind != fsm.ReportStarted || reps[3].Kind != fsm.ReportFailed || reps[3].Error.Final {
		t.Fatalf("second try %+v, want started and an ordinary failure", reps[2:])
	}
}

func TestWorkLoopRunsThisIncarnationsAssignmentsAndReportsCancelledOnesWithoutRunning(t *testing.T) {
	var mu sync.Mutex
	ran := map[string]int{}
	reg := tasks.NewRegistry()
	if err := reg.Register(tasks.Func(tasks.Definition{Name: "echo", Version: "1"}, func(ctx *tasks.Context, in any) (any, error) {
		mu.Lock()
		ran[ctx.TaskID]++
		mu.Unlock()
		return in, nil
	})); err != nil {
		t.Fatal(err)
	}
	assigned := func(id, boot string, cancel bool) fsm.Task {
		return fsm.Task{ID: id, Type: "echo", Version: "1", Input: json.RawMessage(`"hi"`), State: fsm.Assigned,
			Node: "me", BootID: boot, Attempt: 1, MaxAttempts: 3, CancelRequested: cancel,
			History: []fsm.HistoryEntry{{Attempt: 1, Node: "me", Event: fsm.EventAssigned}}}
	}
	f := fsmWith(t, []fsm.Task{assigned("run", "b1", false), assigned("cancelled", "b1", true), assigned("old", "b0", false)}, nil)
	p := &proposals{}
	w := testWorker(f, p, reg)
	defer w.Executor().Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.WorkLoop(ctx)
	}()
	outcome := func(id string) (fsm.Report, bool) {
		for _, r := range p.reports() {
			if r.TaskID == id && r.Kind != fsm.ReportStarted && r.Kind != fsm.ReportCheckpoint {
				return r, true
			}
		}
		return fsm.Report{}, false
	}
	waitFor(t, "both outcomes reported", 10*time.Second, func() bool {
		_, a := outcome("run")
		_, b := outcome("cancelled")
		return a && b
	})
	cancel()
	<-done
	if r, _ := outcome("run"); r.Kind != fsm.ReportSucceeded || string(r.Result) != `"hi"` {
		t.Errorf("assigned task reported %+v, want succeeded with its input", r)
	}
	if r, _ := outcome("cancelled"); r.Kind != fsm.ReportCancelled || r.Error == nil || r.Error.Type != tasks.ErrTypeCancelled {
		t.Errorf("cancelled assignment reported %+v, want cancelled", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if ran["run"] != 1 || ran["cancelled"] != 0 || ran["old"] != 0 {
		t.Errorf("runs %v: want the assignment run once, the cancelled one and another incarnation's never", ran)
	}
	if slices.ContainsFunc(p.reports(), func(r fsm.Report) bool { return r.TaskID == "old" }) {
		t.Error("reported on an assignment of another incarnation of this node")
	}
}

func TestReleaseAnswersHeldRequestsAndSendsNewOnesToTheLeader(t *testing.T) {
	f := fsmWith(t, nil, []fsm.Node{{Name: "n2", HTTPAddr: "10.0.0.2:7948", Status: fsm.NodeUp}})
	w := testWorker(f, &proposals{}, nil)
	defer w.Executor().Close()
	w.cfg.Leader = func() string { return "n2" }
	h := w.RefuseWhenClosing(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusTeapot) }))
	serve := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	if rec := serve("/v1/tasks"); rec.Code != http.StatusTeapot {
		t.Fatalf("before release: %d, want the API's answer", rec.Code)
	}
	held, stop := w.UntilReleased(context.Background())
	defer stop()

	w.Release("test")
	w.Release("again") // only the first acts
	select {
	case <-w.Released():
	default:
		t.Fatal("Released still open after Release")
	}
	select {
	case <-held.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a held request's context outlived the release")
	}
	rec := serve("/v1/tasks")
	var e api.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != http.StatusServiceUnavailable || e.Code != api.CodeShuttingDown ||
		rec.Header().Get(api.HeaderLeaderAddr) != "10.0.0.2:7948" || !strings.Contains(e.Message, "n2 at 10.0.0.2:7948") {
		t.Fatalf("after release: %d %s (%v) header %q, want 503 shutting_down naming n2 at its address",
			rec.Code, rec.Body, err, rec.Header().Get(api.HeaderLeaderAddr))
	}
	for _, path := range []string{"/v1/health", "/metrics"} {
		if rec := serve(path); rec.Code != http.StatusTeapot {
			t.Errorf("%s after release: %d, want it served", path, rec.Code)
		}
	}
}

// leaveWorker is a worker whose shutdown is counted, for the claims of Leave and Stop.
func leaveWorker(t *testing.T, joined bool) (*Worker, *atomic.Int32) {
	var shutdowns atomic.Int32
	w := testWorker(fsm.New(), &proposals{}, nil)
	t.Cleanup(w.Executor().Close)
	w.cfg.Joined = func() bool { return joined }
	w.cfg.Shutdown = func() error { shutdowns.Add(1); return nil }
	t.Cleanup(func() {
		if w.Leaving() {
			t.Error("a drain started")
		}
	})
	w.cfg.Alive = func() map[string]bool { return map[string]bool{"me": true} }
	return w, &shutdowns
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

func TestLeaveOfANodeThatNeverJoinedStopsAtOnce(t *testing.T) {
	w, shutdowns := leaveWorker(t, false)
	if err := w.Leave(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if !closed(w.Done()) {
		t.Fatal("Done still open after the leave of a node that never joined")
	}
	if err := w.Leave(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.Stop()
	if n := shutdowns.Load(); n != 1 {
		t.Fatalf("%d shutdowns, want 1: a second leave or a stop acted again", n)
	}
}

func TestStopClaimsTheEndBeforeALeave(t *testing.T) {
	w, shutdowns := leaveWorker(t, true)
	w.Stop()
	if !closed(w.Done()) {
		t.Fatal("Done still open after Stop")
	}
	if err := w.Leave(context.Background(), false); err != nil {
		t.Fatalf("leave after a stop: %v, want nothing done", err)
	}
	if n := shutdowns.Load(); n != 1 {
		t.Fatalf("%d shutdowns, want 1", n)
	}
}

func TestLeaveOfTheLastNodeIsRefusedWithoutForce(t *testing.T) {
	w, shutdowns := leaveWorker(t, true)
	if err := w.Leave(context.Background(), false); !errors.Is(err, ErrLeaveRefused) {
		t.Fatalf("leave of the last node: %v, want ErrLeaveRefused", err)
	}
	if shutdowns.Load() != 0 || w.leaveClaimed() {
		t.Fatal("a refused leave claimed the end of the node")
	}
}

func TestSweepLogsDeletesTheOutputOfForgottenTasks(t *testing.T) {
	logs, err := tasks.OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	for _, id := range []string{"kept", "gone"} {
		if err := logs.Append(id, tasks.LogLine{TS: time.Now(), Stream: "stdout", Line: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	w := testWorker(fsmWith(t, []fsm.Task{{ID: "kept", Type: "echo", State: fsm.Succeeded}}, nil), &proposals{}, nil)
	defer w.Executor().Close()
	w.cfg.Executor.Logs = logs
	w.SweepLogs()
	ids, err := logs.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"kept"}) {
		t.Fatalf("task logs after the sweep: %v, want only the task the FSM still holds", ids)
	}
}

func TestAWaitIsReportedWithItsChildren(t *testing.T) {
	p := &proposals{}
	w := testWorker(fsm.New(), p, nil)
	run := tasks.RunRef{TaskID: "t", Attempt: 1}
	if err := w.Reporter().Finished(context.Background(), run, tasks.OutcomeWaiting, json.RawMessage(`["c1","c2"]`), nil); err != nil {
		t.Fatal(err)
	}
	reps := p.reports()
	if len(reps) != 1 || reps[0].Kind != fsm.ReportWait || !slices.Equal(reps[0].WaitFor, []string{"c1", "c2"}) || reps[0].Result != nil {
		t.Fatalf("reports %+v, want one wait for c1 and c2", reps)
	}
}

func TestAWaitIsSentAgainAsAFailureWhileAnOlderNodeIsUp(t *testing.T) {
	p := &proposals{}
	p.answer = func(c *fsm.Command, n int) (*fsm.Result, error) {
		if n == 1 {
			return nil, fsm.ErrProtocolTooOld
		}
		return &fsm.Result{Items: make([]fsm.ItemResult, len(c.Body.(*fsm.ReportBatch).Items))}, nil
	}
	w := testWorker(fsm.New(), p, nil)
	run := tasks.RunRef{TaskID: "t", Attempt: 1}
	sf := w.Reporter().(tasks.StartFinisher)
	if err := sf.StartedAndFinished(context.Background(), run, tasks.OutcomeWaiting, json.RawMessage(`["c1"]`), nil); err != nil {
		t.Fatal(err)
	}
	reps := p.reports()
	if len(reps) != 4 || reps[1].Kind != fsm.ReportWait {
		t.Fatalf("reports %+v, want started and a wait, then both again", reps)
	}
	if reps[2].Kind != fsm.ReportStarted || reps[3].Kind != fsm.ReportFailed || reps[3].WaitFor != nil ||
		reps[3].Error == nil || reps[3].Error.Type != ErrTypeWaitUnsupported || reps[3].Error.Final {
		t.Fatalf("second try %+v, want started and an ordinary failure of type %s", reps[2:], ErrTypeWaitUnsupported)
	}
}

// A run whose outcome the FSM has applied is left to end: the work loop, woken by the apply while
// the run's report call is still returning, neither revokes the run nor so cancels that call.
func TestWorkLoopLeavesARunWhoseOutcomeIsAppliedToEnd(t *testing.T) {
	ran := make(chan string, 3)
	reg := tasks.NewRegistry()
	if err := reg.Register(tasks.Func(tasks.Definition{Name: "echo", Version: "1"}, func(ctx *tasks.Context, in any) (any, error) {
		ran <- ctx.TaskID
		return in, nil
	})); err != nil {
		t.Fatal(err)
	}
	task := func(id string, state fsm.State) fsm.Task {
		tk := fsm.Task{ID: id, Type: "echo", Version: "1", Input: json.RawMessage(`"hi"`), State: state, MaxAttempts: 3}
		if state == fsm.Assigned {
			tk.Node, tk.BootID, tk.Attempt = "me", "b1", 1
			tk.History = []fsm.HistoryEntry{{Attempt: 1, Node: "me", Event: fsm.EventAssigned}}
		}
		return tk
	}
	f := fsmWith(t, []fsm.Task{task("run", fsm.Assigned), task("next", fsm.Pending), task("next2", fsm.Pending)},
		[]fsm.Node{{Name: "me", BootID: "b1", Capacity: 8, Status: fsm.NodeUp}})
	var (
		mu    sync.Mutex
		index uint64 = 1
	)
	apply := func(c *fsm.Command) *fsm.Result {
		t.Helper()
		c.Now = time.Now()
		b, err := fsm.Encode(c)
		if err != nil {
			t.Error(err)
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		index++
		res, _ := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(*fsm.Result)
		return res
	}
	waitRan := func(id string) {
		t.Helper()
		select {
		case got := <-ran:
			if got != id {
				t.Errorf("ran %s, want %s", got, id)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not run", id)
		}
	}
	type check struct {
		cancelled error
		running   bool
	}
	checked := make(chan check, 1)
	// ran has two readers, the test body (for "run") and propose (for "next" and "next2"): the
	// run can end and be reported before the body has read its name, so propose waits for that.
	runSeen := make(chan struct{})
	var w *Worker
	propose := func(proposeCtx context.Context, c *fsm.Command) (*fsm.Result, error) {
		b, ok := c.Body.(*fsm.ReportBatch)
		if !ok {
			return nil, fmt.Errorf("unexpected %T", c.Body)
		}
		res := apply(c)
		if res == nil || res.Err != nil {
			return nil, fmt.Errorf("apply: %+v", res)
		}
		if !slices.ContainsFunc(b.Items, func(r fsm.Report) bool { return r.TaskID == "run" && r.Kind == fsm.ReportSucceeded }) {
			return res, nil
		}
		// The outcome is applied and the call has not returned: let the work loop pass over the
		// change twice (each pass starts one more task) before answering.
		select {
		case <-runSeen:
		case <-time.After(10 * time.Second):
			t.Error("the test never saw the run start")
		}
		apply(&fsm.Command{Body: &fsm.AssignBatch{Items: []fsm.Assign{{TaskID: "next", Node: "me", BootID: "b1"}}}})
		waitRan("next")
		apply(&fsm.Command{Body: &fsm.AssignBatch{Items: []fsm.Assign{{TaskID: "next2", Node: "me", BootID: "b1"}}}})
		waitRan("next2")
		checked <- check{cancelled: proposeCtx.Err(), running: slices.Contains(w.Executor().Running(), tasks.RunRef{TaskID: "run", Attempt: 1})}
		return res, nil
	}
	w = New(Config{
		Name: "me", BootID: "b1", FSM: f, Logger: quiet(),
		Executor:       tasks.ExecutorConfig{Registry: reg, NodeName: "me", Logger: quiet()},
		ProposeNode:    propose,
		StorageFault:   func() string { return "" },
		StorageChanged: func() <-chan struct{} { return make(chan struct{}) },
	})
	defer w.Executor().Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.WorkLoop(ctx)
	}()
	defer func() { cancel(); <-done }()
	waitRan("run")
	close(runSeen)
	select {
	case c := <-checked:
		if c.cancelled != nil || !c.running {
			t.Errorf("while its applied outcome's report was returning, the run was revoked: report call's context %v, run still running %v", c.cancelled, c.running)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the outcome was never reported")
	}
}
