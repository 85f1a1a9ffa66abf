package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// The example in examples/custom builds into a binary that runs its own task types on a cluster.
func TestExampleCustomBinaryRunsItsTasksOnTwoNodes(t *testing.T) {
	binary(t) // skips in -short mode
	bin, err := localcluster.Build(localcluster.Module+"/examples/custom", filepath.Join(t.TempDir(), "custom"))
	if err != nil {
		t.Fatalf("build example: %v", err)
	}
	pc := newProcCluster(t, bin)
	pc.add()
	pc.add()
	pc.waitCluster(pc.procs[0], 2)

	out, errOut, code := pc.cli(pc.procs[1], "exec", "word-count", `{"text": "to be or not to be"}`)
	if code != 0 || !strings.Contains(out, `"words":6`) || !strings.Contains(errOut, "counting words") {
		t.Fatalf("word-count: code %d out %q err %q", code, out, errOut)
	}
	out, _, code = pc.cli(pc.procs[0], "exec", "fan-out", `{"n": 3}`)
	if code != 0 {
		t.Fatalf("fan-out: code %d out %q", code, out)
	}
	ctx := context.Background()
	parents, err := pc.procs[0].client().List(ctx, client.ListOptions{Type: "fan-out"})
	if err != nil || len(parents) != 1 {
		t.Fatalf("list fan-out: %v %d", err, len(parents))
	}
	chain, err := pc.procs[1].client().List(ctx, client.ListOptions{Execution: parents[0].ExecutionID})
	if err != nil {
		t.Fatal(err)
	}
	squares := 0
	for _, task := range chain {
		if task.Type == "calc-square" {
			if task.ParentID != parents[0].ID {
				t.Fatalf("child %s has parent %q", task.ID, task.ParentID)
			}
			squares++
		}
	}
	if squares != 3 {
		t.Fatalf("execution %s holds %d children, want 3", parents[0].ExecutionID, squares)
	}
	var ids []string
	if err := json.Unmarshal(parents[0].Result, &ids); err != nil || len(ids) != 3 {
		t.Fatalf("fan-out result %s", parents[0].Result)
	}
}
