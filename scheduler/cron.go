package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // schedules name IANA zones: a node without /usr/share/zoneinfo must read them too

	"github.com/robfig/cron/v3"

	"github.com/taskworker/taskworker/fsm"
)

// Tick computation for periodic schedules: pure functions of (schedule, now), so the leader's
// loop only sleeps, fires and repeats, and a new leader computes the same ticks from the
// replicated last fired tick.
//
// robfig/cron/v3 parses the specs (five fields, or six with seconds first, and descriptors such
// as @hourly and @every 30s) and computes calendar ticks with time zones and DST: a cron
// calendar is easy to get subtly wrong by hand and the library is small, stable and
// dependency-free. Its scheduler is not used: ticks are fired through raft, not by a local timer.

// ErrBadSpec is a cron spec or time zone that does not parse.
var ErrBadSpec = errors.New("invalid cron spec")

var specParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSpec parses a cron spec read in the IANA zone tz. The zone is given either as tz or as a
// CRON_TZ= (or TZ=) prefix of spec, not both; with neither the spec is read in UTC, never in the
// leader's local zone (another leader could be in another one).
func ParseSpec(spec, tz string) (cron.Schedule, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("%w: empty", ErrBadSpec)
	}
	prefixed := strings.HasPrefix(spec, "CRON_TZ=") || strings.HasPrefix(spec, "TZ=")
	switch {
	case prefixed && tz != "":
		return nil, fmt.Errorf("%w: %q names a zone and the time zone field does too: give it once", ErrBadSpec, spec)
	case prefixed:
		zone, _, _ := strings.Cut(spec, " ")
		_, tz, _ = strings.Cut(zone, "=")
		if err := checkZone(tz); err != nil {
			return nil, err
		}
	default:
		if tz == "" {
			tz = "UTC"
		}
		if err := checkZone(tz); err != nil {
			return nil, err
		}
		spec = "CRON_TZ=" + tz + " " + spec
	}
	s, err := specParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSpec, err)
	}
	return s, nil
}

func checkZone(tz string) error {
	if tz == "Local" {
		return fmt.Errorf("%w: time zone Local depends on the leader's machine; name an IANA zone", ErrBadSpec)
	}
	if _, err := time.LoadLocation(tz); err != nil {
		return fmt.Errorf("%w: time zone %q: %v", ErrBadSpec, tz, err)
	}
	return nil
}

// TickPlan is what a schedule should do at a moment.
type TickPlan struct {
	// Due is the tick to fire now, zero when none is due. When more than CatchUp ticks were
	// missed it is the oldest of the newest CatchUp of them: the older ones are passed over.
	Due time.Time
	// Missed is how many due ticks the catch-up bound passes over.
	Missed int
	// Next is the first tick after now (after Due's chain when Due is set), zero when the
	// schedule has none left (its end passed).
	Next time.Time
}

// PlanTick computes the tick a schedule should fire at now. Ticks come after the last fired one
// (after its creation before the first), within [Start, End]; only unpaused schedules fire, but
// the plan does not look at Paused.
func PlanTick(s *fsm.Schedule, now time.Time) (TickPlan, error) {
	sched, err := ParseSpec(s.Spec, s.TimeZone)
	if err != nil {
		return TickPlan{}, err
	}
	first := firstTick(sched, s)
	limit := now
	if s.End != nil && s.End.Before(limit) {
		limit = *s.End
	}
	due, total := newestTicks(sched, first, limit, max(s.CatchUp, 1))
	p := TickPlan{}
	if len(due) > 0 {
		p.Due, p.Missed = due[0], total-len(due)
	}
	p.Next = tickAfter(sched, first, now)
	if !p.Next.IsZero() && s.End != nil && p.Next.After(*s.End) {
		p.Next = time.Time{}
	}
	return p, nil
}

// NextTicks returns up to n ticks the schedule will fire after now (none past its end), for
// showing: a paused schedule's are those it would fire once resumed.
func NextTicks(s *fsm.Schedule, now time.Time, n int) ([]time.Time, error) {
	sched, err := ParseSpec(s.Spec, s.TimeZone)
	if err != nil {
		return nil, err
	}
	var out []time.Time
	t := tickAfter(sched, firstTick(sched, s), now)
	for len(out) < n && !t.IsZero() && (s.End == nil || !t.After(*s.End)) {
		out = append(out, t)
		t = sched.Next(t)
	}
	return out, nil
}

