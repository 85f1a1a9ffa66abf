package leader

import (
	"context"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// registerGrace is how long a freshly registered node may be unknown to the leader's gossip
// before it counts as gone (registration can overtake the gossip that announces the node).
const registerGrace = 5 * time.Second

// reconcileNodes applies NodeDown for every FSM node that gossip sees dead, left or not at all.
func (l *Loop) reconcileNodes(ctx context.Context) {
	log := l.cfg.Logger
	states := map[string]membership.Member{}
	for _, m := range l.cfg.Gossip.Members() {
		states[m.Name] = m
	}
	now := time.Now()
	for _, nd := range l.cfg.FSM.Nodes() {
		if nd.Status != fsm.NodeUp || nd.Name == l.cfg.Name { // a leader that leaves goes last
			continue
		}
		m, seen := states[nd.Name]
		var left, storage bool
		switch {
		case seen && m.State != membership.StateLeft && m.Meta.StorageFault:
			// Alive but unable to persist: its FSM stops where its disk did, so its runs
			// cannot be trusted to report. Like a dead node, and kept in raft: it comes back
			// by itself when its disk does.
			storage = true
		case !seen:
			if now.Sub(nd.RegisteredAt) < registerGrace {
				continue
			}
		case m.State == membership.StateDead:
			// A second opinion: a healed partition spreads the stale death verdicts it made
			// while cut off, and the victim refutes them a moment later. Only a node that does
			// not answer us either is gone.
			if err := l.cfg.Gossip.Ping(nd.Name); err == nil {
				log.Info("gossip reports a node dead but it answers a direct ping; keeping its tasks", "member", nd.Name)
				continue
			}
		case m.State == membership.StateLeft:
			left = true
		default:
			continue
		}
		reason := "node " + nd.Name + " failed"
		switch {
		case left:
			reason = "node " + nd.Name + " left"
		case storage:
			reason = "node " + nd.Name + " cannot persist (storage fault)"
		}
		log.Warn("taking back tasks of a gone node", "member", nd.Name, "left", left, "storage_fault", storage)
		c := &fsm.Command{Body: &fsm.Down{Name: nd.Name, Left: left || nd.Draining, Reason: reason}}
		cctx, cancel := context.WithTimeout(ctx, nodeDownTimeout)
		if _, err := l.cfg.Apply(cctx, c); err != nil {
			log.Warn("apply node down", "member", nd.Name, "err", err)
		}
		cancel()
	}
}
