package node

import (
	"github.com/hashicorp/raft"
	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/raftnode"

	"github.com/taskworker/taskworker/internal/leader"
	"github.com/taskworker/taskworker/membership"
)

// newLeader builds the leader's duties (internal/leader) from this node's raft, gossip and FSM.
// Raft and gossip must be running, and the endpoints made.
func (n *Node) newLeader() *leader.Loop {
	return leader.New(leader.Config{
		Name: n.cfg.Name, RaftID: n.rn.ID(), Raft: n.rn.Raft(), FSM: n.fsm, Gossip: n.members, Logger: n.log,
		Voters: n.cfg.Voters, DeadServerGrace: n.cfg.DeadServerGrace, Retention: n.cfg.Retention,
		ApplyTimeout:    n.cfg.ApplyTimeout,
		Apply:           n.internode.Apply,
		Await:           n.internode.Await,
		Alive:           n.aliveNames,
		RetainedCap:     n.ep.RetainedCap,
		Trimmed:         n.metrics.Trimmed,
		PrepareFire:     func(s *fsm.Schedule) (fsm.ScheduleFire, error) { return n.ep.PrepareFire(s, ulid.Make().String()) },
		OnLead:          n.trust.Seed,
		MemberID:        raftnode.MemberID,
		NoteID:          n.rn.NoteMember,
		ServerNames:     func() func(raft.ServerID) string { return n.rn.Names().Name },
		OnConfiguration: n.rn.NoteConfiguration,
	})
}

// aliveNames returns the names gossip currently sees alive.
func (n *Node) aliveNames() map[string]bool {
	alive := map[string]bool{}
	for _, m := range n.members.Members() {
		if m.State == membership.StateAlive && !m.Meta.StorageFault {
			alive[m.Name] = true
		}
	}
	return alive
}
