package leader

import (
	"sort"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// reconcileRaft keeps raft's configuration in step with gossip: alive members are added (as
// voters up to the voter target, non-voters beyond), moved addresses are updated, voters that
// died are replaced by promoting a non-voter, and gone servers are removed after a grace period.
// A member is added only once it has registered through the authenticated internode channel (an
// up FSM record under the boot ID it gossips), never because gossip alone reports it. Servers are
// raft IDs (Config.MemberID): a member is added under the ID it gossips, and the server of a node
// that came back under a new ID is removed at once.
//
// Each phase first decides, then makes its raft calls with no mutex held: a configuration change
// can take seconds to commit, and gossip's event loop must not wait for it (NoteMemberEvent).
func (l *Loop) reconcileRaft() {
	v, ok := l.readRaftView()
	if !ok {
		return
	}
	l.removeServers(l.planRemovals(&v))
	target := voterTarget{alive: v.aliveVoters(), want: min(l.cfg.Voters, len(v.alive))}
	l.promoteNonvoters(&v, &target)
	l.addMembers(&v, &target)
}

// raftView is what one reconcile pass works from: raft's configuration and gossip's members,
// read once at its start.
type raftView struct {
	self    raft.ServerID
	servers map[raft.ServerID]raft.Server // raft's configuration; planRemovals drops what it removes
	members []membership.Member
	// alive are the members raft may hold: alive, not draining, with a raft address, by the
	// raft ID they gossip.
	alive map[raft.ServerID]membership.Member
	name  func(raft.ServerID) string // the node name of a raft ID
}

// readRaftView reads raft's configuration and gossip's members; false when raft cannot say
// (shutting down).
func (l *Loop) readRaftView() (raftView, bool) {
	cf := l.cfg.Raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return raftView{}, false
	}
	if l.cfg.OnConfiguration != nil {
		l.cfg.OnConfiguration(cf.Configuration())
	}
	v := raftView{
		self:    l.cfg.RaftID,
		servers: map[raft.ServerID]raft.Server{},
		members: l.cfg.Gossip.Members(),
		alive:   map[raft.ServerID]membership.Member{},
	}
	for _, s := range cf.Configuration().Servers {
		v.servers[s.ID] = s
	}
	for _, m := range v.members {
		l.cfg.NoteID(m)
	}
	v.name = l.cfg.ServerNames()
	for _, m := range v.members {
		if m.State == membership.StateAlive && !m.Meta.Draining && m.Meta.RaftAddr != "" {
			v.alive[l.cfg.MemberID(m)] = m
		}
	}
	return v, true
}

// aliveVoters counts the voters that are alive members, or this node.
func (v *raftView) aliveVoters() int {
	k := 0
	for id, s := range v.servers {
		if _, ok := v.alive[id]; (ok || id == v.self) && s.Suffrage == raft.Voter {
			k++
		}
	}
	return k
}

