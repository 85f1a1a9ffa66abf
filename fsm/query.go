package fsm

import "time"

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
	t, ok := f.tasks[id]
	if !ok {
		return Task{}, false
	}
	return t.clone(), true
}

// TaskWatch returns a copy of one task and a channel closed on the next change of the FSM,
// read atomically so no change between the two is missed.
func (f *FSM) TaskWatch(id string) (Task, bool, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.tasks[id]
	if !ok {
		return Task{}, false, f.changed
	}
	return t.clone(), true, f.changed
}

// Filter selects tasks for List. Empty fields match everything.
type Filter struct {
	State       State
	Type        string
	Node        string
	ExecutionID string
	After       string // return tasks older than this ID (paging, newest first)
	Limit       int    // 0 = no limit
	// Visible, when set, keeps only tasks of the types it accepts (what an ACL caller may read);
	// Limit counts visible tasks, so a page is full whenever enough of them exist.
	Visible func(taskType string) bool
}

func (q *Filter) match(t *Task) bool {
	return (q.State == "" || t.State == q.State) &&
		(q.Type == "" || t.Type == q.Type) &&
		(q.Node == "" || t.Node == q.Node) &&
		(q.ExecutionID == "" || t.ExecutionID == q.ExecutionID) &&
		(q.Visible == nil || q.Visible(t.Type))
}

// List returns matching tasks, newest first.
func (f *FSM) List(q Filter) []Task {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Task
	start := len(f.order) - 1
	if q.After != "" {
		// Tasks older than After: by position when it still exists, else by ID (IDs sort by time).
		_, exists := f.tasks[q.After]
		for start >= 0 && (exists && f.order[start] != q.After || !exists && f.order[start] >= q.After) {
			start--
		}
		if exists {
			start--
		}
	}
	for i := start; i >= 0; i-- {
		t, ok := f.tasks[f.order[i]]
		if !ok || !q.match(t) {
			continue
		}
		out = append(out, t.clone())
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out
}

// Counts returns the number of tasks in every state (all states present).
func (f *FSM) Counts() map[State]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := make(map[State]int, len(States))
	for _, s := range States {
		c[s] = f.done[s]
	}
	c[Pending] = len(f.pending)
	for _, t := range f.active {
		c[t.State]++
	}
	return c
}

// Node returns a copy of one node.
func (f *FSM) Node(name string) (Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.nodes[name]
	if !ok {
		return Node{}, false
	}
	return n.clone(), true
}

// Nodes returns every registered node, sorted by name.
func (f *FSM) Nodes() []Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Node, 0, len(f.nodes))
	for _, name := range sortedKeys(f.nodes) {
		out = append(out, f.nodes[name].clone())
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
	load := map[string]int{}
	for _, t := range f.active {
		load[t.Node]++
	}
	return load
}

// Active returns copies of the tasks a node holds (assigned or running), oldest first.
func (f *FSM) Active(node string) []Task {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Task
	for _, t := range f.activeOn(node) {
		out = append(out, t.clone())
	}
	return out
}

// View is a consistent copy of what the scheduler needs.
type View struct {
	Index   uint64
	Pending []Task // oldest first
	Nodes   []Node // sorted by name
	Load    map[string]int
}

// SchedulerView copies pending tasks, nodes and their load under one lock.
func (f *FSM) SchedulerView() View {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v := View{Index: f.index, Load: f.loadLocked()}
	v.Pending = make([]Task, len(f.pending))
	for i, t := range f.pending {
		v.Pending[i] = *t
		v.Pending[i].History = nil // placement needs none of it; skip the copy
	}
	for _, name := range sortedKeys(f.nodes) {
		v.Nodes = append(v.Nodes, f.nodes[name].clone())
	}
	return v
}

// Expired returns IDs of finished tasks whose FinishedAt is before cutoff, oldest first, at most limit.
func (f *FSM) Expired(cutoff time.Time, limit int) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []string
	for _, id := range f.order {
		t, ok := f.tasks[id]
		if ok && t.State.Terminal() && t.FinishedAt != nil && t.FinishedAt.Before(cutoff) {
			out = append(out, id)
			if len(out) == limit {
				break
			}
		}
	}
	return out
}

// PendingByType returns how many tasks wait in pending, by task type.
func (f *FSM) PendingByType() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := make(map[string]int)
	for _, t := range f.pending {
		c[t.Type]++
	}
	return c
}
