package fsm

import "time"

// Transition kinds an Observer receives. They name what happened to a task, not the history
// event that recorded it: a failed attempt that is retried is KindRetried, one that ends the task
// KindFailed, and one that ends it because a cancel was asked for KindCancelled.
const (
	KindSubmitted   = "submitted"
	KindStarted     = "started"
	KindSucceeded   = "succeeded"
	KindFailed      = "failed"
	KindRetried     = "retried"
	KindInterrupted = "interrupted"
	KindCancelled   = "cancelled"
)

// Transition is one change of one task inside an applied log entry, for metrics. Durations are
// computed from the timestamps the commands carry, so every replica sees the same values.
type Transition struct {
	Kind   string
	TaskID string
	Type   string
	Node   string // the node holding the attempt; empty for submits and pending cancels
	// Waited is set on KindStarted: how long the task waited since it last became pending (its
	// creation, or the failure or interruption that requeued it, backoff included).
	Waited time.Duration
	// Ran is set (with HasRun) on the transition that ends an attempt that had started: how
	// long the attempt ran.
	Ran    time.Duration
	HasRun bool
}

// Observer receives the transitions of each applied entry, after the FSM's lock is released and
// in log order. It must not block for long (raft's apply loop waits for it) and must not call back
// into Apply. It only watches: nothing it does changes the replicated state.
type Observer func(index uint64, ts []Transition)

// SetObserver installs o (nil removes it). Install it before raft starts applying, so that no
// entry is missed; entries restored from a snapshot produce no transitions.
func (f *FSM) SetObserver(o Observer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.observer = o
}

// note records a transition for the observer. f.mu is held. Without an observer it costs nothing.
func (f *FSM) note(tr Transition) {
	if f.observer != nil {
		f.transitions = append(f.transitions, tr)
	}
}

// noteFinish records the end of t's current attempt at now. wasRunning says whether the attempt
// had started (its StartedAt is then this attempt's).
func (f *FSM) noteFinish(kind string, t *Task, node string, wasRunning bool, now time.Time) {
	tr := Transition{Kind: kind, TaskID: t.ID, Type: t.Type, Node: node}
	if wasRunning && t.StartedAt != nil {
		tr.Ran, tr.HasRun = now.Sub(*t.StartedAt), true
	}
	f.note(tr)
}

// pendingSince is when t, about to start, last became pending: the entry before its latest
// assignment (a failure or interruption that requeued it), or its creation.
func pendingSince(t *Task) time.Time {
	for i := len(t.History) - 1; i >= 0; i-- {
		if t.History[i].Event == EventAssigned {
			if i > 0 {
				return t.History[i-1].At
			}
			break
		}
	}
	return t.CreatedAt
}
