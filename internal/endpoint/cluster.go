package endpoint

import (
	"context"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// ClusterEndpoint serves the cluster view: its nodes as the FSM, gossip and raft know them, and
// the task types they offer. It also puts this node's raft indexes into its gossip metadata
// (GossipIndexes), so that every node's view shows every node's lag.
type ClusterEndpoint struct{ srv *Server }

func (e *ClusterEndpoint) Cluster(context.Context) (api.Cluster, error) {
	return e.srv.clusterInfo(), nil
}

func (e *ClusterEndpoint) Types(context.Context) ([]api.TypeInfo, error) {
	return e.srv.typeInfos(), nil
}

// clusterInfo is GET /v1/cluster: the FSM's nodes merged with gossip's view and raft's roles.
func (srv *Server) clusterInfo() api.Cluster {
	roles := map[string]string{}
	if cf := srv.cfg.Raft.GetConfiguration(); cf.Error() == nil {
		// By name. A node back under a new raft ID keeps its old server for a moment: the server
		// it runs as now decides its role, so servers of a node's current ID go first.
		servers, names := cf.Configuration().Servers, srv.cfg.ServerNames()
		for _, current := range []bool{true, false} {
			for _, s := range servers {
				name := names.Name(s.ID)
				if (names.Current(name) == s.ID) != current || roles[name] != "" {
					continue
				}
				roles[name] = api.RoleNonvoter
				if s.Suffrage == raft.Voter {
					roles[name] = api.RoleVoter
				}
			}
		}
	}
	leader := srv.cfg.Leader()
	if leader != "" {
		roles[leader] = api.RoleLeader
	}
	load := srv.cfg.FSM.Load()
	byName := map[string]*api.NodeInfo{}
	var order []string
	for _, nd := range srv.cfg.FSM.Nodes() {
		ni := toAPINodeInfo(&nd, load[nd.Name])
		byName[nd.Name] = &ni
		order = append(order, nd.Name)
	}
	for _, m := range srv.cfg.Gossip.Members() {
		ni, ok := byName[m.Name]
		if !ok {
			ni = &api.NodeInfo{Name: m.Name, ID: m.Meta.RaftID, RaftAddr: m.Meta.RaftAddr, HTTPAddr: m.Meta.HTTPAddr, Capacity: m.Meta.Capacity,
				Version: m.Meta.Version, BootID: m.Meta.BootID, TaskTypes: []api.TypeVersion{}}
			byName[m.Name] = ni
			order = append(order, m.Name)
		}
		ni.GossipAddr = m.GossipAddr
		ni.ID = m.Meta.RaftID
		ni.State = string(m.State)
		ni.Draining = ni.Draining || m.Meta.Draining
		if m.Meta.Draining && m.Meta.DrainDeadline > 0 {
			at := time.UnixMilli(m.Meta.DrainDeadline).UTC()
			ni.DrainDeadline = &at
		}
		ni.Insecure = m.Meta.Insecure
		if m.Meta.StartedAt > 0 {
			at := time.Unix(m.Meta.StartedAt, 0).UTC()
			ni.StartedAt = &at
		}
		ni.CommitIndex, ni.AppliedIndex = m.Meta.CommitIndex, m.Meta.AppliedIndex
	}
	// This node's own indexes are live; the others' are as they last gossiped them.
	if self, ok := byName[srv.cfg.Name]; ok {
		self.ID = string(srv.cfg.RaftID)
		self.CommitIndex, self.AppliedIndex = srv.cfg.Raft.CommitIndex(), srv.cfg.Raft.AppliedIndex()
		if self.StartedAt == nil {
			at := srv.cfg.StartedAt.UTC().Truncate(time.Second)
			self.StartedAt = &at
		}
	}
	if l, ok := byName[leader]; ok && l.CommitIndex > 0 {
		for _, ni := range byName {
			if ni.AppliedIndex == 0 {
				continue
			}
			// Indexes gossiped at different moments can put a follower ahead of the leader's
			// gossiped commit: that is no lag.
			lag := l.CommitIndex - min(l.CommitIndex, ni.AppliedIndex)
			ni.Lag = &lag
		}
	}
	info := api.Cluster{Leader: leader, Tasks: map[string]int{}, Workers: srv.workerInfos(), TraceURLTemplate: srv.cfg.TraceURLTemplate}
	for s, c := range srv.cfg.FSM.Counts() {
		info.Tasks[string(s)] = c
	}
	sort.Strings(order)
	for _, name := range order {
		ni := byName[name]
		ni.RaftRole = roles[name]
		if ni.RaftRole == "" {
			ni.RaftRole = api.RoleNone
		}
		info.Nodes = append(info.Nodes, *ni)
	}
	return info
}

// typeInfos is GET /v1/types: every type and version an up, alive node or worker offers, with
// the nodes and workers that offer it, plus the types pending tasks wait for.
func (srv *Server) typeInfos() []api.TypeInfo {
	alive := srv.cfg.Alive()
	byKey := map[string]*api.TypeInfo{}
	var keys []string
	add := func(d fsm.TypeInfo) *api.TypeInfo {
		k := d.Type + "\x00" + d.Version
		ti, ok := byKey[k]
		if !ok {
			ti = &api.TypeInfo{Type: d.Type, Version: d.Version, Description: d.Description, ExampleInput: d.ExampleInput, Nodes: []string{}}
			byKey[k] = ti
			keys = append(keys, k)
		}
		return ti
	}
	for _, nd := range srv.cfg.FSM.Targets() {
		if nd.Status != fsm.NodeUp || !nd.Alive(alive) {
			continue
		}
		for _, d := range nd.Types {
			ti := add(d)
			ti.Nodes = append(ti.Nodes, nd.Name)
		}
	}
	for tv, c := range srv.cfg.FSM.PendingQueues() {
		add(fsm.TypeInfo{Type: tv.Type, Version: tv.Version}).Pending += c
	}
	sort.Strings(keys)
	out := make([]api.TypeInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, *byKey[k])
	}
	return out
}

// indexGossipInterval is how often a node gossips its raft indexes when they moved: often
// enough for status to show lag, rare enough to cost nothing beside memberlist's own probes.
const indexGossipInterval = time.Second

// GossipIndexes puts this node's raft commit and applied index into its gossip meta whenever
// they moved, until ctx ends, so every node can show every node's lag behind the leader (raft
// tells a node only its own indexes).
func (e *ClusterEndpoint) GossipIndexes(ctx context.Context) {
	srv := e.srv
	tick := time.NewTicker(indexGossipInterval)
	defer tick.Stop()
	var commit, applied uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c, a := srv.cfg.Raft.CommitIndex(), srv.cfg.Raft.AppliedIndex()
		// A draining node is on its way out: its last word in gossip is Draining, and an update
		// now would only hold up its Leave (memberlist waits for a broadcast nobody relays).
		if c == commit && a == applied || srv.cfg.Gossip.Local().Meta.Draining {
			continue
		}
		set := func(m *membership.Meta) { m.CommitIndex, m.AppliedIndex = c, a }
		if err := srv.cfg.Gossip.UpdateMetaWithin(set, indexGossipInterval/2); err != nil {
			if ctx.Err() == nil {
				srv.log.Debug("gossip raft indexes", "err", err)
			}
			continue
		}
		commit, applied = c, a
	}
}

// IndexesOnly reports whether two metas of a node differ at most in the raft indexes: an update
// from GossipIndexes, which changes no membership.
func IndexesOnly(before, after membership.Meta) bool {
	before.CommitIndex, before.AppliedIndex = after.CommitIndex, after.AppliedIndex
	return before == after
}
