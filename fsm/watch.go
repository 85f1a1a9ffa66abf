package fsm

import "sync"

// watches hands out channels closed on the next change of one task or of one list index, the way
// memdb's WatchSet serves Consul's and Nomad's blocking queries: a blocking read wakes for what it
// reads, not for every entry of the log. Channels exist only while someone waits on them, so a
// change nobody watches costs a map lookup.
type watches struct {
	mu sync.Mutex
	ch map[watchKey]chan struct{}
	// n counts ch's channels per kind: a change costs no lookup for a kind nobody watches (under
	// load, mostly single tasks are watched, by waiting submitters).
	n [watchKinds]int
}

type watchKind uint8

const (
	watchTask  watchKind = iota // one task, by ID
	watchAll                    // any task
	watchState                  // tasks entering or leaving a state
	watchType
	watchNode
	watchExec
	watchKinds // how many kinds there are
)

type watchKey struct {
	kind watchKind
	v    string
}

// get returns the channel for k, made on first use. Callers read the state with f.mu held (read
// or write), and touch runs with f.mu held for writing, so no change slips between the read and
// the channel.
func (w *watches) get(k watchKey) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = map[watchKey]chan struct{}{}
	}
	c, ok := w.ch[k]
	if !ok {
		c = make(chan struct{})
		w.ch[k] = c
		w.n[k.kind]++
	}
	return c
}

func (w *watches) fire(k watchKey) {
	if w.n[k.kind] == 0 {
		return
	}
	if c, ok := w.ch[k]; ok {
		close(c)
		delete(w.ch, k)
		w.n[k.kind]--
	}
}

// touch wakes whoever watches old or next (either may be nil: a new or a removed task), or a
// list either is in: what a change from old to next wakes. A key the two share is looked up
// once (a fired channel is gone until the next read, which waits for f.mu).
func (w *watches) touch(old, next *Task) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ch) == 0 {
		return
	}
	switch {
	case old == nil:
		w.fireKeys(watchKeysOf(next))
	case next == nil:
		w.fireKeys(watchKeysOf(old))
	default:
		w.fireKeys(watchKeysOf(old))
		w.fireOthers(watchKeysOf(next), watchKeysOf(old))
	}
}

// touchVia wakes whoever watches a list that mid, a record the task passed through between old
// and next (touch woke theirs), is in.
func (w *watches) touchVia(old, mid, next watchKeys) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ch) == 0 {
		return
	}
	w.fireOthers(mid, old, next)
}

// watchKeys are what a record is watched by: its ID and the lists it is in.
type watchKeys struct {
	id, state, typ, exec, node string
}

func watchKeysOf(t *Task) watchKeys {
	return watchKeys{id: t.ID, state: string(t.State), typ: t.Type, exec: t.ExecutionID, node: t.Node}
}

// fireOthers fires k's keys but those a record of fired shares, fired already. All of k's keys
// when one of fired is another task; otherwise it is the same task, so only its state, type,
// execution and node may differ.
func (w *watches) fireOthers(k watchKeys, fired ...watchKeys) {
	state, typ, exec, node := true, true, true, k.node != ""
	for _, f := range fired {
		if f.id != k.id {
			w.fireKeys(k)
			return
		}
		state, typ = state && f.state != k.state, typ && f.typ != k.typ
		exec, node = exec && f.exec != k.exec, node && f.node != k.node
	}
	if state {
		w.fire(watchKey{watchState, k.state})
	}
	if typ {
		w.fire(watchKey{watchType, k.typ})
	}
	if exec {
		w.fire(watchKey{watchExec, k.exec})
	}
	if node {
		w.fire(watchKey{watchNode, k.node})
	}
}

func (w *watches) fireKeys(k watchKeys) {
	w.fire(watchKey{watchTask, k.id})
	w.fire(watchKey{watchAll, ""})
	w.fire(watchKey{watchState, k.state})
	w.fire(watchKey{watchType, k.typ})
	w.fire(watchKey{watchExec, k.exec})
	if k.node != "" {
		w.fire(watchKey{watchNode, k.node})
	}
}

// touchAll wakes every watcher (a restore replaced the state).
func (w *watches) touchAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, c := range w.ch {
		close(c)
		delete(w.ch, k)
	}
	w.n = [watchKinds]int{}
}
