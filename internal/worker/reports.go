package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// The report batcher sends the executor reports of all this node's runs to the leader, many
// tasks' reports per command: while sends are in flight, new reports queue and then go out
// together as one ReportBatch, so one forward and one raft entry carry them. An idle node sends a
// report at once: batching adds no latency, and no timer holds a report back.
const (
	maxReportSends = 2       // sends in flight at once
	maxReportItems = 512     // items per send, as the leader's batcher caps its entries
	maxReportBytes = 1 << 20 // payload bytes per send; a larger report goes alone
)

// reportBatcher merges concurrent report calls. It guarantees:
//   - each call gets the results of its own items, in order; a failure of the whole send is
//     every call's in it;
//   - a task's reports leave in the order of their calls: a call waits while an earlier one
//     about the same task is queued or in flight, even when that earlier caller gave up, so a
//     retry never overtakes the copy it replaces;
//   - the items of a call whose context ended before its send began are not sent.
//
// A send that failed may still have been applied (its reply lost), and its callers send their
// items again: the FSM fences reports by (node, boot ID, attempt), so a Started or a Checkpoint
// applied twice in a row changes nothing, and an outcome applied twice is stale the second time
// (tasks.ErrFenced: the attempt is settled).
type reportBatcher struct {
	propose func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// check refuses a call's items that cannot be written while some node is too old for
	// them (fsm.ErrProtocolTooOld), before they are merged: they must not fail the other
	// calls' items. Nil checks nothing. A leader whose view of the nodes is newer than this
	// node's may still refuse the merged send; its callers then retry as after any failure.
	check    func(c *fsm.Command) error
	maxSends int

	mu      sync.Mutex
	queue   []*reportCall  // waiting to be sent, in call order
	sending int            // sends in flight
	busy    map[string]int // task ID → its items in sends in flight
}

type reportCall struct {
	b     *reportBatcher
	ctx   context.Context
	items []fsm.Report
	size  int
	done  chan reportAnswer // buffered: the batcher never waits on a caller that gave up
	send  *reportSend       // the send carrying it, once it left the queue; guarded by b.mu
}

// reportSend is one merged send in flight.
type reportSend struct {
	waiting int                // its callers still waiting; guarded by the batcher's mu
	cancel  context.CancelFunc // ends the send once waiting is 0
}

type reportAnswer struct {
	items []fsm.ItemResult
	err   error
}

func newReportBatcher(propose func(context.Context, *fsm.Command) (*fsm.Result, error), check func(*fsm.Command) error) *reportBatcher {
	return &reportBatcher{propose: propose, check: check, maxSends: maxReportSends, busy: map[string]int{}}
}

// send gets reps applied by the leader, merged with other calls' reports, and returns one result
// per report, in order. It returns early with ctx's error when ctx ends; reports already on their
// way may still be applied then, as a forward cancelled in flight may be.
func (b *reportBatcher) send(ctx context.Context, reps []fsm.Report) ([]fsm.ItemResult, error) {
	if len(reps) == 0 {
		return nil, nil
	}
	if b.check != nil {
		if err := b.check(&fsm.Command{Body: &fsm.ReportBatch{Items: reps}}); err != nil {
			return nil, err
		}
	}
	return b.enqueue(ctx, reps).wait()
}

