package httpapi

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// With ACLs on, a task the caller may not read does not exist for it: routes that take a task ID
// answer for it exactly as for a missing ID, blocking lists do not wake for it, and counts leave
// it out. Otherwise a 403 would name the type of any ID, and the timing of a blocking list or a
// count would show a victim's activity.

// TaskNotFound is the answer for an unknown task ID, and for one the caller may not read.
func TaskNotFound(id string) error {
	return api.Errorf(api.CodeNotFound, "task %s not found", api.Truncate(id))
}

// taskFor returns the task a route names for a caller that needs capability on it: not_found
// when it is missing or the caller may not read it, forbidden when it may read it but not do
// capability.
func (s *server) taskFor(r *http.Request, id string, capability acl.Capability) (api.Task, error) {
	t, err := s.b.Task(r.Context(), id)
	if err != nil {
		return api.Task{}, err
	}
	if !callerOf(r).CanRead(t.Type) {
		return api.Task{}, TaskNotFound(id)
	}
	if err := authorize(r, capability, t.Type); err != nil {
		return api.Task{}, err
	}
	return t, nil
}

// listIndexStep bounds how often a blocking list of a caller that may not read every type looks
// again: each look builds a page, and a busy cluster changes many times a second.
const listIndexStep = 50 * time.Millisecond

// waitVisibleChange blocks a list until the page the caller would get differs from first, or ctx
// ends, and returns the page to answer with and the index it was read at. A change the caller may
// not see (a task of a type it may not read) does not end the wait.
func (s *server) waitVisibleChange(ctx context.Context, caller Caller, q api.ListQuery, first api.TaskPage, at uint64) (api.TaskPage, uint64, error) {
	for {
		next := s.b.WaitIndex(ctx, at)
		if next <= at { // the wait elapsed, or the node is leaving
			return first, at, nil
		}
		at = next
		page, err := s.b.List(ctx, q, caller.CanRead)
		if err != nil {
			return api.TaskPage{}, at, err
		}
		if !samePage(first, page) {
			return page, at, nil
		}
		select {
		case <-ctx.Done():
			return first, at, nil
		case <-time.After(listIndexStep):
		}
	}
}

// samePage reports whether two pages show the caller the same thing.
func samePage(a, b api.TaskPage) bool {
	return a.Total == b.Total && a.Next == b.Next && slices.EqualFunc(a.Tasks, b.Tasks, func(x, y api.Task) bool {
		return x.ID == y.ID && x.ModifyIndex == y.ModifyIndex
	})
}

// visibleTypes returns types with the pending count of each type the caller may not read zeroed:
// the catalogue of types is public, the work waiting in it is not.
func visibleTypes(caller Caller, types []api.TypeInfo) []api.TypeInfo {
	out := slices.Clone(types)
	for i := range out {
		if !caller.CanRead(out[i].Type) {
			out[i].Pending = 0
		}
	}
	return out
}

// visibleQueues zeroes the counts of every queue for a caller that may not read every type: a
// queue's counts span the types in it, and no count per queue and type is kept to take out only
// the unreadable ones. Its settings (limit, paused) stay.
func visibleQueues(caller Caller, l *api.QueueList) {
	if caller.Identity == nil || caller.Identity.ReadsAll() {
		return
	}
	l.Queues = slices.Clone(l.Queues)
	for i := range l.Queues {
		q := &l.Queues[i]
		q.Scheduled, q.Pending, q.Running = 0, 0, 0
	}
}

// visibleTypeLimits zeroes the running count of each limited type the caller may not read.
func visibleTypeLimits(caller Caller, l *api.TypeLimitList) {
	l.Limits = slices.Clone(l.Limits)
	for i := range l.Limits {
		if !caller.CanRead(l.Limits[i].Type) {
			l.Limits[i].Running = 0
		}
	}
}
