package fsm

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/google/btree"
)

// Queues and type limits: a queue's cluster-wide concurrency limit and paused flag, and a task
// type's limit. Limits count assigned and running tasks (store.activeQueue, activeType); a task
// taken back from a node that died is pending again before it runs anywhere else, so it never
// counts twice.
const (
	CmdQueueSet     CommandType = 16 // set a queue's concurrency limit or paused flag
	CmdTypeLimitSet CommandType = 17 // set a task type's cluster-wide concurrency limit
)

func init() {
	register(Spec[QueueSet]{Type: CmdQueueSet, Name: "queue_set", Since: 2, Forwardable: true, Apply: (*FSM).applyQueueSet})
	register(Spec[TypeLimitSet]{Type: CmdTypeLimitSet, Name: "type_limit_set", Since: 2, Forwardable: true, Apply: (*FSM).applyTypeLimitSet})
}

// MaxPriority bounds a task's priority both ways (-MaxPriority..MaxPriority).
const MaxPriority = 1000

// AgeingStep is how long a pending task waits for each point of priority it gains: placement
// orders tasks by EffectivePriority, so a task of priority p that has been ready for 10 s ranks
// with fresh tasks of priority p+1, and none waits forever behind a stream of higher ones.
const AgeingStep = 10 * time.Second

// EffectivePriority is t's priority at now: Priority + floor(time ready / AgeingStep), time ready
// counted from ReadyAt (creation, or RunAt for a delayed task). It only grows with time, and in a
// band of one priority the task ready first ranks highest: the head of each band is enough to find
// the best task of a queue.
func EffectivePriority(t *Task, now time.Time) int64 {
	waited := now.Sub(t.ReadyAt())
	if waited < 0 {
		waited = 0
	}
	return int64(t.Priority) + int64(waited/AgeingStep)
}

// PlacementCompare orders candidates for placement at now: higher effective priority first, then
// ready first, then created first (FIFO). Equal tasks compare 0, so a stable sort keeps their order.
func PlacementCompare(a, b *Task, now time.Time) int {
	if pa, pb := EffectivePriority(a, now), EffectivePriority(b, now); pa != pb {
		if pa > pb {
			return -1
		}
		return 1
	}
	if c := a.ReadyAt().Compare(b.ReadyAt()); c != 0 {
		return c
	}
	switch {
	case a.CreateIndex < b.CreateIndex:
		return -1
	case a.CreateIndex > b.CreateIndex:
		return 1
	}
	return 0
}

// QueueConfig is a queue's settings. The zero value (no limit, running) is every queue's default,
// and is not stored.
type QueueConfig struct {
	Limit  int  `msgpack:"limit,omitempty"` // most tasks assigned or running at once; 0 = no limit
	Paused bool `msgpack:"paused,omitempty"`
}

// QueueSet changes a queue's limit, its paused flag, or both (a nil field is left as it is).
type QueueSet struct {
	Name   string `msgpack:"name"` // "" or DefaultQueue: the default queue
	Limit  *int   `msgpack:"limit,omitempty"`
	Paused *bool  `msgpack:"paused,omitempty"`
}

// TypeLimitSet sets a task type's cluster-wide limit on assigned and running tasks; 0 removes it.
type TypeLimitSet struct {
	Type  string `msgpack:"type"`
	Limit int    `msgpack:"limit,omitempty"`
}

// queueTables are the queue settings and type limits, by queue ("" for the default) and type.
type queueTables struct {
	Queues     map[string]QueueConfig `msgpack:"queues,omitempty"`
	TypeLimits map[string]int         `msgpack:"type_limits,omitempty"`
}

func (q *queueTables) zero() bool { return len(q.Queues) == 0 && len(q.TypeLimits) == 0 }

func (q *queueTables) clone() queueTables {
	c := queueTables{Queues: map[string]QueueConfig{}, TypeLimits: map[string]int{}}
	for k, v := range q.Queues {
		c.Queues[k] = v
	}
	for k, v := range q.TypeLimits {
		c.TypeLimits[k] = v
	}
	return c
}

