package internode

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// blockedFuture is a raft future that is never answered, as hashicorp/raft leaves the future of
// an entry it had queued for its FSM when it shut down.
type blockedFuture struct{ answer chan error }

func (f blockedFuture) Error() error { return <-f.answer }

func TestAwaitGivesUpOnAFutureWhenTheNodeShutsDown(t *testing.T) {
	done := make(chan struct{})
	c := &Channel{cfg: Config{Done: done}}
	answered := blockedFuture{answer: make(chan error, 1)}
	answered.answer <- nil
	if err := c.Await(answered); err != nil {
		t.Fatalf("an answered future: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- c.Await(blockedFuture{answer: make(chan error)}) }()
	close(done)
	select {
	case err := <-got:
		if !errors.Is(err, raft.ErrRaftShutdown) {
			t.Errorf("await after shutdown = %v, want %v", err, raft.ErrRaftShutdown)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("await still waits on an unanswered future after the node shut down")
	}
}
