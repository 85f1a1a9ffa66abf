package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ErrWaiting is returned by Context.WaitChildren when the children have not all finished: the
// task returns it (wrapped or not) from its handler, which ends the attempt without failing it.
// The task then waits in the cluster without a slot, and runs again, on any node, once every
// child has finished: that run sees Resumed, ChildResults and its last checkpoint, and its call
// to WaitChildren for the same children returns their results.
var ErrWaiting = errors.New("waiting for child tasks")

// ErrNoWait is returned by WaitChildren outside an executor.
var ErrNoWait = errors.New("waiting for child tasks is not supported here")

// ChildResult is how a child task ended, as its parent sees it after a wait.
type ChildResult struct {
	ID string `json:"id"`
	// State is "succeeded", "failed" or "cancelled"; "" when the child was removed (purged)
	// before its parent resumed, with Error of type "not_found".
	State  string          `json:"state"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *TaskError      `json:"error,omitempty"`
}

// Succeeded reports whether the child succeeded.
func (r ChildResult) Succeeded() bool { return r.State == "succeeded" }

// Decode decodes the child's result into v.
func (r ChildResult) Decode(v any) error {
	if !r.Succeeded() {
		return fmt.Errorf("child task %s %s", r.ID, r.describe())
	}
	if err := json.Unmarshal(r.Result, v); err != nil {
		return fmt.Errorf("decode the result of child task %s: %w", r.ID, err)
	}
	return nil
}

func (r ChildResult) describe() string {
	state := r.State
	if state == "" {
		state = "was removed"
	}
	if r.Error != nil {
		return state + ": " + r.Error.Message
	}
	return state
}

// finished reports whether the child will not change again: it ended, or it is gone.
func (r ChildResult) finished() bool {
	return r.State == "succeeded" || r.State == "failed" || r.State == "cancelled" || r.State == ""
}

func childMap(rs []ChildResult) map[string]ChildResult {
	if rs == nil {
		return nil
	}
	m := make(map[string]ChildResult, len(rs))
	for _, r := range rs {
		m[r.ID] = r
	}
	return m
}

// Resumed reports whether this attempt follows a wait for child tasks.
func (c *Context) Resumed() bool { return c.resumed }

// ChildResults returns the children of the wait this attempt follows, by ID, with their states,
// results and errors (failed and cancelled ones included: the parent decides). It is empty unless
// Resumed.
func (c *Context) ChildResults() map[string]ChildResult { return maps.Clone(c.children) }

// WaitChildren waits, durably, for child tasks of this task: ids, or with none every child this
// run submitted (Submit) and every child of the wait it follows. When they have all finished (on
// a resumed attempt, say) it returns their outcomes by ID, failures included. Otherwise it returns
// an error wrapping ErrWaiting, which the handler returns: the attempt ends without failing, its
// slot is free while the children run, and the task runs again once the last of them has
// finished, from its last checkpoint, on whichever node the cluster picks. A handler is written
// to be run again: submit the children with an IdempotencyKey (or keep their IDs in a
// checkpoint), so the resumed run names the same ones.
//
// A wait counts no attempt against max_attempts. Cancelling the waiting task cancels the
// children it waits for. Naming a task that is not a child of this one fails the task.
func (c *Context) WaitChildren(ids ...string) (map[string]ChildResult, error) {
	if !c.canWait {
		return nil, ErrNoWait
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(ids) == 0 {
		ids = append(slices.Clone(c.submitted), slices.Collect(maps.Keys(c.children))...)
	}
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	out := make(map[string]ChildResult, len(ids))
	for _, id := range ids {
		r, ok := c.children[id]
		if !ok || !r.finished() {
			c.wait = ids
			return nil, fmt.Errorf("%w: %d of them", ErrWaiting, len(ids))
		}
		out[id] = r
	}
	c.wait = nil
	return out, nil
}

// WaitFor ends the attempt to wait for ids, finished or not, and returns the error wrapping
// ErrWaiting the handler returns: for a handler that relays the wait of another process (a
// worker's, internal/workerhost), which decides itself whether to wait. Children that have all
// finished resume the task at once.
func (c *Context) WaitFor(ids []string) error {
	if !c.canWait {
		return ErrNoWait
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wait = slices.Compact(slices.Sorted(slices.Values(ids)))
	if c.wait == nil {
		c.wait = []string{} // the cluster refuses an empty wait, and says why
	}
	return fmt.Errorf("%w: %d of them", ErrWaiting, len(c.wait))
}

// waitFor is the children the run asked to wait for, nil when none.
func (c *Context) waitFor() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wait
}

// WaitList decodes the result of an OutcomeWaiting report: the IDs of the children waited for.
func WaitList(result json.RawMessage) ([]string, error) {
	var ids []string
	if err := json.Unmarshal(result, &ids); err != nil {
		return nil, fmt.Errorf("decode the children of a wait: %w", err)
	}
	return ids, nil
}
