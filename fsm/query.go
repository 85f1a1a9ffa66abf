package fsm

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/btree"
)

// Index is the raft index of the last applied command.
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.index
}

// Changed returns a channel closed by the next Apply or Restore. Read state after receiving
// from it and call again to wait for the next change.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Task returns a copy of one task.
func (f *FSM) Task(id string) (Task, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.tasks.byID[id]
	if !ok {
		return Task{}, false
	}
	return f.tasks.copyOf(e), true
}

// TaskWatch returns a copy of one task and a channel closed on the next change of that task (or
// of the whole state, by a restore), read atomically so no change between the two is missed. For
// an ID the FSM does not hold, the channel is Changed's: a watch per unknown ID would stay
// until that ID is created, which for a mistyped one is never.
func (f *FSM) TaskWatch(id string) (Task, bool, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.tasks.byID[id]
	if !ok {
		return Task{}, false, f.changed
	}
	return f.tasks.copyOf(e), true, f.watches.get(watchKey{watchTask, id})
}

// ErrBadCursor is a list cursor this FSM did not make.
var ErrBadCursor = errors.New("bad list cursor")

// Filter selects tasks for List. Empty fields match everything.
type Filter struct {
	State       State
	Type        string
	Node        string
	ExecutionID string
	After       string // return tasks older than this ID (paging, newest first)
	// Next is the cursor a previous page returned (Page.Next): the page after it.
	Next  string
	Limit int // 0 = no limit
	// Visible, when set, keeps only tasks of the types it accepts (what an ACL caller may read);
	// Limit counts visible tasks, so a page is full whenever enough of them exist.
	Visible func(taskType string) bool
	// Watch asks ListPage for Page.Watch.
	Watch bool
	// SubmittedBy, Since and Until filter on who submitted a task and when it was created. No
	// index serves them: a page walks the index of the other filters, skipping what they
	// reject (a walk that stops once tasks are older than Since, less a margin for clock skew
	// between leaders), and Page.Total is -1 (unknown) when any is set.
	SubmittedBy  string
	Since, Until time.Time
	// Queue keeps the tasks of one queue (DefaultQueue for those that name none); unindexed, as
	// SubmittedBy.
	Queue string
}

// sinceSkew is how far creation times may run backwards along the creation order: a new leader's
// clock may lag the old one's. A walk newest-first stops only past Since minus this.
const sinceSkew = time.Minute

func (q *Filter) match(t *Task) bool {
	return q.matchKeys(t.Type, t.State, t.Node) &&
		(q.ExecutionID == "" || t.ExecutionID == q.ExecutionID) &&
		(q.SubmittedBy == "" || t.SubmittedBy == q.SubmittedBy) &&
		(q.Queue == "" || t.QueueName() == q.Queue) &&
		(q.Since.IsZero() || !t.CreatedAt.Before(q.Since)) &&
		(q.Until.IsZero() || t.CreatedAt.Before(q.Until))
}

// matchKeys is the part of match a frozen record's peek can answer: type, state, node, visibility.
func (q *Filter) matchKeys(typ string, state State, node string) bool {
	return (q.State == "" || state == q.State) && (q.Type == "" || typ == q.Type) &&
		(q.Node == "" || node == q.Node) && (q.Visible == nil || q.Visible(typ))
}

// rejects reports whether e is a frozen record q's type, state, node or visibility filters
// refuse: read without thawing it, so a walk past many such records stays cheap.
func (q *Filter) rejects(e *entry, names []string) bool {
	if e.t != nil || !q.Since.IsZero() { // a walk with Since must read each creation time
		return false
	}
	typ, state, node, ok := peek(e.cold, names)
	return ok && !q.matchKeys(typ, state, node)
}

// unindexed reports whether q has filters no index counts (Page.Total is then unknown).
func (q *Filter) unindexed() bool {
	return q.SubmittedBy != "" || q.Queue != "" || !q.Since.IsZero() || !q.Until.IsZero()
}

