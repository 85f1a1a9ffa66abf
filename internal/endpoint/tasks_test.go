package endpoint

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/tasks"
)

// TestAPISubmitsProposeOnTheLeaderAndChildrenAsTheNodesOwnCommand: a submit of the API goes
// through Config.Propose (the API's writes run on the leader) and records the caller's principal;
// a running task's child goes through Config.ProposeNode (this node's own command, which reaches
// the leader wherever it is), joins the parent's execution and records the parent's submitter.
func TestAPISubmitsProposeOnTheLeaderAndChildrenAsTheNodesOwnCommand(t *testing.T) {
	reg := tasks.NewRegistry()
	if err := tasks.RegisterBuiltins(reg, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	parent := fsm.Task{ID: "01PARENT", Type: "echo", Version: "1", State: fsm.Running, Node: "n1", Attempt: 1,
		MaxAttempts: 1, Timeout: fsm.Duration(time.Minute), ExecutionID: "01PARENT", SubmittedBy: "alice"}
	f := fsmWith(t, parent)
	var viaAPI, viaNode []*fsm.Command
	apply := func(into *[]*fsm.Command) func(context.Context, *fsm.Command) (*fsm.Result, error) {
		return func(_ context.Context, c *fsm.Command) (*fsm.Result, error) {
			*into = append(*into, c)
			c.Now = time.Now().UTC()
			res := f.ApplyCommand(f.Index()+1, c)
			return res, res.Err
		}
	}
	a := New(Config{
		Name: "n1", ACL: true, MaxInputBytes: 1 << 20, FSM: f, Registry: reg,
		Propose: apply(&viaAPI), ProposeNode: apply(&viaNode),
		NewID:        func(context.Context, int) string { return ulid.Make().String() },
		WaitIndex:    func(context.Context, uint64) error { return nil },
		Alive:        func() map[string]bool { return map[string]bool{"n1": true} },
		StorageFault: func() string { return "" },
	})

	got, created, err := a.Submit(context.Background(), httpapi.Caller{}, api.SubmitRequest{Type: "echo", Input: json.RawMessage(`{}`)})
	if err != nil || !created || got.Type != "echo" {
		t.Fatalf("API submit: %+v %v %v", got, created, err)
	}
	if len(viaAPI) != 1 || len(viaNode) != 0 {
		t.Fatalf("API submit proposed %d times through Propose and %d through ProposeNode, want 1 and 0", len(viaAPI), len(viaNode))
	}

	id, err := a.SubmitChild(context.Background(), tasks.RunRef{TaskID: parent.ID, Attempt: 1}, parent.ExecutionID,
		tasks.ChildTask{Type: "echo", Input: map[string]string{"x": "y"}})
	if err != nil {
		t.Fatalf("child submit: %v", err)
	}
	if len(viaAPI) != 1 || len(viaNode) != 1 {
		t.Fatalf("after the child submit: %d proposals through Propose and %d through ProposeNode, want 1 (the API's) and 1", len(viaAPI), len(viaNode))
	}
	child, ok := f.Task(id)
	if !ok || child.ParentID != parent.ID || child.ExecutionID != parent.ExecutionID || child.SubmittedBy != "alice" {
		t.Fatalf("child %+v (found %v), want parent %s, execution %s, submitted by alice", child, ok, parent.ID, parent.ExecutionID)
	}
	// The leader takes the same child from another node only while its parent runs.
	sub := viaNode[0].Body.(*fsm.SubmitBatch).Items[0]
	if err := a.CheckSubmit(&sub); err != nil {
		t.Errorf("CheckSubmit of the child: %v", err)
	}
	if err := a.CheckChild(&sub); err != nil {
		t.Errorf("CheckChild of the child: %v", err)
	}
	sub.SubmittedBy = "mallory"
	if err := a.CheckChild(&sub); err == nil {
		t.Error("a child recording another submitter than its parent's was accepted")
	}
}
