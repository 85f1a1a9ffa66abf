package node

import (
	"context"
	"fmt"
	"github.com/taskworker/taskworker/internal/internode"
	"net/http"

	"github.com/taskworker/taskworker/internal/endpoint"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/trust"
)

// newEndpoints builds the public API's backend (internal/endpoint) over this node. Raft, gossip
// and trust must be running.
func newEndpoints(n *Node) *endpoint.API {
	cfg := &n.cfg
	return endpoint.New(endpoint.Config{
		Name: cfg.Name, StartedAt: n.startedAt, DataDir: cfg.DataDir, ACL: cfg.ACL, JWT: cfg.JWT,
		MaxInputBytes: cfg.MaxInputBytes, Quota: cfg.Quota, Logger: n.log, TraceURLTemplate: cfg.TraceURLTemplate,
		FSM: n.fsm, Registry: cfg.Registry, Logs: n.logs, Raft: n.rn.Raft(), RaftID: n.rn.ID(),
		Gossip: n.members, Trust: n.trust, Metrics: n.metrics, KeyID: trust.KeyID,

		Propose: n.internode.Propose, ProposeNode: n.internode.ProposeNode, NewID: forward.ID, RequestID: requestID, WaitIndex: n.internode.WaitIndex,
		Retryable: internode.Retryable, ShuttingDown: ErrShuttingDown,

		Leader:       n.Leader,
		ServerNames:  func() endpoint.ServerNames { return n.rn.Names() },
		Alive:        n.aliveNames,
		StorageFault: n.rn.StorageFault,
		Leaving:      n.work.Leaving,
		Released:     n.work.Released(),
		Leave:        n.Leave,
		LeaveRefused: ErrLeaveRefused,
		GetFrom: func(ctx context.Context, name, path string, stream bool) (*http.Response, error) {
			addr := n.internode.Addr(name)
			if addr == "" {
				return nil, fmt.Errorf("node %s unknown", name)
			}
			req, err := n.internode.Request(ctx, http.MethodGet, addr, path, nil)
			if err != nil {
				return nil, err
			}
			client := n.internode.Client()
			if stream {
				client = n.internode.StreamClient() // no timeout: a follow lasts as long as the attempt
			}
			return client.Do(req)
		},
	})
}

// requestID is the request ID of the API write in ctx (internal/forward's), for the commands
// it proposes (endpoint.Config.RequestID).
func requestID(ctx context.Context) ([]byte, bool) {
	id, ok := forward.RequestID(ctx)
	if !ok {
		return nil, false
	}
	return id[:], true
}
