package fsm

import (
	"cmp"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/google/btree"
)

// The idempotency keys are in the digest, after the nodes, though not in snapshots: a restore
// rebuilds them from the tasks, as it does every index of the store.
func init() {
	registerTable(Table[struct{}]{
		Name: "idempotency",
		Pos:  25,
		Digest: func(f *FSM, put func(any)) {
			put("idempotency")
			for _, key := range sortedKeys(f.tasks.idem) {
				put(key)
				put(f.tasks.idem[key])
			}
		},
	})
}

// store holds the tasks and the indexes every read and the scheduler use. Each index is an
// ordered tree, so a read costs O(log n + what it returns) and not O(all tasks). The indexes over
// every task hold entries (the keys they order by and the record: live while the task can change,
// frozen once it finished, frozen.go); those over tasks that are still to run hold the live
// records themselves.
//
// Records and entries are immutable once stored: a change stores a copy (cow, then replace), so a
// tree cloned for a snapshot (btree.Clone is O(1), copy-on-write) keeps seeing the records as they
// were while Apply goes on. Only the FSM's apply functions write, with f.mu held.
//
// google/btree rather than hashicorp/go-memdb, which the issue suggested: memdb's radix trees cost
// 2,778 bytes of index per record with six indexes (a channel per leaf and node for watches),
// against 129 bytes for a map and five B-trees, measured with 100k records (BENCHMARKS.md); the
// budget is 1 KB per finished task all told. Watches are kept here per key instead (watch.go).
type store struct {
	byID map[string]*entry
	// all orders every task by (CreateIndex, ID): list order, and what a snapshot walks.
	all    *btree.BTreeG[*entry]
	byType map[string]*btree.BTreeG[*entry]
	// byStateTy serves state and type filters together, and a state alone by merging a page from
	// each type's tree (a handful): an index by state alone would cost every record ~20 B more.
	byStateTy map[stateType]*btree.BTreeG[*entry]
	byNode    map[string]*btree.BTreeG[*entry] // tasks that have (or had, when finished) a node
	// byExec holds the tasks an execution spawned (ExecutionID != ID); its root, whose
	// ExecutionID is its own ID, is found by ID. A tree per task would cost ~400 B each.
	byExec map[string]*btree.BTreeG[*entry]
	// queue holds the pending tasks without a retry deadline per (queue, type, version), in a
	// tree per priority band ordered by (ReadyAt, CreateIndex): FIFO within a priority. The
	// scheduler reads the heads of the bands a free node can serve (Min of each tree), so an
	// unplaceable type at the front blocks nothing else, and the backlog behind is never read.
	queue map[QueueKey]bands
	// fair holds the pending tasks with a concurrency key (and no retry deadline) instead of
	// queue: per QueueKey and priority, all of them by key and the keys' first tasks by turn
	// (concurrency.go).
	fair map[QueueKey]map[int]*fairBand
	// activeKey counts the assigned and running tasks per concurrency key.
	activeKey map[string]int
	// due holds the scheduled (delayed) tasks by (RunAt, CreateIndex, ID).
	due *btree.BTreeG[*Task]
	// activeQueue and activeType count the assigned and running tasks per queue name ("" for
	// the default queue) and per type: what queue and type limits are checked against.
	activeQueue map[string]int
	activeType  map[string]int
	// pendingQueue and scheduledQueue count the pending and the scheduled tasks per queue name.
	pendingQueue, scheduledQueue map[string]int
	// retry holds the pending tasks with a retry deadline, by (NotBefore, CreateIndex, ID).
	retry *btree.BTreeG[*Task]
	// finished holds terminal tasks by (FinishedAt, CreateIndex, ID): retention's sweep.
	finished *btree.BTreeG[*entry]
	// active holds assigned and running tasks per node.
	active map[string]map[string]*Task
	idem   map[string]string
	// debounce holds the debounced tasks that still take a later submit's input (debounceOpen),
	// by type, submitter and key (debounce.go).
	debounce map[debounceKey]string
	// counts is how many tasks are in each (state, type): totals and metrics without a scan.
	counts map[stateType]int
	// pendingTV is how many tasks are pending per (type, version) asked for.
	pendingTV map[TypeVersion]int
	// waiting counts the tasks waiting to run (pending or scheduled), waitingBy the same per
	// submitter, and finishedBy the finished tasks per submitter: what admission control checks
	// a submit against (admission.go) and the retained cap trims.
	waiting    int
	waitingBy  map[string]int
	finishedBy map[string]int
	// strs interns the strings many live records repeat (types, versions, nodes, boot IDs,
	// events); names numbers those frozen records repeat.
	strs  map[string]string
	names names
	arena *arena // the frozen records' memory
	buf   []byte // scratch for freezing
	// spare is an index tree that emptied (drop), kept for the next index that needs a new one
	// (put): a task that starts and finishes in one report batch empties its (running, type)
	// tree, and the next task would otherwise build a new one.
	spare *btree.BTreeG[*entry]
}