// enqueue queues a call and starts a send if a slot is free: an idle batcher sends at once.
func (b *reportBatcher) enqueue(ctx context.Context, reps []fsm.Report) *reportCall {
	c := &reportCall{b: b, ctx: ctx, items: reps, size: reportsSize(reps), done: make(chan reportAnswer, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	b.dispatchLocked()
	b.mu.Unlock()
	return c
}

// wait returns the call's answer, or its context's error once that ends. A send whose callers
// all gave up is ended before the last one's wait returns.
func (c *reportCall) wait() ([]fsm.ItemResult, error) {
	select {
	case a := <-c.done:
		return a.items, a.err
	case <-c.ctx.Done():
	}
	c.b.mu.Lock()
	if s := c.send; s != nil {
		if s.waiting--; s.waiting == 0 {
			s.cancel()
		}
	}
	c.b.mu.Unlock()
	select {
	case a := <-c.done: // answered meanwhile: the answer, not the give-up
		return a.items, a.err
	default:
		return nil, c.ctx.Err()
	}
}

// dispatchLocked starts sends while a slot is free and a queued call may go.
func (b *reportBatcher) dispatchLocked() {
	for b.sending < b.maxSends && len(b.queue) > 0 {
		batch := b.takeLocked()
		if len(batch) == 0 {
			return
		}
		b.sending++
		for _, c := range batch {
			for i := range c.items {
				b.busy[c.items[i].TaskID]++
			}
		}
		go b.flush(batch)
	}
}

// takeLocked removes from the queue the calls of the next send, in call order, and answers the
// calls whose callers gave up. A call about a task with reports in flight, or behind a held call
// about one of its tasks, stays queued.
func (b *reportBatcher) takeLocked() []*reportCall {
	var (
		batch        []*reportCall
		rest         = b.queue[:0] // compacted in place: it never gets ahead of the loop
		held         map[string]bool
		items, bytes int
		full         bool
	)
	for _, c := range b.queue {
		if err := c.ctx.Err(); err != nil {
			c.done <- reportAnswer{err: err}
			continue
		}
		if full {
			rest = append(rest, c)
			continue
		}
		if b.mustWait(c, held) {
			if held == nil {
				held = map[string]bool{}
			}
			for i := range c.items {
				held[c.items[i].TaskID] = true
			}
			rest = append(rest, c)
			continue
		}
		if len(batch) > 0 && (items+len(c.items) > maxReportItems || bytes+c.size > maxReportBytes) {
			full = true
			rest = append(rest, c)
			continue
		}
		batch = append(batch, c)
		items += len(c.items)
		bytes += c.size
	}
	clear(b.queue[len(rest):]) // no reference kept to answered or taken calls
	b.queue = rest
	return batch
}

func (b *reportBatcher) mustWait(c *reportCall, held map[string]bool) bool {
	for i := range c.items {
		id := c.items[i].TaskID
		if b.busy[id] > 0 || held[id] {
			return true
		}
	}
	return false
}

// flush sends one batch as one command and hands each call its items' results.
func (b *reportBatcher) flush(batch []*reportCall) {
	defer func() {
		b.mu.Lock()
		for _, c := range batch {
			for i := range c.items {
				id := c.items[i].TaskID
				if b.busy[id]--; b.busy[id] <= 0 {
					delete(b.busy, id)
				}
			}
		}
		b.sending--
		b.dispatchLocked()
		b.mu.Unlock()
	}()
	// A caller that gives up from here on ends the send if it was the last one waiting (wait);
	// one that gave up before is dropped.
	ctx, cancel := sendContext(batch)
	s := &reportSend{cancel: cancel}
	live := batch[:0:0]
	n := 0
	b.mu.Lock()
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.done <- reportAnswer{err: err}
			continue
		}
		c.send = s
		live = append(live, c)
		n += len(c.items)
	}
	s.waiting = len(live)
	b.mu.Unlock()
	if len(live) == 0 {
		cancel()
		return
	}
	reps := make([]fsm.Report, 0, n)
	for _, c := range live {
		reps = append(reps, c.items...)
	}
	res, err := b.propose(ctx, &fsm.Command{Body: &fsm.ReportBatch{Items: reps}})
	cancel()
	switch {
	case err != nil:
	case res == nil:
		err = fmt.Errorf("report: no result")
	case len(res.Items) != n:
		err = fmt.Errorf("report: %d results for %d reports", len(res.Items), n)
	}
	off := 0
	for _, c := range live {
		a := reportAnswer{err: err}
		if err == nil {
			a.items = res.Items[off : off+len(c.items) : off+len(c.items)]
		}
		off += len(c.items)
		c.done <- a
	}
}

// sendContext is the context of a merged send: it has the latest of its callers' deadlines (none
// when one of them has none).
func sendContext(calls []*reportCall) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range calls {
		dl, ok := c.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.Background())
		}
		if dl.After(latest) {
			latest = dl
		}
	}
	return context.WithDeadline(context.Background(), latest)
}

// reportsSize is about how many bytes reps take in a command.
func reportsSize(reps []fsm.Report) int {
	n := 0
	for i := range reps {
		r := &reps[i]
		n += 64 + len(r.TaskID) + len(r.Node) + len(r.BootID) + len(r.Result) + len(r.Checkpoint)
		if r.Error != nil {
			n += len(r.Error.Type) + len(r.Error.Message)
		}
	}
	return n
}
