package endpoint

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// Workers lists the cluster's workers, up and gone, sorted by name (GET /v1/workers).
func (e *ClusterEndpoint) Workers(context.Context) ([]api.WorkerInfo, error) {
	return e.srv.workerInfos(), nil
}

func (srv *Server) workerInfos() []api.WorkerInfo {
	load := srv.cfg.FSM.Load()
	ws := srv.cfg.FSM.Workers()
	out := make([]api.WorkerInfo, 0, len(ws))
	for i := range ws {
		out = append(out, toAPIWorkerInfo(&ws[i], load[ws[i].Name]))
	}
	return out
}

func toAPIWorkerInfo(w *fsm.Node, running int) api.WorkerInfo {
	state := api.WorkerStateUp
	switch w.Status {
	case fsm.NodeDown:
		state = api.WorkerStateDown
	case fsm.NodeLeft:
		state = api.WorkerStateLeft
	}
	labels := map[string]string{}
	maps.Copy(labels, w.Labels)
	types := make([]api.WorkerType, 0, len(w.Types))
	for _, t := range w.Types {
		types = append(types, api.WorkerType{Type: t.Type, Version: t.Version, Description: t.Description, ExampleInput: t.ExampleInput})
	}
	return api.WorkerInfo{Name: w.Name, Node: w.Host, State: state, Draining: w.Draining, Capacity: w.Capacity,
		Running: running, Labels: labels, TaskTypes: types, RegisteredAt: w.RegisteredAt}
}

// runsOn is the node that holds the output of attempts that ran under name: the node itself, or
// the host of the worker of that name.
func (srv *Server) runsOn(name string) string {
	if w, ok := srv.cfg.FSM.Worker(name); ok {
		return w.Host
	}
	return name
}

// runsHere reports whether attempts that run under name run on this node: its own, or those of
// a worker it hosts.
func (srv *Server) runsHere(name string) bool {
	return name == srv.cfg.Name || srv.runsOn(name) == srv.cfg.Name
}

// pendingView is what pending reasons are computed from, read once per reply.
type pendingView struct {
	targets []fsm.Node
	alive   map[string]bool
	load    map[string]int
	limits  map[string]fsm.TypeLimitStatus
	queues  map[string]fsm.QueueStatus
	now     time.Time
}

func (srv *Server) pendingView() *pendingView {
	pv := &pendingView{targets: srv.cfg.FSM.Targets(), alive: srv.cfg.Alive(), load: srv.cfg.FSM.Load(),
		limits: map[string]fsm.TypeLimitStatus{}, queues: map[string]fsm.QueueStatus{}, now: time.Now()}
	for _, l := range srv.cfg.FSM.TypeLimits() {
		pv.limits[l.Type] = l
	}
	return pv
}

// withPendingReasons sets each pending task's pending_reason; pv is read on first need.
func (srv *Server) withPendingReasons(ts []api.Task) {
	var pv *pendingView
	for i := range ts {
		if ts[i].State != string(fsm.Pending) {
			continue
		}
		if pv == nil {
			pv = srv.pendingView()
		}
		ts[i].PendingReason = srv.pendingReason(pv, &ts[i])
	}
}

// pendingReason says why a pending task waits when nothing can take it now, "" when something
// can (the leader places it at its next pass).
func (srv *Server) pendingReason(pv *pendingView, t *api.Task) string {
	if t.NotBefore != nil && t.NotBefore.After(pv.now) {
		return "retry backoff until " + t.NotBefore.UTC().Format(time.RFC3339Nano)
	}
	q, ok := pv.queues[t.Queue]
	if !ok {
		name := t.Queue
		if name == api.DefaultQueue {
			name = ""
		}
		q = srv.cfg.FSM.Queue(name)
		pv.queues[t.Queue] = q
	}
	if q.Paused {
		return fmt.Sprintf("queue %q is paused", t.Queue)
	}
	if q.Limit > 0 && q.Active >= q.Limit {
		return fmt.Sprintf("queue %q has its limit of %d tasks running", t.Queue, q.Limit)
	}
	if l, ok := pv.limits[t.Type]; ok && l.Limit > 0 && l.Active >= l.Limit {
		return fmt.Sprintf("type %q has its limit of %d tasks running", t.Type, l.Limit)
	}
	if t.ConcurrencyKey != "" && srv.cfg.FSM.ConcurrencyActive(t.ConcurrencyKey) >= t.ConcurrencyLimit {
		return fmt.Sprintf("concurrency key %q has its limit of %d tasks running", t.ConcurrencyKey, t.ConcurrencyLimit)
	}
	if t.RateLimit != "" {
		n, next, ok := srv.cfg.FSM.RateTokens(fsm.RateBucket{Limit: t.RateLimit, Key: t.RateLimitKey}, pv.now)
		if ok && n < 1 {
			bucket := fmt.Sprintf("rate limit %q", t.RateLimit)
			if t.RateLimitKey != "" {
				bucket += fmt.Sprintf(" (key %q)", t.RateLimitKey)
			}
			return bucket + " has no token until " + next.UTC().Format(time.RFC3339Nano)
		}
	}
	offered, free := false, false
	for i := range pv.targets {
		n := &pv.targets[i]
		if n.Status != fsm.NodeUp || n.Draining || !n.Alive(pv.alive) || !n.Offers(t.Type, t.Version) {
			continue
		}
		offered = true
		if pv.load[n.Name] < n.Capacity {
			free = true
		}
	}
	switch {
	case !offered:
		return fmt.Sprintf("no node or worker offers %q version %q", t.Type, t.Version)
	case !free:
		return fmt.Sprintf("every node and worker that offers %q is busy", t.Type)
	}
	return ""
}
