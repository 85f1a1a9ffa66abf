package node

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/internode"
)

// apiBackend is the node as the public HTTP API sees it (httpapi.Backend): reads from this node's
// FSM, writes through the leader, records converted in convert.go, errors as *api.Error.
type apiBackend struct{ n *Node }

var _ httpapi.Backend = apiBackend{}

// toAPIError gives a node error its API code: shutting down, or no leader to apply a write.
// Deadlines, cancellations and other errors are left to httpapi's mapping.
func toAPIError(err error) error {
	var ae *api.Error
	switch {
	case err == nil, errors.As(err, &ae):
		return err
	case errors.Is(err, fsm.ErrProtocolTooOld):
		return api.Errorf(api.CodeUpgradeRequired, "not yet: %v", err)
	case errors.Is(err, ErrShuttingDown):
		return api.Errorf(api.CodeShuttingDown, "this node is shutting down")
	case internode.Retryable(err):
		return api.Errorf(api.CodeNoLeader, "no cluster leader could apply the request: %v", err)
	}
	return err
}

// taskNotFound is the API's answer for an unknown ID, which it gives for a task the caller may
// not read as well: the two must not differ by a word.
func taskNotFound(id string) error { return httpapi.TaskNotFound(id) }

func (b apiBackend) Submit(ctx context.Context, caller httpapi.Caller, req api.SubmitRequest) (api.Task, bool, error) {
	if reason := b.n.rn.StorageFault(); reason != "" {
		// Its FSM stops where its disk did: it could not even show the client its own task.
		return api.Task{}, false, api.Errorf(api.CodeStorageUnavailable, "node %s cannot take work: %s; send it to another node", b.n.cfg.Name, reason)
	}
	item, err := b.n.submitTask(withIdentity(ctx, caller.Identity), req, caller.Principal(), b.n.internode.Propose)
	if err != nil {
		return api.Task{}, false, b.hideHolder(caller, toAPIError(err))
	}
	t, ok := b.n.fsm.Task(item.ID)
	if !ok {
		return api.Task{}, false, taskNotFound(item.ID)
	}
	at := toAPITask(&t)
	if item.Existing && !mayShowExisting(caller, at) {
		return api.Task{}, false, errKeyTaken()
	}
	return at, !item.Existing, nil
}

func (b apiBackend) SubmitBatch(ctx context.Context, caller httpapi.Caller, reqs []api.SubmitRequest) ([]api.BatchResult, error) {
	out, err := b.n.submitBatch(withIdentity(ctx, caller.Identity), reqs, caller.Principal())
	for i, r := range out {
		switch {
		case r.Status == http.StatusOK && r.Task != nil && !mayShowExisting(caller, *r.Task):
			out[i] = httpapi.ErrorResult(errKeyTaken())
		case r.Error != nil && r.Error.ExistingTask != "":
			out[i] = httpapi.ErrorResult(b.hideHolder(caller, r.Error))
		}
	}
	return out, toAPIError(err)
}

// mayShowExisting reports whether a submit whose idempotency key was seen before may answer with
// the task that holds the key: idempotency keys are cluster-wide, so the task may be another
// principal's, of a type the caller may not read.
func mayShowExisting(caller httpapi.Caller, t api.Task) bool {
	return caller.CanRead(t.Type) || caller.Identity != nil && t.SubmittedBy == caller.Principal()
}

// hideHolder takes the ID of the task holding a unique key out of a conflict when the caller may
// not read that task: the conflict is all it learns.
func (b apiBackend) hideHolder(caller httpapi.Caller, err error) error {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.ExistingTask == "" {
		return err
	}
	if t, ok := b.n.fsm.Task(ae.ExistingTask); ok && mayShowExisting(caller, toAPITask(&t)) {
		return err
	}
	return api.Errorf(ae.Code, "a task of this type with this unique key was submitted less than its unique_for ago, by another principal")
}

// errKeyTaken refuses such a submit without showing the record: the caller learns only that the
// key is taken.
func errKeyTaken() error {
	return api.Errorf(api.CodeForbidden, "idempotency_key is held by a task this caller may not read; choose another key")
}

func (b apiBackend) Task(_ context.Context, id string) (api.Task, error) {
	t, ok := b.n.fsm.Task(id)
	if !ok {
		return api.Task{}, taskNotFound(id)
	}
	return toAPITask(&t), nil
}

