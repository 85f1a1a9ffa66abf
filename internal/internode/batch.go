package internode

import (
	"context"
	"fmt"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// The leader coalesces concurrent batchable commands (submits, executor reports: the command
// table says which) into few raft entries: while a few entries are in flight, new proposals queue
// and then go out together as one command per type. An idle leader sends each proposal at once,
// so batching adds no latency; a busy one applies, fsyncs and wakes watchers once per batch
// instead of once per task.
const (
	maxInFlight   = 2
	maxBatchItems = 512
)

type proposal struct {
	ctx  context.Context // the caller's: a proposal whose caller gave up is not applied
	c    *fsm.Command
	done chan proposalResult // buffered: the batcher never blocks on a caller that gave up
}

type proposalResult struct {
	res *fsm.Result
	err error
}

// startFunc hands a command to raft without waiting (raftStart) and returns how to wait for its
// result (raftFinish).
type startFunc func(c *fsm.Command, timeout time.Duration) (wait func() (*fsm.Result, error), err error)

type batcher struct {
	start startFunc
	// timeout bounds an apply for callers without a deadline (Config.ApplyTimeout).
	timeout time.Duration
	queue   chan *proposal
	slots   chan struct{}
}

func newBatcher(start startFunc, timeout time.Duration) *batcher {
	return &batcher{start: start, timeout: timeout, queue: make(chan *proposal, 4096), slots: make(chan struct{}, maxInFlight)}
}

// propose queues a batchable command and waits for its share of the batch's result.
func (b *batcher) propose(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	p := &proposal{ctx: ctx, c: c, done: make(chan proposalResult, 1)}
	select {
	case b.queue <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) run(ctx context.Context) {
	for {
		var first *proposal
		select {
		case <-ctx.Done():
			return
		case first = <-b.queue:
		}
		select {
		case b.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		batch, items := []*proposal{first}, first.c.Len()
	drain:
		for items < maxBatchItems {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
				items += p.c.Len()
			default:
				break drain
			}
		}
		go func() {
			defer func() { <-b.slots }()
			b.applyBatch(batch)
		}()
	}
}

// applyBatch sends one merged command per command type, in the order the types first appear, and
// hands each proposal its items. All of them are handed to raft before any is waited for, so raft
// writes and replicates them as one batch (one fsync on each node) instead of one after another.
// Proposals whose callers already gave up are dropped: nobody waits for them, and a caller that
// retries would apply them twice.
func (b *batcher) applyBatch(batch []*proposal) {
	var order []fsm.CommandType
	groups := map[fsm.CommandType][]*proposal{}
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.done <- proposalResult{err: err}
			continue
		}
		t := p.c.Type()
		if groups[t] == nil {
			order = append(order, t)
		}
		groups[t] = append(groups[t], p)
	}
	waits := make([]func() (*fsm.Result, error), len(order))
	errs := make([]error, len(order))
	for i, t := range order {
		members := groups[t]
		cmds := make([]*fsm.Command, len(members))
		for j, p := range members {
			cmds[j] = p.c
		}
		merged, err := fsm.Merge(time.Now().UTC(), cmds)
		if err == nil {
			waits[i], err = b.start(merged, b.timeoutFor(members))
		}
		errs[i] = err
	}
	for i, t := range order {
		var res *fsm.Result
		err := errs[i]
		if err == nil {
			res, err = waits[i]()
		}
		off := 0
		for _, p := range groups[t] {
			n := p.c.Len()
			r := proposalResult{err: err}
			if res != nil {
				if off+n > len(res.Items) {
					r.err = fmt.Errorf("apply %s: %d results for %d items", t, len(res.Items), off+n)
				} else {
					r.res = &fsm.Result{Index: res.Index, Items: res.Items[off : off+n], Err: res.Err}
					r.err = res.Err
				}
			}
			off += n
			p.done <- r
		}
	}
}

// timeoutFor is how long a merged apply may wait: until the latest of its callers' deadlines, and
// at least the default when one of them set none.
func (b *batcher) timeoutFor(ps []*proposal) time.Duration {
	var longest time.Duration
	for _, p := range ps {
		d := b.timeout
		if dl, ok := p.ctx.Deadline(); ok {
			d = time.Until(dl)
		}
		longest = max(longest, d)
	}
	return longest
}
