package fsm

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/google/btree"
	"github.com/vmihailenco/msgpack/v5"
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
	register(Spec[QueueSet]{Type: CmdQueueSet, Name: "queue_set", Since: 2, Apply: (*FSM).applyQueueSet})
	register(Spec[TypeLimitSet]{Type: CmdTypeLimitSet, Name: "type_limit_set", Since: 2, Apply: (*FSM).applyTypeLimitSet})

	registerTable(Table[queueTables]{
		Name: "queues",
		Pos:  70,
		// Absent unless a queue setting or type limit was ever set: older builds skip it.
		Capture: func(f *FSM) (queueTables, bool) { return f.queues.clone(), !f.queues.zero() },
		Install: func(f *FSM, q *queueTables) {
			f.queues = queueTables{}
			if q != nil {
				f.queues = *q
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if !f.queues.zero() {
				put("queues")
				put(f.queues)
			}
		},
	})
}

// MaxPriority bounds a task's priority both ways (-MaxPriority..MaxPriority).
const MaxPriority = 1000

// AgeingStep is how long a pending task waits for each point of priority it gains: placement
// orders tasks by EffectivePriority, so a task of priority p that has been ready for 10 s ranks
// with fresh tasks of priority p+1, and none waits forever behind a stream of tasks up to
// MaxAgeing points above its own.
const AgeingStep = 10 * time.Second

// MaxAgeing bounds the points ageing adds (reached after 100 s). Unbounded, ageing made priority
// worth only 10 s a point: a backlog older than 100 s outranked every fresh priority-10 task,
// which then waited for the whole backlog to drain. Bounded, a task more than MaxAgeing points
// above a backlog goes before all of it, however old, as Slurm caps its age factor.
const MaxAgeing = 10

// EffectivePriority is t's priority at now: Priority + min(floor(time ready / AgeingStep),
// MaxAgeing), time ready counted from ReadyAt (creation, or RunAt for a delayed task). It only
// grows with time, and in a band of one priority the task ready first ranks highest: the head of
// each band is enough to find the best task of a queue.
func EffectivePriority(t *Task, now time.Time) int64 {
	waited := now.Sub(t.ReadyAt())
	if waited < 0 {
		waited = 0
	}
	return int64(t.Priority) + min(int64(waited/AgeingStep), MaxAgeing)
}