func queueKey(name string) string {
	if name == DefaultQueue {
		return ""
	}
	return name
}

func (f *FSM) applyQueueSet(index uint64, _ time.Time, p *QueueSet) ([]ItemResult, error) {
	if p.Limit != nil && *p.Limit < 0 {
		return nil, fmt.Errorf("%w: queue limit %d is negative", ErrBadCommand, *p.Limit)
	}
	name := queueKey(p.Name)
	c := f.queues.Queues[name]
	if p.Limit != nil {
		c.Limit = *p.Limit
	}
	if p.Paused != nil {
		c.Paused = *p.Paused
	}
	if f.queues.Queues == nil {
		f.queues.Queues = map[string]QueueConfig{}
	}
	if c == (QueueConfig{}) {
		delete(f.queues.Queues, name)
	} else {
		f.queues.Queues[name] = c
	}
	return nil, nil
}

func (f *FSM) applyTypeLimitSet(_ uint64, _ time.Time, p *TypeLimitSet) ([]ItemResult, error) {
	if p.Type == "" || p.Limit < 0 {
		return nil, fmt.Errorf("%w: a type limit needs a type and a limit >= 0", ErrBadCommand)
	}
	if f.queues.TypeLimits == nil {
		f.queues.TypeLimits = map[string]int{}
	}
	if p.Limit == 0 {
		delete(f.queues.TypeLimits, p.Type)
	} else {
		f.queues.TypeLimits[p.Type] = p.Limit
	}
	return nil, nil
}

// QueueStatus is a queue's settings and task counts.
type QueueStatus struct {
	Name string
	QueueConfig
	Scheduled, Pending, Active int
}

// Queues returns every queue that has settings or tasks (scheduled, pending or active), and the
// default queue always, by name.
func (f *FSM) Queues() []QueueStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.tasks
	names := map[string]bool{"": true}
	for _, m := range []map[string]int{s.pendingQueue, s.scheduledQueue, s.activeQueue} {
		for k := range m {
			names[k] = true
		}
	}
	for k := range f.queues.Queues {
		names[k] = true
	}
	out := make([]QueueStatus, 0, len(names))
	for k := range names {
		name := k
		if name == "" {
			name = DefaultQueue
		}
		out = append(out, QueueStatus{Name: name, QueueConfig: f.queues.Queues[k],
			Scheduled: s.scheduledQueue[k], Pending: s.pendingQueue[k], Active: s.activeQueue[k]})
	}
	slices.SortFunc(out, func(a, b QueueStatus) int { return cmpString(a.Name, b.Name) })
	return out
}

// Queue returns one queue's status (a queue nobody set up has the zero settings).
func (f *FSM) Queue(name string) QueueStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, s := queueKey(name), f.tasks
	if name == "" {
		name = DefaultQueue
	}
	return QueueStatus{Name: name, QueueConfig: f.queues.Queues[k],
		Scheduled: s.scheduledQueue[k], Pending: s.pendingQueue[k], Active: s.activeQueue[k]}
}

// TypeLimitStatus is a type's limit and how many of its tasks are assigned or running.
type TypeLimitStatus struct {
	Type   string
	Limit  int
	Active int
}

// TypeLimits returns the types that have a limit, by name.
func (f *FSM) TypeLimits() []TypeLimitStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]TypeLimitStatus, 0, len(f.queues.TypeLimits))
	for _, typ := range sortedKeys(f.queues.TypeLimits) {
		out = append(out, TypeLimitStatus{Type: typ, Limit: f.queues.TypeLimits[typ], Active: f.tasks.activeType[typ]})
	}
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// maxDueScan bounds how many due scheduled tasks one view hands the leader to promote: a burst of
// them is promoted over a few passes, each pass cheap.
const maxDueScan = 1024

// room is how many more tasks a limit lets start: unlimited is MaxInt.
func room(limit, active int) int {
	if limit <= 0 {
		return math.MaxInt
	}
	return max(limit-active, 0)
}

