// Package scheduler owns the leader's decisions: which pending task goes to which node, when a
// failed task may run again, and which finished tasks have outlived their retention. Placement is
// a pure function over an FSM view; Loop turns its decisions into raft commands.
//
// It knows nothing of HTTP or memberlist: liveness arrives as a set of names.
package scheduler

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// Place decides assignments for the pending tasks of v. v.Pending holds only the candidates of
// this pass (fsm.PlacementView: the heads of the priority bands of the queues free nodes serve),
// so a pass costs what it can place, never the backlog.
//
// Order: higher effective priority first (fsm.EffectivePriority: the priority plus one per
// fsm.AgeingStep, 10 s, the task has been ready, up to fsm.MaxAgeing), then higher priority, then
// ready first, then created first: FIFO within a priority. Limits: a task of a paused queue stays
// pending, and so does one whose queue, type or concurrency key already has its limit of tasks
// assigned or running (v.ActiveQueue, v.ActiveType, v.ActiveKey plus what this pass placed), and
// one whose rate bucket has no token left (v.RateTokens less what this pass placed). Scheduled
// tasks not yet due, tasks whose retry backoff has not elapsed and tasks that fit nowhere stay
// where they are.
//
// A task goes to the least loaded (by running/capacity) node or worker that is up, alive in
// gossip (a worker: its host is, fsm.Node.Alive), not draining, has a free slot and offers the task's type and version. Ties go round robin: to the
// first tied node, in name order, after last (the node the previous placement went to; "" starts
// at the lowest name), so tasks submitted one after another spread over idle nodes instead of
// all landing on the first.
//
// Place stays pure: the caller remembers the last node (Loop does) and passes it in.
func Place(v fsm.View, alive map[string]bool, now time.Time, last string) []fsm.Assign {
	type slot struct {
		node *fsm.Node
		load int
	}
	var slots []*slot
	for i := range v.Nodes {
		n := &v.Nodes[i]
		if n.Status == fsm.NodeUp && !n.Draining && n.Alive(alive) && v.Load[n.Name] < n.Capacity {
			slots = append(slots, &slot{node: n, load: v.Load[n.Name]})
		}
	}
	if len(slots) == 0 {
		return nil
	}
	order := make([]*fsm.Task, len(v.Pending))
	for i := range v.Pending {
		order[i] = &v.Pending[i]
	}
	slices.SortStableFunc(order, func(a, b *fsm.Task) int { return fsm.PlacementCompare(a, b, now) })
	placedQueue, placedType, placedKey, placedRate := map[string]int{}, map[string]int{}, map[string]int{}, map[fsm.RateBucket]int64{}
	var out []fsm.Assign
	for _, t := range order {
		if len(slots) == 0 {
			break
		}
		if t.CancelRequested || t.State == fsm.Scheduled || (t.NotBefore != nil && now.Before(*t.NotBefore)) ||
			(t.RunAt != nil && now.Before(*t.RunAt)) {
			continue
		}
		q := v.Queues[t.Queue]
		if q.Paused || full(q.Limit, v.ActiveQueue[t.Queue]+placedQueue[t.Queue]) ||
			full(v.TypeLimits[t.Type], v.ActiveType[t.Type]+placedType[t.Type]) ||
			t.ConcurrencyKey != "" && full(t.ConcurrencyLimit, v.ActiveKey[t.ConcurrencyKey]+placedKey[t.ConcurrencyKey]) {
			continue
		}
		rb := fsm.RateBucket{Limit: t.RateLimit, Key: t.RateKey}
		if tokens, ok := v.RateTokens[rb]; ok && placedRate[rb] >= tokens {
			continue
		}
		best := -1
		for j, s := range slots {
			if !s.node.Offers(t.Type, t.Version) {
				continue
			}
			if best < 0 || better(s.load, s.node, slots[best].load, slots[best].node, last) {
				best = j
			}
		}
		if best < 0 {
			continue
		}
		s := slots[best]
		out = append(out, fsm.Assign{TaskID: t.ID, Node: s.node.Name, BootID: s.node.BootID})
		placedQueue[t.Queue]++
		placedType[t.Type]++
		if t.ConcurrencyKey != "" {
			placedKey[t.ConcurrencyKey]++
		}
		if t.RateLimit != "" {
			placedRate[rb]++
		}
		s.load++
		last = s.node.Name
		if s.load >= s.node.Capacity {
			slots = append(slots[:best], slots[best+1:]...)
		}
	}
	return out
}

// full reports whether a limit (0: none) is reached by n tasks.
func full(limit, n int) bool { return limit > 0 && n >= limit }

// better reports whether node a (with load la) is a better choice than node b (with load lb):
// a lower load/capacity ratio, or the same ratio and a before b in the round after last.
func better(la int, a *fsm.Node, lb int, b *fsm.Node, last string) bool {
	// Compare load/capacity without division: a/b < c/d  <=>  a*d < c*b.
	if l, r := la*b.Capacity, lb*a.Capacity; l != r {
		return l < r
	}
	// Names after last come first in the round; those up to and including it wrap around.
	if aWraps, bWraps := a.Name <= last, b.Name <= last; aWraps != bWraps {
		return bWraps
	}
	return a.Name < b.Name
}

// NextWake returns the earliest retry deadline, delayed task's due time or empty rate bucket's
// next token after now, or zero: the view's NextRetry, NextDue (read from the FSM's retry and
// run_at indexes) and NextRate, or a candidate's.
func NextWake(v fsm.View, now time.Time) time.Time {
	var next time.Time
	if v.NextRetry.After(now) {
		next = v.NextRetry
	}
	for _, at := range []time.Time{v.NextDue, v.NextRate} {
		if at.After(now) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	for i := range v.Pending {
		nb := v.Pending[i].NotBefore
		if nb != nil && nb.After(now) && (next.IsZero() || nb.Before(next)) {
			next = *nb
		}
	}
	return next
}

// Backoff is an exponential retry policy with jitter, like Temporal's default.
type Backoff struct {
	Initial time.Duration // delay before the first retry
	Factor  float64       // growth per failure
	Max     time.Duration // cap
	Jitter  float64       // +/- fraction applied to the delay
}

// DefaultBackoff is 1 s, doubling, capped at 100 s, with 20% jitter.
var DefaultBackoff = Backoff{Initial: time.Second, Factor: 2, Max: 100 * time.Second, Jitter: 0.2}

// Delay returns the wait before the retry that follows the given number of failures (>= 1).
// r supplies jitter in [0,1); pass rand.Float64.
func (b Backoff) Delay(failures int, r func() float64) time.Duration {
	d := float64(b.Initial)
	for i := 1; i < failures && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	d = min(d, float64(b.Max))
	if b.Jitter > 0 && r != nil {
		d *= 1 + b.Jitter*(2*r()-1)
	}
	return time.Duration(d)
}

// Jitter is the default random source for Delay.
func Jitter() float64 { return rand.Float64() }
