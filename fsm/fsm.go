package fsm

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/acl"
)

// FSM is the replicated state machine. It is safe for concurrent readers while raft applies.
type FSM struct {
	mu sync.RWMutex
	// tasks and their indexes (store.go); records in it never change, so a snapshot can walk a
	// cloned index while Apply goes on.
	tasks *store
	// unique is the unique-task lock table (unique.go).
	unique *uniqueTable
	nodes  map[string]*Node
	acl    *acl.MemStore // policies, tokens, bootstrap flag (acl.go); same pointer for life
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
	lastStamp   *time.Time // stamp's
	// schedules is the periodic schedules table (schedule.go), by name.
	schedules map[string]*Schedule
	// schedChanged is closed when a schedule changes or a scheduled task finishes.
	schedChanged chan struct{}
}

// New returns an empty FSM.
func New() *FSM {
	return &FSM{
		tasks:    newStore(),
		unique:   newUniqueTable(),
		nodes:    map[string]*Node{},
		acl:      acl.NewMemStore(),
		changed:  make(chan struct{}),
		haltedCh: make(chan struct{}),

		schedules:    map[string]*Schedule{},
		schedChanged: make(chan struct{}),
	}
}

// Apply implements raft.FSM. An entry this build cannot decode (a command type it does not know, a
// field it does not know) halts the FSM instead of being skipped: the leader wrote it meaning
// something, and a replica that skipped it would diverge from those that applied it.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := Decode(l.Data)
	if err != nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.halt == nil {
			f.halt = newHaltError(l.Index, err)
			close(f.haltedCh)
		}
		return &Result{Index: l.Index, Err: f.halt}
	}
	return f.ApplyCommand(l.Index, cmd)
}

// ApplyCommand applies a decoded command at a log index. Apply calls it; tests call it directly.
func (f *FSM) ApplyCommand(index uint64, c *Command) *Result {
	r, obs, ts := f.applyCommand(index, c)
	if obs != nil && len(ts) > 0 {
		obs(index, ts)
	}
	return r
}

// applyCommand applies c under the lock and hands back the observer with the entry's transitions,
// to be called once the lock is released.
func (f *FSM) applyCommand(index uint64, c *Command) (*Result, Observer, []Transition) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halt != nil {
		return &Result{Index: index, Err: f.halt}, nil, nil
	}
	r := &Result{Index: index}
	if s := specOf(c.Body); s != nil {
		r.Items, r.Err = s.apply(f, index, c.Now, c.Body)
	} else {
		r.Err = fmt.Errorf("%w: payload %T is not in the command table", ErrBadCommand, c.Body)
	}
	f.bump(index)
	ts := f.transitions
	f.transitions = nil
	return r, f.observer, ts
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
	return items, nil
}

func (f *FSM) applyAssign(index uint64, now time.Time, p *AssignBatch) ([]ItemResult, error) {
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
	for i := range p.Items {
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
	if err := f.admit(a, s); err != nil {
		return ItemResult{ID: s.ID, Err: err}
	}
	t := newTask(index, now, s)
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
		RunAt: s.RunAt, Priority: s.Priority, Queue: s.Queue,
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
	// A capped assignment may come from a view older than the task's latest attempt (placement at
	// submit ran it, and it failed, meanwhile): the retry's backoff holds it too.
	if a.Capped && (len(f.tasks.active[a.Node]) >= n.Capacity || old.NotBefore != nil && now.Before(*old.NotBefore)) {
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	t := old.cow()
	defer f.save(old, t)
	t.State = Assigned
	t.Node, t.BootID = a.Node, a.BootID
	t.Attempt++
	t.NotBefore = nil
	t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: a.Node, Event: EventAssigned, At: now})
	t.ModifyIndex = index
	return ItemResult{ID: t.ID}
}

func (f *FSM) report(index uint64, now time.Time, r *Report) ItemResult {
	old, ok := f.tasks.get(r.TaskID)
	if !ok {
		return ItemResult{ID: r.TaskID, Err: ErrNotFound}
	}
	if !old.State.Active() || old.Node != r.Node || old.BootID != r.BootID || old.Attempt != r.Attempt {
		return ItemResult{ID: r.TaskID, Err: ErrStale}
	}
	if r.Kind == ReportStarted && old.State == Running {
		return ItemResult{ID: old.ID}
	}
	t := old.cow()
	defer f.save(old, t)
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
		return ItemResult{ID: t.ID}
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
		return ItemResult{ID: t.ID, Err: fmt.Errorf("%w: kind %d", ErrInvalidReport, r.Kind)}
	}
	t.History = append(t.History, entry)
	t.ModifyIndex = index
	return ItemResult{ID: t.ID}
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
		f.lastStamp = &now
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
	}
	c := n.clone()
	c.Status = NodeUp
	c.RegisteredAt = now
	c.ModifyIndex = index
	f.nodes[n.Name] = &c
	return nil
}

