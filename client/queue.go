package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/taskworker/taskworker/api"
)

type (
	// Queue is one queue: its limit, paused flag and task counts.
	Queue = api.Queue
	// QueueUpdate changes a queue: the fields given change, the others stay.
	QueueUpdate = api.QueueUpdate
	// TypeLimit is a task type's cluster-wide limit.
	TypeLimit = api.TypeLimit
)

// Queues lists every queue with settings or tasks, and the default queue.
func (c *Client) Queues(ctx context.Context) ([]Queue, error) {
	var l api.QueueList
	if _, err := c.do(ctx, http.MethodGet, api.PathQueues, nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Queues, nil
}

// UpdateQueue sets a queue's limit (0: none) or pauses or resumes it; it needs operator rights.
func (c *Client) UpdateQueue(ctx context.Context, name string, u QueueUpdate) (*Queue, error) {
	q := new(Queue)
	if _, err := c.do(ctx, http.MethodPost, api.PathQueues+"/"+url.PathEscape(name), nil, u, q); err != nil {
		return nil, err
	}
	return q, nil
}

// SetQueueConcurrency gives a queue a key template ("tenant-{/tenant}") and its limit: a task of
// the queue submitted without a concurrency key gets the key the template makes from its input,
// and at most limit tasks of one key run at once. An empty template removes it. It needs
// operator rights.
func (c *Client) SetQueueConcurrency(ctx context.Context, name, template string, limit int) (*Queue, error) {
	return c.UpdateQueue(ctx, name, QueueUpdate{ConcurrencyKey: &template, ConcurrencyLimit: &limit})
}

// TypeLimits lists the task types that have a limit.
func (c *Client) TypeLimits(ctx context.Context) ([]TypeLimit, error) {
	var l api.TypeLimitList
	if _, err := c.do(ctx, http.MethodGet, api.PathTypeLimits, nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Limits, nil
}

// SetTypeLimit sets a type's limit (0 removes it); it needs operator rights.
func (c *Client) SetTypeLimit(ctx context.Context, typ string, limit int) (*TypeLimit, error) {
	l := new(TypeLimit)
	if _, err := c.do(ctx, http.MethodPost, api.PathTypeLimits+"/"+url.PathEscape(typ), nil, api.TypeLimitUpdate{Limit: limit}, l); err != nil {
		return nil, err
	}
	return l, nil
}
