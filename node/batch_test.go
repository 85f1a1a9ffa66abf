package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/tasks"
)

// TestBatchSubmitThroughAFollower sends a full batch to a follower: every valid task is stored in
// one raft entry, the bad one fails alone in its place, and idempotency keys hold within the
// batch and across batches.
func TestBatchSubmitThroughAFollower(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 8}) // the thousand echo tasks then run quickly
	f := tc.follower()
	const bad, first, again = 500, 10, 20
	req := api.BatchSubmitRequest{Tasks: make([]api.SubmitRequest, api.MaxBatchTasks)}
	for i := range req.Tasks {
		req.Tasks[i] = api.SubmitRequest{Type: "echo", Input: []byte(fmt.Sprintf(`{"i":%d}`, i))}
	}
	req.Tasks[bad].Type = "no-such-type"
	req.Tasks[first].IdempotencyKey = "dup"
	req.Tasks[again].IdempotencyKey = "dup"

	var reply api.BatchSubmitReply
	if code := httpCall(t, f, "POST", api.PathTasksBatch, req, &reply); code != http.StatusOK {
		t.Fatalf("batch: status %d", code)
	}
	if len(reply.Results) != len(req.Tasks) {
		t.Fatalf("%d results for %d tasks", len(reply.Results), len(req.Tasks))
	}
	if r := reply.Results[bad]; r.Status != http.StatusBadRequest || r.Error == nil || r.Error.Code != api.CodeUnknownTaskType || r.Task != nil {
		t.Fatalf("bad item: %+v", r)
	}
	if r := reply.Results[again]; r.Status != http.StatusOK || r.Task == nil || r.Task.ID != reply.Results[first].Task.ID {
		t.Fatalf("repeated key in the batch: %+v, first %+v", r, reply.Results[first])
	}
	ids := map[string]bool{}
	var createIndex uint64
	for i, r := range reply.Results {
		if i == bad || i == again {
			continue
		}
		if r.Status != http.StatusCreated || r.Task == nil || r.Error != nil {
			t.Fatalf("item %d: %+v", i, r)
		}
		if string(r.Task.Input) != string(req.Tasks[i].Input) {
			t.Fatalf("item %d answered with task input %s, want %s", i, r.Task.Input, req.Tasks[i].Input)
		}
		ids[r.Task.ID] = true
		// The follower answers with what it holds: every task is already in its FSM.
		rec, ok := f.FSM().Task(r.Task.ID)
		if !ok {
			t.Fatalf("item %d: task %s not on the follower that answered", i, r.Task.ID)
		}
		if createIndex == 0 {
			createIndex = rec.CreateIndex
		}
		if rec.CreateIndex != createIndex {
			t.Fatalf("item %d created at index %d, item 0 at %d: the batch took more than one raft entry", i, rec.CreateIndex, createIndex)
		}
	}
	if len(ids) != len(req.Tasks)-2 {
		t.Fatalf("%d distinct tasks, want %d", len(ids), len(req.Tasks)-2)
	}

	// A second batch: the key seen before answers 200 with the first task.
	next := api.BatchSubmitRequest{Tasks: []api.SubmitRequest{{Type: "echo", IdempotencyKey: "dup"}, {Type: "echo", IdempotencyKey: "new"}}}
	if code := httpCall(t, tc.leader(), "POST", api.PathTasksBatch, next, &reply); code != http.StatusOK {
		t.Fatalf("second batch: status %d", code)
	}
	if r := reply.Results[0]; r.Status != http.StatusOK || r.Task == nil || !ids[r.Task.ID] {
		t.Fatalf("key seen in an earlier batch: %+v", r)
	}
	if r := reply.Results[1]; r.Status != http.StatusCreated || r.Task == nil || ids[r.Task.ID] {
		t.Fatalf("new key: %+v", r)
	}
}

// TestBatchSubmitRefusals: a batch with too many tasks or none is refused whole and stores nothing.
func TestBatchSubmitRefusals(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	before := len(n.FSM().List(fsm.Filter{Limit: api.MaxListLimit}))
	var e api.Error
	big := api.BatchSubmitRequest{Tasks: make([]api.SubmitRequest, api.MaxBatchTasks+1)}
	for i := range big.Tasks {
		big.Tasks[i].Type = "echo"
	}
	if code := httpCall(t, n, "POST", api.PathTasksBatch, big, &e); code != http.StatusBadRequest || e.Code != api.CodeBatchTooLarge {
		t.Fatalf("too many: %d %+v", code, e)
	}
	if code := httpCall(t, n, "POST", api.PathTasksBatch, api.BatchSubmitRequest{}, &e); code != http.StatusBadRequest || e.Code != api.CodeEmptyBatch {
		t.Fatalf("none: %d %+v", code, e)
	}
	if after := len(n.FSM().List(fsm.Filter{Limit: api.MaxListLimit})); after != before {
		t.Fatalf("refused batches stored %d tasks", after-before)
	}
}

// BenchmarkBatchSubmit measures one node's batch submit path (validation, one raft entry, the
// records of the reply) with in-memory raft and no task running: go test -bench BatchSubmit -run
// '^$' ./node reports tasks/s.
func BenchmarkBatchSubmit(b *testing.B) {
	reg := tasks.NewRegistry()
	if err := tasks.RegisterBuiltins(reg, b.TempDir()); err != nil {
		b.Fatal(err)
	}
	n, err := Start(Config{Name: "n1", GossipAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Capacity: 1, Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Insecure: true, InmemRaft: true})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	// Drain before the first batch, so no task runs and the figure is the submit path alone.
	ctx := context.Background()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := n.fsm.Node("n1"); ok && n.IsLeader() {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the node never registered")
		}
	}
	if _, err := n.internode.Propose(ctx, &fsm.Command{Body: &fsm.Drain{Name: "n1", Draining: true}}); err != nil {
		b.Fatal(err)
	}
	reqs := make([]api.SubmitRequest, api.MaxBatchTasks)
	for i := range reqs {
		reqs[i] = api.SubmitRequest{Type: "echo", Input: []byte(`{"payload":"0123456789abcdef"}`)}
	}
	b.ResetTimer()
	for range b.N {
		res, err := n.ep.SubmitBatch(ctx, httpapi.Caller{}, reqs)
		if err != nil || res[0].Status != http.StatusCreated {
			b.Fatalf("%v %+v", err, res[0])
		}
	}
	b.ReportMetric(float64(b.N*len(reqs))/b.Elapsed().Seconds(), "tasks/s")
}
