package fsm

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/acl"
)

// FSM is the replicated state machine. It is safe for concurrent readers while raft applies.
type FSM struct {
	mu    sync.RWMutex
	tasks map[string]*Task
	order []string // task IDs by CreateIndex, oldest first
	// Indexes over unfinished tasks, the hot set every watcher and the scheduler read.
	pending []*Task          // pending tasks, oldest first (by CreateIndex, then ID)
	active  map[string]*Task // assigned or running tasks
	done    map[State]int    // how many finished tasks are in each terminal state
	idem    map[string]string
	nodes   map[string]*Node
	acl     *acl.MemStore // policies, tokens, bootstrap flag (acl.go); same pointer for life
	// security is the join secret and gossip keyring (security.go).
	security Security
	index    uint64
	changed  chan struct{}
	// halt is set when a log entry could not be applied; from then on nothing changes.
	halt     error
	haltedCh chan struct{}
	// observer and the transitions of the entry being applied (observe.go): scratch for metrics,
	// never part of the replicated state.
	observer    Observer
	transitions []Transition
}

// New returns an empty FSM.
func New() *FSM {
	return &FSM{
		tasks:    map[string]*Task{},
		active:   map[string]*Task{},
		done:     map[State]int{},
		idem:     map[string]string{},
		nodes:    map[string]*Node{},
		acl:      acl.NewMemStore(),
		changed:  make(chan struct{}),
		haltedCh: make(chan struct{}),
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
	items := make([]ItemResult, 0, len(p.Items))
	for i := range p.Items {
		items = append(items, f.submit(index, now, &p.Items[i]))
	}
	return items, nil
}

func (f *FSM) applyAssign(index uint64, now time.Time, p *AssignBatch) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.Items))
	for _, a := range p.Items {
		prev := f.stateOf(a.TaskID)
		items = append(items, f.assign(index, now, a))
		f.reindex(a.TaskID, prev)
	}
	return items, nil
}

func (f *FSM) applyReport(index uint64, now time.Time, p *ReportBatch) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.Items))
	for i := range p.Items {
		prev := f.stateOf(p.Items[i].TaskID)
		items = append(items, f.report(index, now, &p.Items[i]))
		f.reindex(p.Items[i].TaskID, prev)
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
		prev := f.stateOf(id)
		items = append(items, f.cancel(index, now, id))
		f.reindex(id, prev)
	}
	return items, nil
}

func (f *FSM) applyRemove(_ uint64, _ time.Time, p *Remove) ([]ItemResult, error) {
	items := make([]ItemResult, 0, len(p.IDs))
	for _, id := range p.IDs {
		items = append(items, f.remove(id))
	}
	f.compact()
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

func (f *FSM) submit(index uint64, now time.Time, s *Submit) ItemResult {
	if s.IdempotencyKey != "" {
		if id, ok := f.idem[s.IdempotencyKey]; ok {
			return ItemResult{ID: id, Existing: true}
		}
	}
	if s.ID == "" || s.Type == "" {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: submit needs id and type", ErrBadCommand)}
	}
	if _, ok := f.tasks[s.ID]; ok {
		return ItemResult{ID: s.ID, Err: ErrDuplicateID}
	}
	maxAttempts := s.MaxAttempts
	if maxAttempts < 1 {
		maxAttempts = 1
	}
	t := &Task{
		ID: s.ID, Type: s.Type, Version: s.Version, Input: s.Input,
		State: Pending, MaxAttempts: maxAttempts, Timeout: s.Timeout,
		IdempotencyKey: s.IdempotencyKey, ExecutionID: s.ExecutionID, ParentID: s.ParentID,
		SubmittedBy: s.SubmittedBy, CreatedAt: now, CreateIndex: index, ModifyIndex: index,
	}
	if t.ExecutionID == "" {
		t.ExecutionID = t.ID
	}
	f.tasks[t.ID] = t
	f.enter(t)
	f.note(Transition{Kind: KindSubmitted, TaskID: t.ID, Type: t.Type})
	f.order = append(f.order, t.ID)
	if t.IdempotencyKey != "" {
		f.idem[t.IdempotencyKey] = t.ID
	}
	return ItemResult{ID: t.ID}
}

func (f *FSM) assign(index uint64, now time.Time, a Assign) ItemResult {
	t, ok := f.tasks[a.TaskID]
	if !ok {
		return ItemResult{ID: a.TaskID, Err: ErrNotFound}
	}
	n, ok := f.nodes[a.Node]
	if t.State != Pending || t.CancelRequested || !ok || n.Status != NodeUp || n.Draining || n.BootID != a.BootID {
		return ItemResult{ID: a.TaskID, Err: ErrNotPlaceable}
	}
	t.State = Assigned
	t.Node, t.BootID = a.Node, a.BootID
	t.Attempt++
	t.NotBefore = nil
	t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: a.Node, Event: EventAssigned, At: now})
	t.ModifyIndex = index
	return ItemResult{ID: t.ID}
}