func (b apiBackend) WaitTask(ctx context.Context, id string, until func(api.Task) bool) (api.Task, error) {
	for {
		t, ok, changed := b.n.fsm.TaskWatch(id)
		if !ok {
			return api.Task{}, taskNotFound(id)
		}
		at := toAPITask(&t)
		if until(at) {
			return at, nil
		}
		select {
		case <-ctx.Done():
			return at, nil
		case <-b.n.released: // the node is leaving: answer now, as a wait that elapsed would
			return at, nil
		case <-changed:
		}
	}
}

func (b apiBackend) List(_ context.Context, q api.ListQuery, visible func(taskType string) bool) (api.TaskPage, error) {
	f := toFilter(q)
	f.Visible = visible
	p, err := b.n.fsm.ListPage(f)
	if errors.Is(err, fsm.ErrBadCursor) {
		return api.TaskPage{}, api.Errorf(api.CodeInvalidCursor, "next is not a cursor this cluster made")
	} else if err != nil {
		return api.TaskPage{}, err
	}
	return api.TaskPage{Tasks: toAPITasks(p.Tasks), Next: p.Next, Total: p.Total}, nil
}

func (b apiBackend) Cancel(ctx context.Context, caller httpapi.Caller, id string) (api.Task, error) {
	n := b.n
	if _, ok := n.fsm.Task(id); !ok {
		return api.Task{}, taskNotFound(id)
	}
	res, err := n.internode.Propose(ctx, &fsm.Command{Body: &fsm.Cancel{IDs: []string{id}}})
	if err != nil {
		return api.Task{}, toAPIError(err)
	}
	switch err := res.Items[0].Err; {
	case errors.Is(err, fsm.ErrNotFound):
		return api.Task{}, taskNotFound(id)
	case errors.Is(err, fsm.ErrFinished):
		return api.Task{}, api.Errorf(api.CodeAlreadyFinished, "task %s has already finished", api.Truncate(id))
	case err != nil:
		return api.Task{}, err
	}
	_ = n.internode.WaitIndex(ctx, res.Index) // answer with what this node knows, even if it lags
	t, _ := n.fsm.Task(id)
	return toAPITask(&t), nil
}

func (b apiBackend) Cluster(context.Context) (api.Cluster, error) { return b.n.clusterInfo(), nil }

func (b apiBackend) Types(context.Context) ([]api.TypeInfo, error) { return b.n.typeInfos(), nil }

func (b apiBackend) Health(context.Context) api.Health {
	leader := b.n.Leader()
	if err := b.n.fsm.Halted(); err != nil {
		return api.Health{Status: api.HealthHalted, Leader: leader, Reason: err.Error()}
	}
	if reason := b.n.rn.StorageFault(); reason != "" {
		return api.Health{Status: api.HealthStorageFault, Leader: leader, Reason: reason}
	}
	if b.n.leaving.Load() {
		// Load balancers and clients take a draining node out of rotation.
		return api.Health{Status: api.HealthDraining, Leader: leader, Reason: "node " + b.n.cfg.Name + " is leaving the cluster"}
	}
	if _, registered := b.n.fsm.Node(b.n.cfg.Name); leader == "" || !registered {
		return api.Health{Status: api.HealthUnavailable, Leader: leader}
	}
	return api.Health{Status: api.HealthOK, Leader: leader}
}

func (b apiBackend) Leave(ctx context.Context, force bool) (api.LeaveReply, error) {
	// The leave outlives the request: it drains after the reply.
	if err := b.n.Leave(context.WithoutCancel(ctx), force); err != nil {
		if errors.Is(err, ErrLeaveRefused) {
			return api.LeaveReply{}, api.Errorf(api.CodeLeaveRefused, "%v", err)
		}
		return api.LeaveReply{}, err
	}
	return api.LeaveReply{Status: "leaving", Node: b.n.cfg.Name}, nil
}

func (b apiBackend) Logs(ctx context.Context, id string, follow bool, emit func(api.LogLine)) error {
	return b.n.taskLogs(ctx, id, follow, emit)
}

func (b apiBackend) Metrics() http.Handler { return b.n.metrics.Handler() }

func (b apiBackend) Index() uint64 { return b.n.fsm.Index() }

func (b apiBackend) WaitIndex(ctx context.Context, after uint64) uint64 {
	for {
		ch := b.n.fsm.Changed()
		if idx := b.n.fsm.Index(); idx > after {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return b.n.fsm.Index()
		case <-b.n.released: // the node is leaving: answer now, as a wait that elapsed would
			return b.n.fsm.Index()
		}
	}
}

func (b apiBackend) Throughput(context.Context) api.Throughput {
	return b.n.metrics.Throughput(time.Now())
}
