package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// fakeLeader stands for ProposeNode: it records each send's reports and answers every item with
// its task ID. The first few sends wait until released, whatever their context says, as a
// forward already on the wire does.
type fakeLeader struct {
	mu      sync.Mutex
	sends   [][]fsm.Report
	ctxs    []context.Context
	gates   []chan struct{}          // send n (from 1) waits for gates[n-1] to close
	fail    func(n int) error        // a whole failure of the n-th send, or nil
	itemErr func(r fsm.Report) error // an item's error, or nil
}

// newFakeLeader returns a fakeLeader whose first block sends wait for release.
func newFakeLeader(block int) *fakeLeader {
	f := &fakeLeader{}
	for range block {
		f.gates = append(f.gates, make(chan struct{}))
	}
	return f
}

// release lets the n-th send answer, or every held one for n = 0.
func (f *fakeLeader) release(n int) {
	for i, g := range f.gates {
		if n == 0 || i == n-1 {
			close(g)
		}
	}
}

func (f *fakeLeader) propose(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	reps := c.Body.(*fsm.ReportBatch).Items
	f.mu.Lock()
	f.sends = append(f.sends, slices.Clone(reps))
	f.ctxs = append(f.ctxs, ctx)
	n := len(f.sends)
	f.mu.Unlock()
	if n <= len(f.gates) {
		<-f.gates[n-1]
	}
	if f.fail != nil {
		if err := f.fail(n); err != nil {
			return nil, err
		}
	}
	res := &fsm.Result{Index: uint64(n), Items: make([]fsm.ItemResult, len(reps))}
	for i, r := range reps {
		res.Items[i].ID = r.TaskID
		if f.itemErr != nil {
			res.Items[i].Err = f.itemErr(r)
		}
	}
	return res, nil
}

// sent is each send's task IDs so far.
func (f *fakeLeader) sent() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]string
	for _, s := range f.sends {
		var ids []string
		for _, r := range s {
			ids = append(ids, r.TaskID)
		}
		out = append(out, ids)
	}
	return out
}

func (f *fakeLeader) sendCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sends)
}

func (b *reportBatcher) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

func started(id string) fsm.Report {
	return fsm.Report{TaskID: id, Attempt: 1, Kind: fsm.ReportStarted}
}

// mustAnswer waits for c's answer and checks it holds one result per item, naming its task.
func mustAnswer(t *testing.T, c *reportCall) {
	t.Helper()
	items, err := c.wait()
	if err != nil {
		t.Fatalf("call for %s: %v", c.items[0].TaskID, err)
	}
	if len(items) != len(c.items) {
		t.Fatalf("call for %s: %d results for %d items", c.items[0].TaskID, len(items), len(c.items))
	}
	for i := range items {
		if items[i].ID != c.items[i].TaskID {
			t.Fatalf("call for %s got the result of %s", c.items[i].TaskID, items[i].ID)
		}
	}
}

func TestReportBatcherSendsAnIdleReportAtOnce(t *testing.T) {
	// The send is held until the counts are read: an answered send would leave no trace in them.
	f := newFakeLeader(1)
	b := newReportBatcher(f.propose, nil)
	c := b.enqueue(context.Background(), []fsm.Report{started("a")})
	b.mu.Lock()
	sending, queued := b.sending, len(b.queue)
	b.mu.Unlock()
	if sending != 1 || queued != 0 {
		t.Fatalf("after one report on an idle batcher: %d sends in flight and %d calls queued, want it sent at once", sending, queued)
	}
	f.release(0)
	mustAnswer(t, c)
	if got := f.sent(); len(got) != 1 || !slices.Equal(got[0], []string{"a"}) {
		t.Fatalf("sends %v, want one with a", got)
	}
}

// fillSends enqueues one report per send slot and waits until every slot holds a send the fake
// leader has not answered: what is enqueued next queues.
func fillSends(t *testing.T, f *fakeLeader, b *reportBatcher) []*reportCall {
	t.Helper()
	var calls []*reportCall
	for i := range maxReportSends {
		calls = append(calls, b.enqueue(context.Background(), []fsm.Report{started(fmt.Sprint("busy", i))}))
	}
	waitFor(t, "every slot busy", 10*time.Second, func() bool { return f.sendCount() == maxReportSends })
	return calls
}

func TestReportBatcherMergesReportsQueuedBehindSendsInFlight(t *testing.T) {
	f := newFakeLeader(maxReportSends)
	b := newReportBatcher(f.propose, nil)
	var calls []*reportCall
	calls = append(calls, fillSends(t, f, b)...)
	var want []string
	for i := range 10 {
		id := fmt.Sprint("t", i)
		want = append(want, id)
		calls = append(calls, b.enqueue(context.Background(), []fsm.Report{started(id)}))
	}
	if n := b.queued(); n != 10 {
		t.Fatalf("%d calls queued while every slot is busy, want 10", n)
	}
	f.release(0)
	for _, c := range calls {
		mustAnswer(t, c)
	}
	got := f.sent()
	if len(got) != maxReportSends+1 || !slices.Equal(got[maxReportSends], want) {
		t.Fatalf("sends %v, want the %d in flight, then one with %v in call order", got, maxReportSends, want)
	}
}