// entry is one task in the indexes over every task: the keys they order by, and the record,
// live (t) while the task can change or frozen (cold, frozen.go) once it finished. 48 bytes.
type entry struct {
	ci     uint64 // CreateIndex
	finSec int64  // FinishedAt (seconds, nanoseconds), when hasFin
	t      *Task
	cold   string
	finNs  int32
	hasFin bool
}

func newEntry(t *Task) *entry {
	e := &entry{ci: t.CreateIndex, t: t}
	if t.FinishedAt != nil {
		e.hasFin, e.finSec, e.finNs = true, t.FinishedAt.Unix(), int32(t.FinishedAt.Nanosecond())
	}
	return e
}

// keyEntry is an entry that only compares: the place of (createIndex, id) in creation order.
func keyEntry(createIndex uint64, id string) *entry {
	return &entry{ci: createIndex, t: &Task{ID: id, CreateIndex: createIndex}}
}

// id is the task's ID, the caller's to keep; a frozen record's is read without thawing the rest.
func (e *entry) id() string {
	if e.t != nil {
		return e.t.ID
	}
	return strings.Clone(idOf(e.cold))
}

// idRef is the task's ID in the record's own memory: valid only while the entry is stored (or
// pinned by a snapshot), for comparisons and the ID map's key.
func (e *entry) idRef() string {
	if e.t != nil {
		return e.t.ID
	}
	return idOf(e.cold)
}

// finishedBefore reports whether the task has a finish time before t.
func (e *entry) finishedBefore(t time.Time) bool {
	if !e.hasFin {
		return false
	}
	sec := t.Unix()
	return e.finSec < sec || e.finSec == sec && int64(e.finNs) < int64(t.Nanosecond())
}

// TypeVersion names a pending queue: tasks of one type asking for one version ("" = any).
type TypeVersion struct {
	Type    string
	Version string
}

// bands are the pending tasks of one QueueKey, a tree per priority.
type bands map[int]*btree.BTreeG[*Task]

// QueueKey names one pending tree: tasks of one queue ("" = default), type and version, and rate
// bucket (ratelimit.go; empty for tasks that name no limit), so that placement passes over a
// bucket without tokens without reading its tasks.
type QueueKey struct {
	Queue   string
	Type    string
	Version string
	Rate    RateBucket
}

type stateType struct {
	state State
	typ   string
}

const btreeDegree = 32

func byCreate(a, b *Task) bool {
	if a.CreateIndex != b.CreateIndex {
		return a.CreateIndex < b.CreateIndex
	}
	return a.ID < b.ID
}

func entryByCreate(a, b *entry) bool {
	if a.ci != b.ci {
		return a.ci < b.ci
	}
	return a.idRef() < b.idRef()
}

func cmpEntryCreate(a, b *entry) int {
	return cmp.Or(cmp.Compare(a.ci, b.ci), cmp.Compare(a.idRef(), b.idRef()))
}

