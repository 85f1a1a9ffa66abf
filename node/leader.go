package node

import (
	"context"
	"sort"
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
	n.seedSecurity(ctx)
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

// reconcileRaft keeps raft's configuration in step with gossip: alive members are added (as
// voters up to the voter target, non-voters beyond), moved addresses are updated, voters that
// died are replaced by promoting a non-voter, and gone servers are removed after a grace period.
// A member is added only once it has registered through the authenticated internode channel (an
// up FSM record under the boot ID it gossips), never because gossip alone reports it. Servers are
// raft IDs (identity.go): a member is added under the ID it gossips, and the server of a node that
// came back under a new ID is removed at once.
func (n *Node) reconcileRaft() {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return
	}
	if n.quiet != nil {
		n.quiet.setConfiguration(cf.Configuration())
	}
	servers := map[raft.ServerID]raft.Server{}
	for _, s := range cf.Configuration().Servers {
		servers[s.ID] = s
	}
	members := n.members.Members()
	alive := map[raft.ServerID]membership.Member{}
	for _, m := range members {
		n.noteRaftID(m)
	}
	idNames := n.raftNames()
	for _, m := range members {
		if m.State == membership.StateAlive && !m.Meta.Draining && m.Meta.RaftAddr != "" {
			alive[memberRaftID(m)] = m
		}
	}
	self := n.raftID
	aliveVoters := 0
	for id, s := range servers {
		if _, ok := alive[id]; (ok || id == self) && s.Suffrage == raft.Voter {
			aliveVoters++
		}
	}
	want := min(n.cfg.Voters, len(alive))
	// A crashed voter is removed only when that leaves at least floor voters or a spare (an alive
	// member that is not a voter yet) can take its place. Removing the dead keeps later failures
	// from breaking quorum (5 voters with 2 dead survive a third crash only as 3 voters), but
	// shrinking 3 voters to 2 gains nothing: either way the next failure loses quorum, and a
	// voter that was only frozen or cut off would have to be added back before it counts again.
	floor := min(minVotersAfterRemoval, n.cfg.Voters)
	voters, spares := 0, 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for id, m := range alive {
		if s, in := servers[id]; in && s.Suffrage != raft.Voter || !in && n.registered(m) {
			spares++
		}
	}

	// Remove servers that are gone: at once when they left or their node came back as a new
	// member, after a grace when they crashed.
	n.deadMu.Lock()
	for id, s := range servers {
		if id == self {
			continue
		}
		if _, ok := alive[id]; ok {
			continue
		}
		name := idNames.name(id)
		if m, ok := n.replacedBy(s, name, alive); ok {
			// Its node restarted without the data dir that held this server's log, term and
			// vote: the server cannot come back, and its address is taken by the newcomer
			// (raft refuses two servers at one address), so it goes now.
			n.log.Info("removing the raft server of a node that came back as a new member",
				"server", id, "member", name, "new_id", memberRaftID(m))
			if err := n.await(n.raft.RemoveServer(id, 0, raftChangeTimeout)); err != nil {
				n.log.Warn("remove raft server", "server", id, "member", name, "err", err)
			}
			delete(servers, id)
			continue
		}
		state, _ := memberState(members, name)
		if state == membership.StateAlive || state == membership.StateSuspect {
			continue // alive but draining, or only suspected: keep
		}
		if _, ok := n.deadSince[name]; !ok {
			n.deadSince[name] = time.Now()
		}
		if state == membership.StateLeft || time.Since(n.deadSince[name]) > n.cfg.DeadServerGrace {
			if state != membership.StateLeft && s.Suffrage == raft.Voter {
				if voters-1 < floor && spares == 0 {
					continue // keep it: see floor above
				}
				if voters-1 < floor {
					spares--
				}
				voters--
			}
			n.log.Info("removing raft server", "server", id, "member", name, "gossip", state)
			if err := n.await(n.raft.RemoveServer(id, 0, raftChangeTimeout)); err != nil {
				n.log.Warn("remove raft server", "server", id, "member", name, "err", err)
			}
			delete(servers, id)
		}
	}
	n.deadMu.Unlock()

	names := make([]raft.ServerID, 0, len(alive))
	for id := range alive {
		names = append(names, id)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] < names[j] })
	// First promote existing non-voters (they are caught up), then add newcomers.
	for _, id := range names {
		s, in := servers[id]
		if in && s.Suffrage != raft.Voter && aliveVoters < want {
			n.log.Info("promoting raft non-voter", "server", id, "member", alive[id].Name)
			if err := n.await(n.raft.AddVoter(id, s.Address, 0, raftChangeTimeout)); err != nil {
				n.log.Warn("promote", "server", id, "err", err)
				continue
			}
			aliveVoters++
		}
	}
	for _, id := range names {
		m := alive[id]
		addr := raft.ServerAddress(m.Meta.RaftAddr)
		s, in := servers[id]
		if in && s.Address == addr {
			continue
		}
		if !in && !n.registered(m) {
			continue
		}
		var err error
		switch {
		case in && s.Suffrage == raft.Voter:
			n.log.Info("updating raft voter address", "server", id, "addr", addr)
			err = n.await(n.raft.AddVoter(id, addr, 0, raftChangeTimeout))
		case in:
			n.log.Info("updating raft non-voter address", "server", id, "addr", addr)
			err = n.await(n.raft.AddNonvoter(id, addr, 0, raftChangeTimeout))
		default:
			// A newcomer always joins as a non-voter, and is promoted once that change committed,
			// while voters are wanted. Added straight as a voter, it could be in the configuration
			// the leader committed with its vote but not yet in another voter's, and if the leader
			// died then, that voter refuses its vote ("not in configuration") while it cannot win
			// without it: no leader ever (seen in e2e and the chaos suite). The non-voter change
			// commits on a majority of the voters, so they know the newcomer before it can vote.
			n.log.Info("adding raft non-voter", "server", id, "member", m.Name, "addr", addr)
			if err = n.await(n.raft.AddNonvoter(id, addr, 0, raftChangeTimeout)); err == nil && aliveVoters < want {
				n.log.Info("promoting raft non-voter", "server", id, "member", m.Name)
				if err = n.await(n.raft.AddVoter(id, addr, 0, raftChangeTimeout)); err == nil {
					aliveVoters++
				}
			}
		}
		if err != nil {
			n.log.Warn("change raft configuration", "server", id, "err", err)
		}
	}
}