// firstTick is the first tick after the last fired one (or the creation), at or after Start.
func firstTick(sched cron.Schedule, s *fsm.Schedule) time.Time {
	base := s.LastFired
	if base.IsZero() {
		base = s.CreatedAt
	}
	if s.Start != nil && base.Before(*s.Start) {
		if _, every := sched.(cron.ConstantDelaySchedule); every {
			// @every ticks count from their origin: the first is the start itself (its second).
			return s.Start.Truncate(time.Second).Add(ceilSecond(*s.Start))
		}
		return sched.Next(s.Start.Add(-time.Nanosecond))
	}
	return sched.Next(base)
}

func ceilSecond(t time.Time) time.Duration {
	if t.Equal(t.Truncate(time.Second)) {
		return 0
	}
	return time.Second
}

// tickAfter is the first tick of the chain starting at first that comes after now.
func tickAfter(sched cron.Schedule, first, now time.Time) time.Time {
	if first.IsZero() || first.After(now) {
		return first
	}
	if every, ok := sched.(cron.ConstantDelaySchedule); ok {
		k := now.Sub(first)/every.Delay + 1
		return first.Add(k * every.Delay)
	}
	return sched.Next(now)
}

// newestTicks returns the newest n ticks of the chain starting at first that are at or before
// limit, oldest first, and how many there are in all. It costs what the newest ticks cost, not
// the length of an outage: @every chains are arithmetic, and calendar ticks are absolute, so
// they are searched in a window before limit that grows until it holds n of them.
func newestTicks(sched cron.Schedule, first, limit time.Time, n int) ([]time.Time, int) {
	if first.IsZero() || first.After(limit) {
		return nil, 0
	}
	if every, ok := sched.(cron.ConstantDelaySchedule); ok {
		total := int(limit.Sub(first)/every.Delay) + 1
		var out []time.Time
		for i := max(0, total-n); i < total; i++ {
			out = append(out, first.Add(time.Duration(i)*every.Delay))
		}
		return out, total
	}
	for window := time.Hour; ; window *= 4 {
		from := limit.Add(-window)
		whole := !from.After(first)
		var ticks []time.Time
		t := first
		if !whole {
			t = sched.Next(from)
		}
		for ; !t.IsZero() && !t.After(limit); t = sched.Next(t) {
			ticks = append(ticks, t)
			if len(ticks) > n {
				ticks = ticks[1:]
			}
		}
		if whole || len(ticks) >= n {
			total := len(ticks)
			if !whole {
				total = countTicks(sched, first, from) + countedIn(sched, from, limit)
			}
			return ticks, total
		}
	}
}

// countTicks counts the ticks in [first, before], up to a bound: Missed is for logs, and an
// outage of years must not cost a walk of millions of ticks.
func countTicks(sched cron.Schedule, first, before time.Time) int {
	const bound = 100_000
	c := 0
	for t := first; !t.IsZero() && !t.After(before) && c < bound; t = sched.Next(t) {
		c++
	}
	return c
}

// countedIn counts the ticks in (from, limit].
func countedIn(sched cron.Schedule, from, limit time.Time) int {
	c := 0
	for t := sched.Next(from); !t.IsZero() && !t.After(limit); t = sched.Next(t) {
		c++
	}
	return c
}

// MinInterval is the shortest time between two of the first n ticks of a spec after from: how
// often a schedule fires at its busiest, which a principal's quota bounds. A spec with fewer than
// two ticks ahead gives 0 and no error.
func MinInterval(spec, tz string, from time.Time, n int) (time.Duration, error) {
	sched, err := ParseSpec(spec, tz)
	if err != nil {
		return 0, err
	}
	var least time.Duration
	prev := sched.Next(from)
	for i := 1; i < n && !prev.IsZero(); i++ {
		next := sched.Next(prev)
		if next.IsZero() {
			break
		}
		if d := next.Sub(prev); least == 0 || d < least {
			least = d
		}
		prev = next
	}
	return least, nil
}
