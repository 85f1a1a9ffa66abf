// Package scheduler owns the leader's decisions: which pending task goes to which node, when a
// failed task may run again, and which finished tasks have outlived their retention. Placement is
// a pure function over an FSM view; Loop turns its decisions into raft commands.
//
// It knows nothing of HTTP or memberlist: liveness arrives as a set of names.
package scheduler

import (
	"math/rand/v2"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// Place decides assignments for the pending tasks of v, oldest first. v.Pending holds only the
// candidates of this pass (fsm.PlacementView: the heads of the queues free nodes serve), so a pass
// costs what it can place, never the backlog. A task goes to the least loaded
// (by running/capacity) node that is up, alive in gossip, not draining, has a free slot and
// offers the task's type and version. Ties go round robin: to the first tied node, in name order,
// after last (the node the previous placement went to; "" starts at the lowest name), so tasks
// submitted one after another spread over idle nodes instead of all landing on the first. Tasks
// that fit nowhere stay pending, and so do tasks whose retry backoff has not elapsed.
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
		if n.Status == fsm.NodeUp && !n.Draining && alive[n.Name] && v.Load[n.Name] < n.Capacity {
			slots = append(slots, &slot{node: n, load: v.Load[n.Name]})
		}
	}
	var out []fsm.Assign
	for i := range v.Pending {
		if len(slots) == 0 {
			break
		}
		t := &v.Pending[i]
		if t.CancelRequested || (t.NotBefore != nil && now.Before(*t.NotBefore)) {
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
		s.load++
		last = s.node.Name
		if s.load >= s.node.Capacity {
			slots = append(slots[:best], slots[best+1:]...)
		}
	}
	return out
}

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

// NextWake returns the earliest retry deadline after now, or zero: the view's NextRetry (read
// from the FSM's retry index) or a candidate's.
func NextWake(v fsm.View, now time.Time) time.Time {
	var next time.Time
	if v.NextRetry.After(now) {
		next = v.NextRetry
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
