package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/fsm"
)

// appliedCmd is one call of the batcher's apply.
type appliedCmd struct {
	c       *fsm.Command
	timeout time.Duration
}

func TestBatcherSkipsAbandonedProposalsAndWaitsForTheLatestDeadline(t *testing.T) {
	var applied []appliedCmd
	b := newBatcher(func(c *fsm.Command, timeout time.Duration) (*fsm.Result, error) {
		applied = append(applied, appliedCmd{c, timeout})
		res := &fsm.Result{Index: uint64(len(applied))}
		for range c.Len() {
			res.Items = append(res.Items, fsm.ItemResult{ID: fmt.Sprint(len(res.Items))})
		}
		return res, nil
	}, 3*time.Second)
	prop := func(ctx context.Context, c *fsm.Command) *proposal {
		return &proposal{ctx: ctx, c: c, done: make(chan proposalResult, 1)}
	}
	submitOf := func(id string) *fsm.Command {
		return &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{{ID: id, Type: "echo"}}}}
	}
	reportOf := func(id string) *fsm.Command {
		return &fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: id}}}}
	}
	long, cancelLong := context.WithTimeout(context.Background(), time.Minute)
	defer cancelLong()
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	gone, giveUp := context.WithCancel(context.Background())
	giveUp()
	batch := []*proposal{
		prop(long, submitOf("a")),
		prop(gone, submitOf("b")), // its caller gave up: not applied
		prop(context.Background(), reportOf("r1")),
		prop(short, reportOf("r2")),
		prop(short, submitOf("c")),
	}
	b.applyBatch(batch)

	if len(applied) != 2 {
		t.Fatalf("applied %d commands, want one submit and one report", len(applied))
	}
	sub, rep := applied[0], applied[1]
	if items := sub.c.Body.(*fsm.SubmitBatch).Items; len(items) != 2 || items[0].ID != "a" || items[1].ID != "c" {
		t.Errorf("submit applied %+v, want a and c", items)
	}
	if sub.timeout < 50*time.Second || sub.timeout > time.Minute {
		t.Errorf("submit timeout %s, want the latest caller deadline (~1m)", sub.timeout)
	}
	if rep.c.Len() != 2 || rep.timeout != 3*time.Second {
		t.Errorf("report: %d items, timeout %s; want 2 and the default 3s (a caller without a deadline)", rep.c.Len(), rep.timeout)
	}
	if r := <-batch[1].done; !errors.Is(r.err, context.Canceled) || r.res != nil {
		t.Errorf("abandoned proposal: %+v, want context.Canceled", r)
	}
	for i, want := range map[int]string{0: "0", 4: "1", 2: "0", 3: "1"} {
		r := <-batch[i].done
		if r.err != nil || len(r.res.Items) != 1 || r.res.Items[0].ID != want {
			t.Errorf("proposal %d: %+v, want its own item %s", i, r, want)
		}
	}
}

func TestForwardReplyRebuildsEverySentinel(t *testing.T) {
	for _, s := range fsm.Sentinels() {
		res := &fsm.Result{Index: 9, Err: fmt.Errorf("%w: whole", s), Items: []fsm.ItemResult{{ID: "a", Err: s}, {ID: "b"}}}
		b, err := msgpack.Marshal(toWire(res))
		if err != nil {
			t.Fatal(err)
		}
		var w wireResult
		if err := fsm.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		got := fromWire(&w)
		if !errors.Is(got.Err, s) || got.Err.Error() != res.Err.Error() || !errors.Is(got.Items[0].Err, s) || got.Items[1].Err != nil {
			t.Errorf("%s: round trip gave %v / %v", s.Code, got.Err, got.Items)
		}
		// A leader of the previous release replies with the message alone.
		old := fromWire(&wireResult{Err: s.Error() + ": detail", Items: []wireItem{{ID: "a", Err: s.Error()}}})
		if !errors.Is(old.Err, s) || !errors.Is(old.Items[0].Err, s) {
			t.Errorf("%s: old-format reply gave %v / %v", s.Code, old.Err, old.Items[0].Err)
		}
	}
}

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
	if _, err := l.propose(ctx, &fsm.Command{Body: &fsm.Register{Node: old}}); err != nil {
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
