package endpoint

import (
	"context"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// QueueEndpoint serves queues and type limits (httpapi.QueueBackend): reads from this node's
// FSM, changes through the leader (commands queue_set and type_limit_set).
type QueueEndpoint struct{ srv *Server }

func toAPIQueue(q fsm.QueueStatus) api.Queue {
	return api.Queue{Name: q.Name, Limit: q.Limit, Paused: q.Paused, Scheduled: q.Scheduled, Pending: q.Pending, Running: q.Active}
}

func (e *QueueEndpoint) Queues(context.Context) (api.QueueList, error) {
	qs := e.srv.cfg.FSM.Queues()
	out := api.QueueList{Queues: make([]api.Queue, 0, len(qs))}
	for _, q := range qs {
		out.Queues = append(out.Queues, toAPIQueue(q))
	}
	return out, nil
}

func (e *QueueEndpoint) UpdateQueue(ctx context.Context, caller httpapi.Caller, name string, u api.QueueUpdate) (api.Queue, error) {
	c := &fsm.Command{Body: &fsm.QueueSet{Name: name, Limit: u.Limit, Paused: u.Paused}}
	if err := checkQueueCommand(c); err != nil {
		return api.Queue{}, err
	}
	if err := e.srv.applyAndWait(ctx, c); err != nil {
		return api.Queue{}, err
	}
	return toAPIQueue(e.srv.cfg.FSM.Queue(name)), nil
}

func (e *QueueEndpoint) TypeLimits(context.Context) (api.TypeLimitList, error) {
	ls := e.srv.cfg.FSM.TypeLimits()
	out := api.TypeLimitList{Limits: make([]api.TypeLimit, 0, len(ls))}
	for _, l := range ls {
		out.Limits = append(out.Limits, api.TypeLimit{Type: l.Type, Limit: l.Limit, Running: l.Active})
	}
	return out, nil
}

func (e *QueueEndpoint) SetTypeLimit(ctx context.Context, caller httpapi.Caller, typ string, u api.TypeLimitUpdate) (api.TypeLimit, error) {
	c := &fsm.Command{Body: &fsm.TypeLimitSet{Type: typ, Limit: u.Limit}}
	if err := checkQueueCommand(c); err != nil {
		return api.TypeLimit{}, err
	}
	if err := e.srv.applyAndWait(ctx, c); err != nil {
		return api.TypeLimit{}, err
	}
	out := api.TypeLimit{Type: typ}
	for _, l := range e.srv.cfg.FSM.TypeLimits() {
		if l.Type == typ {
			out.Limit, out.Running = l.Limit, l.Active
		}
	}
	return out, nil
}

// applyAndWait has the leader apply c and waits until this node's FSM holds it.
func (srv *Server) applyAndWait(ctx context.Context, c *fsm.Command) error {
	res, err := srv.propose(ctx, c)
	if err != nil {
		return srv.apiError(err)
	}
	if res.Err != nil {
		return api.Errorf(api.CodeInvalidRequest, "%v", res.Err)
	}
	return srv.apiError(srv.waitIndex(ctx, res.Index))
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
