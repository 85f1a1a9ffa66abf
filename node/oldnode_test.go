package node

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// upOldNode registers, through the leader l, a node record named "old" that speaks protocol (one
// of a release before some feature) and no process behind it, and registers it again every
// second until stop (or the test's end): the leader takes a node its gossip never saw down once
// internal/leader's registerGrace (5 s) passed since its registration, and a slow run (-race on a
// loaded machine) can take longer than that before the test is done with the node up. stop
// returns once no register is in flight, so that what follows it (the node's Down) is not undone.
func upOldNode(t *testing.T, l *Node, protocol int) (stop func()) {
	t.Helper()
	register := func() error {
		rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer rcancel()
		old := fsm.Node{Name: "old", BootID: "b-old", HTTPAddr: "127.0.0.1:1", Protocol: protocol}
		_, err := l.internode.Propose(rctx, &fsm.Command{Body: &fsm.Register{Node: old}})
		return err
	}
	if err := register(); err != nil {
		t.Fatal(err)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(time.Second):
			}
			_ = register()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
	t.Cleanup(stop) // before the cluster's own cleanups (registered first, run last)
	return stop
}
