package httpapi

import (
	"context"
	"hash/fnv"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// With ACLs on, a task the caller may not read does not exist for it: routes that take a task ID
// answer for it exactly as for a missing ID, blocking lists neither wake for it nor show an index
// that moves with it, and counts leave it out. Otherwise a 403 would name the type of any ID, and the timing of a blocking list or a
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

// listRecheck bounds how often a blocking list of a restricted caller looks again: each look
// builds a page, and a busy cluster changes many times a second.
const listRecheck = 50 * time.Millisecond

// restricted reports whether the caller may not read every task type: its lists must not show
// when tasks of the others change.
func restricted(c Caller) bool { return c.Identity != nil && !c.Identity.ReadsAll() }

// visibleList is the list of a restricted caller. Its index is not the raft index, which moves
// with every change, visible or not: it is a hash of the page the caller gets (pageIndex), and a
// blocking query with that index is held until the page itself differs or the wait elapses.
func (s *server) visibleList(ctx context.Context, caller Caller, q api.ListQuery, index uint64, wait time.Duration) (api.TaskPage, uint64, error) {
	wctx, cancel := context.WithTimeout(ctx, max(wait, 0))
	defer cancel()
	for {
		at := s.b.Index()
		page, err := s.b.List(ctx, q, caller.CanRead)
		if err != nil {
			return api.TaskPage{}, 0, err
		}
		h := pageIndex(page)
		if wait <= 0 || h != index || wctx.Err() != nil {
			return page, h, nil
		}
		s.b.WaitIndex(wctx, at)
		select {
		case <-wctx.Done():
		case <-time.After(listRecheck):
		}
	}
}

// pageIndex is a hash of what a page shows: the IDs and modify indexes of its tasks, its total
// and its cursor. It never is 0, the index of a first, non-blocking query.
func pageIndex(p api.TaskPage) uint64 {
	f := fnv.New64a()
	var b []byte
	for _, t := range p.Tasks {
		b = append(append(b, t.ID...), 0)
		b = strconv.AppendUint(b, t.ModifyIndex, 10)
		b = append(b, 0)
	}
	b = strconv.AppendInt(b, int64(p.Total), 10)
	b = append(append(b, 0), p.Next...)
	_, _ = f.Write(b)
	return f.Sum64()>>1 | 1 // fits a JavaScript number's exact range, as clusterHash
}

// visibleCluster is the cluster as a restricted caller may see it: task counts of the readable
// types only, and no node's running count (it spans types), so that neither the reply nor a
// blocking query on it follows tasks the caller may not see. The counts are per type and state,
// of the types the cluster offers or has waiting, each O(1) to read.
func (s *server) visibleCluster(ctx context.Context, caller Caller, c api.Cluster) api.Cluster {
	if !restricted(caller) {
		return c
	}
	counts := make(map[string]int, len(c.Tasks))
	for state := range c.Tasks {
		counts[state] = 0
	}
	types, _ := s.b.Types(ctx)
	seen := map[string]bool{}
	for _, ti := range types {
		if seen[ti.Type] || !caller.CanRead(ti.Type) {
			continue
		}
		seen[ti.Type] = true
		for state := range counts {
			if p, err := s.b.List(ctx, api.ListQuery{State: state, Type: ti.Type, Limit: 1}, caller.CanRead); err == nil && p.Total > 0 {
				counts[state] += p.Total
			}
		}
	}
	c.Tasks = counts
	c.Nodes = slices.Clone(c.Nodes)
	for i := range c.Nodes {
		c.Nodes[i].Running = 0
	}
	c.Workers = visibleWorkers(caller, c.Workers)
	return c
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
	if !restricted(caller) {
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

// visibleThroughput zeroes the series for a caller that may not read every type: they count the
// tasks of all types, second by second, and would show when a victim's run.
func visibleThroughput(caller Caller, t api.Throughput) api.Throughput {
	if !restricted(caller) {
		return t
	}
	t.Started, t.Succeeded, t.Failed = make([]int, len(t.Started)), make([]int, len(t.Succeeded)), make([]int, len(t.Failed))
	t.QueueWaitMS = make([]*float64, len(t.QueueWaitMS))
	return t
}
