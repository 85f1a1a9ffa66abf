package raftnode

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/taskworker/taskworker/internal/localcluster"
)

func TestNoticeForTellsOnlyWhatTheFollowerHoldsAndDoesNotKnow(t *testing.T) {
	tests := []struct {
		name                string
		match, term, known  uint64
		commit              uint64
		want                bool
		wantPrev, wantPrevT uint64
		wantCommit          uint64
	}{
		{"commit behind the follower's last entry", 10, 2, 5, 8, true, 10, 2, 8},
		{"commit beyond it: capped at the entry it holds", 10, 2, 5, 15, true, 10, 2, 10},
		{"already told", 10, 2, 10, 15, false, 0, 0, 0},
		{"nothing new committed", 10, 2, 8, 8, false, 0, 0, 0},
		{"no acknowledged entry yet", 0, 0, 0, 15, false, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, ok := noticeFor(&noticeState{matchIndex: tt.match, matchTerm: tt.term, known: tt.known}, tt.commit)
			if ok != tt.want {
				t.Fatalf("notice = %v, want %v", ok, tt.want)
			}
			if !ok {
				return
			}
			if req.PrevLogEntry != tt.wantPrev || req.PrevLogTerm != tt.wantPrevT || req.LeaderCommitIndex != tt.wantCommit || len(req.Entries) != 0 {
				t.Errorf("notice = prev %d/%d commit %d entries %d, want prev %d/%d commit %d and no entries",
					req.PrevLogEntry, req.PrevLogTerm, req.LeaderCommitIndex, len(req.Entries), tt.wantPrev, tt.wantPrevT, tt.wantCommit)
			}
		})
	}
}

func TestAckedRecordsTheLastEntryAFollowerHolds(t *testing.T) {
	c := newCommitNotice() // no raft: it never leads, so nothing is sent
	ok := &raft.AppendEntriesResponse{Success: true}
	entries := func(term uint64, idx ...uint64) []*raft.Log {
		var out []*raft.Log
		for _, i := range idx {
			out = append(out, &raft.Log{Index: i, Term: term})
		}
		return out
	}
	c.acked("f1", "a1", &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 4, PrevLogTerm: 2, Entries: entries(3, 5, 6), LeaderCommitIndex: 4}, ok)
	if f := c.followers["f1"]; f == nil || f.matchIndex != 6 || f.matchTerm != 3 || f.known != 4 || f.addr != "a1" {
		t.Fatalf("after an append of 5-6: %+v", f)
	}
	c.acked("f1", "a1", &raft.AppendEntriesRequest{Term: 3}, ok) // a heartbeat names no entry
	c.acked("f1", "a1", &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 6, PrevLogTerm: 3, Entries: entries(3, 7)}, &raft.AppendEntriesResponse{})
	if f := c.followers["f1"]; f.matchIndex != 6 {
		t.Errorf("a heartbeat or a refused append moved the match to %d", f.matchIndex)
	}
	c.acked("f1", "a1", &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 6, PrevLogTerm: 3, LeaderCommitIndex: 6}, ok)
	if f := c.followers["f1"]; f.matchIndex != 6 || f.known != 6 {
		t.Errorf("after raft's own commit resend: %+v", f)
	}
	c.acked("f2", "a2", &raft.AppendEntriesRequest{Term: 4, PrevLogEntry: 6, PrevLogTerm: 3, Entries: entries(4, 7)}, ok)
	if _, kept := c.followers["f1"]; kept || c.term != 4 || c.followers["f2"].matchIndex != 7 {
		t.Errorf("a new term kept what the old one knew: term %d, followers %v", c.term, c.followers)
	}
}

// counting is an FSM that records the highest index it applied.
type counting struct {
	mu    sync.Mutex
	index uint64
}

func (c *counting) Apply(l *raft.Log) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index = max(c.index, l.Index)
	return nil
}

func (c *counting) applied() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index
}

func (*counting) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (*counting) Restore(io.ReadCloser) error         { return nil }

// With raft's own resend of the commit index an hour away and heartbeats carrying none, followers
// learn that an entry committed from the leader's notice alone.
func TestFollowersApplyACommitFromTheNoticeAlone(t *testing.T) {
	const n = 3
	var (
		rafts   [n]*raft.Raft
		fsms    [n]*counting
		notices [n]*commitNotice
		trans   [n]*raft.InmemTransport
	)
	for i := range n {
		_, trans[i] = raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("r%d", i)))
	}
	for i := range n {
		for j := range n {
			if i != j {
				trans[i].Connect(trans[j].LocalAddr(), trans[j])
			}
		}
	}
	var servers []raft.Server
	for i := range n {
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("s%d", i)), Address: trans[i].LocalAddr()})
	}
	for i := range n {
		cfg := raft.DefaultConfig()
		cfg.LocalID = servers[i].ID
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
		cfg.CommitTimeout = time.Hour
		cfg.LogOutput = io.Discard
		c := newCommitNotice()
		c.send = trans[i].AppendEntries
		w := &watchedInmem{InmemTransport: trans[i], onAck: c.acked}
		c.header = raft.RPCHeader{ProtocolVersion: cfg.ProtocolVersion, ID: []byte(cfg.LocalID), Addr: w.EncodePeer(cfg.LocalID, w.LocalAddr())}
		store := raft.NewInmemStore()
		fsms[i] = &counting{}
		r, err := raft.NewRaft(cfg, fsms[i], store, store, raft.NewInmemSnapshotStore(), w)
		if err != nil {
			t.Fatal(err)
		}
		c.raft.Store(r)
		rafts[i], notices[i] = r, c
		t.Cleanup(func() { _ = r.Shutdown().Error() })
	}
	if err := rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}
	leader := -1
	if err := localcluster.Until(30*time.Second, 10*time.Millisecond, func() bool {
		for i, r := range rafts {
			if r.State() == raft.Leader {
				leader = i
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal("no leader")
	}
	for round := range 3 {
		f := rafts[leader].Apply([]byte("entry"), 10*time.Second)
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		notices[leader].announce()
		for i := range n {
			err := localcluster.Until(30*time.Second, 5*time.Millisecond, func() bool { return fsms[i].applied() >= f.Index() })
			if err != nil {
				t.Fatalf("round %d: node %d applied up to %d, the leader committed %d", round, i, fsms[i].applied(), f.Index())
			}
		}
	}
}
