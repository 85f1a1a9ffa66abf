package node

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// TestSecondLiveNodeWithTheSameNameIsRefused starts a node named like a live member: it must not
// join (gossip refuses the merge on both sides), it stops on its own with ErrNameConflict, and
// the cluster keeps the original: same boot ID, same address, alive.
func TestSecondLiveNodeWithTheSameNameIsRefused(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{inmem: true})
	orig := tc.nodes[1] // n2
	logs := &syncBuffer{}
	c := clusterOpts{inmem: true}.config(t, 1, []string{tc.nodes[0].GossipAddr()})
	c.Logger = slogTo(logs)
	twin, err := Start(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = twin.Shutdown() })
	select {
	case <-twin.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("the second n2 still runs 20s after joining; its log:\n%s", logs)
	}
	if err := twin.Err(); !errors.Is(err, membership.ErrNameConflict) {
		t.Fatalf("Err: %v, want ErrNameConflict", err)
	}
	lines := strings.Count(logs.String(), "level=ERROR")
	if lines != 1 || !strings.Contains(logs.String(), `another live node named \"n2\" is in the cluster at `+orig.GossipAddr()) {
		t.Errorf("want one ERROR line naming n2 and the live one's address, got %d:\n%s", lines, logs)
	}
	for _, n := range tc.nodes {
		for _, m := range n.members.Members() {
			if m.Name == "n2" && (m.GossipAddr != orig.GossipAddr() || m.State != membership.StateAlive) {
				t.Errorf("%s sees n2 as %s at %s, want alive at %s", n.Name(), m.State, m.GossipAddr, orig.GossipAddr())
			}
		}
		rec, ok := n.fsm.Node("n2")
		if !ok || rec.BootID != orig.BootID() {
			t.Errorf("%s holds n2's registration %+v, want boot %s", n.Name(), rec, orig.BootID())
		}
	}
	// Raft IDs do not let the second n2 in beside the first: raft holds the live one's ID only.
	if twin.RaftID() == orig.RaftID() {
		t.Fatalf("the second n2 made the same raft ID %s", twin.RaftID())
	}
	for _, s := range rawRaftServers(tc.leader()) {
		if string(s.ID) == twin.RaftID() {
			t.Errorf("raft's configuration holds the second n2's ID %s: %+v", twin.RaftID(), rawRaftServers(tc.leader()))
		}
	}
	if !slices.Contains(raftIDs(tc.leader()), raft.ServerID(orig.RaftID())) {
		t.Errorf("raft's configuration lost the live n2's ID %s: %+v", orig.RaftID(), rawRaftServers(tc.leader()))
	}
}

// TestLeaderRefusesARegistrationOverALiveNode: the leader's own check, for a newcomer that got
// past gossip (or never went through it), sent on the registration route: another boot of a live
// node's name at another address is refused, the refusal names the live holder's raft ID, and
// nothing changes. The check's other cases are internal/internode's unit test.
func TestLeaderRefusesARegistrationOverALiveNode(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{inmem: true})
	leader, other := tc.leader(), tc.follower()
	// What the refused register could change: the record of the node it names, the tasks that
	// node held and the workers it hosts (a register of another boot takes them back). Not the
	// whole digest, which holds the applied index, nor the record's registered time, modify index
	// and status: the live node's own registers (after a membership flap under load) move them
	// without any request, and an accepted register would leave it up as it is.
	state := func() string {
		l := leader.FSM()
		n, ok := l.Node(other.Name())
		n.RegisteredAt, n.ModifyIndex, n.Status = time.Time{}, 0, ""
		b, err := json.Marshal([]any{ok, n, l.Workers()})
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + taskState(t, l)
	}
	before := state()
	rec := fsm.Node{Name: other.Name(), BootID: "other", GossipAddr: "127.0.0.1:1"}
	_, err := other.internode.Send(t.Context(), other.internode.Addr(leader.Name()), &fsm.Command{Body: &fsm.Register{Node: rec}})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeNameInUse {
		t.Fatalf("registration %+v over the live %s: %v, want name_in_use", rec, other.Name(), err)
	}
	if !strings.Contains(err.Error(), "raft ID "+other.RaftID()) {
		t.Errorf("refusal %q does not name the live holder's raft ID %s", err, other.RaftID())
	}
	if after := state(); after != before {
		t.Fatalf("a refused registration changed the leader's state: %s, then %s", before, after)
	}
}