// PlacementCompare orders candidates for placement at now: higher effective priority first, then
// higher priority (a fresh task ahead of an older one that only aged to its rank), then ready
// first, then created first (FIFO). Equal tasks compare 0, so a stable sort keeps their order.
func PlacementCompare(a, b *Task, now time.Time) int {
	if pa, pb := EffectivePriority(a, now), EffectivePriority(b, now); pa != pb {
		if pa > pb {
			return -1
		}
		return 1
	}
	if a.Priority != b.Priority {
		if a.Priority > b.Priority {
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
	// ConcurrencyKey is a key template (ParseKeyTemplate): a task of the queue submitted without
	// a key of its own gets the key it makes from the task's input, with ConcurrencyLimit.
	// Both are set or neither.
	ConcurrencyKey   string `msgpack:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `msgpack:"concurrency_limit,omitempty"`
}

// QueueSet changes a queue's limit, its paused flag, its key template, or several (a nil field
// is left as it is). An empty ConcurrencyKey removes the template (and its limit).
type QueueSet struct {
	Name   string `msgpack:"name"` // "" or DefaultQueue: the default queue
	Limit  *int   `msgpack:"limit,omitempty"`
	Paused *bool  `msgpack:"paused,omitempty"`
	// ConcurrencyKey and ConcurrencyLimit set the key template; they come together. Protocol 8.
	ConcurrencyKey   *string `msgpack:"concurrency_key,omitempty"`
	ConcurrencyLimit *int    `msgpack:"concurrency_limit,omitempty"`
}

// NeedsProtocol implements NeedsProtocol: ConcurrencyProtocol with a key template.
func (p *QueueSet) NeedsProtocol() int {
	if p.ConcurrencyKey != nil || p.ConcurrencyLimit != nil {
		return ConcurrencyProtocol
	}
	return 0
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

// EncodeMsgpack writes the tables as msgpack writes the struct, with each map's keys in order:
// msgpack sorts only maps of strings, bools and interfaces (SetSortMapKeys), and the digest
// must not depend on the order Go walks a map in.
func (q queueTables) EncodeMsgpack(enc *msgpack.Encoder) error {
	fields := 0
	for _, n := range []int{len(q.Queues), len(q.TypeLimits)} {
		if n > 0 {
			fields++
		}
	}
	if err := enc.EncodeMapLen(fields); err != nil {
		return err
	}
	if len(q.Queues) > 0 {
		if err := encodeSorted(enc, "queues", q.Queues); err != nil {
			return err
		}
	}
	if len(q.TypeLimits) > 0 {
		return encodeSorted(enc, "type_limits", q.TypeLimits)
	}
	return nil
}

// encodeSorted writes name and then m, a map keyed by string, in key order.
func encodeSorted[V any](enc *msgpack.Encoder, name string, m map[string]V) error {
	if err := enc.EncodeString(name); err != nil {
		return err
	}
	if err := enc.EncodeMapLen(len(m)); err != nil {
		return err
	}
	for _, k := range sortedKeys(m) {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.Encode(m[k]); err != nil {
			return err
		}
	}
	return nil
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

// admits reports whether t's queue, type and concurrency key let one more task start: the queue
// is not paused and no limit is reached by the tasks assigned or running now.
func (q *queueTables) admits(t *Task, s *store) bool {
	c := q.Queues[t.Queue]
	return !c.Paused && room(c.Limit, s.activeQueue[t.Queue]) > 0 && room(q.TypeLimits[t.Type], s.activeType[t.Type]) > 0 &&
		s.keyRoom(t, 0) > 0
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
	if (p.ConcurrencyKey == nil) != (p.ConcurrencyLimit == nil) {
		return nil, fmt.Errorf("%w: a key template and its limit come together", ErrBadCommand)
	}
	if p.ConcurrencyKey != nil && *p.ConcurrencyKey != "" {
		if err := ParseKeyTemplate(*p.ConcurrencyKey); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if l := *p.ConcurrencyLimit; l < 1 || l > MaxConcurrencyLimit {
			return nil, fmt.Errorf("%w: a concurrency limit is between 1 and %d, got %d", ErrBadCommand, MaxConcurrencyLimit, l)
		}
	}
	name := queueKey(p.Name)
	c := f.queues.Queues[name]
	if p.Limit != nil {
		c.Limit = *p.Limit
	}
	if p.Paused != nil {
		c.Paused = *p.Paused
	}
	if p.ConcurrencyKey != nil {
		c.ConcurrencyKey, c.ConcurrencyLimit = *p.ConcurrencyKey, *p.ConcurrencyLimit
		if c.ConcurrencyKey == "" {
			c.ConcurrencyLimit = 0
		}
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
// nodes serve, the best k tasks by placement order (k = the free slots serving it, capped by the
// type's limit, each queue's share by its own, and each rate bucket's by its tokens), merged from
// the heads of every priority band of every queue's tree and the due retries. As a task's
// effective priority only falls along its band, a band's head is its best: the merge reads one
// head per band and one step per task it takes, O((bands + k) × log n) records however long the
// backlog. The bands of a rate bucket without tokens are not read at all; v.RateTokens holds the
// tokens of the buckets read, and v.NextRate when the first empty one has a token again. f.mu is
// held.
func (f *FSM) placementCandidates(v *View, now time.Time, slots func(TypeVersion) int, totalFree int) {
	s := f.tasks
	queueRoom := func(q string) int {
		c := f.queues.Queues[q]
		if c.Paused {
			return 0
		}
		return room(c.Limit, s.activeQueue[q])
	}
	rates := &rateRoom{f: f, now: now, v: v, taken: map[RateBucket]int64{}}
	typeRoom := func(typ string) int { return room(f.queues.TypeLimits[typ], s.activeType[typ]) }
	// takenKey counts the candidates of each concurrency key over every group: a key's limit is
	// cluster-wide, whatever the queue and type.
	takenKey := map[string]int{}
	hasRoom := func(t *Task) bool { return s.keyRoom(t, takenKey[t.ConcurrencyKey]) > 0 }
	groups := map[TypeVersion]*candGroup{}
	groupOf := func(tv TypeVersion) *candGroup {
		g, ok := groups[tv]
		if !ok {
			g = &candGroup{k: min(slots(tv), typeRoom(tv.Type)), now: now, taken: map[string]int{},
				takenKey: takenKey, hasRoom: hasRoom}
			groups[tv] = g
		}
		return g
	}
	for qk, b := range s.queue {
		g := groupOf(TypeVersion{qk.Type, qk.Version})
		if g.k > 0 && queueRoom(qk.Queue) > 0 && rates.left(qk.Rate) > 0 {
			g.heads = bandHeads(b, now, g.heads)
		}
	}
	for qk, m := range s.fair {
		g := groupOf(TypeVersion{qk.Type, qk.Version})
		if g.k <= 0 || queueRoom(qk.Queue) <= 0 || rates.left(qk.Rate) <= 0 {
			continue
		}
		for _, fb := range m {
			it := &fairIter{fb: fb, hasRoom: hasRoom}
			if t := it.next(); t != nil {
				g.heads = append(g.heads, head{t: t, eff: EffectivePriority(t, now), fi: it})
			}
		}
	}
	scanned := 0
	s.retry.Ascend(func(t *Task) bool {
		if t.NotBefore.After(now) || scanned >= totalFree+maxRetryScan {
			return false
		}
		scanned++
		if g := groupOf(TypeVersion{t.Type, t.Version}); g.k > 0 && !t.CancelRequested && queueRoom(t.Queue) > 0 &&
			rates.left(RateBucket{t.RateLimit, t.RateKey}) > 0 {
			g.heads = append(g.heads, head{t: t, eff: EffectivePriority(t, now)})
		}
		return true
	})
	// The groups take in (type, version) order: they share the keys' room.
	tvs := make([]TypeVersion, 0, len(groups))
	for tv := range groups {
		tvs = append(tvs, tv)
	}
	slices.SortFunc(tvs, func(a, b TypeVersion) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Version, b.Version))
	})
	var cands []*Task
	for _, tv := range tvs {
		cands = groups[tv].take(cands, queueRoom, rates)
	}
	// Placement order, then (CreateIndex, ID): the groups come from map walks, and the view
	// must not depend on their order.
	slices.SortFunc(cands, func(a, b *Task) int { return cmp.Or(PlacementCompare(a, b, now), cmpCreate(a, b)) })
	v.Pending = make([]Task, len(cands))
	for i, t := range cands {
		v.Pending[i] = *t
		v.Pending[i].History = nil // placement needs none of it
	}
}

// rateRoom is what the rate buckets let one placement pass take: each bucket's tokens at now
// (read once, and noted in the view), less what the pass took so far.
type rateRoom struct {
	f     *FSM
	now   time.Time
	v     *View
	taken map[RateBucket]int64
}

// left is how many more tasks bucket b lets the pass take: MaxInt64 for no bucket (or one whose
// limit is gone).
func (r *rateRoom) left(b RateBucket) int64 {
	if b.Limit == "" {
		return math.MaxInt64
	}
	n, ok := r.v.RateTokens[b]
	if !ok {
		var next time.Time
		var exists bool
		n, next, exists = r.f.rates.tokens(b, r.now)
		if !exists {
			return math.MaxInt64
		}
		if r.v.RateTokens == nil {
			r.v.RateTokens = map[RateBucket]int64{}
		}
		r.v.RateTokens[b] = n
		if n == 0 && (r.v.NextRate.IsZero() || next.Before(r.v.NextRate)) {
			r.v.NextRate = next
		}
	}
	return n - r.taken[b]
}

// head is the best remaining task of one band (tr set), of a fair band (fi set) or a due retry
// (neither), with its effective priority computed once.
type head struct {
	t   *Task
	eff int64
	tr  *btree.BTreeG[*Task]
	fi  *fairIter
}

// next is the task after h's in its band, nil at the band's end (or for a retry).
func (h *head) next() *Task {
	if h.fi != nil {
		return h.fi.next()
	}
	return nextInBand(h.tr, h.t)
}

// better reports whether h goes before o in placement order.
func (h *head) better(o *head) bool {
	if h.eff != o.eff {
		return h.eff > o.eff
	}
	if h.t.Priority != o.t.Priority {
		return h.t.Priority > o.t.Priority
	}
	if c := h.t.ReadyAt().Compare(o.t.ReadyAt()); c != 0 {
		return c < 0
	}
	return byCreate(h.t, o.t)
}

// candGroup merges the bands of one (type, version): k is how many it may give, taken how many
// each queue gave so far.
type candGroup struct {
	k     int
	now   time.Time
	heads []head
	taken map[string]int
	// takenKey counts the candidates per concurrency key (shared by every group), hasRoom
	// reports whether a task's key lets one more start.
	takenKey map[string]int
	hasRoom  func(*Task) bool
}

// take appends the group's best k tasks to out, each queue giving no more than its room and each
// rate bucket no more than its tokens.
func (g *candGroup) take(out []*Task, queueRoom func(string) int, rates *rateRoom) []*Task {
	for n := 0; n < g.k && len(g.heads) > 0; {
		best := 0
		for i := 1; i < len(g.heads); i++ {
			if g.heads[i].better(&g.heads[best]) {
				best = i
			}
		}
		h := g.heads[best]
		q := h.t.Queue
		if g.taken[q] >= queueRoom(q) { // this queue is full: none of its bands count any more
			g.heads = slices.DeleteFunc(g.heads, func(o head) bool { return o.t.Queue == q })
			continue
		}
		rb := RateBucket{h.t.RateLimit, h.t.RateKey}
		if rates.left(rb) <= 0 { // this bucket is empty: none of its bands count any more
			g.heads = slices.DeleteFunc(g.heads, func(o head) bool { return RateBucket{o.t.RateLimit, o.t.RateKey} == rb })
			continue
		}
		if h.t.ConcurrencyKey != "" && !g.hasRoom(h.t) { // its key is full: the band's next
			if next := h.next(); next != nil {
				g.heads[best] = head{t: next, eff: EffectivePriority(next, g.now), tr: h.tr, fi: h.fi}
			} else {
				g.heads = slices.Delete(g.heads, best, best+1)
			}
			continue
		}
		out = append(out, h.t)
		g.taken[q]++
		if h.t.ConcurrencyKey != "" {
			g.takenKey[h.t.ConcurrencyKey]++
		}
		if rb.Limit != "" {
			rates.taken[rb]++
		}
		n++
		if next := h.next(); next != nil {
			g.heads[best] = head{t: next, eff: EffectivePriority(next, g.now), tr: h.tr, fi: h.fi}
		} else {
			g.heads = slices.Delete(g.heads, best, best+1)
		}
	}
	return out
}

// bandHeads appends the head of each priority band of b to out: the Min of each band's tree,
// whatever its length.
func bandHeads(b bands, now time.Time, out []head) []head {
	for _, tr := range b {
		t, ok := tr.Min()
		if ok && t.CancelRequested { // not reachable by commands, but never place one
			t = nextInBand(tr, t)
		}
		if ok && t != nil {
			out = append(out, head{t: t, eff: EffectivePriority(t, now), tr: tr})
		}
	}
	return out
}

// nextInBand is the task after t in its band tr, nil at the band's end (or for a retry, tr nil).
func nextInBand(tr *btree.BTreeG[*Task], t *Task) *Task {
	if tr == nil {
		return nil
	}
	var next *Task
	tr.AscendGreaterOrEqual(t, func(o *Task) bool {
		if o == t || o.CancelRequested {
			return true
		}
		next = o
		return false
	})
	return next
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