// sortedAlive returns the alive members' raft IDs in order, so that promotions and additions
// happen in the same order on every pass.
func (v *raftView) sortedAlive() []raft.ServerID {
	ids := make([]raft.ServerID, 0, len(v.alive))
	for id := range v.alive {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// voterTarget is how many alive voters raft has, and how many it should have: the voter target,
// or fewer while fewer members are alive.
type voterTarget struct {
	alive, want int
}

func (t *voterTarget) short() bool { return t.alive < t.want }

// serverRemoval is one server planRemovals decided to remove, with what to log about it.
type serverRemoval struct {
	id    raft.ServerID
	name  string
	state membership.State // what gossip says of its node ("" when gossip no longer knows it)
	// replacedBy is the raft ID its node came back under, when it did.
	replacedBy raft.ServerID
}

// planRemovals decides which servers are gone and drops them from v.servers: at once when they
// left or their node came back as a new member, after a grace when they crashed. It makes no raft
// call.
func (l *Loop) planRemovals(v *raftView) []serverRemoval {
	// A crashed voter is removed only when that leaves at least floor voters or a spare (an alive
	// member that is not a voter yet) can take its place. Removing the dead keeps later failures
	// from breaking quorum (5 voters with 2 dead survive a third crash only as 3 voters), but
	// shrinking 3 voters to 2 gains nothing: either way the next failure loses quorum, and a
	// voter that was only frozen or cut off would have to be added back before it counts again.
	floor := min(minVotersAfterRemoval, l.cfg.Voters)
	voters, spares := 0, 0
	for _, s := range v.servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for id, m := range v.alive {
		if s, in := v.servers[id]; in && s.Suffrage != raft.Voter || !in && l.registered(m) {
			spares++
		}
	}
	var out []serverRemoval
	for id, s := range v.servers {
		if id == v.self {
			continue
		}
		if _, ok := v.alive[id]; ok {
			continue
		}
		name := v.name(id)
		if m, ok := l.replacedBy(s, name, v.alive); ok {
			// Its node restarted without the data dir that held this server's log, term and
			// vote: the server cannot come back, and its address is taken by the newcomer
			// (raft refuses two servers at one address), so it goes now.
			out = append(out, serverRemoval{id: id, name: name, replacedBy: l.cfg.MemberID(m)})
			delete(v.servers, id)
			continue
		}
		state, _ := memberState(v.members, name)
		if state == membership.StateAlive || state == membership.StateSuspect {
			continue // alive but draining, or only suspected: keep
		}
		dead := l.deadFor(name)
		if state != membership.StateLeft && dead <= l.cfg.DeadServerGrace {
			continue
		}
		if state != membership.StateLeft && s.Suffrage == raft.Voter {
			if voters-1 < floor && spares == 0 {
				continue // keep it: see floor above
			}
			if voters-1 < floor {
				spares--
			}
			voters--
		}
		out = append(out, serverRemoval{id: id, name: name, state: state})
		delete(v.servers, id)
	}
	return out
}

// removeServers makes the removals planRemovals decided, one raft change each.
func (l *Loop) removeServers(rs []serverRemoval) {
	log := l.cfg.Logger
	for _, r := range rs {
		if r.replacedBy != "" {
			log.Info("removing the raft server of a node that came back as a new member",
				"server", r.id, "member", r.name, "new_id", r.replacedBy)
		} else {
			log.Info("removing raft server", "server", r.id, "member", r.name, "gossip", r.state)
		}
		if err := l.cfg.Await(l.cfg.Raft.RemoveServer(r.id, 0, raftChangeTimeout)); err != nil {
			log.Warn("remove raft server", "server", r.id, "member", r.name, "err", err)
		}
	}
}

// promoteNonvoters makes alive non-voters voters while voters are wanted. They go before
// newcomers (addMembers): they are caught up.
func (l *Loop) promoteNonvoters(v *raftView, t *voterTarget) {
	for _, id := range v.sortedAlive() {
		s, in := v.servers[id]
		if !in || s.Suffrage == raft.Voter || !t.short() {
			continue
		}
		l.cfg.Logger.Info("promoting raft non-voter", "server", id, "member", v.alive[id].Name)
		if err := l.cfg.Await(l.cfg.Raft.AddVoter(id, s.Address, 0, raftChangeTimeout)); err != nil {
			l.cfg.Logger.Warn("promote", "server", id, "err", err)
			continue
		}
		t.alive++
	}
}

// addMembers adds the registered alive members raft does not hold yet, and updates the address
// of servers whose member gossips another one.
func (l *Loop) addMembers(v *raftView, t *voterTarget) {
	log, r, await := l.cfg.Logger, l.cfg.Raft, l.cfg.Await
	for _, id := range v.sortedAlive() {
		m := v.alive[id]
		addr := raft.ServerAddress(m.Meta.RaftAddr)
		s, in := v.servers[id]
		if in && s.Address == addr {
			continue
		}
		if !in && !l.registered(m) {
			continue
		}
		var err error
		switch {
		case in && s.Suffrage == raft.Voter:
			log.Info("updating raft voter address", "server", id, "addr", addr)
			err = await(r.AddVoter(id, addr, 0, raftChangeTimeout))
		case in:
			log.Info("updating raft non-voter address", "server", id, "addr", addr)
			err = await(r.AddNonvoter(id, addr, 0, raftChangeTimeout))
		default:
			// A newcomer always joins as a non-voter, and is promoted once that change committed,
			// while voters are wanted. Added straight as a voter, it could be in the configuration
			// the leader committed with its vote but not yet in another voter's, and if the leader
			// died then, that voter refuses its vote ("not in configuration") while it cannot win
			// without it: no leader ever (seen in e2e and the chaos suite). The non-voter change
			// commits on a majority of the voters, so they know the newcomer before it can vote.
			log.Info("adding raft non-voter", "server", id, "member", m.Name, "addr", addr)
			if err = await(r.AddNonvoter(id, addr, 0, raftChangeTimeout)); err == nil && t.short() {
				log.Info("promoting raft non-voter", "server", id, "member", m.Name)
				if err = await(r.AddVoter(id, addr, 0, raftChangeTimeout)); err == nil {
					t.alive++
				}
			}
		}
		if err != nil {
			log.Warn("change raft configuration", "server", id, "err", err)
		}
	}
}

// replacedBy returns the alive, registered member that took the place of server s (of the node
// named name): the same node under another raft ID, or another ID at the server's raft address,
// where only one process can listen. A member that did not register in this incarnation (a second
// agent with a taken name, which the leader refuses) replaces nothing.
func (l *Loop) replacedBy(s raft.Server, name string, alive map[raft.ServerID]membership.Member) (membership.Member, bool) {
	for id, m := range alive {
		if id == s.ID || !(m.Name == name || raft.ServerAddress(m.Meta.RaftAddr) == s.Address) {
			continue
		}
		if l.registered(m) {
			return m, true
		}
	}
	return membership.Member{}, false
}

// minVotersAfterRemoval is how few voters removing a crashed one may leave without a spare to
// replace it (planRemovals).
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
func (l *Loop) registered(m membership.Member) bool {
	nd, ok := l.cfg.FSM.Node(m.Name)
	return ok && nd.Status == fsm.NodeUp && nd.BootID != "" && nd.BootID == m.Meta.BootID
}
