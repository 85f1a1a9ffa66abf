package client

import (
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// Worker states in Worker.State.
const (
	WorkerUp   = api.WorkerStateUp
	WorkerDown = api.WorkerStateDown
	WorkerLeft = api.WorkerStateLeft
)

type (
	// Worker is a process outside the agent that runs task types for the cluster
	// (docs/workers.md), as GET /v1/workers and Cluster.Workers show it.
	Worker = api.WorkerInfo
	// WorkerType is a task type a worker offers.
	WorkerType = api.WorkerType
)

// Workers returns the cluster's workers, up and recently gone, sorted by name. It never
// returns a worker's session ID: the API does not show it.
func (c *Client) Workers(ctx context.Context) ([]Worker, error) {
	ws := []Worker{}
	if _, err := c.do(ctx, http.MethodGet, api.PathWorkers, nil, nil, &ws); err != nil {
		return nil, err
	}
	return ws, nil
}