func byNotBefore(a, b *Task) bool {
	if c := a.NotBefore.Compare(*b.NotBefore); c != 0 {
		return c < 0
	}
	return byCreate(a, b)
}

// byReady orders a priority band: ready first (FIFO), then created first.
func byReady(a, b *Task) bool {
	if c := a.ReadyAt().Compare(b.ReadyAt()); c != 0 {
		return c < 0
	}
	return byCreate(a, b)
}

func byRunAt(a, b *Task) bool {
	if c := a.RunAt.Compare(*b.RunAt); c != 0 {
		return c < 0
	}
	return byCreate(a, b)
}

func byFinish(a, b *entry) bool {
	if c := cmp.Or(cmp.Compare(a.finSec, b.finSec), cmp.Compare(a.finNs, b.finNs)); c != 0 {
		return c < 0
	}
	return entryByCreate(a, b)
}

// freeNodes is the node free list every small tree shares: btree.NewG gives each tree its own,
// 256 bytes before it holds anything.
var (
	freeNodes      = btree.NewFreeListG[*Task](btree.DefaultFreeListSize)
	freeEntryNodes = btree.NewFreeListG[*entry](btree.DefaultFreeListSize)
)

func newTree() *btree.BTreeG[*entry] {
	return btree.NewWithFreeListG(btreeDegree, entryByCreate, freeEntryNodes)
}

func newStore() *store {
	return &store{
		byID:      map[string]*entry{},
		all:       newTree(),
		byType:    map[string]*btree.BTreeG[*entry]{},
		byStateTy: map[stateType]*btree.BTreeG[*entry]{},
		byNode:    map[string]*btree.BTreeG[*entry]{},
		byExec:    map[string]*btree.BTreeG[*entry]{},
		queue:     map[QueueKey]bands{},
		fair:      map[QueueKey]map[int]*fairBand{},
		activeKey: map[string]int{},
		due:       btree.NewG(btreeDegree, byRunAt),
		retry:     btree.NewG(btreeDegree, byNotBefore),
		finished:  btree.NewG(btreeDegree, byFinish),
		active:    map[string]map[string]*Task{},
		idem:      map[string]string{},
		debounce:  map[debounceKey]string{},
		counts:    map[stateType]int{},
		pendingTV: map[TypeVersion]int{},
		strs:      map[string]string{},

		waitingBy: map[string]int{}, finishedBy: map[string]int{},
		arena: newArena(),

		activeQueue: map[string]int{}, activeType: map[string]int{},
		pendingQueue: map[string]int{}, scheduledQueue: map[string]int{},
	}
}

// reserve sizes the ID map for n more records (a restore knows how many it reads), so the map
// is not grown and rehashed step by step; a count beyond maxReserve is left to growth.
func (s *store) reserve(n int) {
	const maxReserve = 1 << 21
	if len(s.byID) > 0 || n <= 0 {
		return
	}
	s.byID = make(map[string]*entry, min(n, maxReserve))
}

// get returns the stored record of a task: the live one, or a frozen one thawed (a fresh copy).
// Either is read-only; a change goes through cow and replace.
func (s *store) get(id string) (*Task, bool) {
	e, ok := s.byID[id]
	if !ok {
		return nil, false
	}
	return s.record(e), true
}

// record is e's task: the live record, or the frozen one thawed.
func (s *store) record(e *entry) *Task {
	return e.record(s.names.list)
}

func (e *entry) record(names []string) *Task {
	if e.t != nil {
		return e.t
	}
	t, err := thaw(e.cold, names)
	if err != nil { // only appendFrozen writes frozen records: a bug, not input
		panic(fmt.Sprintf("fsm: task %q: %v", idOf(e.cold), err))
	}
	return t
}

// copyOf is e's task as a value the caller may keep and change.
func (s *store) copyOf(e *entry) Task {
	if e.t != nil {
		return e.t.clone()
	}
	return *s.record(e)
}

// insert adds a record to every index it belongs in. The record must not change afterwards; a
// finished task's is frozen, and the caller's copy no longer referenced.
func (s *store) insert(t *Task) { s.insertAfter(t, nil) }

