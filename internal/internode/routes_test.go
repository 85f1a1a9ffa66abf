package internode

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// A node's command route takes only commands of its own type.
func TestNodeRoutesTakeOnlyTheirOwnType(t *testing.T) {
	cancel, err := fsm.Encode(&fsm.Command{Now: time.Now(), Body: &fsm.Cancel{IDs: []string{"x"}}})
	if err != nil {
		t.Fatal(err)
	}
	for typ, path := range nodePaths {
		if _, err := decodeNodeCommand(typ, cancel); err == nil {
			t.Errorf("%s accepts a cancel", path)
		}
	}
}

// The leader's own check of a registration, for a newcomer that got past gossip (or never went
// through it): only another boot of a live node's name, at another address, is refused, and the
// refusal names the live holder's raft ID.
func TestRegistrationOverALiveNodeIsRefused(t *testing.T) {
	holder := membership.Member{Name: "n2", GossipAddr: "127.0.0.1:7002", State: membership.StateAlive,
		Meta: membership.Meta{BootID: "b2", RaftID: "raft-n2"}}
	members := []membership.Member{
		{Name: "n1", GossipAddr: "127.0.0.1:7001", State: membership.StateAlive, Meta: membership.Meta{BootID: "b1", RaftID: "raft-n1"}},
		holder,
		{Name: "n3", GossipAddr: "127.0.0.1:7003", State: membership.StateDead, Meta: membership.Meta{BootID: "b3", RaftID: "raft-n3"}},
	}
	memberID := func(m membership.Member) raft.ServerID { return raft.ServerID(m.Meta.RaftID) }
	live := fsm.Node{Name: holder.Name, BootID: holder.Meta.BootID, GossipAddr: holder.GossipAddr}
	cases := []struct {
		name    string
		rec     fsm.Node
		refused bool
	}{
		{"the live node itself", live, false},
		{"a restart at the same address", fsm.Node{Name: live.Name, BootID: "new", GossipAddr: live.GossipAddr}, false},
		{"a new name", fsm.Node{Name: "n9", BootID: "x", GossipAddr: "127.0.0.1:1"}, false},
		{"another boot elsewhere", fsm.Node{Name: live.Name, BootID: "other", GossipAddr: "127.0.0.1:1"}, true},
		{"another boot of a dead node's name", fsm.Node{Name: "n3", BootID: "other", GossipAddr: "127.0.0.1:1"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkRegistration(members, c.rec, memberID)
			if (err != nil) != c.refused {
				t.Fatalf("checkRegistration(%+v): %v, refused want %v", c.rec, err, c.refused)
			}
			if c.refused && !strings.Contains(err.Error(), "raft ID raft-n2") {
				t.Errorf("refusal %q does not name the live holder's raft ID raft-n2", err)
			}
		})
	}
}

func TestCallerMayActOnlyForItsOwnNode(t *testing.T) {
	cases := []struct {
		caller Caller
		node   string
		may    bool
	}{
		{Caller{Name: "n1"}, "n1", true},
		{Caller{Name: "n1"}, "n2", false},
		{Caller{}, "", false}, // a certificate that names no node acts for none
		{Caller{anyNode: true}, "n2", true},
	}
	for _, c := range cases {
		if got := c.caller.May(c.node); got != c.may {
			t.Errorf("%+v.May(%q) = %v, want %v", c.caller, c.node, got, c.may)
		}
	}
}

// The report route takes one node's batch of many tasks' reports (its report batcher merges
// them), and refuses a batch with a single report for another node.
func TestReportRouteTakesABatchOfTheCallersOwnReports(t *testing.T) {
	var items []fsm.Report
	for _, id := range []string{"a", "b", "c"} {
		items = append(items, fsm.Report{TaskID: id, Attempt: 1, Node: "n1", BootID: "b1", Kind: fsm.ReportStarted})
	}
	own := &fsm.Command{Body: &fsm.ReportBatch{Items: items}}
	if err := checkNodeIdentity(own, Caller{Name: "n1"}); err != nil {
		t.Fatalf("a batch of the caller's own reports: %v", err)
	}
	mixed := &fsm.Command{Body: &fsm.ReportBatch{Items: append(items, fsm.Report{TaskID: "d", Attempt: 1, Node: "n2", Kind: fsm.ReportStarted})}}
	if err := checkNodeIdentity(mixed, Caller{Name: "n1"}); err == nil {
		t.Fatal("a batch with a report for another node was taken")
	}
}

// A node's child submit may not carry assignments: only the leader places tasks, and a peer
// that sends some (to put tasks on a node of its choice) is refused before anything is applied.
func TestChildSubmitWithAssignmentsIsRefused(t *testing.T) {
	cmd := &fsm.Command{Body: &fsm.SubmitBatch{
		Items: []fsm.Submit{{ID: "c", Type: "echo", ParentID: "p"}},
		Place: []fsm.Assign{{TaskID: "c", Node: "n1", BootID: "b1"}},
	}}
	err := (&Channel{}).checkChildren(cmd, Caller{anyNode: true})
	if err == nil || !strings.Contains(err.Error(), "no assignments") {
		t.Fatalf("a child submit with assignments: %v, want refused", err)
	}
	var e *api.Error
	if !errors.As(err, &e) || e.Code != api.CodeInvalidRequest {
		t.Errorf("refusal %v, want code %s", err, api.CodeInvalidRequest)
	}
}
