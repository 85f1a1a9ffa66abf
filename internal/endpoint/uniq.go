package endpoint

import (
	"context"
	"errors"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// Unique tasks, retry now and purge: the endpoints' side. The rules live in fsm (its Unique, Retry
// and Purge handling); this file validates requests and maps results to API errors.

// parseUniqueFor reads a submit's unique_for: required with a unique_key, refused without one.
func parseUniqueFor(key, s string) (time.Duration, error) {
	if key == "" && s == "" {
		return 0, nil
	}
	if key == "" {
		return 0, api.Errorf(api.CodeInvalidUnique, "unique_for needs a unique_key")
	}
	if s == "" {
		return 0, api.Errorf(api.CodeInvalidUnique, "unique_key needs unique_for, the window it is held for (a duration like 1h, at most %s)", api.MaxUniqueFor)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, api.Errorf(api.CodeInvalidUnique, "unique_for must be a duration like 1h, got %q", api.Truncate(s))
	}
	return d, checkUnique(key, d)
}

// checkUnique validates a submit's unique key and window (checkSubmit runs it on every submit item).
func checkUnique(key string, d time.Duration) error {
	switch {
	case key == "" && d == 0:
		return nil
	case key == "":
		return api.Errorf(api.CodeInvalidUnique, "unique_for needs a unique_key")
	case len(key) > maxKeyLen:
		return api.Errorf(api.CodeInvalidUnique, "unique_key is longer than %d bytes", maxKeyLen)
	case d <= 0 || d > api.MaxUniqueFor:
		return api.Errorf(api.CodeInvalidUnique, "unique_for must be positive and at most %s", api.MaxUniqueFor)
	}
	return nil
}

// submitItemError is the API error of a submit item the FSM refused.
func submitItemError(sub fsm.Submit, item fsm.ItemResult) error {
	if errors.Is(item.Err, fsm.ErrDuplicateUnique) {
		e := api.Errorf(api.CodeDuplicateUniqueKey, "a %s task with unique key %q was submitted less than its unique_for ago: task %s",
			api.Truncate(sub.Type), api.Truncate(sub.UniqueKey), item.ID)
		e.ExistingTask = item.ID
		return e
	}
	if errors.Is(item.Err, fsm.ErrUnknownRateLimit) {
		return api.Errorf(api.CodeUnknownRateLimit, "rate limit %q does not exist (POST %s/{name} makes one)", api.Truncate(sub.RateLimit), api.PathRateLimits)
	}
	if errors.Is(item.Err, fsm.ErrQueueFull) {
		e := api.Errorf(api.CodeQueueFull, "the cluster is full: it holds its cap of tasks waiting to run (--max-pending); nothing was stored, retry later")
		e.RetryAfter = retryAfterQueueFull
		return e
	}
	if errors.Is(item.Err, fsm.ErrQuotaExceeded) {
		e := api.Errorf(api.CodeQuotaExceeded, "the submitter holds its quota of tasks waiting to run (its ACL policies' quota.pending, else --quota-pending); nothing was stored, retry later")
		e.RetryAfter = retryAfterQueueFull
		return e
	}
	return api.Errorf(api.CodeInvalidRequest, "%v", item.Err)
}

func (e *TaskEndpoint) Retry(ctx context.Context, caller httpapi.Caller, id string) (api.Task, error) {
	srv := e.srv
	if _, ok := srv.cfg.FSM.Task(id); !ok {
		return api.Task{}, taskNotFound(id)
	}
	by := caller.Principal()
	if by == "" {
		by = "anonymous"
	}
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.Retry{IDs: []string{id}, By: by}})
	if err != nil {
		return api.Task{}, srv.apiError(err)
	}
	switch err := itemErr(res); {
	case errors.Is(err, fsm.ErrNotFound):
		return api.Task{}, taskNotFound(id)
	case errors.Is(err, fsm.ErrNotRetryable):
		return api.Task{}, api.Errorf(api.CodeNotRetryable, "task %s is neither failed nor cancelled: only those can be retried", api.Truncate(id))
	case errors.Is(err, fsm.ErrQueueFull), errors.Is(err, fsm.ErrQuotaExceeded):
		return api.Task{}, srv.noteRefusal(submitItemError(fsm.Submit{}, res.Items[0]))
	case err != nil:
		return api.Task{}, err
	}
	_ = srv.waitIndex(ctx, res.Index)
	t, _ := srv.cfg.FSM.Task(id)
	return toAPITask(&t), nil
}

// Purge deletes in entries of at most fsm.MaxPurgeBatch tasks until the filter matches no more
// or the limit is reached, and deletes the purged tasks' output on this node at once (other
// nodes' log sweeps delete theirs).
func (e *TaskEndpoint) Purge(ctx context.Context, caller httpapi.Caller, req api.PurgeRequest) (api.PurgeReply, error) {
	if err := httpapi.ValidatePurge(req); err != nil {
		return api.PurgeReply{}, err
	}
	srv := e.srv
	p := fsm.Purge{Type: req.Type, FinishedBefore: req.FinishedBefore}
	if req.State != "" {
		p.States = []fsm.State{fsm.State(req.State)}
	}
	var reply api.PurgeReply
	// A purge proposes one entry per batch, each of which must apply: none carries the request
	// ID. A purge retried after its first try applied purges what still matches (nothing, or what
	// finished meanwhile) and counts that.
	ctx = withoutRequestID(ctx)
	for req.Limit == 0 || reply.Purged < req.Limit {
		p.Limit = fsm.MaxPurgeBatch
		if req.Limit > 0 {
			p.Limit = min(p.Limit, req.Limit-reply.Purged)
		}
		body := p
		res, err := srv.propose(ctx, &fsm.Command{Body: &body})
		if err != nil {
			if reply.Purged > 0 {
				return reply, nil // what is gone is gone; the client may purge again
			}
			return reply, srv.apiError(err)
		}
		removed := 0
		for _, it := range res.Items {
			if it.Err != nil {
				continue
			}
			removed++
			if err := srv.cfg.Logs.Delete(it.ID); err != nil {
				srv.log.Warn("delete purged task's output", "task", it.ID, "err", err)
			}
		}
		reply.Purged += removed
		_ = srv.waitIndex(ctx, res.Index) // a list on this node right after shows them gone
		if len(res.Items) < p.Limit || removed == 0 {
			break
		}
	}
	return reply, nil
}