// past reports whether a newest-first walk has gone past every task q's Since can match.
func (q *Filter) past(t *Task) bool {
	return !q.Since.IsZero() && t.CreatedAt.Before(q.Since.Add(-sinceSkew))
}

// Page is one page of a list.
type Page struct {
	Tasks []Task
	// Next is the opaque cursor of the following page; empty on the last one.
	Next string
	// Total is how many tasks match the filter (all pages; After, Next and Limit aside).
	Total int
	// Watch, when the filter asked for it, is closed on the next change to a task the query's
	// index covers, for blocking lists.
	Watch <-chan struct{}
}

// List returns matching tasks, newest first. A bad cursor lists nothing; ListPage reports it.
func (f *FSM) List(q Filter) []Task {
	p, _ := f.ListPage(q)
	return p.Tasks
}

// ListPage returns one page of matching tasks, newest first, from the index that fits the filter
// best: it costs O(log n + page), plus the tasks it skips for filters beyond the index's own
// (Visible, or a state with a node or execution).
func (f *FSM) ListPage(q Filter) (Page, error) {
	var from *entry
	if q.Next != "" {
		c, err := decodeCursor(q.Next)
		if err != nil {
			return Page{}, err
		}
		from = c
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	tree, key := f.listIndex(q)
	p := Page{Total: -1}
	if !q.unindexed() {
		p.Total = f.total(q)
	}
	if q.Watch {
		p.Watch = f.changed // for a type, node or execution no task has yet: no watch left behind
		if tree != nil || key.kind == watchAll || key.kind == watchState || f.execRoot(q.ExecutionID) != nil {
			p.Watch = f.watches.get(key)
		}
	}
	skip := func(*Task) bool { return false }
	if q.After != "" && from == nil {
		if e, ok := f.tasks.byID[q.After]; ok {
			from = e
		} else { // gone: older means a lower ID (IDs sort by time)
			skip = func(t *Task) bool { return t.ID >= q.After }
		}
	}
	// wanted reads e's record (thawing a frozen one) and reports whether the page takes it and
	// whether the walk goes on.
	wanted := func(e *entry) (t *Task, take, more bool) {
		if q.rejects(e, f.tasks.names.list) {
			return nil, false, true
		}
		t = f.tasks.record(e)
		if q.past(t) {
			return t, false, false
		}
		return t, !skip(t) && q.match(t), true
	}
	emit := func(e *entry, t *Task) bool {
		if q.Limit > 0 && len(p.Tasks) == q.Limit {
			last := &p.Tasks[len(p.Tasks)-1]
			p.Next = encodeCursor(last.CreateIndex, last.ID)
			return false
		}
		if e.t != nil {
			p.Tasks = append(p.Tasks, t.clone())
		} else {
			p.Tasks = append(p.Tasks, *t) // thawed: already a copy of its own
		}
		return true
	}
	if q.State != "" && q.Type == "" && q.Node == "" && q.ExecutionID == "" {
		// A page from each type's tree of that state, merged: O(types × page).
		type found struct {
			e *entry
			t *Task
		}
		var got []found
		for k, tr := range f.tasks.byStateTy {
			if k.state != q.State {
				continue
			}
			n := 0
			descend(tr, from, func(e *entry) bool {
				t, take, more := wanted(e)
				if take {
					got = append(got, found{e, t})
					n++
				}
				return more && (q.Limit == 0 || n <= q.Limit)
			})
		}
		slices.SortFunc(got, func(a, b found) int { return cmpEntryCreate(b.e, a.e) })
		for _, g := range got {
			if !emit(g.e, g.t) {
				break
			}
		}
		return p, nil
	}
	// An execution's root is not in byExec: merge it in at its place.
	root := f.execRoot(q.ExecutionID)
	if root != nil && from != nil && !entryByCreate(root, from) {
		root = nil
	}
	visit := func(e *entry) bool {
		t, take, more := wanted(e)
		if take {
			return emit(e, t)
		}
		return more
	}
	more := true
	descend(tree, from, func(e *entry) bool {
		if root != nil && entryByCreate(e, root) {
			r := root
			root = nil
			if !visit(r) {
				more = false
				return false
			}
		}
		more = visit(e)
		return more
	})
	if root != nil && more {
		visit(root)
	}
	return p, nil
}

// execRoot is the entry of the task that started execution id, when the query asks for one.
func (f *FSM) execRoot(id string) *entry {
	if id == "" {
		return nil
	}
	if e, ok := f.tasks.byID[id]; ok && f.tasks.record(e).ExecutionID == id {
		return e
	}
	return nil
}

// listIndex picks the tree to walk for q and the watch key of that tree.
func (f *FSM) listIndex(q Filter) (*btree.BTreeG[*entry], watchKey) {
	s := f.tasks
	switch {
	case q.ExecutionID != "":
		return s.byExec[q.ExecutionID], watchKey{watchExec, q.ExecutionID}
	case q.Node != "":
		return s.byNode[q.Node], watchKey{watchNode, q.Node}
	case q.State != "" && q.Type != "":
		return s.byStateTy[stateType{q.State, q.Type}], watchKey{watchType, q.Type}
	case q.Type != "":
		return s.byType[q.Type], watchKey{watchType, q.Type}
	case q.State != "":
		return nil, watchKey{watchState, string(q.State)} // ListPage merges byStateTy
	}
	return s.all, watchKey{watchAll, ""}
}

// total counts the tasks matching q from the per (state, type) counts, O(states × types); with a
// node or execution filter it is the size of that index, or a walk of it when more filters apply.
func (f *FSM) total(q Filter) int {
	s := f.tasks
	if q.Node != "" || q.ExecutionID != "" {
		tree, _ := f.listIndex(q)
		n := 0
		if root := f.execRoot(q.ExecutionID); root != nil && q.match(f.tasks.record(root)) {
			n++
		}
		if tree == nil {
			return n
		}
		if q.State == "" && q.Type == "" && q.Visible == nil && (q.Node == "" || q.ExecutionID == "") {
			return n + tree.Len()
		}
		tree.Ascend(func(e *entry) bool {
			switch {
			case q.rejects(e, f.tasks.names.list):
			case e.t == nil && q.ExecutionID == "": // no unindexed filter here: the keys decided
				n++
			case q.match(f.tasks.record(e)):
				n++
			}
			return true
		})
		return n
	}
	n := 0
	for k, c := range s.counts {
		if (q.State == "" || k.state == q.State) && (q.Type == "" || k.typ == q.Type) && (q.Visible == nil || q.Visible(k.typ)) {
			n += c
		}
	}
	return n
}

// Counts returns the number of tasks in every state (all states present).
func (f *FSM) Counts() map[State]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := make(map[State]int, len(States))
	for _, s := range States {
		c[s] = 0
	}
	for k, n := range f.tasks.counts {
		c[k.state] += n
	}
	return c
}

