package node

import (
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/leader"
	"github.com/taskworker/taskworker/membership"
)

// newLeader builds the leader's duties (internal/leader) from this node's raft, gossip and FSM.
// Raft and gossip must be running.
func (n *Node) newLeader() *leader.Loop {
	var onConfiguration func(raft.Configuration)
	if n.quiet != nil {
		onConfiguration = n.quiet.setConfiguration
	}
	return leader.New(leader.Config{
		Name: n.cfg.Name, RaftID: n.raftID, Raft: n.raft, FSM: n.fsm, Gossip: n.members, Logger: n.log,
		Voters: n.cfg.Voters, DeadServerGrace: n.cfg.DeadServerGrace, Retention: n.cfg.Retention,
		ApplyTimeout:    n.cfg.ApplyTimeout,
		Apply:           n.applyLocal,
		Await:           n.await,
		Alive:           n.aliveNames,
		RetainedCap:     n.retainedCap,
		Trimmed:         func(k int) { n.metrics.quota.trimmed.Add(float64(k)) },
		PrepareFire:     n.prepareFire,
		OnLead:          n.seedSecurity,
		MemberID:        memberRaftID,
		NoteID:          n.noteRaftID,
		ServerNames:     func() func(raft.ServerID) string { return n.raftNames().name },
		OnConfiguration: onConfiguration,
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