func TestReportBatcherCapsTheItemsOfASend(t *testing.T) {
	f := newFakeLeader(maxReportSends)
	b := newReportBatcher(f.propose, nil)
	var calls []*reportCall
	calls = append(calls, fillSends(t, f, b)...)
	for i := range maxReportItems + 10 {
		calls = append(calls, b.enqueue(context.Background(), []fsm.Report{started(fmt.Sprint("t", i))}))
	}
	big := fsm.Report{TaskID: "big", Attempt: 1, Kind: fsm.ReportSucceeded, Result: []byte(`"` + strings.Repeat("x", maxReportBytes) + `"`)}
	calls = append(calls, b.enqueue(context.Background(), []fsm.Report{big}))
	f.release(0)
	for _, c := range calls {
		mustAnswer(t, c)
	}
	// Two sends go out at once, so the order of their arrival is not fixed.
	var sizes []int
	alone := false
	for _, s := range f.sent()[maxReportSends:] {
		sizes = append(sizes, len(s))
		alone = alone || slices.Equal(s, []string{"big"})
	}
	slices.Sort(sizes)
	if !slices.Equal(sizes, []int{1, 10, maxReportItems}) || !alone {
		t.Fatalf("sends after the first %d of %v items, want %d, 10, and the large report alone",
			maxReportSends, sizes, maxReportItems)
	}
}

func TestReportBatcherGivesEachCallerItsOwnResults(t *testing.T) {
	released := make(chan struct{})
	p := &proposals{answer: func(c *fsm.Command, n int) (*fsm.Result, error) {
		if n == 1 {
			<-released
		}
		items := c.Body.(*fsm.ReportBatch).Items
		res := &fsm.Result{Index: uint64(n), Items: make([]fsm.ItemResult, len(items))}
		for i, r := range items {
			res.Items[i].ID = r.TaskID
			if r.TaskID == "bad" {
				res.Items[i].Err = fsm.ErrStale
			}
		}
		return res, nil
	}}
	w := testWorker(fsm.New(), p, nil)
	w.reports.maxSends = 1
	rep := w.Reporter()
	first := make(chan error, 1)
	go func() { first <- rep.Started(context.Background(), tasks.RunRef{TaskID: "first", Attempt: 1}) }()
	waitFor(t, "the first send", 10*time.Second, func() bool { return len(p.reports()) == 1 })
	ids := []string{"a", "bad", "b"}
	errs := make([]chan error, len(ids))
	for i, id := range ids {
		errs[i] = make(chan error, 1)
		go func() {
			errs[i] <- rep.Finished(context.Background(), tasks.RunRef{TaskID: id, Attempt: 1}, tasks.OutcomeSucceeded, []byte(`1`), nil)
		}()
	}
	waitFor(t, "three calls queued", 10*time.Second, func() bool { return w.reports.queued() == len(ids) })
	close(released)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		err := <-errs[i]
		switch {
		case id == "bad" && (!errors.Is(err, tasks.ErrFenced) || !errors.Is(err, fsm.ErrStale)):
			t.Errorf("the stale report: %v, want tasks.ErrFenced and fsm.ErrStale", err)
		case id != "bad" && err != nil:
			t.Errorf("report of %s beside a stale one: %v, want success", id, err)
		}
	}
	p.mu.Lock()
	n := len(p.cmds)
	p.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d commands, want 2: the first, then the three queued reports together", n)
	}
}

func TestReportBatcherFailureReachesEveryCallerInTheSend(t *testing.T) {
	f := newFakeLeader(maxReportSends)
	lost := errors.New("leadership lost")
	f.fail = func(n int) error {
		if n == maxReportSends+1 {
			return lost
		}
		return nil
	}
	b := newReportBatcher(f.propose, nil)
	var first []*reportCall
	first = append(first, fillSends(t, f, b)...)
	var merged []*reportCall
	for _, id := range []string{"a", "b", "c"} {
		merged = append(merged, b.enqueue(context.Background(), []fsm.Report{started(id)}))
	}
	f.release(0)
	for _, c := range first {
		mustAnswer(t, c)
	}
	for _, c := range merged {
		if _, err := c.wait(); !errors.Is(err, lost) {
			t.Errorf("call for %s in a failed send: %v, want the send's error", c.items[0].TaskID, err)
		}
	}
	if n := f.sendCount(); n != maxReportSends+1 {
		t.Fatalf("%d sends, want the three failed calls in one", n)
	}
}

