package fsm

import (
	"github.com/hashicorp/raft"
)

var _ raft.BatchingFSM = (*FSM)(nil)

// ApplyBatch implements raft.BatchingFSM: it applies committed entries in log order with the
// same results, state and digest as Apply on each in turn, but takes the lock once and wakes
// watchers (Changed) once for the whole batch. Entries are decoded before the lock is taken, so
// readers wait only for the changes themselves.
//
// Entries other than commands (raft passes configuration changes too) change nothing and answer
// nil. An entry that cannot be decoded halts the FSM as Apply does: the entries before it are
// applied, it and every later entry answer the halt error, and the applied index stays at the
// last entry applied. The observer gets each entry's transitions after the lock is released, in
// log order, one call per entry, as with Apply.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	if len(logs) == 0 {
		return []any{}
	}
	cmds := make([]*Command, len(logs))
	bad, badErr := len(logs), error(nil)
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := Decode(l.Data)
		if err != nil {
			// Nothing after it is applied: no need to decode the rest.
			bad, badErr = i, err
			break
		}
		cmds[i] = c
	}
	return f.applyDecoded(logs, cmds, bad, badErr)
}

// applyDecoded applies logs whose commands are decoded in cmds, up to the entry bad, which did
// not decode (badErr) and halts the FSM; bad is len(logs) when every entry decoded. It is
// ApplyBatch after decoding, and ApplyCommand's way in.
func (f *FSM) applyDecoded(logs []*raft.Log, cmds []*Command, bad int, badErr error) []any {
	out := make([]any, len(logs))
	// marks[i] is where entry i's transitions end in f.transitions, for the observer.
	var marks []int
	f.mu.Lock()
	obs := f.observer
	if obs != nil {
		marks = make([]int, len(logs))
	}
	var applied uint64
	bumped := false
	for i, l := range logs {
		if marks != nil && i > 0 {
			marks[i-1] = len(f.transitions)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		if i == bad && f.halt == nil {
			f.halt = newHaltError(l.Index, badErr)
			close(f.haltedCh)
		}
		if i >= bad {
			out[i] = &Result{Index: l.Index, Err: f.halt}
			continue
		}
		out[i] = f.applyLocked(l.Index, cmds[i])
		if f.halt == nil {
			applied, bumped = max(applied, l.Index), true
		}
		if f.keyObserver != nil {
			f.keyObserver(l.Index, f.tasks.activeKey)
		}
	}
	if marks != nil {
		marks[len(logs)-1] = len(f.transitions)
	}
	if bumped {
		f.bump(applied)
	}
	ts := f.transitions
	f.transitions = nil
	f.mu.Unlock()

	if obs != nil && len(ts) > 0 {
		start := 0
		for i, end := range marks {
			if end > start {
				obs(logs[i].Index, ts[start:end:end])
			}
			start = end
		}
	}
	return out
}
