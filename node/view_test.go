package node

import (
	"context"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// GET /v1/cluster shows every node's build version, start time, raft indexes and lag, whichever
// node answers; the indexes of the others come from gossip.
func TestClusterViewShowsVersionUptimeIndexesAndLag(t *testing.T) {
	before := time.Now().Add(-time.Second)
	tc := startCluster(t, 3, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.Version = "v9.9.9-test" }})
	submit(t, tc.leader(), "calc-square", 3, "20s")
	f := tc.follower()
	var info api.Cluster
	waitFor(t, "every node's indexes gossiped and caught up", 30*time.Second, func() bool {
		info, _ = f.ep.Cluster(context.Background())
		leaderCommit := f.rn.Raft().CommitIndex()
		for _, ni := range info.Nodes {
			if ni.AppliedIndex < leaderCommit || ni.Lag == nil || *ni.Lag != 0 {
				return false
			}
		}
		return len(info.Nodes) == 3
	})
	for _, ni := range info.Nodes {
		if ni.Version != "v9.9.9-test" {
			t.Errorf("%s: version %q, want the build's", ni.Name, ni.Version)
		}
		if ni.StartedAt == nil || ni.StartedAt.Before(before.Truncate(time.Second)) || ni.StartedAt.After(time.Now()) {
			t.Errorf("%s: started_at %v, want between %v and now", ni.Name, ni.StartedAt, before)
		}
		if ni.CommitIndex == 0 || ni.CommitIndex < ni.AppliedIndex {
			t.Errorf("%s: commit %d, applied %d", ni.Name, ni.CommitIndex, ni.AppliedIndex)
		}
	}
}

// Tasks submitted one after another spread over the idle nodes (round-robin tie-break).
func TestSerialSubmitsSpreadOverIdleNodes(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	nodes := map[string]bool{}
	for range 6 {
		task := submit(t, tc.leader(), "calc-square", 2, "20s")
		if task.State != api.StateSucceeded {
			t.Fatalf("task %s: %s", task.ID, task.State)
		}
		nodes[task.Node] = true
	}
	if len(nodes) != 3 {
		t.Errorf("6 serial tasks ran on %v, want all 3 nodes", nodes)
	}
}
