package fsm

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/acl"
)

// FSM is the replicated state machine. It is safe for concurrent readers while raft applies.
// Every field of replicated state but tasks and index belongs to a table, which registers with
// snapshots, restores and the digest in its own file (table.go).
type FSM struct {
	mu sync.RWMutex
	// tasks and their indexes (store.go); records in it never change, so a snapshot can walk a
	// cloned index while Apply goes on.
	tasks *store
	// unique is the unique-task lock table (unique.go).
	unique *uniqueTable
	nodes  map[string]*Node // by name (nodes.go)
	acl    *acl.MemStore    // policies, tokens, bootstrap flag (acl.go); same pointer for life
	// security is the join secret and gossip keyring (security.go).
	security Security
	// queues are the queue settings and type limits (queue.go).
	queues  queueTables
	index   uint64
	changed chan struct{}
	// watches are the channels of blocking reads per task and per list index (watch.go).
	watches watches
	// halt is set when a log entry could not be applied; from then on nothing changes.
	halt     error
	haltedCh chan struct{}
	// observer and the transitions of the entry being applied (observe.go): scratch for metrics,
	// never part of the replicated state.
	observer    Observer
	transitions []Transition
	keyObserver KeyObserver // concurrency.go
	lastStamp   *time.Time  // stamp's
	// schedules is the periodic schedules table (schedule.go), by name.
	schedules map[string]*Schedule
	// schedChanged is closed when a schedule changes or a scheduled task finishes.
	schedChanged chan struct{}
	// workflows is the workflows table (workflow.go).
	workflows workflowTable
	// rates is the rate limits table (ratelimit.go).
	rates rateTable
	// once is the table of applied request IDs (once.go).
	once onceTable
	// lastNow is the latest command time applied: what rate limits' tokens are shown at. It is
	// not replicated state (a restored replica has none until its next entry).
	lastNow time.Time
	// waitDeltas are, per waiting parent, how many of the children it waits for the entry being
	// applied finished (or sent back to run); advanceWaits applies them. Scratch, never part of
	// the replicated state.
	waitDeltas map[string]int
	// reportsAlone makes applyReport apply every report item alone, never a start and its end
	// together (reportPair): the reference tests compare the pairing with. Set only by tests.
	reportsAlone bool
}

// New returns an empty FSM.
func New() *FSM {
	f := &FSM{
		tasks:        newStore(),
		acl:          acl.NewMemStore(),
		changed:      make(chan struct{}),
		haltedCh:     make(chan struct{}),
		schedChanged: make(chan struct{}),
	}
	for _, t := range tables {
		t.install(f, nil) // each table starts empty, as after a snapshot without its section
	}
	return f
}

// Apply implements raft.FSM: ApplyBatch of one entry. An entry this build cannot decode (a
// command type it does not know, a field it does not know) halts the FSM instead of being
// skipped: the leader wrote it meaning something, and a replica that skipped it would diverge
// from those that applied it.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyCommand applies a decoded command at a log index. Tests and benchmarks call it directly;
// it wakes watchers and calls the observer as Apply does.
func (f *FSM) ApplyCommand(index uint64, c *Command) *Result {
	r, _ := f.applyDecoded([]*raft.Log{{Index: index, Type: raft.LogCommand}}, []*Command{c}, 1, nil)[0].(*Result)
	return r
}

// applyLocked applies c at index, or answers the halt error once the FSM has halted. The
// transitions it makes are appended to f.transitions; the caller bumps. f.mu is held.
func (f *FSM) applyLocked(index uint64, c *Command) *Result {
	if f.halt != nil {
		return &Result{Index: index, Err: f.halt}
	}
	r := &Result{Index: index}
	if c.Now.After(f.lastNow) {
		f.lastNow = c.Now
	}
	if len(c.RequestID) > 0 {
		f.once.expire(c.Now)
		if f.once.applied(c.RequestID, c.Now) {
			// The write's first try applied: this is its retry, which must not act again.
			r.Repeat = true
			return r
		}
	}
	if s := specOf(c.Body); s != nil {
		r.Items, r.Err = s.apply(f, index, c.Now, c.Body)
		if len(c.RequestID) > 0 && appliedCleanly(r) {
			f.once.add(c.RequestID, c.Now)
		}
		// Steps of workflows whose tasks this entry finished settle in it, and start the steps
		// they make ready.
		f.advanceWorkflows(index, c.Now)
		// Parents whose children this entry finished count them, once per entry.
		f.advanceWaits(index, c.Now)
	} else {
		r.Err = fmt.Errorf("%w: payload %T is not in the command table", ErrBadCommand, c.Body)
	}
	return r
}

