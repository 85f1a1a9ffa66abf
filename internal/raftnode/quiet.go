package raftnode

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// quietTransport thins the leader's heartbeats to non-voters, the part of an idle leader's work
// that grows with the cluster. hashicorp/raft heartbeats every follower every HeartbeatTimeout/10
// (50 ms by default here), non-voters too, although a non-voter never calls an election and
// its answers decide nothing: the leader's lease and commit count voters only (a heartbeat's
// success is also a "vote" for raft's VerifyLeader, which taskworker never calls). A non-voter only
// needs contact within its HeartbeatTimeout, or it forgets who leads for a moment (raft's
// follower loop clears the leader, and forwards from that node would wait for the next contact).
// So a heartbeat to a non-voter goes out at most every HeartbeatTimeout/3 and the others are
// answered here, as the follower would answer; the replication loop's appends (entries, or the
// commit index every CommitTimeout) always go out. Profiled on an idle 20-node cluster (3 voters),
// heartbeats were 43 % of the leader's CPU.
//
// Voters are never thinned: a voter that missed heartbeats would start an election. The set of
// non-voters is the latest raft configuration the leader's reconciler read (NoteConfiguration,
// every 250 ms); a node promoted meanwhile (or one this leader knew as a non-voter in an earlier
// term) still hears from the leader every HeartbeatTimeout/3, well inside its HeartbeatTimeout.
type quietTransport struct {
	*raft.NetworkTransport
	every     time.Duration
	nonVoters atomic.Pointer[map[raft.ServerID]bool]
	mu        sync.Mutex
	sent      map[raft.ServerID]time.Time // the last heartbeat that went out to each non-voter
	skipped   atomic.Uint64
	// onAck sees every answered append (notice.go's watch), when set before raft starts.
	onAck func(raft.ServerID, raft.ServerAddress, *raft.AppendEntriesRequest, *raft.AppendEntriesResponse)
}

func newQuietTransport(t *raft.NetworkTransport, heartbeatTimeout time.Duration) *quietTransport {
	q := &quietTransport{NetworkTransport: t, every: heartbeatTimeout / 3, sent: map[raft.ServerID]time.Time{}}
	q.nonVoters.Store(&map[raft.ServerID]bool{})
	return q
}

// setConfiguration records which servers are non-voters.
func (q *quietTransport) setConfiguration(c raft.Configuration) {
	nv := map[raft.ServerID]bool{}
	for _, s := range c.Servers {
		if s.Suffrage != raft.Voter {
			nv[s.ID] = true
		}
	}
	q.nonVoters.Store(&nv)
}

// isHeartbeat tells raft's heartbeat from its other appends: it carries the term and the leader
// only, while replication always names the previous entry and the commit index (both zero only
// before a cluster's first entry, when there are no non-voters yet).
func isHeartbeat(a *raft.AppendEntriesRequest) bool {
	return len(a.Entries) == 0 && a.PrevLogEntry == 0 && a.PrevLogTerm == 0 && a.LeaderCommitIndex == 0
}

func (q *quietTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if isHeartbeat(args) && (*q.nonVoters.Load())[id] {
		now := time.Now()
		q.mu.Lock()
		due := now.Sub(q.sent[id]) >= q.every
		if due {
			q.sent[id] = now
		}
		q.mu.Unlock()
		if !due {
			q.skipped.Add(1)
			// What the follower answers a heartbeat with; raft's heartbeat loop reads only
			// Success (for VerifyLeader, which taskworker does not use).
			*resp = raft.AppendEntriesResponse{Term: args.Term, Success: true}
			return nil
		}
	}
	err := q.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil && q.onAck != nil {
		q.onAck(id, target, args, resp)
	}
	return err
}