func (f *FSM) nodeDown(index uint64, now time.Time, name string, left bool, reason string) error {
	n, ok := f.nodes[name]
	if !ok {
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
	if old != nil {
		f.tasks.delete(old)
		f.watches.touch(old)
	}
	if next != nil {
		f.tasks.insert(next)
		f.watches.touch(next)
		if next.Schedule != "" && next.State.Terminal() && (old == nil || !old.State.Terminal()) {
			f.wakeSchedules() // a buffered tick may start now
		}
	}
}

func (f *FSM) drain(index uint64, name string, draining bool) error {
	n, ok := f.nodes[name]
	if !ok {
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
	if err := f.admit(a, &Submit{SubmittedBy: old.SubmittedBy}); err != nil {
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

// snapshotState is the msgpack form of a snapshot, as earlier releases wrote it in one piece.
// Persist streams exactly these bytes and decodeSnapshot reads them key by key; the struct stays
// as the format's definition (and tests build snapshots with it).
type snapshotState struct {
	Index uint64 `msgpack:"index"`
	Tasks []Task `msgpack:"tasks"`
	Nodes []Node `msgpack:"nodes"`
	// ACL is absent in snapshots of builds before ACLs and of clusters that never used them.
	ACL *acl.State `msgpack:"acl,omitempty"`
	// Security is absent in snapshots of clusters that never had any (and of older releases).
	Security *Security `msgpack:"security,omitempty"`
	// Schedules is absent in snapshots of clusters without schedules (and of older releases).
	Schedules []Schedule `msgpack:"schedules,omitempty"`
	// Unique is absent while no unique lock is held (and in snapshots of older releases).
	Unique []UniqueLock `msgpack:"unique,omitempty"`
}

// Snapshot implements raft.FSM. It clones the task index (O(1): the tree is copy-on-write and
// records never change once stored) and copies the small rest; Persist encodes from that view
// while Apply goes on. A halted FSM refuses: raft would record its state as that of a later
// index, which it is not.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock() // Clone writes the tree's copy-on-write context: no reader may walk it meanwhile
	defer f.mu.Unlock()
	if f.halt != nil {
		return nil, fmt.Errorf("snapshot: %w", f.halt)
	}
	s := &snapshot{index: f.index, tasks: f.tasks.all.Clone(), names: f.tasks.names.list, arena: f.tasks.arena, nodes: make([]Node, 0, len(f.nodes))}
	s.arena.pin() // until Release: the frozen records it walks stay where they are
	if f.unique.len() > 0 {
		s.unique = f.unique.locks()
	}
	for _, name := range sortedKeys(f.nodes) {
		s.nodes = append(s.nodes, f.nodes[name].clone())
	}
	if st := f.acl.State(); st.Bootstrapped || len(st.Policies) > 0 || len(st.Tokens) > 0 {
		s.acl = &st
	}
	if !f.security.zero() {
		sec := f.security.clone()
		s.security = &sec
	}
	for _, name := range sortedKeys(f.schedules) {
		s.schedules = append(s.schedules, f.schedules[name].clone())
	}
	if !f.queues.zero() {
		q := f.queues.clone()
		s.queues = &q
	}
	return s, nil
}

// snapshot is an immutable view of the state at one index.
type snapshot struct {
	index    uint64
	tasks    *btree.BTreeG[*entry]
	names    []string // the names frozen records refer to, as they were (the list only grows)
	arena    *arena   // holds the frozen records; pinned until Release
	released sync.Once
	nodes    []Node
	acl      *acl.State
	security *Security
	// schedules is written only when there are some, so snapshots of clusters without any keep
	// the format earlier releases read.
	schedules []Schedule
	unique    []UniqueLock // nil when empty: the section is then left out
	queues    *queueTables
}

// Persist streams the snapshot one record at a time, in exactly the bytes msgpack writes for
// snapshotState (the format of earlier releases, which they can restore): a map of index, tasks
// (oldest first), nodes, and acl and security when set.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 256<<10)
	if err := s.encode(w); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := w.Flush(); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) encode(w io.Writer) error {
	enc := msgpack.NewEncoder(w)
	fields := 3
	if s.acl != nil {
		fields++
	}
	if s.security != nil {
		fields++
	}
	if len(s.schedules) > 0 {
		fields++
	}
	if s.unique != nil {
		fields++
	}
	if s.queues != nil {
		fields++
	}
	if err := enc.EncodeMapLen(fields); err != nil {
		return err
	}
	if err := encodeAll(enc, "index", s.index); err != nil {
		return err
	}
	if err := enc.EncodeString("tasks"); err != nil {
		return err
	}
	if err := enc.EncodeArrayLen(s.tasks.Len()); err != nil {
		return err
	}
	var err error
	var thawed Task // every frozen record is thawed into this one, encoded, and forgotten
	s.tasks.Ascend(func(e *entry) bool {
		t := e.t
		if t == nil {
			if err = thawInto(&thawed, e.cold, s.names); err != nil {
				return false
			}
			t = &thawed
		}
		err = enc.Encode(t)
		return err == nil
	})
	if err != nil {
		return err
	}
	if err := encodeAll(enc, "nodes", s.nodes); err != nil {
		return err
	}
	if s.acl != nil {
		if err := encodeAll(enc, "acl", s.acl); err != nil {
			return err
		}
	}
	if s.security != nil {
		if err := encodeAll(enc, "security", s.security); err != nil {
			return err
		}
	}
	if len(s.schedules) > 0 {
		if err := encodeAll(enc, "schedules", s.schedules); err != nil {
			return err
		}
	}
	if s.unique != nil {
		if err := encodeAll(enc, "unique", s.unique); err != nil {
			return err
		}
	}
	if s.queues != nil { // absent unless a queue or type limit was ever set: old builds skip it
		if err := encodeAll(enc, "queues", s.queues); err != nil {
			return err
		}
	}
	return nil
}

func encodeAll(enc *msgpack.Encoder, key string, v any) error {
	if err := enc.EncodeString(key); err != nil {
		return err
	}
	return enc.Encode(v)
}

// Release implements raft.FSMSnapshot.
func (s *snapshot) Release() { s.released.Do(s.arena.unpin) }

// Restore implements raft.FSM: it replaces the whole state with the snapshot's. It decodes one
// record at a time into a new store, built outside the lock; the swap is all Apply waits for.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := decodeSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	var aclState acl.State
	if s.acl != nil {
		aclState = *s.acl
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halt != nil { // the entries after the snapshot would halt it again; restart on a newer build
		return fmt.Errorf("restore snapshot: %w", f.halt)
	}
	// First, as it validates everything before it changes anything: a bad ACL state leaves the
	// whole FSM as it was.
	if err := f.acl.Restore(aclState); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.tasks = s.store
	f.unique = s.unique
	f.nodes = make(map[string]*Node, len(s.nodes))
	for i := range s.nodes {
		f.nodes[s.nodes[i].Name] = &s.nodes[i]
	}
	f.security = Security{}
	if s.security != nil {
		f.security = s.security.hashed()
	}
	f.schedules = make(map[string]*Schedule, len(s.schedules))
	for i := range s.schedules {
		f.schedules[s.schedules[i].Name] = &s.schedules[i]
	}
	f.wakeSchedules()
	f.queues = queueTables{}
	if s.queues != nil {
		f.queues = *s.queues
	}
	f.index = s.index
	f.watches.touchAll()
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

// restored is a decoded snapshot.
type restored struct {
	index     uint64
	store     *store
	nodes     []Node
	acl       *acl.State
	security  *Security
	schedules []Schedule // absent in snapshots before schedules, or without any
	unique    *uniqueTable
	queues    *queueTables
}

// decodeSnapshot reads the snapshot map key by key, the tasks one by one, so a million records
// never sit in memory twice; keys it does not know are skipped, as msgpack.Unmarshal did.
func decodeSnapshot(r io.Reader) (s *restored, err error) {
	defer func() {
		if p := recover(); p != nil { // msgpack v5 panics on some malformed input
			s, err = nil, fmt.Errorf("malformed msgpack: %v", p)
		}
	}()
	br := bufio.NewReaderSize(r, restoreBuffer)
	dec := msgpack.NewDecoder(br) // a *bufio.Reader is read directly, without a buffer of its own
	s = &restored{store: newStore(), unique: newUniqueTable()}
	n, err := dec.DecodeMapLen()
	if err != nil {
		return nil, err
	}
	for range max(n, 0) {
		key, err := dec.DecodeString()
		if err != nil {
			return nil, err
		}
		switch key {
		case "index":
			err = dec.Decode(&s.index)
		case "tasks":
			err = decodeTasks(dec, br, s.store)
		case "nodes":
			err = dec.Decode(&s.nodes)
		case "acl":
			err = dec.Decode(&s.acl)
		case "security":
			err = dec.Decode(&s.security)
		case "schedules":
			err = dec.Decode(&s.schedules)
		case "unique": // absent in snapshots of states without unique locks, and of older builds
			err = decodeUnique(dec, s.unique)
		case "queues":
			err = dec.Decode(&s.queues)
		default:
			err = dec.Skip()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	return s, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
