package internode

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/scheduler"
)

// placeAtSubmit places a submit's tasks at their submit, before it commits, when nothing waits
// that they could overtake, so that a task reaches its executor one serial commit sooner than
// when the scheduler loop places it after the submit applied. It returns the capped assignments
// (fsm.Assign.Capped) it made, none when it places nothing. The loop still places whatever this
// does not: a backlog (the new tasks queue behind it), a delayed task, a task under a rate
// limit, a cluster with a node older than protocol 3. The scheduler loop can place other tasks
// on the same slots meanwhile (and this, the ones the loop just filled), so both cap their
// assignments: the FSM applies one only while its node has a free slot and leaves the task
// pending otherwise; the loop's own copy of an assignment this made meets a task no longer
// pending and changes nothing.
//
// The leader calls it from raftStart before it encodes the submit: the assignments ride in the
// submit's entry (fsm.SubmitBatch.Place) once every up node speaks fsm.PlaceProtocol, and in an
// entry of their own right behind it before (placeBehind). It never waits.
func (c *Channel) placeAtSubmit(cmd *fsm.Command) []fsm.Assign {
	sb, ok := cmd.Body.(*fsm.SubmitBatch)
	if !ok || cmd.Now.IsZero() {
		return nil
	}
	alive := c.cfg.Alive()
	v := c.cfg.FSM.PlacementView(alive, cmd.Now)
	if len(v.Pending) > 0 || len(v.Due) > 0 {
		return nil // tasks wait that free slots serve: the new ones queue behind them
	}
	if v.Pending = c.cfg.FSM.SubmitCandidates(sb.Items, cmd.Now); len(v.Pending) == 0 {
		return nil
	}
	last, _ := c.lastPlaced.Load().(string)
	as := scheduler.Place(v, alive, cmd.Now, last)
	for i := range as {
		as[i].Capped = true
	}
	return as
}

// proposedAtSubmit notes as, assignments placeAtSubmit made, proposed: the next placement at
// submit goes on from the last node they name, and the metric counts them.
func (c *Channel) proposedAtSubmit(as []fsm.Assign) {
	c.lastPlaced.Store(as[len(as)-1].Node)
	c.cfg.Metrics.PlacedAtSubmit(len(as))
}

// placeBehind proposes as, the assignments placeAtSubmit made for the submit raft was just
// handed (at now), in an AssignBatch right behind it: raft writes and replicates both entries
// together (it groups the applies it finds queued). It is how a node older than
// fsm.PlaceProtocol reads them.
func (c *Channel) placeBehind(as []fsm.Assign, now time.Time, timeout time.Duration) {
	b, err := c.cfg.FSM.Emit(&fsm.Command{Now: now, Body: &fsm.AssignBatch{Items: as}})
	if err != nil {
		return // a node older than protocol 3 is up: the scheduler loop places them
	}
	f := c.cfg.Raft.Apply(b, timeout)
	c.proposedAtSubmit(as)
	go func() {
		if err := f.Error(); err != nil {
			c.log.Debug("assignments at submit", "count", len(as), "err", err)
			return
		}
		c.cfg.Announce()
		c.placed(as, now)
	}()
}

// placed records the assignments of as that the FSM applied (at now): a placement span for each
// traced task, a child of its trace context, from the moment it became ready for this attempt to
// its assignment, and a debug line with its trace ID. It reads the FSM only when one of the two
// is wanted.
func (c *Channel) placed(as []fsm.Assign, now time.Time) {
	tr := c.cfg.Tracer
	debug := c.log.Enabled(context.Background(), slog.LevelDebug)
	if tr == nil && !debug {
		return
	}
	for _, a := range as {
		t, ok := c.cfg.FSM.Task(a.TaskID)
		if !ok {
			continue
		}
		// This assignment's history entry (the FSM stamps it with the command's time): none for a
		// capped assignment the FSM did not apply. The task may have started, or ended, since.
		i := slices.IndexFunc(t.History, func(h fsm.HistoryEntry) bool {
			return h.Event == fsm.EventAssigned && h.Node == a.Node && h.At.Equal(now)
		})
		if i < 0 {
			continue
		}
		at := t.History[i]
		var stored tracing.Stored
		if t.Trace != nil {
			stored = tracing.Stored(*t.Trace)
		}
		if debug {
			c.log.Debug("task placed", "task", t.ID, "type", t.Type, "attempt", at.Attempt, "on", a.Node, "trace_id", stored.Hex())
		}
		// It waited since the event before its assignment (a failed attempt's end, so a retry's
		// backoff included; an interruption), or since it became due.
		start := t.ReadyAt()
		if i > 0 && t.History[i-1].At.After(start) {
			start = t.History[i-1].At
		}
		if start.After(at.At) {
			start = at.At
		}
		tracing.PhaseSpan(tr, stored, "task.placement", start, at.At,
			tracing.AttrTaskID.String(t.ID), tracing.AttrTaskType.String(t.Type),
			tracing.AttrNode.String(a.Node), tracing.AttrAttempt.Int(at.Attempt))
	}
}