// appliedCleanly reports whether r is a command that applied without error, nor any item's: only
// those record their request ID (a failed apply retried fails again, and answers so).
func appliedCleanly(r *Result) bool {
	if r.Err != nil {
		return false
	}
	for i := range r.Items {
		if r.Items[i].Err != nil {
			return false
		}
	}
	return true
}

// Halted returns why the FSM stopped applying the log, or nil while it applies.
func (f *FSM) Halted() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.halt
}

// HaltedCh is closed when the FSM halts.
func (f *FSM) HaltedCh() <-chan struct{} { return f.haltedCh }

// The apply functions of the command table (commands.go). f.mu is held.

func (f *FSM) applySubmit(index uint64, now time.Time, p *SubmitBatch) ([]ItemResult, error) {
	f.unique.expire(now)
	items := make([]ItemResult, 0, len(p.Items))
	for i := range p.Items {
		items = append(items, f.submit(index, now, &p.Items[i], p.Admission))
	}
	if len(p.Place) > 0 {
		f.applyPlace(index, now, p, items)
	}
	return items, nil
}

func (f *FSM) applyAssign(index uint64, now time.Time, p *AssignBatch) ([]ItemResult, error) {
	f.rates.expire(now)
	for _, id := range p.Due {
		f.promote(index, now, id)
	}
	items := make([]ItemResult, 0, len(p.Items))
	for _, a := range p.Items {
		items = append(items, f.assign(index, now, a))
	}
	return items, nil
}

func (f *FSM) applyReport(index uint64, now time.Time, p *ReportBatch) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.Items))
	for i := 0; i < len(p.Items); i++ {
		if i+1 < len(p.Items) && !f.reportsAlone && startAndEnd(&p.Items[i], &p.Items[i+1]) {
			started, ended := f.reportPair(index, now, &p.Items[i], &p.Items[i+1])
			items = append(items, started, ended)
			i++
			continue
		}
		items = append(items, f.report(index, now, &p.Items[i]))
	}
	return items, nil
}

func (f *FSM) applyRegister(index uint64, now time.Time, p *Register) ([]ItemResult, error) {
	return nil, f.register(index, now, &p.Node)
}

func (f *FSM) applyNodeDown(index uint64, now time.Time, p *Down) ([]ItemResult, error) {
	return nil, f.nodeDown(index, now, p.Name, p.Left, p.Reason)
}

func (f *FSM) applyDrain(index uint64, _ time.Time, p *Drain) ([]ItemResult, error) {
	return nil, f.drain(index, p.Name, p.Draining)
}

func (f *FSM) applyCancel(index uint64, now time.Time, p *Cancel) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.IDs))
	for _, id := range p.IDs {
		items = append(items, f.cancel(index, now, id))
	}
	return items, nil
}

func (f *FSM) applyRemove(_ uint64, _ time.Time, p *Remove) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.IDs))
	for _, id := range p.IDs {
		items = append(items, f.remove(id))
	}
	return items, nil
}

func (f *FSM) applyRetry(index uint64, now time.Time, p *Retry) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.IDs))
	for _, id := range p.IDs {
		items = append(items, f.retry(index, now, id, p.By, p.Admission))
	}
	return items, nil
}

func (f *FSM) applyPurge(_ uint64, _ time.Time, p *Purge) ([]ItemResult, error) {
	ids := f.purgeMatches(p)
	items := make([]ItemResult, 0, len(ids))
	for _, id := range ids {
		items = append(items, f.remove(id))
	}
	return items, nil
}

