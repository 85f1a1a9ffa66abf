package node

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// Task versions in a mixed cluster: each node offers the versions its registry holds; a submit
// without a version gets the newest one an alive node offers; a task runs only on a node that
// offers its version, and waits pending while none does.

// greetVersions is the version of "greet" node i (n1, n2, ...) registers.
var greetVersions = []string{"1", "2", "2", "3"}

// greetRegistries gives node i the built-ins and "greet" at greetVersions[i]. greet returns
// "VERSION@NODE"; the input "hold" blocks the run until hold is closed.
func greetRegistries(t *testing.T, hold chan struct{}) func(i int) *tasks.Registry {
	return func(i int) *tasks.Registry {
		name, version := fmt.Sprintf("n%d", i+1), greetVersions[i]
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := tasks.Func(tasks.Definition{Name: "greet", Version: version, Description: "greet v" + version, ExampleInput: []byte(`"x"`)},
			func(ctx *tasks.Context, in string) (string, error) {
				if in == "hold" {
					select {
					case <-hold:
					case <-ctx.Done():
						return "", ctx.Err()
					}
				}
				return version + "@" + name, nil
			})
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

func submitVersion(t *testing.T, n *Node, version, input string) api.Task {
	t.Helper()
	var task api.Task
	body := map[string]any{"type": "greet", "input": input}
	if version != "" {
		body["version"] = version
	}
	if code := httpCall(t, n, "POST", "/v1/tasks", body, &task); code != http.StatusCreated {
		t.Fatalf("submit greet version %q: status %d", version, code)
	}
	return task
}

// greetTypes returns GET /v1/types from n, the greet entries by version.
func greetTypes(t *testing.T, n *Node) map[string]api.TypeInfo {
	t.Helper()
	var list []api.TypeInfo
	if code := httpCall(t, n, "GET", "/v1/types", nil, &list); code != http.StatusOK {
		t.Fatalf("GET /v1/types: %d", code)
	}
	out := map[string]api.TypeInfo{}
	for _, ti := range list {
		if ti.Type == "greet" {
			slices.Sort(ti.Nodes)
			out[ti.Version] = ti
		}
	}
	return out
}

func finished(t *testing.T, tc *testCluster, id string) fsm.Task {
	t.Helper()
	return waitState(t, tc, id, 30*time.Second, func(t fsm.Task) bool { return t.State.Terminal() })
}

func TestMixedVersionsRunOnNodesOfferingThem(t *testing.T) {
	hold := make(chan struct{})
	opts := clusterOpts{registry: greetRegistries(t, hold)}
	tc := startCluster(t, 3, opts)

	// GET /v1/types lists every type and version with the nodes offering it.
	want := map[string][]string{"1": {"n1"}, "2": {"n2", "n3"}}
	for _, n := range tc.nodes {
		var got map[string]api.TypeInfo
		// Each node's view (its FSM replica and gossip) converges on its own.
		waitFor(t, n.Name()+" lists every greet version", 20*time.Second, func() bool {
			got = greetTypes(t, n)
			return len(got) == len(want) && slices.Equal(got["2"].Nodes, want["2"])
		})
		for v, nodes := range want {
			if ti := got[v]; !slices.Equal(ti.Nodes, nodes) || ti.Pending != 0 || ti.Description != "greet v"+v || string(ti.ExampleInput) != `"x"` {
				t.Fatalf("%s: greet %s = %+v, want nodes %v", n.Name(), v, ti, nodes)
			}
		}
		var all []api.TypeInfo
		httpCall(t, n, "GET", "/v1/types", nil, &all)
		if i := slices.IndexFunc(all, func(ti api.TypeInfo) bool { return ti.Type == "echo" }); i < 0 || len(all[i].Nodes) != 3 {
			t.Fatalf("%s: echo entry missing or incomplete in %+v", n.Name(), all)
		}
	}

	// Unpinned: the newest version an alive node offers, on a node offering it.
	var ids []string
	for i := 0; i < 6; i++ {
		task := submitVersion(t, tc.nodes[i%3], "", "hi")
		if task.Version != "2" {
			t.Fatalf("unpinned submit via %s recorded version %q, want 2", tc.nodes[i%3].Name(), task.Version)
		}
		ids = append(ids, task.ID)
	}
	for _, id := range ids {
		got := finished(t, tc, id)
		if got.State != fsm.Succeeded || got.Version != "2" || (got.Node != "n2" && got.Node != "n3") ||
			string(got.Result) != fmt.Sprintf("%q", "2@"+got.Node) {
			t.Fatalf("unpinned task: %s version %s on %s result %s", got.State, got.Version, got.Node, got.Result)
		}
	}

	// Pinned to 1: only n1 runs it, whichever node took the submit.
	ids = nil
	for i := 0; i < 4; i++ {
		task := submitVersion(t, tc.nodes[i%3], "1", "hi")
		if task.Version != "1" {
			t.Fatalf("pinned submit recorded version %q", task.Version)
		}
		ids = append(ids, task.ID)
	}
	for _, id := range ids {
		if got := finished(t, tc, id); got.State != fsm.Succeeded || got.Node != "n1" || string(got.Result) != `"1@n1"` {
			t.Fatalf("pinned v1 task: %s on %s result %s", got.State, got.Node, got.Result)
		}
	}

	// Pinned to 3, which nobody offers yet: it waits, and /v1/types shows it waiting.
	v3 := submitVersion(t, tc.nodes[1], "3", "hi")
	// An unpinned task in progress on version 2 when version 3 arrives.
	inflight := submitVersion(t, tc.nodes[0], "", "hold")
	waitState(t, tc, inflight.ID, 20*time.Second, func(t fsm.Task) bool { return t.State == fsm.Running })
	waitFor(t, "version 3 shown pending", 10*time.Second, func() bool {
		ti, ok := greetTypes(t, tc.nodes[2])["3"]
		return ok && ti.Pending == 1 && len(ti.Nodes) == 0
	})
	for _, n := range tc.nodes {
		waitFor(t, n.Name()+" shows version 3 pending", 10*time.Second, func() bool {
			got := greetTypes(t, n)["3"]
			return got.Pending == 1 && len(got.Nodes) == 0
		})
	}
	if got := tc.task(v3.ID); got.State != fsm.Pending || got.Attempt != 0 {
		t.Fatalf("v3 task before any node offers it: %s attempt %d", got.State, got.Attempt)
	}

	// A node offering 3 joins: the waiting task runs there.
	n4 := tc.start(opts.config(t, 3, []string{tc.nodes[0].GossipAddr()}))
	got := finished(t, tc, v3.ID)
	if got.State != fsm.Succeeded || got.Node != "n4" || string(got.Result) != `"3@n4"` || got.Version != "3" {
		t.Fatalf("v3 task after n4 joined: %s on %s result %s", got.State, got.Node, got.Result)
	}
	// Each node resolves versions from its own view; wait until every one sees n4.
	for _, n := range tc.nodes {
		waitFor(t, n.Name()+" lists n4 for version 3", 20*time.Second, func() bool {
			ti := greetTypes(t, n)["3"]
			return slices.Equal(ti.Nodes, []string{"n4"}) && ti.Pending == 0
		})
	}
	// Newest alive is now 3.
	if task := submitVersion(t, tc.nodes[2], "", "hi"); task.Version != "3" {
		t.Fatalf("unpinned submit with n4 up recorded version %q, want 3", task.Version)
	} else if got := finished(t, tc, task.ID); got.Node != "n4" || got.State != fsm.Succeeded {
		t.Fatalf("unpinned v3 task: %s on %s", got.State, got.Node)
	}
	// The task in progress finishes on the version it started on.
	close(hold)
	if got := finished(t, tc, inflight.ID); got.State != fsm.Succeeded || got.Version != "2" ||
		string(got.Result) != fmt.Sprintf("%q", "2@"+got.Node) || got.Attempt != 1 {
		t.Fatalf("in-flight v2 task: %s version %s on %s result %s attempt %d", got.State, got.Version, got.Node, got.Result, got.Attempt)
	}

	// n4 goes: unpinned submits fall back to 2, and version 3 waits again.
	if err := n4.Leave(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	waitDone(t, n4, 30*time.Second)
	waitFor(t, "n4 gone from /v1/types", 30*time.Second, func() bool {
		_, ok := greetTypes(t, tc.nodes[0])["3"]
		return !ok
	})
	if task := submitVersion(t, tc.nodes[0], "", "hi"); task.Version != "2" {
		t.Fatalf("unpinned submit after n4 left recorded version %q, want 2", task.Version)
	}
	again := submitVersion(t, tc.nodes[0], "3", "hi")
	waitFor(t, "version 3 pending again", 10*time.Second, func() bool {
		return greetTypes(t, tc.nodes[1])["3"].Pending == 1
	})
	if got := tc.task(again.ID); got.State != fsm.Pending {
		t.Fatalf("v3 task with no v3 node: %s on %s", got.State, got.Node)
	}
}
