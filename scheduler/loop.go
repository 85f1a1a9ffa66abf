package scheduler

import (
	"context"
	"log/slog"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// Loop runs the leader's scheduling duties until its context ends: placement whenever the FSM
// changes (and at retry deadlines), and retention clean-up.
type Loop struct {
	FSM       *fsm.FSM
	Apply     func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	Alive     func() map[string]bool // gossip-alive node names
	Kick      <-chan struct{}        // optional: liveness changed
	Retention time.Duration          // finished tasks older than this are removed; 0 = keep
	Logger    *slog.Logger
	Now       func() time.Time
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
		v := l.FSM.SchedulerView()
		t := now()
		if as := Place(v, l.Alive(), t, last); len(as) > 0 {
			if _, err := l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.AssignBatch{Items: as}}); err != nil {
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

// GCInterval is how often finished tasks past a retention are looked for: a quarter of the
// retention, between 1 s and 1 min.
func GCInterval(retention time.Duration) time.Duration {
	return min(max(retention/4, time.Second), time.Minute)
}

// collect removes finished tasks past retention, in bounded batches.
func (l *Loop) collect(ctx context.Context, t time.Time) {
	if l.Retention <= 0 {
		return
	}
	for {
		ids := l.FSM.Expired(t.Add(-l.Retention), 1000)
		if len(ids) == 0 {
			return
		}
		if _, err := l.Apply(ctx, &fsm.Command{Now: t, Body: &fsm.Remove{IDs: ids}}); err != nil {
			l.Logger.Warn("remove expired tasks", "count", len(ids), "err", err)
			return
		}
		l.Logger.Info("removed expired tasks", "count", len(ids))
	}
}