// bump records the applied index and wakes watchers. Callers hold f.mu.
func (f *FSM) bump(index uint64) {
	if index > f.index {
		f.index = index
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// submit adds one task under a's caps (nil: none).
func (f *FSM) submit(index uint64, now time.Time, s *Submit, a *Admission) ItemResult {
	if s.IdempotencyKey != "" {
		if id, ok := f.tasks.idem[s.IdempotencyKey]; ok {
			if id == s.ID {
				// The key names this very submit: a second copy of it (a forward retried after
				// a leader change whose first copy did commit). As for a keyless copy, the
				// submitter learns it is its own task, created, not someone else's.
				return ItemResult{ID: id, Err: ErrDuplicateID}
			}
			return ItemResult{ID: id, Existing: true}
		}
	}
	if s.ID == "" || s.Type == "" {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: submit needs id and type", ErrBadCommand)}
	}
	if _, ok := f.tasks.get(s.ID); ok {
		return ItemResult{ID: s.ID, Err: ErrDuplicateID}
	}
	if s.UniqueKey != "" && (s.UniqueFor <= 0 || time.Duration(s.UniqueFor) > MaxUniqueFor) {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: unique_for must be in (0, %s]", ErrBadCommand, MaxUniqueFor)}
	}
	if r, ok := f.checkUnique(s, now); !ok {
		return r
	}
	if s.RateLimit != "" {
		if _, ok := f.rates.limits[s.RateLimit]; !ok {
			return ItemResult{ID: s.ID, Err: fmt.Errorf("%w %q", ErrUnknownRateLimit, s.RateLimit)}
		}
	} else if s.RateKey != "" {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: a rate key needs a rate limit", ErrBadCommand)}
	}
	if s.DebounceKey != "" || s.Debounce != 0 {
		if r, done := f.debounce(index, now, s); done {
			return r
		}
	}
	if err := f.admit(a, s.SubmittedBy); err != nil {
		return ItemResult{ID: s.ID, Err: err}
	}
	if s.ConcurrencyKey != "" && (s.ConcurrencyLimit < 1 || s.ConcurrencyLimit > MaxConcurrencyLimit || len(s.ConcurrencyKey) > MaxConcurrencyKey) {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: a concurrency key has at most %d bytes and a limit between 1 and %d", ErrBadCommand, MaxConcurrencyKey, MaxConcurrencyLimit)}
	}
	t := newTask(index, now, s)
	f.keyOf(t)
	if s.UniqueKey != "" {
		until := now.Add(time.Duration(s.UniqueFor))
		t.UniqueKey, t.UniqueUntil = s.UniqueKey, &until
		f.unique.put(&UniqueLock{Type: s.Type, Key: s.UniqueKey, TaskID: s.ID, Expires: until})
	}
	f.save(nil, t)
	f.note(Transition{Kind: KindSubmitted, TaskID: t.ID, Type: t.Type})
	return ItemResult{ID: t.ID}
}

// newTask is the record a submit creates at index and now: pending, or scheduled while its RunAt
// is ahead.
func newTask(index uint64, now time.Time, s *Submit) *Task {
	maxAttempts := s.MaxAttempts
	if maxAttempts < 1 {
		maxAttempts = 1
	}
	t := &Task{
		ID: s.ID, Type: s.Type, Version: s.Version, Input: s.Input,
		State: Pending, MaxAttempts: maxAttempts, Timeout: s.Timeout,
		IdempotencyKey: s.IdempotencyKey, ExecutionID: s.ExecutionID, ParentID: s.ParentID,
		SubmittedBy: s.SubmittedBy, Schedule: s.Schedule, CreatedAt: now, CreateIndex: index, ModifyIndex: index,
		RunAt: s.RunAt, Priority: s.Priority, Queue: s.Queue, Trace: s.Trace,
		RateLimit: s.RateLimit, RateKey: s.RateKey, DebounceKey: s.DebounceKey, Debounce: s.Debounce,
	}
	if s.DebounceKey != "" {
		runAt := now.Add(time.Duration(s.Debounce))
		t.RunAt = &runAt
	}
	if s.ConcurrencyKey != "" {
		t.ConcurrencyKey, t.ConcurrencyLimit = s.ConcurrencyKey, s.ConcurrencyLimit
	}
	if t.Queue == DefaultQueue {
		t.Queue = "" // one spelling of the default queue, the one records without queues have
	}
	if t.RunAt != nil && t.RunAt.After(now) {
		t.State = Scheduled
	}
	if t.ExecutionID == "" {
		t.ExecutionID = t.ID
	}
	return t
}

// promote makes a scheduled task pending once its RunAt has come by the command's time; anything
// else (gone, cancelled, not yet due) is left alone: the leader read the task before this entry.
func (f *FSM) promote(index uint64, now time.Time, id string) {
	old, ok := f.tasks.get(id)
	if !ok || old.State != Scheduled || old.RunAt == nil || old.RunAt.After(now) {
		return
	}
	t := old.cow()
	t.State = Pending
	t.ModifyIndex = index
	f.save(old, t)
}

func (f *FSM) assign(index uint64, now time.Time, a Assign) ItemResult {
	old, ok := f.tasks.get(a.TaskID)
	if !ok {
		return ItemResult{ID: a.TaskID, Err: ErrNotFound}
	}
	n, ok := f.nodes[a.Node]
	if old.State != Pending || old.CancelRequested || !ok || n.Status != NodeUp || n.Draining || n.BootID != a.BootID {
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	if !f.queues.admits(old, f.tasks) { // Place checks too; this holds whatever a leader proposed
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	// The task's rate limit, by the command's time: a placement from a view older than the
	// bucket's latest tokens taken cannot start more than it allows.
	if !f.rates.admits(old, now) {
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	// A capped assignment may come from a view older than the task's latest attempt (placement at
	// submit ran it, and it failed, meanwhile): the retry's backoff holds it too.
	if a.Capped && (len(f.tasks.active[a.Node]) >= n.Capacity || old.NotBefore != nil && now.Before(*old.NotBefore)) {
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	if b, named := rateBucketOf(old); named {
		f.rates.take(b, now)
	}
	t := old.cow()
	defer f.save(old, t)
	t.State = Assigned
	t.Node, t.BootID = a.Node, a.BootID
	t.Attempt++
	t.NotBefore = nil
	// Room for the attempt's events (assigned, started, its outcome) at once: the reports that
	// follow then append without copying the history (cow).
	t.History = append(slices.Grow(t.History, 3), HistoryEntry{Attempt: t.Attempt, Node: a.Node, Event: EventAssigned, At: now})
	t.ModifyIndex = index
	return ItemResult{ID: t.ID}
}

func (f *FSM) report(index uint64, now time.Time, r *Report) ItemResult {
	old, ok := f.tasks.get(r.TaskID)
	if !ok {
		return ItemResult{ID: r.TaskID, Err: ErrNotFound}
	}
	t, res := f.reportTo(index, now, old, nil, r)
	if t != nil {
		f.save(old, t)
	}
	return res
}

// startAndEnd reports whether a and b are an attempt's start and its end reported together
// (an executor's StartedAndFinished): a started report, then an outcome of the same task.
func startAndEnd(a, b *Report) bool {
	if a.Kind != ReportStarted || b.TaskID != a.TaskID {
		return false
	}
	switch b.Kind {
	case ReportSucceeded, ReportFailed, ReportCancelled, ReportInterrupted:
		return true
	}
	return false
}

// reportPair applies started and then ended (startAndEnd) to one copy of the task's record
// and saves it once: the record, history, transitions, results and indexes are those report
// leaves applying each in turn, which stores the running record in between only for the second
// report to copy it again. Watchers of the running record's lists are woken as that store would.
func (f *FSM) reportPair(index uint64, now time.Time, started, ended *Report) (ItemResult, ItemResult) {
	old, ok := f.tasks.get(started.TaskID)
	if !ok {
		return ItemResult{ID: started.TaskID, Err: ErrNotFound}, ItemResult{ID: ended.TaskID, Err: ErrNotFound}
	}
	t, first := f.reportTo(index, now, old, nil, started)
	if t == nil {
		// The start changed nothing (stale, or already running): the end applies alone.
		return first, f.report(index, now, ended)
	}
	mid := watchKeysOf(t)
	t, second := f.reportTo(index, now, t, t, ended)
	f.save(old, t)
	f.watches.touchVia(watchKeysOf(old), mid, watchKeysOf(t))
	return first, second
}

// reportTo applies r to the task whose current record is cur. t is the copy this entry is
// already changing (then cur itself), or nil when cur is the stored record: a copy (cow) is
// made once r changes anything. It returns the changed copy for the caller to save (nil when
// nothing changed, or r saved it itself) and the item's result. f.mu is held.
func (f *FSM) reportTo(index uint64, now time.Time, cur, t *Task, r *Report) (*Task, ItemResult) {
	if !cur.State.Active() || cur.Node != r.Node || cur.BootID != r.BootID || cur.Attempt != r.Attempt {
		return t, ItemResult{ID: r.TaskID, Err: ErrStale}
	}
	if r.Kind == ReportStarted && cur.State == Running {
		return t, ItemResult{ID: cur.ID}
	}
	if r.Kind == ReportWait && t == nil {
		return nil, f.wait(index, now, cur, r)
	}
	if t == nil {
		t = cur.cow()
	}
	entry := HistoryEntry{Attempt: t.Attempt, Node: t.Node, At: now}
	wasRunning, node := t.State == Running, t.Node
	switch r.Kind {
	case ReportStarted:
		f.note(Transition{Kind: KindStarted, TaskID: t.ID, Type: t.Type, Node: t.Node, Waited: now.Sub(pendingSince(t))})
		t.State = Running
		t.StartedAt = f.stamp(now)
		entry.Event = EventStarted
	case ReportCheckpoint:
		t.Checkpoint = r.Checkpoint
		t.ModifyIndex = index
		return t, ItemResult{ID: t.ID}
	case ReportSucceeded:
		t.State = Succeeded
		t.Result = r.Result
		t.Error = nil
		t.finish(f.stamp(now))
		entry.Event = EventSucceeded
		f.noteFinish(KindSucceeded, t, node, wasRunning, now)
	case ReportFailed:
		if r.Error == nil {
			r.Error = &TaskError{Type: "task_error", Message: "failed"}
		}
		t.Failures++
		t.Error = r.Error
		entry.Event, entry.Error, entry.Final = EventFailed, r.Error.Message, r.Error.Final
		kind := KindRetried
		if t.Failures >= t.MaxAttempts || t.CancelRequested || r.Error.Final {
			t.State, kind = Failed, KindFailed
			if t.CancelRequested {
				t.State, kind = Cancelled, KindCancelled
			}
			t.finish(f.stamp(now))
		} else {
			t.requeue()
			t.NotBefore = r.NotBefore
		}
		f.noteFinish(kind, t, node, wasRunning, now)
	case ReportCancelled:
		t.State = Cancelled
		t.finish(f.stamp(now))
		entry.Event = EventCancelled
		f.noteFinish(KindCancelled, t, node, wasRunning, now)
	case ReportInterrupted:
		entry.Event = EventInterrupted
		if r.Error != nil {
			entry.Error = r.Error.Message
		}
		f.noteFinish(KindInterrupted, t, node, wasRunning, now)
		f.interrupt(t, now)
		if t.State == Cancelled {
			f.note(Transition{Kind: KindCancelled, TaskID: t.ID, Type: t.Type, Node: node})
		}
	default:
		return t, ItemResult{ID: t.ID, Err: fmt.Errorf("%w: kind %d", ErrInvalidReport, r.Kind)}
	}
	t.History = append(t.History, entry)
	t.ModifyIndex = index
	return t, ItemResult{ID: t.ID}
}

// interrupt takes an active task back: pending again, or cancelled if a cancel was asked for.
func (f *FSM) interrupt(t *Task, now time.Time) {
	if t.CancelRequested {
		t.State = Cancelled
		t.finish(f.stamp(now))
		return
	}
	t.requeue()
}

func (t *Task) requeue() {
	t.State = Pending
	t.Node, t.BootID = "", ""
}

func (t *Task) finish(at *time.Time) {
	t.FinishedAt = at
	t.NotBefore = nil
}

// stamp returns a pointer to now that every record the entry being applied stamps may share:
// records never change once stored, and a batch of a hundred reports then keeps one time value
// instead of a hundred (compact records). f.mu is held.
func (f *FSM) stamp(now time.Time) *time.Time {
	if f.lastStamp == nil || *f.lastStamp != now {
		// A copy made here, not &now: taking now's address would move it to the heap on every
		// call, also when the stamp is shared.
		p := new(time.Time)
		*p = now
		f.lastStamp = p
	}
	return f.lastStamp
}

func (f *FSM) register(index uint64, now time.Time, n *Node) error {
	if n == nil || n.Name == "" || n.BootID == "" {
		return fmt.Errorf("%w: register needs a node with name and boot id", ErrBadCommand)
	}
	if old, ok := f.nodes[n.Name]; ok && old.BootID != n.BootID {
		// The node restarted: whatever it held under its old incarnation is gone.
		f.takeBack(index, now, n.Name, "node "+n.Name+" restarted")
		f.hostGone(index, now, n.Name)
	}
	c := n.clone()
	c.Status = NodeUp
	c.Host, c.Labels = "", nil // a node is never a worker (workers.go)
	c.RegisteredAt = now
	c.ModifyIndex = index
	f.nodes[n.Name] = &c
	return nil
}

func (f *FSM) nodeDown(index uint64, now time.Time, name string, left bool, reason string) error {
	n, ok := f.nodes[name]
	if !ok || n.IsWorker() {
		return ErrUnknownNode
	}
	n.Status = NodeDown
	if left {
		n.Status = NodeLeft
	}
	n.ModifyIndex = index
	if reason == "" {
		reason = "node " + name + " " + string(n.Status)
	}
	f.takeBack(index, now, name, reason)
	f.hostGone(index, now, name)
	return nil
}

// takeBack interrupts every active task held by the named node (any incarnation).
func (f *FSM) takeBack(index uint64, now time.Time, name, reason string) {
	for _, old := range f.activeOn(name) {
		prev, t := old.State, old.cow()
		t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: name, Event: EventInterrupted, At: now, Error: reason})
		f.noteFinish(KindInterrupted, t, name, prev == Running, now)
		f.interrupt(t, now)
		if t.State == Cancelled {
			t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: name, Event: EventCancelled, At: now})
			f.note(Transition{Kind: KindCancelled, TaskID: t.ID, Type: t.Type, Node: name})
		}
		t.ModifyIndex = index
		f.save(old, t)
	}
}

// activeOn returns the tasks a node holds, oldest first.
func (f *FSM) activeOn(node string) []*Task {
	out := make([]*Task, 0, len(f.tasks.active[node]))
	for _, t := range f.tasks.active[node] {
		out = append(out, t)
	}
	slices.SortFunc(out, cmpCreate)
	return out
}

// save stores next in place of old (either may be nil: a new or a removed task) and wakes the
// watchers of both. f.mu is held.
func (f *FSM) save(old, next *Task) {
	f.watches.touch(old, next)
	var prev *Task // the live record next replaces
	if old != nil && f.tasks.remove(old, next) {
		prev = old
	}
	if next != nil {
		if inFair(next) && (old == nil || !inFair(old)) && next.FairSeq == 0 {
			// A keyed task that becomes pending takes its turn in its band's rotation; one
			// that had a turn (taken back from a node, retried) keeps it, and goes first.
			next.FairSeq = f.tasks.fairSeq(next)
		}
		f.tasks.insertAfter(next, prev)
		if next.State.Terminal() && (old == nil || !old.State.Terminal()) {
			if next.Schedule != "" {
				f.wakeSchedules() // a buffered tick may start now
			}
			f.noteStepFinished(next.ID)
		}
		if next.ParentID != "" && next.State.Terminal() != (old != nil && old.State.Terminal()) {
			f.childChanged(next)
		}
	}
}

func (f *FSM) drain(index uint64, name string, draining bool) error {
	n, ok := f.nodes[name]
	if !ok || n.IsWorker() {
		return ErrUnknownNode
	}
	n.Draining = draining
	n.ModifyIndex = index
	return nil
}

func (f *FSM) cancel(index uint64, now time.Time, id string) ItemResult {
	old, ok := f.tasks.get(id)
	if !ok {
		return ItemResult{ID: id, Err: ErrNotFound}
	}
	if old.State.Terminal() {
		return ItemResult{ID: id, Err: ErrFinished}
	}
	if old.State == Waiting {
		f.cancelWaiting(index, now, old)
		return ItemResult{ID: id}
	}
	t := old.cow()
	defer f.save(old, t)
	switch {
	case t.State == Pending, t.State == Scheduled:
		t.State = Cancelled
		t.finish(f.stamp(now))
		t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Event: EventCancelled, At: now})
		f.note(Transition{Kind: KindCancelled, TaskID: t.ID, Type: t.Type})
	default:
		// The executor holding it sees the flag, cancels the run and reports cancelled.
		t.CancelRequested = true
	}
	t.ModifyIndex = index
	return ItemResult{ID: id}
}

