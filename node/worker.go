package node

import (
	"context"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/worker"
	"github.com/taskworker/taskworker/tasks"
)

// ErrLeaveRefused is returned when a leave would leave the cluster without a node or a quorum.
var ErrLeaveRefused = worker.ErrLeaveRefused

// newWorker builds this node's side of running tasks and of leaving (internal/worker), with its
// executor. Raft and gossip must be running.
func newWorker(n *Node) *worker.Worker {
	cfg := &n.cfg
	return worker.New(worker.Config{
		Name: cfg.Name, BootID: n.bootID, StartedAt: n.startedAt, HTTPAddr: n.httpAddr,
		RaftAddr: string(n.rn.LocalAddr()), Capacity: cfg.Capacity, Version: cfg.Version, Protocol: cfg.Protocol,
		RaftHeartbeat: cfg.RaftHeartbeat, RaftElection: cfg.RaftElection,
		DeadServerGrace: cfg.DeadServerGrace, DrainTimeout: cfg.DrainTimeout,
		FSM: n.fsm, Raft: n.rn.Raft(), Gossip: n.members, Logger: n.log,
		Executor: tasks.ExecutorConfig{
			Registry: cfg.Registry, Logs: n.logs, NodeName: cfg.Name,
			Logger: n.log.With("component", "executor"), Submit: func(ctx context.Context, parent tasks.RunRef, exec string, c tasks.ChildTask) (string, error) {
				return n.ep.SubmitChild(ctx, parent, exec, c) // built right after the worker
			},
			MaxResultBytes: cfg.MaxResultBytes, CheckpointsPerSecond: cfg.CheckpointRate,
			Tracer: n.tracer,
		},
		ProposeNode:    n.internode.ProposeNode,
		StorageFault:   n.rn.StorageFault,
		StorageChanged: func() <-chan struct{} { return n.rn.Health().Changed() },
		Alive:          n.aliveNames,
		Leader:         n.Leader,
		ServerNames:    func() func(raft.ServerID) string { return n.rn.Names().Name },
		RaftID:         n.rn.ID(),
		LeaderAddr:     n.internode.LeaderAddr,
		AnyPeerAddr:    n.internode.AnyAddr,
		Request:        n.internode.Request,
		Client:         n.internode.Client(),
		Joined:         n.joined.Load,
		Shutdown:       n.Shutdown,
	})
}

// Leave drains this node and removes it from the cluster (worker.Worker.Leave): no new tasks
// land here, running tasks get up to the drain timeout to finish, the rest are handed back to
// run elsewhere, leadership moves away, the node leaves raft and gossip, and it shuts down.
// Without force, a leave that would remove the last node or break quorum is refused
// (ErrLeaveRefused); with force it drains and stops anyway.
func (n *Node) Leave(ctx context.Context, force bool) error { return n.work.Leave(ctx, force) }
