package internode

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// appliedCmd is one call of the batcher's apply.
type appliedCmd struct {
	c       *fsm.Command
	timeout time.Duration
}

func TestBatcherSkipsAbandonedProposalsAndWaitsForTheLatestDeadline(t *testing.T) {
	var applied []appliedCmd
	waited := 0
	b := newBatcher(func(c *fsm.Command, timeout time.Duration) (func() (*fsm.Result, error), error) {
		applied = append(applied, appliedCmd{c, timeout})
		res := &fsm.Result{Index: uint64(len(applied))}
		for range c.Len() {
			res.Items = append(res.Items, fsm.ItemResult{ID: fmt.Sprint(len(res.Items))})
		}
		return func() (*fsm.Result, error) {
			if waited++; waited == 1 && len(applied) != 2 {
				t.Errorf("waited for the first command with %d handed to raft, want both", len(applied))
			}
			return res, nil
		}, nil
	}, 3*time.Second)
	prop := func(ctx context.Context, c *fsm.Command) *proposal {
		return &proposal{ctx: ctx, c: c, done: make(chan proposalResult, 1)}
	}
	submitOf := func(id string) *fsm.Command {
		return &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{{ID: id, Type: "echo"}}}}
	}
	reportOf := func(id string) *fsm.Command {
		return &fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: id}}}}
	}
	long, cancelLong := context.WithTimeout(context.Background(), time.Minute)
	defer cancelLong()
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	gone, giveUp := context.WithCancel(context.Background())
	giveUp()
	batch := []*proposal{
		prop(long, submitOf("a")),
		prop(gone, submitOf("b")), // its caller gave up: not applied
		prop(context.Background(), reportOf("r1")),
		prop(short, reportOf("r2")),
		prop(short, submitOf("c")),
	}
	b.applyBatch(batch)

	if len(applied) != 2 {
		t.Fatalf("applied %d commands, want one submit and one report", len(applied))
	}
	sub, rep := applied[0], applied[1]
	if items := sub.c.Body.(*fsm.SubmitBatch).Items; len(items) != 2 || items[0].ID != "a" || items[1].ID != "c" {
		t.Errorf("submit applied %+v, want a and c", items)
	}
	if sub.timeout < 50*time.Second || sub.timeout > time.Minute {
		t.Errorf("submit timeout %s, want the latest caller deadline (~1m)", sub.timeout)
	}
	if rep.c.Len() != 2 || rep.timeout != 3*time.Second {
		t.Errorf("report: %d items, timeout %s; want 2 and the default 3s (a caller without a deadline)", rep.c.Len(), rep.timeout)
	}
	if r := <-batch[1].done; !errors.Is(r.err, context.Canceled) || r.res != nil {
		t.Errorf("abandoned proposal: %+v, want context.Canceled", r)
	}
	for i, want := range map[int]string{0: "0", 4: "1", 2: "0", 3: "1"} {
		r := <-batch[i].done
		if r.err != nil || len(r.res.Items) != 1 || r.res.Items[0].ID != want {
			t.Errorf("proposal %d: %+v, want its own item %s", i, r, want)
		}
	}
}
