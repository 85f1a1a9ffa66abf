package node

import (
	"context"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/worker"
	"github.com/taskworker/taskworker/internal/workerhost"
	"github.com/taskworker/taskworker/tasks"
)

// newWorkerHost builds this node's side of the worker protocol (internal/workerhost): the
// sessions of the workers registered here, whose attempts run through this node's report
// batcher and work loop (internal/worker). The worker must be built.
func newWorkerHost(n *Node) *workerhost.Host {
	cfg := &n.cfg
	return workerhost.New(workerhost.Config{
		Node: cfg.Name, HTTPAddr: n.httpAddr, FSM: n.fsm, Logger: n.log,
		Executor: tasks.ExecutorConfig{
			Logs: n.logs, MaxResultBytes: cfg.MaxResultBytes, CheckpointsPerSecond: cfg.CheckpointRate,
			StartWindow: worker.StartWindow, Tracer: n.tracer,
		},
		Propose:     n.internode.ProposeNode,
		ReporterFor: n.work.ReporterFor,
		WorkFor:     n.work.WorkFor,
		Draining:    n.work.Leaving,
		MaxSessions: cfg.MaxWorkerSessions,
	})
}

// workerSessions serves the worker protocol's session routes (httpapi.WorkerSessions) with the
// worker host.
type workerSessions struct{ h *workerhost.Host }

func (w workerSessions) RegisterWorker(ctx context.Context, c httpapi.Caller, req api.WorkerRegistration) (api.WorkerSession, error) {
	return w.h.Register(ctx, c, req)
}

func (w workerSessions) PollWorker(ctx context.Context, c httpapi.Caller, id string, req api.WorkerPollRequest) (api.WorkerPoll, error) {
	return w.h.Poll(ctx, c, id, req)
}

func (w workerSessions) WorkerEvents(ctx context.Context, c httpapi.Caller, id string, req api.WorkerEvents) (api.WorkerEventResults, error) {
	return w.h.Events(ctx, c, id, req)
}

func (w workerSessions) DrainWorker(ctx context.Context, c httpapi.Caller, id string) (api.WorkerDrained, error) {
	return w.h.Drain(ctx, c, id)
}

func (w workerSessions) DeleteWorker(ctx context.Context, c httpapi.Caller, id string) (api.WorkerLeft, error) {
	return w.h.Delete(ctx, c, id)
}