func (f *FSM) report(index uint64, now time.Time, r *Report) ItemResult {
	t, ok := f.tasks[r.TaskID]
	if !ok {
		return ItemResult{ID: r.TaskID, Err: ErrNotFound}
	}
	if !t.State.Active() || t.Node != r.Node || t.BootID != r.BootID || t.Attempt != r.Attempt {
		return ItemResult{ID: r.TaskID, Err: ErrStale}
	}
	entry := HistoryEntry{Attempt: t.Attempt, Node: t.Node, At: now}
	wasRunning, node := t.State == Running, t.Node
	switch r.Kind {
	case ReportStarted:
		if t.State == Running {
			return ItemResult{ID: t.ID}
		}
		f.note(Transition{Kind: KindStarted, TaskID: t.ID, Type: t.Type, Node: t.Node, Waited: now.Sub(pendingSince(t))})
		t.State = Running
		at := now
		t.StartedAt = &at
		entry.Event = EventStarted
	case ReportCheckpoint:
		t.Checkpoint = r.Checkpoint
		t.ModifyIndex = index
		return ItemResult{ID: t.ID}
	case ReportSucceeded:
		t.State = Succeeded
		t.Result = r.Result
		t.Error = nil
		t.finish(now)
		entry.Event = EventSucceeded
		f.noteFinish(KindSucceeded, t, node, wasRunning, now)
	case ReportFailed:
		if r.Error == nil {
			r.Error = &TaskError{Type: "task_error", Message: "failed"}
		}
		t.Failures++
		t.Error = r.Error
		entry.Event, entry.Error = EventFailed, r.Error.Message
		kind := KindRetried
		if t.Failures >= t.MaxAttempts || t.CancelRequested {
			t.State, kind = Failed, KindFailed
			if t.CancelRequested {
				t.State, kind = Cancelled, KindCancelled
			}
			t.finish(now)
		} else {
			t.requeue()
			t.NotBefore = r.NotBefore
		}
		f.noteFinish(kind, t, node, wasRunning, now)
	case ReportCancelled:
		t.State = Cancelled
		t.finish(now)
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
		t.finish(now)
		return
	}
	t.requeue()
}

func (t *Task) requeue() {
	t.State = Pending
	t.Node, t.BootID = "", ""
}

func (t *Task) finish(now time.Time) {
	at := now
	t.FinishedAt = &at
	t.NotBefore = nil
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
	for _, t := range f.activeOn(name) {
		prev := t.State
		t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: name, Event: EventInterrupted, At: now, Error: reason})
		f.noteFinish(KindInterrupted, t, name, prev == Running, now)
		f.interrupt(t, now)
		if t.State == Cancelled {
			t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Node: name, Event: EventCancelled, At: now})
			f.note(Transition{Kind: KindCancelled, TaskID: t.ID, Type: t.Type, Node: name})
		}
		t.ModifyIndex = index
		f.reindex(t.ID, prev)
	}
}

