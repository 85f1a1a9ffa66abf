package client

import (
	"context"
	"errors"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

type (
	// PurgeRequest selects the finished tasks a purge deletes.
	PurgeRequest = api.PurgeRequest
)

// ExistingTask returns the ID of the task holding the unique key a submit was refused for
// (409 duplicate_unique_key), and whether err is that refusal.
func ExistingTask(err error) (string, bool) {
	var e *APIError
	if errors.As(err, &e) && e.Code == api.CodeDuplicateUniqueKey {
		return e.ExistingTask, true
	}
	return "", false
}

// Retry re-runs a failed or cancelled task now: the same task goes back to pending for a new
// attempt, with its history kept and its failures reset. It returns the record after the retry.
func (c *Client) Retry(ctx context.Context, id string) (*Task, error) {
	var t Task
	if _, err := c.do(ctx, http.MethodPost, taskPath(id)+"/retry", nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Purge deletes the finished tasks req selects (and their output) and returns how many.
func (c *Client) Purge(ctx context.Context, req PurgeRequest) (int, error) {
	var r api.PurgeReply
	if _, err := c.do(ctx, http.MethodPost, api.PathTasksPurge, nil, req, &r); err != nil {
		return 0, err
	}
	return r.Purged, nil
}
