package node

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

func TestHaltedNodeAnswersHealthWith503(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{twin: true})
	n := tc.nodes[0]
	if rec, _ := n.FSM().Node(n.Name()); rec.Protocol != fsm.Protocol {
		t.Fatalf("registered protocol %d, want %d", rec.Protocol, fsm.Protocol)
	}
	// As if the leader were a newer build writing a command type this one does not know.
	n.FSM().Apply(&raft.Log{Type: raft.LogCommand, Index: n.FSM().Index() + 1, Data: []byte{99, 0x80}})
	var body map[string]string
	if code := httpCall(t, n, "GET", "/v1/health", nil, &body); code != http.StatusServiceUnavailable ||
		body["status"] != "halted" || !strings.Contains(body["reason"], "command type 99") {
		t.Fatalf("health = %d %v, want 503 halted naming the command type", code, body)
	}
}

func TestLeaderWritesTheLegacyEncodingWhileAnOldNodeIsUp(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{twin: true})
	l := tc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A node of the previous release registers no protocol.
	old := fsm.Node{Name: "old", BootID: "b-old", HTTPAddr: "127.0.0.1:1"}
	if _, err := l.internode.Propose(ctx, &fsm.Command{Body: &fsm.Register{Node: old}}); err != nil {
		t.Fatal(err)
	}
	b, err := l.FSM().Emit(&fsm.Command{Body: &fsm.Cancel{IDs: []string{"x"}}})
	if err != nil || b[0] < 0x80 {
		t.Fatalf("Emit with an old node up: first byte %#x, err %v; want the legacy encoding", b[0], err)
	}
	// The cluster keeps working on legacy entries, through a follower's forward too.
	task := submit(t, tc.follower(), "calc-square", 7, "20s")
	if task.State != api.StateSucceeded || string(task.Result) != "49" {
		t.Fatalf("task = %s %s, want succeeded 49", task.State, task.Result)
	}
}