// activeOn returns the tasks a node holds, oldest first.
func (f *FSM) activeOn(node string) []*Task {
	var out []*Task
	for _, t := range f.active {
		if t.Node == node {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, byAge)
	return out
}

func byAge(a, b *Task) int {
	return cmp.Or(cmp.Compare(a.CreateIndex, b.CreateIndex), cmp.Compare(a.ID, b.ID))
}

func (f *FSM) stateOf(id string) State {
	if t, ok := f.tasks[id]; ok {
		return t.State
	}
	return ""
}

// reindex moves a task between the indexes after its state changed from prev.
func (f *FSM) reindex(id string, prev State) {
	t, ok := f.tasks[id]
	if !ok || t.State == prev {
		return
	}
	switch {
	case prev == Pending:
		i, found := slices.BinarySearchFunc(f.pending, t, byAge)
		if found {
			f.pending = slices.Delete(f.pending, i, i+1)
		}
	case prev.Active():
		delete(f.active, id)
	}
	f.enter(t)
}

// enter adds a task to the index of its current state.
func (f *FSM) enter(t *Task) {
	switch {
	case t.State == Pending:
		i, _ := slices.BinarySearchFunc(f.pending, t, byAge)
		f.pending = slices.Insert(f.pending, i, t)
	case t.State.Active():
		f.active[t.ID] = t
	case t.State.Terminal():
		f.done[t.State]++
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
	t, ok := f.tasks[id]
	if !ok {
		return ItemResult{ID: id, Err: ErrNotFound}
	}
	switch {
	case t.State.Terminal():
		return ItemResult{ID: id, Err: ErrFinished}
	case t.State == Pending:
		t.State = Cancelled
		t.finish(now)
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
	t, ok := f.tasks[id]
	if !ok {
		return ItemResult{ID: id, Err: ErrNotFound}
	}
	if !t.State.Terminal() {
		return ItemResult{ID: id, Err: fmt.Errorf("%w: task is %s", ErrBadCommand, t.State)}
	}
	delete(f.tasks, id)
	f.done[t.State]--
	if t.IdempotencyKey != "" && f.idem[t.IdempotencyKey] == id {
		delete(f.idem, t.IdempotencyKey)
	}
	return ItemResult{ID: id}
}

// compact drops removed tasks from the creation order.
func (f *FSM) compact() {
	f.order = slices.DeleteFunc(f.order, func(id string) bool { _, ok := f.tasks[id]; return !ok })
}

// snapshotState is the msgpack form of a snapshot.
type snapshotState struct {
	Index uint64 `msgpack:"index"`
	Tasks []Task `msgpack:"tasks"`
	Nodes []Node `msgpack:"nodes"`
	// ACL is absent in snapshots of builds before ACLs and of clusters that never used them.
	ACL *acl.State `msgpack:"acl,omitempty"`
	// Security is absent in snapshots of clusters that never had any (and of older releases).
	Security *Security `msgpack:"security,omitempty"`
}

// Snapshot implements raft.FSM. It copies the state under the lock; encoding happens in Persist.
// A halted FSM refuses: raft would record its state as that of a later index, which it is not.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.halt != nil {
		return nil, fmt.Errorf("snapshot: %w", f.halt)
	}
	s := &snapshotState{Index: f.index, Tasks: make([]Task, 0, len(f.tasks)), Nodes: make([]Node, 0, len(f.nodes))}
	for _, id := range f.order {
		if t, ok := f.tasks[id]; ok {
			s.Tasks = append(s.Tasks, t.clone())
		}
	}
	for _, name := range sortedKeys(f.nodes) {
		s.Nodes = append(s.Nodes, f.nodes[name].clone())
	}
	if st := f.acl.State(); st.Bootstrapped || len(st.Policies) > 0 || len(st.Tokens) > 0 {
		s.ACL = &st
	}
	if !f.security.zero() {
		sec := f.security.clone()
		s.Security = &sec
	}
	return s, nil
}

// Persist writes the snapshot.
func (s *snapshotState) Persist(sink raft.SnapshotSink) error {
	if err := msgpack.NewEncoder(sink).Encode(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (s *snapshotState) Release() {}

// Restore implements raft.FSM: it replaces the whole state with the snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	var s snapshotState
	if err := Unmarshal(data, &s); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	var aclState acl.State
	if s.ACL != nil {
		aclState = *s.ACL
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
	f.tasks = make(map[string]*Task, len(s.Tasks))
	f.order = make([]string, 0, len(s.Tasks))
	f.idem = map[string]string{}
	f.pending = nil
	f.active = map[string]*Task{}
	f.done = map[State]int{}
	sort.SliceStable(s.Tasks, func(i, j int) bool { return s.Tasks[i].CreateIndex < s.Tasks[j].CreateIndex })
	for i := range s.Tasks {
		t := &s.Tasks[i]
		f.tasks[t.ID] = t
		f.order = append(f.order, t.ID)
		f.enter(t)
		if t.IdempotencyKey != "" {
			f.idem[t.IdempotencyKey] = t.ID
		}
	}
	f.nodes = make(map[string]*Node, len(s.Nodes))
	for i := range s.Nodes {
		f.nodes[s.Nodes[i].Name] = &s.Nodes[i]
	}
	f.security = Security{}
	if s.Security != nil {
		f.security = *s.Security
	}
	f.index = s.Index
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
