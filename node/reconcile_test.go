package node

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/membership"
)

// configHold holds back, once armed, every append that carries a raft configuration without
// one server (its removal), so that RemoveServer waits for as long as a test wants, while
// heartbeats, the leader's lease and other configuration changes go on.
type configHold struct {
	mu      sync.Mutex
	armed   bool
	removed raft.ServerID
	release chan struct{}
	once    sync.Once
	held    atomic.Int32
	heldBy  atomic.Value // string: the node whose append waits
}

func newConfigHold() *configHold { return &configHold{release: make(chan struct{})} }

func (h *configHold) arm(removed raft.ServerID) {
	h.mu.Lock()
	h.armed, h.removed = true, removed
	h.mu.Unlock()
}

func (h *configHold) free() { h.once.Do(func() { close(h.release) }) }

func (h *configHold) wait(from string, args *raft.AppendEntriesRequest) {
	h.mu.Lock()
	armed, removed := h.armed, h.removed
	h.mu.Unlock()
	if !armed {
		return
	}
	for _, e := range args.Entries {
		if e.Type == raft.LogConfiguration && !hasServer(raft.DecodeConfiguration(e.Data), removed) {
			h.heldBy.Store(from)
			h.held.Add(1)
			<-h.release
			return
		}
	}
}

func hasServer(c raft.Configuration, id raft.ServerID) bool {
	for _, s := range c.Servers {
		if s.ID == id {
			return true
		}
	}
	return false
}

// holdingTransport is a twin raft transport whose configuration appends pass through a configHold.
// Replication is not pipelined, so every append goes through AppendEntries.
type holdingTransport struct {
	*raft.InmemTransport
	name string
	hold *configHold
}

func (t *holdingTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (t *holdingTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	t.hold.wait(t.name, args)
	return t.InmemTransport.AppendEntries(id, target, args, resp)
}

// The leader removes a crashed voter (a spare took its place) with a raft change that cannot
// commit yet. While that change waits, gossip's event path, which takes the same mutex as the
// removal's planning, must go on: a lock held across the raft call would stall every membership
// event for up to raftChangeTimeout per server.
func TestGossipEventsGoOnWhileARaftRemovalWaits(t *testing.T) {
	longTest(t)
	hold := newConfigHold()
	tc := &testCluster{t: t, twin: newTwinNet()}
	o := clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.Voters = 3 }}
	for i := 0; i < 4; i++ {
		var join []string
		if i > 0 {
			join = []string{tc.nodes[0].GossipAddr()}
		}
		c := o.config(t, i, join)
		tc.twin.attach(&c)
		c.RaftTransport = &holdingTransport{InmemTransport: c.RaftTransport.(*raft.InmemTransport), name: c.Name, hold: hold}
		tc.start(c)
	}
	// Runs before the nodes' cleanups: raft's shutdown waits for the appends held here.
	t.Cleanup(hold.free)
	tc.waitHealthy(4)
	waitFor(t, "three voters and a non-voter", 30*time.Second, func() bool {
		voters, others := 0, 0
		for _, s := range raftServers(t, tc.leader()) {
			if s.Suffrage == raft.Voter {
				voters++
			} else {
				others++
			}
		}
		return voters == 3 && others == 1
	})
	x := voterFollower(t, tc)
	var xm membership.Member
	for _, m := range tc.leader().members.Members() {
		if m.Name == x.Name() {
			xm = m
		}
	}
	inConfig := func(l *Node) bool {
		for _, s := range raftServers(t, l) {
			if string(s.ID) == x.Name() {
				return true
			}
		}
		return false
	}

	hold.arm(x.rn.ID())
	tc.twin.partition(x.Name())
	waitFor(t, "the leader's removal of the cut-off voter to wait on raft", 30*time.Second, func() bool {
		return hold.held.Load() > 0
	})
	l := tc.find(hold.heldBy.Load().(string))

	noted := make(chan struct{})
	go func() {
		defer close(noted)
		l.leader.NoteMemberEvent(membership.Event{Type: membership.EventFail, Member: xm})
	}()
	select {
	case <-noted:
	case <-time.After(10 * time.Second):
		hold.free()
		<-noted
		t.Fatal("a gossip event waited for a pending raft removal: a mutex is held across the raft call")
	}
	// The removal is in the leader's log (raft's latest configuration) but not committed.
	if commit, last := l.rn.Raft().CommitIndex(), l.rn.Raft().LastIndex(); inConfig(l) || commit >= last {
		t.Fatalf("the removal was not pending when the gossip event was noted (commit index %d, last index %d): the test proved nothing", commit, last)
	}

	hold.free()
	waitFor(t, "the removal to commit once raft can", 30*time.Second, func() bool {
		l := tc.leader()
		return l != nil && l != x && !inConfig(l)
	})
	// The removed node stays cut off: out of the replicas compared at the end.
	if err := x.Shutdown(); err != nil {
		t.Fatal(err)
	}
}

// memberState returns what gossip says of the named member, and whether it knows it.
func memberState(members []membership.Member, name string) (membership.State, bool) {
	for _, m := range members {
		if m.Name == name {
			return m.State, true
		}
	}
	return "", false
}
