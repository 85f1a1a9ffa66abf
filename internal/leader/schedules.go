package leader

import (
	"context"
	"log/slog"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/scheduler"
)

// scheduleRetry is how long the loop waits after a fire it could not apply (no quorum, say)
// before it tries again; a lost leadership stops the loop anyway.
const scheduleRetry = 500 * time.Millisecond

// scheduleLoop fires the ticks of every unpaused schedule while this node leads. It sleeps until
// the earliest next tick, or until the schedules table changes (a put, a fire, a scheduled run
// that ended). Ticks are computed from the spec and the replicated last fired tick, never from
// when the loop woke: a tick that fell during an election is fired late by the new leader (up to
// the catch-up bound), and one the old leader fired is never fired again (the FSM refuses it).
// The FSM (fsm/schedule.go) decides what a fire does, and scheduler.PlanTick which ticks are due;
// this loop only waits for them and proposes.
func (l *Loop) scheduleLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	log := l.cfg.Logger.With("component", "schedules")
	for {
		changed := l.cfg.FSM.SchedulesChanged()
		wait := l.fireDue(ctx, log, time.Now())
		if ctx.Err() != nil {
			return
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// fireDue fires what is due at now, at most one fire per schedule (the FSM change it makes wakes
// the loop for the next), and returns how long to sleep until the next tick.
func (l *Loop) fireDue(ctx context.Context, log *slog.Logger, now time.Time) time.Duration {
	wait := time.Hour
	for _, s := range l.cfg.FSM.Schedules() {
		if s.Paused {
			continue
		}
		if len(s.Buffered) > 0 && !l.cfg.FSM.ScheduleRunning(s.Name) {
			if err := l.fireTick(ctx, &s, s.Buffered[0], true); err != nil {
				log.Warn("start a buffered tick", "schedule", s.Name, "tick", s.Buffered[0], "err", err)
				wait = min(wait, scheduleRetry)
			}
			continue
		}
		p, err := scheduler.PlanTick(&s, now)
		if err != nil { // validated on put: only a spec a newer build wrote could fail here
			log.Warn("schedule cannot be planned", "schedule", s.Name, "err", err)
			continue
		}
		if !p.Due.IsZero() {
			if p.Missed > 0 {
				log.Info("passing over missed ticks beyond the catch-up bound", "schedule", s.Name, "missed", p.Missed, "catch_up", s.CatchUp)
			}
			if err := l.fireTick(ctx, &s, p.Due, false); err != nil {
				log.Warn("fire a tick", "schedule", s.Name, "tick", p.Due, "err", err)
				wait = min(wait, scheduleRetry)
			}
			continue
		}
		if !p.Next.IsZero() {
			wait = min(wait, max(p.Next.Sub(now), 0))
		}
	}
	return wait
}

// fireTick applies one fire: a tick, or a buffered tick. The task is built as a submit would be
// (Config.PrepareFire); a tick whose task cannot be built (its type gone from the cluster) is
// still recorded, with the reason, so the loop moves on.
func (l *Loop) fireTick(ctx context.Context, s *fsm.Schedule, tick time.Time, buffered bool) error {
	fire, err := l.cfg.PrepareFire(s)
	fire.Tick, fire.Buffered = tick, buffered
	if err != nil {
		fire.Error = err.Error()
	}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.ApplyTimeout)
	defer cancel()
	_, err = l.cfg.Apply(cctx, &fsm.Command{Body: &fire})
	return err
}
