package node

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/scheduler"
)

// leadershipLoop runs the leader's duties for as long as this node leads.
func (n *Node) leadershipLoop(ctx context.Context) {
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(observer)
	defer n.raft.DeregisterObserver(observer)
	var (
		stop context.CancelFunc
		done chan struct{}
	)
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		if done != nil {
			select {
			case <-done: // lead gave up (its barrier failed): start over if still leader
				stop()
				stop, done = nil, nil
			default:
			}
		}
		leader := n.raft.State() == raft.Leader
		switch {
		case leader && stop == nil:
			var lctx context.Context
			lctx, stop = context.WithCancel(ctx)
			done = make(chan struct{})
			go func() {
				defer close(done)
				n.lead(lctx)
			}()
		case !leader && stop != nil:
			stop()
			<-done
			stop, done = nil, nil
		}
		select {
		case <-ctx.Done():
			if stop != nil {
				stop()
				<-done
			}
			return
		case <-obs:
		case <-check.C:
		}
	}
}

// lead is the leader's work: catch up, reconcile membership, schedule.
func (n *Node) lead(ctx context.Context) {
	n.log.Info("gained leadership")
	defer n.log.Info("leadership ended")
	// The FSM must hold every committed entry before we judge which nodes hold which tasks.
	if err := n.await(n.raft.Barrier(barrierTimeout)); err != nil {
		n.log.Warn("barrier after election", "err", err)
		return
	}
	n.trust.Seed(ctx)
	reconcile := func(ctx context.Context) {
		n.reconcileNodes(ctx)
		n.reconcileRaft()
	}
	leaderDuties(ctx, n.leaderLoops, reconcile, n.kick, reconcileInterval)
}

// leaderLoops runs the scheduler and the schedules' loop until ctx ends, and returns once both
// have.
func (n *Node) leaderLoops(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.scheduleLoop(ctx)
	}()
	n.schedulerLoop().Run(ctx)
	<-done
}

// reconcileInterval is how often the leader reconciles membership without a gossip event.
const reconcileInterval = 250 * time.Millisecond

// schedulerLoop is the leader's scheduler, woken by FSM changes and by membership changes:
// liveness decides placement, and a node seen alive or dead changes no FSM state by itself.
func (n *Node) schedulerLoop() *scheduler.Loop {
	return &scheduler.Loop{
		FSM:         n.fsm,
		Apply:       n.applyLocal,
		Alive:       n.aliveNames,
		Kick:        n.schedKick,
		Retention:   n.cfg.Retention,
		RetainedCap: n.retainedCap,
		Trimmed:     func(k int) { n.metrics.quota.trimmed.Add(float64(k)) },
		Logger:      n.log.With("component", "scheduler"),
	}
}

// leaderDuties runs schedule, and reconcile on every kick and tick, until ctx ends. It returns
// only once schedule has returned too: leadershipLoop starts a new term's duties when lead
// returns, and two scheduler loops would race to place the same tasks.
func leaderDuties(ctx context.Context, schedule, reconcile func(context.Context), kick <-chan struct{}, every time.Duration) {
	scheduled := make(chan struct{})
	go func() {
		defer close(scheduled)
		schedule(ctx)
	}()
	defer func() { <-scheduled }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
		}
	}
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

// registerGrace is how long a freshly registered node may be unknown to the leader's gossip
// before it counts as gone (registration can overtake the gossip that announces the node).
const registerGrace = 5 * time.Second

// reconcileNodes applies NodeDown for every FSM node that gossip sees dead, left or not at all.
func (n *Node) reconcileNodes(ctx context.Context) {
	states := map[string]membership.Member{}
	for _, m := range n.members.Members() {
		states[m.Name] = m
	}
	now := time.Now()
	for _, nd := range n.fsm.Nodes() {
		if nd.Status != fsm.NodeUp || nd.Name == n.cfg.Name { // a leader that leaves goes last
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
			if err := n.members.Ping(nd.Name); err == nil {
				n.log.Info("gossip reports a node dead but it answers a direct ping; keeping its tasks", "member", nd.Name)
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
		n.log.Warn("taking back tasks of a gone node", "member", nd.Name, "left", left, "storage_fault", storage)
		c := &fsm.Command{Body: &fsm.Down{Name: nd.Name, Left: left || nd.Draining, Reason: reason}}
		cctx, cancel := context.WithTimeout(ctx, nodeDownTimeout)
		if _, err := n.applyLocal(cctx, c); err != nil {
			n.log.Warn("apply node down", "member", nd.Name, "err", err)
		}
		cancel()
	}
}