// Node returns a copy of one node; workers (Worker) are not nodes.
func (f *FSM) Node(name string) (Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.nodes[name]
	if !ok || n.IsWorker() {
		return Node{}, false
	}
	return n.clone(), true
}

// Nodes returns every registered node, sorted by name: the cluster's members, never its workers
// (Workers).
func (f *FSM) Nodes() []Node { return f.records(func(n *Node) bool { return !n.IsWorker() }) }

// Worker returns a copy of one worker's record.
func (f *FSM) Worker(name string) (Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.nodes[name]
	if !ok || !n.IsWorker() {
		return Node{}, false
	}
	return n.clone(), true
}

// Workers returns every worker's record, up or not, sorted by name.
func (f *FSM) Workers() []Node { return f.records((*Node).IsWorker) }

// Targets returns the records placement may place on, nodes and workers, sorted by name.
func (f *FSM) Targets() []Node { return f.records(func(*Node) bool { return true }) }

func (f *FSM) records(keep func(*Node) bool) []Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Node, 0, len(f.nodes))
	for _, name := range sortedKeys(f.nodes) {
		if n := f.nodes[name]; keep(n) {
			out = append(out, n.clone())
		}
	}
	return out
}

// Load returns, per node name, how many tasks it holds (assigned or running).
func (f *FSM) Load() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.loadLocked()
}

