package fsm

import (
	"fmt"
	"slices"
	"time"
)

// Waiting for child tasks. A running task that has submitted children may end its attempt with
// a wait report (ReportWait) naming some of them: fenced as every report, it makes the task
// Waiting, holding no slot on any node, with the children in WaitFor and how many of them have
// not finished in WaitLeft. Whenever one of them finishes (succeeds, fails for good, is
// cancelled), in whatever entry makes it finish, WaitLeft goes down; the entry that finishes the
// last one makes the task Pending again (EventResumed), and the scheduler places it as any
// other. Its next attempt reads the children's records through WaitFor. A wait whose children
// have all finished already resumes the task in the entry that applies it.
//
// A wait is not a failure: it leaves Failures, and so max_attempts, alone. Cancelling a waiting
// task cancels it at once, and with it every child it waits for that has not finished (as
// Temporal and Hatchet cancel child workflows with their parent); a task asked to cancel while
// running that then reports a wait is cancelled in the same way. A child's failure resumes its
// parent like a success: the parent reads its state and error and decides.
//
// A wait that names a task that is not a child of the waiting task (ParentID), or no task, or
// more than MaxWaitChildren, fails the task at once with a final error "invalid_wait": the run
// that sent it is broken, and another attempt would send it again.

// WaitProtocol is the protocol that introduced waiting for child tasks.
const WaitProtocol = 10

// MaxWaitChildren is the most child tasks one wait may name.
const MaxWaitChildren = 10_000

// ErrTypeInvalidWait is the error type of a task failed for an invalid wait.
const ErrTypeInvalidWait = "invalid_wait"

// KindWaiting is the transition of an attempt that ended to wait for child tasks.
const KindWaiting = "waiting"

// wait applies a wait report for old, the stored record, already fenced. f.mu is held.
func (f *FSM) wait(index uint64, now time.Time, old *Task, r *Report) ItemResult {
	t := old.cow()
	wasRunning, node := t.State == Running, t.Node
	entry := HistoryEntry{Attempt: t.Attempt, Node: node, At: now}
	ids, err := f.checkWait(old, r.WaitFor)
	if err != nil {
		t.Failures++
		t.Error = &TaskError{Type: ErrTypeInvalidWait, Message: err.Error(), Final: true}
		t.State = Failed
		kind := KindFailed
		if t.CancelRequested {
			t.State, kind = Cancelled, KindCancelled
		}
		t.finish(f.stamp(now))
		entry.Event, entry.Error, entry.Final = EventFailed, t.Error.Message, true
		f.noteFinish(kind, t, node, wasRunning, now)
		t.History = append(t.History, entry)
		t.ModifyIndex = index
		f.save(old, t)
		return ItemResult{ID: t.ID}
	}
	entry.Event = EventWaiting
	t.History = append(t.History, entry)
	t.WaitFor, t.WaitLeft = ids, 0
	for _, id := range ids {
		if c, ok := f.tasks.get(id); ok && !c.State.Terminal() {
			t.WaitLeft++
		}
	}
	f.noteFinish(KindWaiting, t, node, wasRunning, now)
	t.Node, t.BootID = "", ""
	t.ModifyIndex = index
	switch {
	case t.CancelRequested:
		t.State = Waiting // cancelWaiting takes it from here, children and all
		f.save(old, t)
		stored, _ := f.tasks.get(t.ID)
		f.cancelWaiting(index, now, stored)
		return ItemResult{ID: t.ID}
	case t.WaitLeft == 0:
		t.State = Pending
		t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Event: EventResumed, At: now})
	default:
		t.State = Waiting
	}
	f.save(old, t)
	return ItemResult{ID: t.ID}
}

// checkWait returns the children a wait of t names, sorted and without repeats, or why the wait
// is invalid.
func (f *FSM) checkWait(t *Task, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("a wait must name at least one child task")
	}
	if len(ids) > MaxWaitChildren {
		return nil, fmt.Errorf("a wait may name at most %d child tasks, this one names %d", MaxWaitChildren, len(ids))
	}
	out := slices.Clone(ids)
	slices.Sort(out)
	out = slices.Compact(out)
	for _, id := range out {
		c, ok := f.tasks.get(id)
		if !ok || c.ParentID != t.ID {
			return nil, fmt.Errorf("task %q is not a child of task %s", truncate(id), t.ID)
		}
	}
	return out, nil
}

// cancelWaiting cancels old, a stored Waiting task, then the children it waits for that have not
// finished. f.mu is held.
func (f *FSM) cancelWaiting(index uint64, now time.Time, old *Task) {
	t := old.cow()
	t.State = Cancelled
	t.WaitLeft = 0
	t.finish(f.stamp(now))
	t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Event: EventCancelled, At: now})
	t.ModifyIndex = index
	f.note(Transition{Kind: KindCancelled, TaskID: t.ID, Type: t.Type})
	// Saved before its children are cancelled: their changes look at the parent's stored record.
	f.save(old, t)
	for _, id := range t.WaitFor {
		if c, ok := f.tasks.get(id); ok && !c.State.Terminal() {
			f.cancel(index, now, id)
		}
	}
}

// childChanged notes a child task that finished, or was sent back to run by a retry, for its
// parent's wait, if the parent waits for it now. save calls it, in whatever entry the child
// changed; advanceWaits counts the notes at the end of the entry, once per parent. A parent that
// starts to wait later in the entry counts the child's state itself. f.mu is held.
func (f *FSM) childChanged(child *Task) {
	p, ok := f.tasks.get(child.ParentID)
	if !ok || p.State != Waiting {
		return
	}
	if _, found := slices.BinarySearch(p.WaitFor, child.ID); !found {
		return
	}
	if f.waitDeltas == nil {
		f.waitDeltas = map[string]int{}
	}
	if child.State.Terminal() {
		f.waitDeltas[p.ID]--
	} else {
		f.waitDeltas[p.ID]++
	}
}

// advanceWaits applies the entry's notes (childChanged) to the parents still waiting: the one
// whose last child finished is Pending again. f.mu is held.
func (f *FSM) advanceWaits(index uint64, now time.Time) {
	if len(f.waitDeltas) == 0 {
		return
	}
	for _, id := range sortedKeys(f.waitDeltas) {
		delta := f.waitDeltas[id]
		old, ok := f.tasks.get(id)
		if !ok || old.State != Waiting || delta == 0 {
			continue
		}
		t := old.cow()
		t.WaitLeft += delta
		if t.WaitLeft <= 0 {
			t.WaitLeft = 0
			t.State = Pending
			t.History = append(t.History, HistoryEntry{Attempt: t.Attempt, Event: EventResumed, At: now})
		}
		t.ModifyIndex = index
		f.save(old, t)
	}
	clear(f.waitDeltas)
}