// insertAfter is insert of t in place of prev, the live record remove took out for it (nil:
// none, or a frozen one), whose strings are interned already: t's strings that share their
// memory are not looked up again.
func (s *store) insertAfter(t, prev *Task) {
	e := newEntry(t)
	id := t.ID
	if t.State.Terminal() {
		s.buf = appendFrozen(s.buf[:0], t, &s.names)
		e.t, e.cold = nil, s.arena.put(s.buf)
		id = idOf(e.cold) // the map's key shares the frozen record's memory
	} else {
		s.compact(t, prev)
	}
	s.byID[id] = e
	s.all.ReplaceOrInsert(e)
	put(s, s.byType, t.Type, e)
	put(s, s.byStateTy, stateType{t.State, t.Type}, e)
	if t.Node != "" {
		put(s, s.byNode, t.Node, e)
	}
	if t.ExecutionID != t.ID {
		put(s, s.byExec, t.ExecutionID, e)
	}
	switch {
	case t.State == Pending && t.NotBefore != nil:
		s.retry.ReplaceOrInsert(t)
	case inFair(t):
		s.insertFair(t)
	case t.State == Pending:
		k := QueueKey{t.Queue, t.Type, t.Version, RateBucket{t.RateLimit, t.RateKey}}
		b := s.queue[k]
		if b == nil {
			b = bands{}
			s.queue[k] = b
		}
		tr := b[t.Priority]
		if tr == nil {
			tr = btree.NewWithFreeListG(btreeDegree, byReady, freeNodes)
			b[t.Priority] = tr
		}
		tr.ReplaceOrInsert(t)
	case t.State == Scheduled:
		s.due.ReplaceOrInsert(t)
	case t.State.Active():
		s.activeQueue[t.Queue]++
		s.activeType[t.Type]++
		if t.ConcurrencyKey != "" {
			s.activeKey[t.ConcurrencyKey]++
		}
		m := s.active[t.Node]
		if m == nil {
			m = map[string]*Task{}
			s.active[t.Node] = m
		}
		m[t.ID] = t
	case t.State.Terminal() && t.FinishedAt != nil:
		s.finished.ReplaceOrInsert(e)
	}
	if t.IdempotencyKey != "" {
		s.idem[t.IdempotencyKey] = t.ID
	}
	if debounceOpen(t) {
		s.debounce[debounceKey{t.Type, t.SubmittedBy, t.DebounceKey}] = t.ID
	}
	s.counts[stateType{t.State, t.Type}]++
	if t.State == Pending {
		s.pendingTV[TypeVersion{t.Type, t.Version}]++
		s.pendingQueue[t.Queue]++
	}
	if t.State == Scheduled {
		s.scheduledQueue[t.Queue]++
	}
	if t.State == Pending || t.State == Scheduled {
		s.waiting++
		s.waitingBy[t.SubmittedBy]++
	}
	if t.State.Terminal() {
		s.finishedBy[t.SubmittedBy]++
	}
}

// delete removes a record from every index; t must be the stored record (as get returns it).
func (s *store) delete(t *Task) { s.remove(t, nil) }

