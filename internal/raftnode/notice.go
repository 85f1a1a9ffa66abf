package raftnode

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// commitNotice tells followers at once that entries committed. hashicorp/raft sends the commit
// index only with the next AppendEntries: the next entry, or after an idle CommitTimeout (1 s
// here). So without help a follower learns of a commit late, and each step of a task seen from
// a follower (its submit applied there, its assignment reaching the executor, its end reaching a
// waiting request) pays that.
//
// A barrier entry after applies would carry the commit index to every follower too, but as an
// entry of its own, fsynced on every node and, with replication unpipelined (MaxRPCsInFlight 1),
// holding the next entry back for a round trip: a serial client would pay two commits per submit.
// Instead the leader sends each follower a commit notice: an AppendEntries with
// no entries, naming as previous entry the last one the follower acknowledged (index and term,
// seen by the transport, watch below) and as commit index the leader's, capped at that entry.
// The follower checks that entry as for any append, then commits and applies up to the index,
// with nothing to write. It is safe for the reason every append is: entries up to one whose
// index and term match are the leader's (raft's log matching property), and the leader's commit
// index is committed. A follower that has since moved to a newer term, or lost the entry, refuses
// it, with no effect. At most one notice per follower is in flight; commits meanwhile are sent
// with the next one.
type commitNotice struct {
	// send is the raft transport's AppendEntries, not through the watch (notices are not acks);
	// nil on a transport that is not watched, where no acknowledgement ever asks for a notice.
	send   func(id raft.ServerID, target raft.ServerAddress, req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error
	header raft.RPCHeader // this node as raft names itself in requests
	raft   atomic.Pointer[raft.Raft]

	mu        sync.Mutex
	term      uint64 // the term the followers' entries below were acknowledged in
	followers map[raft.ServerID]*noticeState
}

// noticeState is what the leader knows of one follower.
type noticeState struct {
	addr       raft.ServerAddress
	matchIndex uint64 // the last entry it acknowledged, and that entry's term
	matchTerm  uint64
	known      uint64 // the highest commit index it has been told of
	inFlight   bool
	again      bool
}

func newCommitNotice() *commitNotice {
	return &commitNotice{followers: map[raft.ServerID]*noticeState{}}
}

// leader reports this node's term, whether it leads, and its commit index.
func (c *commitNotice) leader() (term uint64, leads bool, commit uint64) {
	r := c.raft.Load()
	if r == nil || r.State() != raft.Leader {
		return 0, false, 0
	}
	return r.CurrentTerm(), true, r.CommitIndex()
}

// acked records an answered append to a follower (called by the transport for every one): on
// success the follower holds the entries up to the last one sent, and knows the commit index the
// request carried. A follower that acknowledged entries after the last commit was announced is
// told of it now.
func (c *commitNotice) acked(id raft.ServerID, target raft.ServerAddress, req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) {
	if !resp.Success || (req.PrevLogEntry == 0 && len(req.Entries) == 0) {
		return // refused, or a heartbeat, which names no entry
	}
	idx, term := req.PrevLogEntry, req.PrevLogTerm
	if k := len(req.Entries); k > 0 {
		idx, term = req.Entries[k-1].Index, req.Entries[k-1].Term
	}
	c.mu.Lock()
	if req.Term != c.term { // acknowledgements of another term say nothing about this one's log
		c.term, c.followers = req.Term, map[raft.ServerID]*noticeState{}
	}
	f := c.followers[id]
	if f == nil {
		f = &noticeState{}
		c.followers[id] = f
	}
	f.addr = target
	if idx >= f.matchIndex {
		f.matchIndex, f.matchTerm = idx, term
	}
	f.known = max(f.known, min(req.LeaderCommitIndex, idx))
	c.mu.Unlock()
	c.notify(id)
}

// announce tells every follower of the leader's commit index; the leader calls it after a
// commit.
func (c *commitNotice) announce() {
	c.mu.Lock()
	ids := make([]raft.ServerID, 0, len(c.followers))
	for id := range c.followers {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.notify(id)
	}
}

// notify sends follower id a notice if it has not been told of the commit index yet.
func (c *commitNotice) notify(id raft.ServerID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.followers[id]
	if f == nil {
		return
	}
	if f.inFlight {
		f.again = true
		return
	}
	req, ok := c.request(f)
	if !ok {
		return
	}
	f.inFlight = true
	go c.deliver(id, f, f.addr, req)
}

// request builds the notice for f (with c.mu held), or false when there is nothing to tell or
// this node does not lead in the term f's entries were acknowledged in.
func (c *commitNotice) request(f *noticeState) (*raft.AppendEntriesRequest, bool) {
	term, leads, commit := c.leader()
	if !leads || term != c.term {
		return nil, false
	}
	req, ok := noticeFor(f, commit)
	if !ok {
		return nil, false
	}
	req.RPCHeader, req.Term = c.header, term
	return req, true
}

// noticeFor is the notice that tells f of commit index commit: the entry f acknowledged last as
// the previous one, and the commit index capped at it; false when f knows it already.
func noticeFor(f *noticeState, commit uint64) (*raft.AppendEntriesRequest, bool) {
	tell := min(commit, f.matchIndex)
	if tell <= f.known || f.matchIndex == 0 {
		return nil, false
	}
	return &raft.AppendEntriesRequest{PrevLogEntry: f.matchIndex, PrevLogTerm: f.matchTerm, LeaderCommitIndex: tell}, true
}

func (c *commitNotice) deliver(id raft.ServerID, f *noticeState, addr raft.ServerAddress, req *raft.AppendEntriesRequest) {
	for {
		var resp raft.AppendEntriesResponse
		err := c.send(id, addr, req, &resp)
		c.mu.Lock()
		if err == nil && resp.Success {
			f.known = max(f.known, req.LeaderCommitIndex)
		}
		again := f.again
		f.again = false
		if again {
			req, again = c.request(f)
		}
		if !again {
			f.inFlight = false
			c.mu.Unlock()
			return
		}
		addr = f.addr
		c.mu.Unlock()
	}
}

// watchedInmem is the in-memory transport of tests with the same watch as the network one
// (quiet.go): acks reach the commit notice, and replication is unpipelined, as in production.
type watchedInmem struct {
	*raft.InmemTransport
	onAck func(raft.ServerID, raft.ServerAddress, *raft.AppendEntriesRequest, *raft.AppendEntriesResponse)
}

func (w *watchedInmem) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (w *watchedInmem) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := w.InmemTransport.AppendEntries(id, target, args, resp)
	if err == nil && w.onAck != nil {
		w.onAck(id, target, args, resp)
	}
	return err
}
