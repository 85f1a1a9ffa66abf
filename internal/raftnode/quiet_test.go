package raftnode

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Heartbeats to a non-voter go out at most once per interval and are answered locally in
// between; heartbeats to voters and every other append always reach the follower.
func TestQuietTransportThinsHeartbeatsToNonVotersOnly(t *testing.T) {
	follower, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer follower.Close()
	var got atomic.Int64
	go func() {
		for rpc := range follower.Consumer() {
			got.Add(1)
			rpc.Respond(&raft.AppendEntriesResponse{Term: 7, Success: true}, nil)
		}
	}()
	leader, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	q := newQuietTransport(leader, time.Hour) // one heartbeat per half hour: all but the first thinned
	q.setConfiguration(raft.Configuration{Servers: []raft.Server{
		{ID: "v", Suffrage: raft.Voter}, {ID: "nv", Suffrage: raft.Nonvoter}}})
	send := func(id raft.ServerID, req raft.AppendEntriesRequest) raft.AppendEntriesResponse {
		t.Helper()
		var resp raft.AppendEntriesResponse
		if err := q.AppendEntries(id, follower.LocalAddr(), &req, &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	heartbeat := raft.AppendEntriesRequest{Term: 7}
	for i := 0; i < 5; i++ {
		if resp := send("nv", heartbeat); !resp.Success || resp.Term != 7 {
			t.Fatalf("heartbeat %d to the non-voter: %+v", i, resp)
		}
	}
	if n := got.Load(); n != 1 {
		t.Fatalf("the follower got %d of 5 heartbeats to a non-voter, want 1", n)
	}
	for i := 0; i < 5; i++ {
		send("v", heartbeat)
	}
	send("nv", raft.AppendEntriesRequest{Term: 7, PrevLogEntry: 9, PrevLogTerm: 7, LeaderCommitIndex: 9})
	send("nv", raft.AppendEntriesRequest{Term: 7, Entries: []*raft.Log{{Index: 1, Term: 7}}})
	if n := got.Load(); n != 1+5+2 {
		t.Fatalf("the follower got %d RPCs, want 8: voters' heartbeats and appends are never thinned", n)
	}
	if s := q.skipped.Load(); s != 4 {
		t.Errorf("skipped %d, want 4", s)
	}
}
