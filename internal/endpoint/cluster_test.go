package endpoint

import (
	"testing"

	"github.com/taskworker/taskworker/membership"
)

// Gossiping raft indexes is no membership change: the event loop must tell it apart.
func TestIndexesOnly(t *testing.T) {
	base := membershipMeta()
	moved := base
	moved.CommitIndex, moved.AppliedIndex = 10, 9
	drained := moved
	drained.Draining = true
	if !IndexesOnly(base, moved) {
		t.Error("a change of indexes only is not recognised")
	}
	if IndexesOnly(moved, drained) {
		t.Error("a change of Draining is taken for an index update")
	}
}

func membershipMeta() membership.Meta {
	return membership.Meta{RaftAddr: "h:1", HTTPAddr: "h:2", BootID: "b", Capacity: 2, Version: "v1", StartedAt: 1_700_000_000}
}
