package node

import (
	"context"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// Queues and type limits as the API sees them (httpapi.Backend): reads from this node's FSM,
// changes through the leader (commands queue_set and type_limit_set).

func toAPIQueue(q fsm.QueueStatus) api.Queue {
	return api.Queue{Name: q.Name, Limit: q.Limit, Paused: q.Paused, Scheduled: q.Scheduled, Pending: q.Pending, Running: q.Active}
}

func (b apiBackend) Queues(context.Context) (api.QueueList, error) {
	qs := b.n.fsm.Queues()
	out := api.QueueList{Queues: make([]api.Queue, 0, len(qs))}
	for _, q := range qs {
		out.Queues = append(out.Queues, toAPIQueue(q))
	}
	return out, nil
}

func (b apiBackend) UpdateQueue(ctx context.Context, caller httpapi.Caller, name string, u api.QueueUpdate) (api.Queue, error) {
	c := &fsm.Command{Body: &fsm.QueueSet{Name: name, Limit: u.Limit, Paused: u.Paused}}
	if err := checkQueueCommand(c); err != nil {
		return api.Queue{}, err
	}
	if err := b.n.applyAndWait(ctx, c); err != nil {
		return api.Queue{}, err
	}
	return toAPIQueue(b.n.fsm.Queue(name)), nil
}

func (b apiBackend) TypeLimits(context.Context) (api.TypeLimitList, error) {
	ls := b.n.fsm.TypeLimits()
	out := api.TypeLimitList{Limits: make([]api.TypeLimit, 0, len(ls))}
	for _, l := range ls {
		out.Limits = append(out.Limits, api.TypeLimit{Type: l.Type, Limit: l.Limit, Running: l.Active})
	}
	return out, nil
}

func (b apiBackend) SetTypeLimit(ctx context.Context, caller httpapi.Caller, typ string, u api.TypeLimitUpdate) (api.TypeLimit, error) {
	c := &fsm.Command{Body: &fsm.TypeLimitSet{Type: typ, Limit: u.Limit}}
	if err := checkQueueCommand(c); err != nil {
		return api.TypeLimit{}, err
	}
	if err := b.n.applyAndWait(ctx, c); err != nil {
		return api.TypeLimit{}, err
	}
	out := api.TypeLimit{Type: typ}
	for _, l := range b.n.fsm.TypeLimits() {
		if l.Type == typ {
			out.Limit, out.Running = l.Limit, l.Active
		}
	}
	return out, nil
}

// applyAndWait has the leader apply c and waits until this node's FSM holds it.
func (n *Node) applyAndWait(ctx context.Context, c *fsm.Command) error {
	res, err := n.internode.Propose(ctx, c)
	if err != nil {
		return toAPIError(err)
	}
	if res.Err != nil {
		return api.Errorf(api.CodeInvalidRequest, "%v", res.Err)
	}
	return toAPIError(n.internode.WaitIndex(ctx, res.Index))
}

// checkQueueCommand validates a queue or type limit change (nil for other commands).
func checkQueueCommand(c *fsm.Command) error {
	switch b := c.Body.(type) {
	case *fsm.QueueSet:
		if b.Name != "" {
			if err := api.CheckQueueName(b.Name); err != nil {
				return err
			}
		}
		if b.Limit != nil {
			return api.CheckLimit(*b.Limit)
		}
	case *fsm.TypeLimitSet:
		if b.Type == "" || len(b.Type) > 256 {
			return api.Errorf(api.CodeInvalidRequest, "a type limit needs a type of at most 256 bytes")
		}
		return api.CheckLimit(b.Limit)
	}
	return nil
}
