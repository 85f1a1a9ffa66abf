package node

import "testing"

// longTest leaves a test out in -short mode: the in-process cluster tests that take three
// seconds or more each (leader kills, repeated crashes, partitions, removals held by raft), so that
// `go test -short ./...` stays a quick path. The full suite (scripts/test.sh) runs them.
func longTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("an in-process cluster test of 3 s or more: left out in -short mode")
	}
}
