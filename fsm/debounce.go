package fsm

import (
	"fmt"
	"time"
)

// Debounced submits. A submit with a debounce key (Submit.DebounceKey) and a window
// (Submit.Debounce) makes a task that is scheduled for the window after the command's time. While
// that task has not been assigned, a submit of its type with the same key adds no task: it gives
// the waiting task its input and the window again from its own command's time, and answers with
// the waiting task's ID (ItemResult.Existing). So the task runs once the key has been quiet for a
// window, with the newest input, and every submitter of the burst holds the ID of that run. Once
// the task was assigned (it started, or is about to), a submit with the key makes a new task.
//
// Only the input and the window are taken from a later submit; the first submit's other fields
// (priority, queue, attempts, timeout, rate limit) stay.

// debounceKey names a debounce: a task type, the submitter (Submit.SubmittedBy, "" without ACLs)
// and a key. With ACLs on, one principal's submits never replace another's input, nor learn the
// ID of another's task, whatever key they name.
type debounceKey struct {
	typ, by, key string
}

// debounceOpen reports whether t still takes a later submit's input: a debounced task that was
// never assigned and is not being cancelled.
func debounceOpen(t *Task) bool {
	return t.DebounceKey != "" && t.Attempt == 0 && !t.CancelRequested && (t.State == Scheduled || t.State == Pending)
}

// debounce applies the debounce part of submit s: done with the item's result when s replaced
// the input of the task waiting under its key (or is invalid), not done when s makes a new task.
func (f *FSM) debounce(index uint64, now time.Time, s *Submit) (ItemResult, bool) {
	if s.DebounceKey == "" || s.Debounce <= 0 || time.Duration(s.Debounce) > MaxDebounce {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: a debounce needs a key and a window in (0, %s]", ErrBadCommand, MaxDebounce)}, true
	}
	if s.RunAt != nil || s.UniqueKey != "" {
		return ItemResult{ID: s.ID, Err: fmt.Errorf("%w: a debounced submit has no run_at and no unique key", ErrBadCommand)}, true
	}
	id, ok := f.tasks.debounce[debounceKey{s.Type, s.SubmittedBy, s.DebounceKey}]
	if !ok {
		return ItemResult{}, false
	}
	if id == s.ID { // a second copy of the submit that made the task
		return ItemResult{ID: id, Err: ErrDuplicateID}, true
	}
	old, ok := f.tasks.get(id)
	if !ok || !debounceOpen(old) {
		return ItemResult{}, false
	}
	t := old.cow()
	t.Input = s.Input
	t.Debounce = s.Debounce
	runAt := now.Add(time.Duration(s.Debounce))
	t.RunAt = &runAt
	t.State = Scheduled
	t.ModifyIndex = index
	f.save(old, t)
	return ItemResult{ID: id, Existing: true}, true
}