// placementCandidates fills v.Pending with what a pass can place: per (type, version) that free
// nodes serve, the best k of the heads of every priority band of every queue's tree (k = the
// free slots serving it, capped by the type's and each queue's limit), plus due retries. It reads
// O(trees × bands × k) records, however long the backlog behind the heads. f.mu is held.
func (f *FSM) placementCandidates(v *View, now time.Time, slots func(TypeVersion) int, totalFree int) {
	s := f.tasks
	queueRoom := func(q string) int {
		c := f.queues.Queues[q]
		if c.Paused {
			return 0
		}
		return room(c.Limit, s.activeQueue[q])
	}
	typeRoom := func(typ string) int { return room(f.queues.TypeLimits[typ], s.activeType[typ]) }
	type group struct {
		k    int
		pool []*Task
	}
	groups := map[TypeVersion]*group{}
	groupOf := func(tv TypeVersion) *group {
		g, ok := groups[tv]
		if !ok {
			g = &group{k: min(slots(tv), typeRoom(tv.Type))}
			groups[tv] = g
		}
		return g
	}
	for qk, tr := range s.queue {
		g := groupOf(TypeVersion{qk.Type, qk.Version})
		if c := min(g.k, queueRoom(qk.Queue)); c > 0 {
			g.pool = bandHeads(tr, c, g.pool)
		}
	}
	scanned := 0
	s.retry.Ascend(func(t *Task) bool {
		if t.NotBefore.After(now) || scanned >= totalFree+maxRetryScan {
			return false
		}
		scanned++
		if g := groupOf(TypeVersion{t.Type, t.Version}); g.k > 0 && !t.CancelRequested && queueRoom(t.Queue) > 0 {
			g.pool = append(g.pool, t)
		}
		return true
	})
	order := func(a, b *Task) int { return PlacementCompare(a, b, now) }
	var cands []*Task
	for _, g := range groups {
		if len(g.pool) > g.k {
			slices.SortStableFunc(g.pool, order)
			g.pool = g.pool[:g.k]
		}
		cands = append(cands, g.pool...)
	}
	slices.SortStableFunc(cands, func(a, b *Task) int { return cmpOr(order(a, b), cmpCreate(a, b)) })
	v.Pending = make([]Task, len(cands))
	for i, t := range cands {
		v.Pending[i] = *t
		v.Pending[i].History = nil // placement needs none of it
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// bandHeads appends to out up to c tasks from the head of each priority band of tr (a pending
// tree, by priority then ready time): one seek per band, so a long band costs nothing past c.
func bandHeads(tr *btree.BTreeG[*Task], c int, out []*Task) []*Task {
	var from *Task
	for {
		band, n, found := 0, 0, false
		walk := func(t *Task) bool {
			if !found {
				band, found = t.Priority, true
			}
			if t.Priority != band || n == c {
				return false
			}
			if !t.CancelRequested { // not reachable by commands, but never place one
				out = append(out, t)
				n++
			}
			return true
		}
		if from == nil {
			tr.Ascend(walk)
		} else {
			tr.AscendGreaterOrEqual(from, walk)
		}
		if !found || band <= -MaxPriority-1 {
			return out
		}
		from = &Task{Priority: band - 1} // zero ready time: before every task of that priority
	}
}

// dueScheduled fills v.Due with scheduled tasks whose RunAt has come, and v.NextDue. f.mu is held.
func (f *FSM) dueScheduled(v *View, now time.Time) {
	f.tasks.due.Ascend(func(t *Task) bool {
		if t.RunAt.After(now) || len(v.Due) >= maxDueScan {
			return false
		}
		v.Due = append(v.Due, t.ID)
		return true
	})
	v.NextDue = f.tasks.nextDue(now)
}

// NextDue returns the earliest RunAt of a scheduled task after now, or zero.
func (f *FSM) NextDue(now time.Time) time.Time {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.tasks.nextDue(now)
}
