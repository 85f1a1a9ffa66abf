package fsm

import "sync"

// watches hands out channels closed on the next change of one task or of one list index, the way
// memdb's WatchSet serves Consul's and Nomad's blocking queries: a blocking read wakes for what it
// reads, not for every entry of the log. Channels exist only while someone waits on them, so a
// change nobody watches costs a map lookup.
type watches struct {
	mu sync.Mutex
	ch map[watchKey]chan struct{}
}

type watchKind uint8

const (
	watchTask  watchKind = iota // one task, by ID
	watchAll                    // any task
	watchState                  // tasks entering or leaving a state
	watchType
	watchNode
	watchExec
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
	}
	return c
}

func (w *watches) fire(k watchKey) {
	if c, ok := w.ch[k]; ok {
		close(c)
		delete(w.ch, k)
	}
}

// touch wakes whoever watches old or next (either may be nil: a new or a removed task), or a
// list either is in: what a change from old to next wakes.
func (w *watches) touch(old, next *Task) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ch) == 0 {
		return
	}
	for _, t := range [2]*Task{old, next} {
		if t != nil {
			w.fireKeys(watchKeysOf(t))
		}
	}
}

// touchKeys wakes whoever watches a record with keys k, or a list it is in.
func (w *watches) touchKeys(k watchKeys) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ch) == 0 {
		return
	}
	w.fireKeys(k)
}

// watchKeys are what a record is watched by: its ID and the lists it is in.
type watchKeys struct {
	id, state, typ, exec, node string
}

func watchKeysOf(t *Task) watchKeys {
	return watchKeys{id: t.ID, state: string(t.State), typ: t.Type, exec: t.ExecutionID, node: t.Node}
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
}