// remove removes the stored record t from every index but the ID map and the entry trees where
// next, the record insert stores in its place right after (nil: none), keeps t's key: there
// insert's ReplaceOrInsert puts next's entry in t's place, one descent of the tree instead of a
// delete and an insert. Only a live record's entry stays for insert to replace: a frozen one's
// memory is released here, and insert's descent compares with the entries it passes. It reports
// whether t is the live record stored (then compacted: insertAfter may take it as prev).
func (s *store) remove(t, next *Task) (live bool) {
	e := s.byID[t.ID]
	if e == nil {
		return false
	}
	keep := next != nil && e.t != nil && next.ID == t.ID && next.CreateIndex == t.CreateIndex
	if !keep {
		delete(s.byID, t.ID)
		s.all.Delete(e)
	}
	if !keep || next.Type != t.Type {
		dropEntry(s, s.byType, t.Type, e)
	}
	if !keep || next.State != t.State || next.Type != t.Type {
		dropEntry(s, s.byStateTy, stateType{t.State, t.Type}, e)
	}
	if t.Node != "" && (!keep || next.Node != t.Node) {
		dropEntry(s, s.byNode, t.Node, e)
	}
	if t.ExecutionID != t.ID && (!keep || next.ExecutionID != t.ExecutionID) {
		dropEntry(s, s.byExec, t.ExecutionID, e)
	}
	switch {
	case t.State == Pending && t.NotBefore != nil:
		s.retry.Delete(t)
	case inFair(t):
		s.deleteFair(t)
	case t.State == Pending:
		k := QueueKey{t.Queue, t.Type, t.Version, RateBucket{t.RateLimit, t.RateKey}}
		if b := s.queue[k]; b != nil {
			drop(b, t.Priority, t)
			if len(b) == 0 {
				delete(s.queue, k)
			}
		}
	case t.State == Scheduled:
		s.due.Delete(t)
	case t.State.Active():
		decr(s.activeQueue, t.Queue)
		decr(s.activeType, t.Type)
		if t.ConcurrencyKey != "" {
			decr(s.activeKey, t.ConcurrencyKey)
		}
		if m := s.active[t.Node]; m != nil {
			delete(m, t.ID)
			if len(m) == 0 {
				delete(s.active, t.Node)
			}
		}
	case t.State.Terminal() && t.FinishedAt != nil:
		s.finished.Delete(e)
	}
	if t.IdempotencyKey != "" && s.idem[t.IdempotencyKey] == t.ID {
		delete(s.idem, t.IdempotencyKey)
	}
	if k := (debounceKey{t.Type, t.SubmittedBy, t.DebounceKey}); t.DebounceKey != "" && s.debounce[k] == t.ID {
		delete(s.debounce, k)
	}
	k := stateType{t.State, t.Type}
	if s.counts[k]--; s.counts[k] <= 0 {
		delete(s.counts, k)
	}
	if t.State == Pending {
		tv := TypeVersion{t.Type, t.Version}
		if s.pendingTV[tv]--; s.pendingTV[tv] <= 0 {
			delete(s.pendingTV, tv)
		}
		decr(s.pendingQueue, t.Queue)
	}
	if t.State == Scheduled {
		decr(s.scheduledQueue, t.Queue)
	}
	if t.State == Pending || t.State == Scheduled {
		s.waiting--
		decr(s.waitingBy, t.SubmittedBy)
	}
	if t.State.Terminal() {
		decr(s.finishedBy, t.SubmittedBy)
	}
	if e.t == nil { // nothing in the store refers to the frozen record now
		s.arena.release(e.cold)
	}
	return e.t == t
}

func decr[K comparable](m map[K]int, k K) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

// replace stores next in place of old (the same task after a change).
func (s *store) replace(old, next *Task) {
	if s.remove(old, next) {
		s.insertAfter(next, old)
		return
	}
	s.insert(next)
}

// put adds e to m's tree for k, made (or taken from s.spare) when k has none.
func put[K comparable](s *store, m map[K]*btree.BTreeG[*entry], k K, e *entry) {
	tr := m[k]
	if tr == nil {
		if tr = s.spare; tr != nil {
			s.spare = nil
		} else {
			tr = newTree()
		}
		m[k] = tr
	}
	tr.ReplaceOrInsert(e)
}

// dropEntry removes e from m's tree for k, and the tree from m once empty (kept as s.spare). Only
// the FSM reads these trees, under its lock (snapshots clone all alone), so a tree may move from
// one key to another.
func dropEntry[K comparable](s *store, m map[K]*btree.BTreeG[*entry], k K, e *entry) {
	if tr := drop(m, k, e); tr != nil {
		s.spare = tr
	}
}

