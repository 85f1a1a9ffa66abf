package internode

import (
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/scheduler"
)

// placeAtSubmit proposes the assignments of a submit's tasks right behind the submit itself,
// before it commits, when nothing waits that they could overtake: raft writes and replicates
// both entries together (it groups the applies it finds queued), so a task reaches its executor
// one serial commit sooner than when the scheduler loop places it after the submit applied. The
// loop still places whatever this does not: a backlog (the new tasks queue behind it), a delayed
// task, a cluster with a node older than protocol 3. The scheduler loop can place other tasks on
// the same slots meanwhile (and this, the ones the loop just filled), so both cap their
// assignments (fsm.Assign.Capped): the FSM applies one only while its node has a free slot and
// leaves the task pending otherwise; the loop's own copy of an assignment this made meets a task
// no longer pending and changes nothing.
//
// The leader calls it from raftApply with the submit's entry queued; it never waits.
func (c *Channel) placeAtSubmit(cmd *fsm.Command, timeout time.Duration) {
	sb, ok := cmd.Body.(*fsm.SubmitBatch)
	if !ok || cmd.Now.IsZero() {
		return
	}
	alive := c.cfg.Alive()
	v := c.cfg.FSM.PlacementView(alive, cmd.Now)
	if len(v.Pending) > 0 || len(v.Due) > 0 {
		return // tasks wait that free slots serve: the new ones queue behind them
	}
	if v.Pending = c.cfg.FSM.SubmitCandidates(sb.Items, cmd.Now); len(v.Pending) == 0 {
		return
	}
	last, _ := c.lastPlaced.Load().(string)
	as := scheduler.Place(v, alive, cmd.Now, last)
	if len(as) == 0 {
		return
	}
	for i := range as {
		as[i].Capped = true
	}
	b, err := c.cfg.FSM.Emit(&fsm.Command{Now: cmd.Now, Body: &fsm.AssignBatch{Items: as}})
	if err != nil {
		return // a node older than protocol 3 is up: the scheduler loop places them
	}
	c.lastPlaced.Store(as[len(as)-1].Node)
	f := c.cfg.Raft.Apply(b, timeout)
	c.cfg.Metrics.PlacedAtSubmit(len(as))
	go func() {
		if err := f.Error(); err != nil {
			c.log.Debug("assignments at submit", "count", len(as), "err", err)
			return
		}
		c.cfg.Announce()
	}()
}
