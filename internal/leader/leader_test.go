package leader

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if localcluster.Until(timeout, 20*time.Millisecond, cond) != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

func TestLeaderDutiesReturnOnlyAfterTheSchedulerLoop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	var reconciles atomic.Int32
	kick := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		leaderDuties(ctx, func(ctx context.Context) {
			<-ctx.Done()
			<-release // a loop still finishing its last apply
		}, func(context.Context) { reconciles.Add(1) }, kick, time.Hour)
	}()
	kick <- struct{}{} // taken only once the first reconcile is done
	waitFor(t, "a reconcile after a kick", 5*time.Second, func() bool { return reconciles.Load() >= 2 })
	cancel()
	select {
	case <-done:
		t.Fatal("leaderDuties returned while its scheduler loop was still running")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("leaderDuties did not return after its scheduler loop did")
	}
}

func TestMembershipChangeWakesTheScheduler(t *testing.T) {
	l := New(Config{FSM: fsm.New(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	loop := l.schedulerLoop()
	l.MembershipChanged()
	l.MembershipChanged() // never blocks, however many changes pile up
	for name, ch := range map[string]<-chan struct{}{"scheduler": loop.Kick, "reconciler": l.kick} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Errorf("the %s was not woken by a membership change", name)
		}
	}
}