func TestReportBatcherKeepsATasksReportsInOrder(t *testing.T) {
	f := newFakeLeader(1)
	b := newReportBatcher(f.propose, nil)
	ctx, giveUp := context.WithCancel(context.Background())
	x1 := b.enqueue(ctx, []fsm.Report{started("x")})
	waitFor(t, "x's start on its way", 10*time.Second, func() bool { return f.sendCount() == 1 })
	giveUp()
	if _, err := x1.wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v, want context.Canceled", err)
	}
	// The retry and the next report of x must not overtake the copy still on its way; y's report
	// takes the free slot at once.
	x2 := b.enqueue(context.Background(), []fsm.Report{started("x")})
	x3 := b.enqueue(context.Background(), []fsm.Report{{TaskID: "x", Attempt: 1, Kind: fsm.ReportCheckpoint, Checkpoint: []byte(`1`)}})
	y := b.enqueue(context.Background(), []fsm.Report{started("y")})
	mustAnswer(t, y)
	if got := f.sent(); len(got) != 2 || !slices.Equal(got[1], []string{"y"}) {
		t.Fatalf("sends %v while x's first report is on its way, want y's alone beside it", got)
	}
	f.release(0)
	mustAnswer(t, x2)
	mustAnswer(t, x3)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sends) != 3 || len(f.sends[2]) != 2 || f.sends[2][0].Kind != fsm.ReportStarted || f.sends[2][1].Kind != fsm.ReportCheckpoint {
		t.Fatalf("sends %+v, want x's retry and then its checkpoint together, once the first copy was answered", f.sends)
	}
}

func TestReportBatcherDropsACallWhoseCallerGaveUpBeforeItsSend(t *testing.T) {
	f := newFakeLeader(maxReportSends)
	b := newReportBatcher(f.propose, nil)
	var calls []*reportCall
	calls = append(calls, fillSends(t, f, b)...)
	ctx, giveUp := context.WithCancel(context.Background())
	gone := b.enqueue(ctx, []fsm.Report{started("gone")})
	kept := b.enqueue(context.Background(), []fsm.Report{started("kept")})
	giveUp()
	if _, err := gone.wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v, want context.Canceled", err)
	}
	f.release(0)
	for _, c := range calls {
		mustAnswer(t, c)
	}
	mustAnswer(t, kept)
	for _, s := range f.sent() {
		if slices.Contains(s, "gone") {
			t.Fatalf("sends %v: the report of a caller that gave up before its send went out", f.sent())
		}
	}
}

func TestReportBatcherSendEndsOnlyWhenEveryCallerInItGaveUp(t *testing.T) {
	f := newFakeLeader(maxReportSends + 1)
	b := newReportBatcher(f.propose, nil)
	fillSends(t, f, b)
	ctxA, giveUpA := context.WithCancel(context.Background())
	ctxB, giveUpB := context.WithCancel(context.Background())
	a := b.enqueue(ctxA, []fsm.Report{started("a")})
	c := b.enqueue(ctxB, []fsm.Report{started("b")})
	// Free the slots: the two queued calls go out together, and stay on their way.
	f.release(1)
	f.release(2)
	waitFor(t, "the merged send", 10*time.Second, func() bool { return f.sendCount() == maxReportSends+1 })
	f.mu.Lock()
	sendCtx := f.ctxs[maxReportSends]
	f.mu.Unlock()
	giveUpA()
	if _, err := a.wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v, want context.Canceled", err)
	}
	if sendCtx.Err() != nil {
		t.Fatal("the send ended when one of its two callers gave up")
	}
	giveUpB()
	if _, err := c.wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v, want context.Canceled", err)
	}
	if sendCtx.Err() == nil {
		t.Fatal("the send outlived every caller in it")
	}
	f.release(maxReportSends + 1)
}

func TestFinalErrorOfOneRunDoesNotFailTheReportsMergedWithIt(t *testing.T) {
	old := fsm.Node{Name: "old", Status: fsm.NodeUp, Protocol: 1}
	p := &proposals{}
	w := testWorker(fsmWith(t, nil, []fsm.Node{old}), p, nil)
	// The leader's view matches this node's: a final error would fail the whole command.
	p.answer = func(c *fsm.Command, n int) (*fsm.Result, error) {
		items := c.Body.(*fsm.ReportBatch).Items
		if items[len(items)-1].Error != nil && items[len(items)-1].Error.Final {
			return nil, fsm.ErrProtocolTooOld
		}
		return &fsm.Result{Index: uint64(n), Items: make([]fsm.ItemResult, len(items))}, nil
	}
	sf := w.Reporter().(tasks.StartFinisher)
	run := tasks.RunRef{TaskID: "t", Attempt: 1}
	if err := sf.StartedAndFinished(context.Background(), run, tasks.OutcomeFailed, nil, &tasks.TaskError{Type: "bad", Message: "no", Final: true}); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.reports() {
		if r.Error != nil && r.Error.Final {
			t.Fatalf("reports %+v: a final error was sent while a node too old for it is up", p.reports())
		}
	}
	if reps := p.reports(); len(reps) != 2 || reps[1].Kind != fsm.ReportFailed {
		t.Fatalf("reports %+v, want started and an ordinary failure, sent once", reps)
	}
}
