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
	return api.Queue{Name: q.Name, Limit: q.Limit, Paused: q.Paused, Scheduled: q.Scheduled, Pending: q.Pending, Running: q.Active,
		ConcurrencyKey: q.ConcurrencyKey, ConcurrencyLimit: q.ConcurrencyLimit}
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
	if u.ConcurrencyKey != nil && *u.ConcurrencyKey == "" && u.ConcurrencyLimit == nil {
		u.ConcurrencyLimit = new(int) // removing the template needs no limit
	}
	c := &fsm.Command{Body: &fsm.QueueSet{Name: name, Limit: u.Limit, Paused: u.Paused,
		ConcurrencyKey: u.ConcurrencyKey, ConcurrencyLimit: u.ConcurrencyLimit}}
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

// checkKeyTemplate validates a queue's key template and limit: both or neither, a template that
// parses with a limit in 1..MaxConcurrencyLimit, or "" with 0 (or none) to remove it.
func checkKeyTemplate(tmpl *string, limit *int) error {
	switch {
	case tmpl == nil && limit == nil:
		return nil
	case tmpl == nil:
		return api.Errorf(api.CodeInvalidConcurrency, "concurrency_limit needs a concurrency_key template")
	case *tmpl == "":
		if limit != nil && *limit != 0 {
			return api.Errorf(api.CodeInvalidConcurrency, "an empty concurrency_key removes the template: its limit must be 0")
		}
		return nil
	case limit == nil:
		return api.Errorf(api.CodeInvalidConcurrency, "a concurrency_key template needs a concurrency_limit")
	}
	if err := fsm.ParseKeyTemplate(*tmpl); err != nil {
		return api.Errorf(api.CodeInvalidConcurrency, "%v", err)
	}
	if *limit < 1 || *limit > api.MaxConcurrencyLimit {
		return api.Errorf(api.CodeInvalidConcurrency, "concurrency_limit must be between 1 and %d, got %d", api.MaxConcurrencyLimit, *limit)
	}
	return nil
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
			if err := api.CheckLimit(*b.Limit); err != nil {
				return err
			}
		}
		return checkKeyTemplate(b.ConcurrencyKey, b.ConcurrencyLimit)
	case *fsm.TypeLimitSet:
		if b.Type == "" || len(b.Type) > 256 {
			return api.Errorf(api.CodeInvalidRequest, "a type limit needs a type of at most 256 bytes")
		}
		return api.CheckLimit(b.Limit)
	}
	return nil
}