func (f *FSM) loadLocked() map[string]int {
	load := make(map[string]int, len(f.tasks.active))
	for node, m := range f.tasks.active {
		load[node] = len(m)
	}
	return load
}

// Active returns copies of the tasks a node holds (assigned or running), oldest first.
//
// The copies hold no History: what runs a task needs none of it, and an executor asks on every
// change of the state (copying histories was most of its allocations under load).
func (f *FSM) Active(node string) []Task {
	f.mu.RLock()
	defer f.mu.RUnlock()
	active := f.activeOn(node)
	out := make([]Task, 0, len(active))
	for _, t := range active {
		c := *t
		c.History = nil
		out = append(out, c)
	}
	return out
}

// View is what one placement pass needs: the nodes, their load, the pending tasks that could
// be placed now (never the whole backlog), and the limits they must respect.
type View struct {
	Index uint64
	// Pending holds candidates in placement order (PlacementCompare): for each (type, version),
	// the best tasks of the heads of its queues' priority bands, as many as the free slots that
	// serve it (and the limits) allow, plus retries whose deadline passed.
	Pending []Task
	Nodes   []Node // nodes and workers (Node.IsWorker), sorted by name
	Load    map[string]int
	// NextRetry is the earliest retry deadline after the view's time (zero: none).
	NextRetry time.Time
	// Due lists scheduled tasks whose RunAt has come (a bounded number): the leader makes them
	// pending. NextDue is the earliest RunAt after the view's time (zero: none).
	Due     []string
	NextDue time.Time
	// Queues holds the settings of queues that have any ("" is the default queue), TypeLimits
	// the types' limits; ActiveQueue and ActiveType count assigned and running tasks by queue
	// and by type. Place checks every assignment against them.
	Queues      map[string]QueueConfig
	TypeLimits  map[string]int
	ActiveQueue map[string]int
	ActiveType  map[string]int
	// ActiveKey counts assigned and running tasks by concurrency key (keys with none are absent).
	ActiveKey map[string]int
	// RateTokens holds the tokens at the view's time of the rate buckets the candidates draw
	// from (and of those found empty); Place takes no more from a bucket. NextRate is when the
	// first bucket found empty has a token again (zero: none).
	RateTokens map[RateBucket]int64
	NextRate   time.Time
}

// maxRetryScan bounds how many due retries one view reads beyond the free slots: due retries of a
// type no free node serves are skipped, and the pass must stay cheap however many there are.
const maxRetryScan = 256

// SchedulerView copies every pending task, nodes and their load under one lock. It costs
// O(pending): tests and debugging use it; the scheduler reads PlacementView.
func (f *FSM) SchedulerView() View {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v := View{Index: f.index, Load: f.loadLocked()}
	var all []*Task
	for _, b := range f.tasks.queue {
		for _, tr := range b {
			tr.Ascend(func(t *Task) bool { all = append(all, t); return true })
		}
	}
	for _, m := range f.tasks.fair {
		for _, fb := range m {
			fb.tasks.Ascend(func(t *Task) bool { all = append(all, t); return true })
		}
	}
	f.tasks.retry.Ascend(func(t *Task) bool { all = append(all, t); return true })
	slices.SortFunc(all, cmpCreate)
	v.Pending = make([]Task, len(all))
	for i, t := range all {
		v.Pending[i] = *t
		v.Pending[i].History = nil
	}
	for _, name := range sortedKeys(f.nodes) {
		v.Nodes = append(v.Nodes, f.nodes[name].clone())
	}
	return v
}

