package node

import "testing"

// longTest leaves a test out in -short mode: the in-process cluster tests that take over five
// seconds each (leader kills, repeated crashes, partitions, removals held by raft), so that
// `go test -short ./...` stays a quick path. The full suite (scripts/test.sh) runs them.
func longTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("an in-process cluster test of over 5 s: left out in -short mode")
	}
}