func (f *FSM) remove(id string) ItemResult {
	t, ok := f.tasks.get(id)
	if !ok {
		return ItemResult{ID: id, Err: ErrNotFound}
	}
	if !t.State.Terminal() {
		return ItemResult{ID: id, Err: fmt.Errorf("%w: task is %s", ErrBadCommand, t.State)}
	}
	f.save(t, nil)
	return ItemResult{ID: id}
}

// retry sends a failed or cancelled task back to pending: the same ID, a new attempt next, its
// history kept with a retried event, and its failures reset so max_attempts applies afresh. Its
// checkpoint stays, as with an automatic retry: a task that checkpoints resumes from it.
func (f *FSM) retry(index uint64, now time.Time, id, by string, a *Admission) ItemResult {
	old, ok := f.tasks.get(id)
	if !ok {
		return ItemResult{ID: id, Err: ErrNotFound}
	}
	if old.State != Failed && old.State != Cancelled {
		return ItemResult{ID: id, Err: fmt.Errorf("%w: task is %s", ErrNotRetryable, old.State)}
	}
	if err := f.admit(a, old.SubmittedBy); err != nil {
		return ItemResult{ID: id, Err: err}
	}
	t := old.cow()
	defer f.save(old, t)
	t.requeue()
	t.Failures = 0
	t.Error, t.Result = nil, nil
	t.FinishedAt, t.NotBefore = nil, nil
	t.CancelRequested = false
	t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Event: EventRetried, At: now, By: by})
	t.ModifyIndex = index
	return ItemResult{ID: id}
}