// replacedBy returns the alive, registered member that took the place of server s (of the node
// named name): the same node under another raft ID, or another ID at the server's raft address,
// where only one process can listen. A member that did not register in this incarnation (a second
// agent with a taken name, which the leader refuses) replaces nothing.
func (n *Node) replacedBy(s raft.Server, name string, alive map[raft.ServerID]membership.Member) (membership.Member, bool) {
	for id, m := range alive {
		if id == s.ID || !(m.Name == name || raft.ServerAddress(m.Meta.RaftAddr) == s.Address) {
			continue
		}
		if n.registered(m) {
			return m, true
		}
	}
	return membership.Member{}, false
}

// minVotersAfterRemoval is how few voters removing a crashed one may leave without a spare to
// replace it (reconcileRaft).
const minVotersAfterRemoval = 3

func memberState(members []membership.Member, name string) (membership.State, bool) {
	for _, m := range members {
		if m.Name == name {
			return m.State, true
		}
	}
	return "", false
}

// registered reports whether a gossip member has registered itself, in this incarnation, through
// the internode channel (where the caller's certificate names it).
func (n *Node) registered(m membership.Member) bool {
	nd, ok := n.fsm.Node(m.Name)
	return ok && nd.Status == fsm.NodeUp && nd.BootID != "" && nd.BootID == m.Meta.BootID
}