// PlacementView reads, under one lock, what a placement pass at now needs for the given
// gossip-alive nodes. It costs O(nodes × queues + bands × candidates × log n), not O(pending).
func (f *FSM) PlacementView(alive map[string]bool, now time.Time) View {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.tasks
	v := View{Index: f.index, Load: f.loadLocked(), NextRetry: s.nextRetry(now)}
	for _, name := range sortedKeys(f.nodes) {
		v.Nodes = append(v.Nodes, f.nodes[name].clone())
	}
	f.dueScheduled(&v, now)
	if !f.queues.zero() {
		c := f.queues.clone()
		v.Queues, v.TypeLimits = c.Queues, c.TypeLimits
	}
	v.ActiveQueue, v.ActiveType, v.ActiveKey = maps.Clone(s.activeQueue), maps.Clone(s.activeType), maps.Clone(s.activeKey)
	var free []*Node
	totalFree := 0
	for i := range v.Nodes {
		n := &v.Nodes[i]
		if n.Status == NodeUp && !n.Draining && n.Alive(alive) && v.Load[n.Name] < n.Capacity {
			free = append(free, n)
			totalFree += n.Capacity - v.Load[n.Name]
		}
	}
	if totalFree == 0 {
		return v
	}
	slots := func(tv TypeVersion) int {
		k := 0
		for _, n := range free {
			if n.Offers(tv.Type, tv.Version) {
				k += n.Capacity - v.Load[n.Name]
			}
		}
		return k
	}
	f.placementCandidates(&v, now, slots, totalFree)
	return v
}

// NextRetry returns the earliest retry deadline of a pending task after now, or zero.
func (f *FSM) NextRetry(now time.Time) time.Time {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.tasks.nextRetry(now)
}

// Expired returns IDs of finished tasks whose FinishedAt is before cutoff, oldest (created) first,
// at most limit (0: all). It walks the finish-time index: O(log n + expired × log expired), so a
// sweep asks once for all and removes them in batches.
func (f *FSM) Expired(cutoff time.Time, limit int) []string {
	f.mu.RLock() // held while entries are read: a deleted record's memory is reused
	defer f.mu.RUnlock()
	var es []*entry
	f.tasks.finished.Ascend(func(e *entry) bool {
		if !e.finishedBefore(cutoff) {
			return false
		}
		es = append(es, e)
		return true
	})
	slices.SortFunc(es, cmpEntryCreate)
	if limit > 0 && len(es) > limit {
		es = es[:limit]
	}
	var out []string
	for _, e := range es {
		out = append(out, e.id())
	}
	return out
}

// PendingByType returns how many tasks wait in pending, by task type.
func (f *FSM) PendingByType() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := make(map[string]int)
	for k, n := range f.tasks.counts {
		if k.state == Pending {
			c[k.typ] += n
		}
	}
	return c
}

// PendingQueues returns how many tasks wait in pending per (type, version) asked for.
func (f *FSM) PendingQueues() map[TypeVersion]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.tasks.pendingTV)
}

// encodeCursor makes the opaque cursor of the page after the task (createIndex, id).
func encodeCursor(createIndex uint64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatUint(createIndex, 10) + "/" + id))
}

func decodeCursor(c string) (*entry, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCursor, err)
	}
	idx, id, ok := strings.Cut(string(b), "/")
	n, err := strconv.ParseUint(idx, 10, 64)
	if !ok || err != nil || id == "" {
		return nil, fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return keyEntry(n, id), nil
}

// SubmitCandidates returns the tasks subs will create pending at now (not delayed), as Place reads
// candidates: the leader places them right behind their submit (internal/internode's
// placeAtSubmit). A submit the FSM then refuses (a duplicate, a unique key held) creates no task,
// and its assignment fails with ErrNotFound. Their concurrency keys are those their queues'
// templates make now.
func (f *FSM) SubmitCandidates(subs []Submit, now time.Time) []Task {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Task
	for i := range subs {
		// A task under a rate limit waits for the scheduler loop, which reads the bucket.
		if s := &subs[i]; s.ID != "" && s.Type != "" && s.RateLimit == "" {
			if t := newTask(0, now, s); t.State == Pending {
				f.keyOf(t)
				out = append(out, *t)
			}
		}
	}
	return out
}