// purgeMatches returns the IDs of the finished tasks p matches, at most its limit, in a replica-
// independent order. It walks only trees whose tasks are all candidates: the (state, type) trees
// of the states asked for (of the type asked for, or of every type, keys sorted), oldest created
// first; or, for every terminal state of every type, the finish-time tree, oldest finished first.
// It stops at the limit, so an entry costs O(limit + the candidates finished_before skips), never
// a walk over every task.
func (f *FSM) purgeMatches(p *Purge) []string {
	limit := p.Limit
	if limit <= 0 || limit > MaxPurgeBatch {
		limit = MaxPurgeBatch
	}
	var states []State
	for _, st := range []State{Succeeded, Failed, Cancelled} {
		if len(p.States) == 0 || slices.Contains(p.States, st) {
			states = append(states, st)
		}
	}
	var ids []string
	take := func(e *entry) bool {
		if e.hasFin && (p.FinishedBefore == nil || e.finishedBefore(*p.FinishedBefore)) {
			ids = append(ids, e.id())
		}
		return len(ids) < limit
	}
	if p.Type == "" && len(states) == 3 {
		f.tasks.finished.Ascend(func(e *entry) bool {
			if p.FinishedBefore != nil && !e.finishedBefore(*p.FinishedBefore) {
				return false
			}
			return take(e)
		})
		return ids
	}
	var keys []stateType
	for _, st := range states {
		if p.Type != "" {
			keys = append(keys, stateType{st, p.Type})
			continue
		}
		var types []string
		for k := range f.tasks.byStateTy {
			if k.state == st {
				types = append(types, k.typ)
			}
		}
		slices.Sort(types)
		for _, typ := range types {
			keys = append(keys, stateType{st, typ})
		}
	}
	for _, k := range keys {
		if len(ids) >= limit {
			break
		}
		if tr := f.tasks.byStateTy[k]; tr != nil {
			tr.Ascend(take)
		}
	}
	return ids
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
