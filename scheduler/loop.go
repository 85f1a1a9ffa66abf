package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// Loop runs the leader's scheduling duties until its context ends: placement whenever the FSM
// changes (and at retry deadlines and delayed tasks' due times, when it makes them pending), and
// retention clean-up.
type Loop struct {
	FSM       *fsm.FSM
	Apply     func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	Alive     func() map[string]bool // gossip-alive node names
	Kick      <-chan struct{}        // optional: liveness changed
	Retention time.Duration          // finished tasks older than this are removed; 0 = keep
	// RetainedCap, when set, is a submitter's cap on finished tasks kept (0: none): past it its
	// oldest finished tasks are removed, at each clean-up; Trimmed is told how many.
	RetainedCap func(principal string) int
	Trimmed     func(n int)
	Logger      *slog.Logger
	Now         func() time.Time
}

// Run places tasks until ctx is done.
func (l *Loop) Run(ctx context.Context) {
	now := l.Now
	if now == nil {
		now = time.Now
	}
	gc := time.NewTicker(GCInterval(l.Retention))
	defer gc.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	last := "" // the node the latest assignment went to: Place's round-robin tie-break
	for {
		changed := l.FSM.Changed()
		t, alive := now(), l.Alive()
		v := l.FSM.PlacementView(alive, t)
		// Due delayed tasks become pending in an entry of their own (a protocol 2 one, which must
		// not hold up the assignments if it is refused); the change wakes the next pass, which
		// places them.
		if len(v.Due) > 0 {
			if _, err := l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.AssignBatch{Due: v.Due}}); err != nil {
				if ctx.Err() != nil {
					return
				}
				l.Logger.Warn("make due tasks pending", "count", len(v.Due), "err", err)
				changed = nil
			}
		}
		if as := Place(v, alive, t, last); len(as) > 0 {
			if err := l.assign(ctx, t, as); err != nil {
				if ctx.Err() != nil {
					return
				}
				l.Logger.Warn("apply assignments", "count", len(as), "err", err)
				changed = nil // retry on the timer instead of spinning
			} else {
				last = as[len(as)-1].Node
			}
		}
		wait := 500 * time.Millisecond
		if next := NextWake(v, t); !next.IsZero() && next.Sub(t) < wait {
			wait = next.Sub(t)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-l.Kick:
		case <-timer.C:
		case <-gc.C:
			l.collect(ctx, now())
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// assign proposes as capped (fsm.Assign.Capped): from protocol 3 on the leader also places tasks
// right behind their submit, so the view this pass placed from may miss slots filled since. With a
// node older than that up (the leader then places nothing at submit), uncapped, as it reads them.
func (l *Loop) assign(ctx context.Context, t time.Time, as []fsm.Assign) error {
	for i := range as {
		as[i].Capped = true
	}
	_, err := l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.AssignBatch{Items: as}})
	if errors.Is(err, fsm.ErrProtocolTooOld) {
		for i := range as {
			as[i].Capped = false
		}
		_, err = l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.AssignBatch{Items: as}})
	}
	return err
}

// GCInterval is how often finished tasks past a retention are looked for: a quarter of the
// retention, between 1 s and 1 min.
func GCInterval(retention time.Duration) time.Duration {
	return min(max(retention/4, time.Second), time.Minute)
}

// collect removes finished tasks past retention, then those past their submitter's retained
// cap, in bounded batches. One read of the finish-time index finds them all: O(expired), however
// many tasks are kept.
func (l *Loop) collect(ctx context.Context, t time.Time) {
	if l.Retention > 0 {
		l.remove(ctx, t, l.FSM.Expired(t.Add(-l.Retention), 0), "expired")
	}
	if l.RetainedCap != nil {
		n := l.remove(ctx, t, l.FSM.OverRetained(l.RetainedCap, maxTrimmed), "past their submitter's retained cap")
		if n > 0 && l.Trimmed != nil {
			l.Trimmed(n)
		}
	}
}

// maxTrimmed bounds the tasks one clean-up removes for the retained caps; the next takes the rest.
const maxTrimmed = 20 * removeBatch

// remove drops finished tasks in batches and returns how many it dropped.
func (l *Loop) remove(ctx context.Context, t time.Time, ids []string, why string) int {
	done := 0
	for len(ids) > 0 {
		batch := ids[:min(len(ids), removeBatch)]
		ids = ids[len(batch):]
		if _, err := l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.Remove{IDs: batch}}); err != nil {
			l.Logger.Warn("remove finished tasks", "why", why, "count", len(batch), "err", err)
			return done
		}
		done += len(batch)
		l.Logger.Info("removed finished tasks", "why", why, "count", len(batch))
	}
	return done
}

// removeBatch is how many tasks one remove command drops.
const removeBatch = 1000