// drop removes t from m's tree for k, and the tree from m once empty; it returns that emptied
// tree.
func drop[K comparable, T any](m map[K]*btree.BTreeG[T], k K, t T) (emptied *btree.BTreeG[T]) {
	if tr := m[k]; tr != nil {
		tr.Delete(t)
		if tr.Len() == 0 {
			delete(m, k)
			return tr
		}
	}
	return nil
}

// compact shares the memory of strings that many live records repeat (frozen ones number them in
// names instead). It changes no value. prev, when not nil, is a compacted record: t's strings
// that share its memory are interned already, as are the history entries t shares with it (a
// copy, cow, appends to the same array).
func (s *store) compact(t, prev *Task) {
	p := prev
	if p == nil {
		p = &noTask
	}
	t.Type, t.Version = s.internOver(t.Type, p.Type), s.internOver(t.Version, p.Version)
	t.Node, t.BootID = s.internOver(t.Node, p.Node), s.internOver(t.BootID, p.BootID)
	t.Queue, t.RateLimit = s.internOver(t.Queue, p.Queue), s.internOver(t.RateLimit, p.RateLimit)
	t.State = State(s.internOver(string(t.State), string(p.State)))
	if t.ExecutionID == t.ID {
		t.ExecutionID = t.ID
	}
	from := 0
	if prev != nil && len(prev.History) > 0 && len(t.History) >= len(prev.History) && &t.History[0] == &prev.History[0] {
		from = len(prev.History)
	}
	for i := from; i < len(t.History); i++ {
		h := &t.History[i]
		h.Node, h.Event = s.intern(h.Node), s.intern(h.Event)
	}
}

// noTask is compact's prev when there is none. Never written.
var noTask Task

// internOver is intern of v, where prev is an interned string: v is returned as it is when it is
// prev itself (the same memory).
func (s *store) internOver(v, prev string) string {
	if len(v) == len(prev) && unsafe.StringData(v) == unsafe.StringData(prev) {
		return v
	}
	return s.intern(v)
}

func (s *store) intern(v string) string {
	if v == "" {
		return ""
	}
	if w, ok := s.strs[v]; ok {
		return w
	}
	s.strs[v] = v
	return v
}

// cow returns a copy of the stored record t, to change and store in its place (save). The copy
// shares t's history array, spare capacity included, so an append to it may write into that
// array: only past t's length, where neither t nor any older record sharing the array (in a
// snapshot) reads. That is safe because only the stored record is copied, once per change, and
// the copy replaces it: the spare capacity passes to one successor, never to two. Reads hand out
// clones (clone), never the stored array.
func (t *Task) cow() *Task {
	c := *t
	return &c
}

// descend calls fn for tasks of tr before the cursor key (all when after is nil), newest first,
// until fn returns false.
func descend(tr *btree.BTreeG[*entry], after *entry, fn func(*entry) bool) {
	if tr == nil {
		return
	}
	if after == nil {
		tr.Descend(fn)
		return
	}
	tr.DescendLessOrEqual(after, func(e *entry) bool {
		if !entryByCreate(e, after) { // the cursor itself
			return true
		}
		return fn(e)
	})
}

// nextRetry is the earliest retry deadline after now, O(log n).
func (s *store) nextRetry(now time.Time) time.Time {
	var next time.Time
	pivot := now.Add(time.Nanosecond)
	s.retry.AscendGreaterOrEqual(&Task{NotBefore: &pivot}, func(t *Task) bool {
		if t.NotBefore.After(now) {
			next = *t.NotBefore
			return false
		}
		return true
	})
	return next
}

// nextDue is the earliest RunAt of a scheduled task after now, O(log n).
func (s *store) nextDue(now time.Time) time.Time {
	var next time.Time
	pivot := now.Add(time.Nanosecond)
	s.due.AscendGreaterOrEqual(&Task{RunAt: &pivot}, func(t *Task) bool {
		next = *t.RunAt
		return false
	})
	return next
}

func cmpCreate(a, b *Task) int {
	return cmp.Or(cmp.Compare(a.CreateIndex, b.CreateIndex), cmp.Compare(a.ID, b.ID))
}
