package node

import (
	"context"
	"fmt"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// The leader coalesces concurrent submits and executor reports into few raft entries: while a
// few entries are in flight, new proposals queue and then go out together as one batch command.
// An idle leader sends each proposal at once, so batching adds no latency; a busy one applies,
// fsyncs and wakes watchers once per batch instead of once per task.
const (
	maxInFlight   = 2
	maxBatchItems = 512
)

type proposal struct {
	c    *fsm.Command
	done chan proposalResult // buffered: the batcher never blocks on a caller that gave up
}

type proposalResult struct {
	res *fsm.Result
	err error
}

func (p *proposal) items() int { return len(p.c.Submits) + len(p.c.Reports) }

type batcher struct {
	n     *Node
	queue chan *proposal
	slots chan struct{}
}

func newBatcher(n *Node) *batcher {
	return &batcher{n: n, queue: make(chan *proposal, 4096), slots: make(chan struct{}, maxInFlight)}
}

// propose queues a submit or report command and waits for its share of the batch's result.
func (b *batcher) propose(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	p := &proposal{c: c, done: make(chan proposalResult, 1)}
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
		batch, items := []*proposal{first}, first.items()
	drain:
		for items < maxBatchItems {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
				items += p.items()
			default:
				break drain
			}
		}
		go func() {
			defer func() { <-b.slots }()
			b.apply(batch)
		}()
	}
}

// apply sends one merged command per command type and hands each proposal its items.
func (b *batcher) apply(batch []*proposal) {
	for _, typ := range []fsm.CommandType{fsm.CmdSubmit, fsm.CmdReport} {
		merged := &fsm.Command{Type: typ, Now: time.Now().UTC()}
		var members []*proposal
		for _, p := range batch {
			if p.c.Type == typ {
				merged.Submits = append(merged.Submits, p.c.Submits...)
				merged.Reports = append(merged.Reports, p.c.Reports...)
				members = append(members, p)
			}
		}
		if len(members) == 0 {
			continue
		}
		res, err := b.n.raftApply(merged, 10*time.Second)
		off := 0
		for _, p := range members {
			n := p.items()
			r := proposalResult{err: err}
			if res != nil {
				if off+n > len(res.Items) {
					r.err = fmt.Errorf("apply %s: %d results for %d items", typ, len(res.Items), off+n)
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
