package endpoint

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
)

// AgentEndpoint serves what is this node's own: its health, its graceful leave, the index its
// FSM has applied (for blocking reads), its metrics and throughput.
type AgentEndpoint struct{ srv *Server }

func (e *AgentEndpoint) Health(context.Context) api.Health {
	cfg := &e.srv.cfg
	leader := cfg.Leader()
	if err := cfg.FSM.Halted(); err != nil {
		return api.Health{Status: api.HealthHalted, Leader: leader, Reason: err.Error()}
	}
	if reason := cfg.StorageFault(); reason != "" {
		return api.Health{Status: api.HealthStorageFault, Leader: leader, Reason: reason}
	}
	if cfg.Leaving() {
		// Load balancers and clients take a draining node out of rotation.
		return api.Health{Status: api.HealthDraining, Leader: leader, Reason: "node " + cfg.Name + " is leaving the cluster"}
	}
	if _, registered := cfg.FSM.Node(cfg.Name); leader == "" || !registered {
		return api.Health{Status: api.HealthUnavailable, Leader: leader}
	}
	return api.Health{Status: api.HealthOK, Leader: leader}
}

func (e *AgentEndpoint) Leave(ctx context.Context, force bool) (api.LeaveReply, error) {
	cfg := &e.srv.cfg
	// The leave outlives the request: it drains after the reply.
	if err := cfg.Leave(context.WithoutCancel(ctx), force); err != nil {
		if cfg.LeaveRefused != nil && errors.Is(err, cfg.LeaveRefused) {
			return api.LeaveReply{}, api.Errorf(api.CodeLeaveRefused, "%v", err)
		}
		return api.LeaveReply{}, err
	}
	return api.LeaveReply{Status: "leaving", Node: cfg.Name}, nil
}

func (e *AgentEndpoint) Metrics() http.Handler { return e.srv.cfg.Metrics.Handler() }

func (e *AgentEndpoint) Index() uint64 { return e.srv.cfg.FSM.Index() }

func (e *AgentEndpoint) WaitIndex(ctx context.Context, after uint64) uint64 {
	f := e.srv.cfg.FSM
	for {
		ch := f.Changed()
		if idx := f.Index(); idx > after {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return f.Index()
		case <-e.srv.cfg.Released: // the node is leaving: answer now, as a wait that elapsed would
			return f.Index()
		}
	}
}

// Barrier has raft commit a barrier entry and apply every entry before it. It commits only while
// this node leads with a quorum behind it, so a read after it sees every write acknowledged
// before the call (a write is acknowledged once applied, by this leader or an earlier one whose
// entries precede the barrier in the log). A barrier that fails or outlasts ctx means no leader
// could confirm the read: no_leader, which the forwarder retries on the next leader.
func (e *AgentEndpoint) Barrier(ctx context.Context) error {
	r := e.srv.cfg.Raft
	if r.State() != raft.Leader {
		return api.Errorf(api.CodeNoLeader, "node %s is not the leader: a consistent read is answered by the leader", e.srv.cfg.Name)
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	f := r.Barrier(timeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return api.Errorf(api.CodeNoLeader, "no cluster leader could confirm a consistent read: %v", err)
		}
		return nil
	case <-ctx.Done():
		return api.Errorf(api.CodeNoLeader, "no cluster leader could confirm a consistent read in time: %v", ctx.Err())
	}
}

func (e *AgentEndpoint) Throughput(context.Context) api.Throughput {
	return e.srv.cfg.Metrics.Throughput(time.Now())
}
