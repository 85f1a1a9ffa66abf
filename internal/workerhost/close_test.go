package workerhost

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/worker"
	"github.com/taskworker/taskworker/tasks"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// anyone is a caller without ACLs.
type anyone struct{}

func (anyone) Allow(acl.Capability, string) error { return nil }
func (anyone) Principal() string                  { return "" }

// fsmApplier applies commands to a real FSM in order, as raft would on a single node.
type fsmApplier struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
}

func (a *fsmApplier) apply(c *fsm.Command) (*fsm.Result, error) {
	c.Now = time.Now()
	b, err := fsm.Encode(c)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.index++
	res, _ := a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: b}).(*fsm.Result)
	if res == nil {
		return nil, io.ErrUnexpectedEOF
	}
	return res, res.Err
}

// newHost is a worker host on node n1 (registered in a real FSM that a applies to in order) with
// a real work loop (w). Every proposal goes through hook first, which may return a function
// to call once it is applied; draining is the host's Draining (nil: never).
func newHost(t *testing.T, hook func(*fsm.Command) func(), draining func() bool) (*fsm.FSM, *fsmApplier, *worker.Worker, *Host) {
	t.Helper()
	f := fsm.New()
	a := &fsmApplier{f: f}
	if _, err := a.apply(&fsm.Command{Body: &fsm.Register{Node: fsm.Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: fsm.Protocol}}}); err != nil {
		t.Fatalf("register the host node: %v", err)
	}
	propose := func(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
		if after := hook(c); after != nil {
			defer after()
		}
		return a.apply(c)
	}
	w := worker.New(worker.Config{
		Name: "n1", BootID: "b1", FSM: f, Logger: quiet(),
		Executor:       tasks.ExecutorConfig{Registry: tasks.NewRegistry(), NodeName: "n1", Logger: quiet()},
		ProposeNode:    propose,
		StorageFault:   func() string { return "" },
		StorageChanged: func() <-chan struct{} { return make(chan struct{}) },
	})
	h := New(Config{
		Node: "n1", FSM: f, Logger: quiet(), Executor: tasks.ExecutorConfig{Logger: quiet()},
		Propose: propose, ReporterFor: w.ReporterFor, WorkFor: w.WorkFor, Draining: draining,
	})
	return f, a, w, h
}

// The lease check acts on a session while the node shuts the host down: it tells the session of
// a leaving node to drain, or ends the session of a worker the cluster took down. Each round runs
// the check (the node's Run loop) and Close (its shutdown) at once, in goroutines that share
// nothing but the host. Close must be ordered after every goroutine the check starts (a
// WaitGroup's Add from zero must come before the Wait that counts it), which -race checks here,
// and it returns only once each drain proposal it let start is over.
func TestCloseIsOrderedAfterTheGoroutinesTheLeaseCheckStarts(t *testing.T) {
	for _, down := range []bool{false, true} {
		t.Run(map[bool]string{false: "drain", true: "down"}[down], func(t *testing.T) { closeDuringCheck(t, down) })
	}
}

func closeDuringCheck(t *testing.T, down bool) {
	const rounds = 200
	for i := range rounds {
		var started, over atomic.Int32
		var leaving atomic.Bool
		f, a, w, h := newHost(t, func(c *fsm.Command) func() {
			if wc, ok := c.Body.(*fsm.WorkerChange); ok && wc.Op == fsm.WorkerDrain {
				started.Add(1)
				return func() { over.Add(1) }
			}
			return nil
		}, leaving.Load)
		if _, err := h.Register(context.Background(), anyone{}, api.WorkerRegistration{
			Name: "py1", Capacity: 1, Lease: "30s", Types: []api.WorkerType{{Type: "py-upper", Version: "1"}},
		}); err != nil {
			t.Fatalf("register: %v", err)
		}
		if down {
			rec, _ := f.Worker("py1")
			if _, err := a.apply(&fsm.Command{Body: &fsm.WorkerChange{Op: fsm.WorkerDown, Name: "py1", BootID: rec.BootID}}); err != nil {
				t.Fatalf("worker down: %v", err)
			}
		} else {
			leaving.Store(true)
		}

		start := make(chan struct{})
		checked, closed := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(checked)
			<-start
			h.check(time.Now())
		}()
		go func() {
			defer close(closed)
			<-start
			for range i % 16 { // a different interleaving each round
				runtime.Gosched()
			}
			h.Close()
			if s, o := started.Load(), over.Load(); s != o {
				t.Errorf("round %d: Close returned with %d of %d drain proposals over", i, o, s)
			}
		}()
		close(start)
		<-checked
		<-closed
		w.Executor().Close()
		if t.Failed() {
			return
		}
	}
}

// holdUp blocks a worker's up until release is closed, as a proposal on its way to the leader may.
func holdUp(release <-chan struct{}) { <-release }

// A registration whose worker's up is still on its way when the node shuts the host down: Close
// ends the session, so the registration must not then open it (start its work loop, answer with
// its ID); it is refused as shutting_down.
func TestRegistrationOverlappingCloseIsRefused(t *testing.T) {
	release := make(chan struct{})
	_, _, w, h := newHost(t, func(c *fsm.Command) func() {
		if wc, ok := c.Body.(*fsm.WorkerChange); ok && wc.Op == fsm.WorkerUp {
			holdUp(release)
		}
		return nil
	}, nil)
	defer w.Executor().Close()
	type reply struct {
		sess api.WorkerSession
		err  error
	}
	registered := make(chan reply, 1)
	go func() {
		sess, err := h.Register(context.Background(), anyone{}, api.WorkerRegistration{
			Name: "py1", Capacity: 1, Lease: "30s", Types: []api.WorkerType{{Type: "py-upper", Version: "1"}},
		})
		registered <- reply{sess, err}
	}()
	stackShows(t, "proposing the worker's up", "workerhost.holdUp")
	h.Close() // the node's shutdown
	close(release)
	var r reply
	select {
	case r = <-registered:
	case <-time.After(20 * time.Second):
		t.Fatal("the registration did not return")
	}
	var ae *api.Error
	if !errors.As(r.err, &ae) || ae.Code != api.CodeShuttingDown {
		t.Fatalf("registration that overlapped Close: session %+v, error %v; want %s", r.sess, r.err, api.CodeShuttingDown)
	}
	if h.Sessions() != 0 {
		t.Fatalf("the closed host holds %d sessions", h.Sessions())
	}
}

// stackShows polls every goroutine's stack until one holds all of frames. runtime.Stack orders
// nothing between goroutines for the race detector, so the goroutines watched this way stay
// unordered with the test's.
func stackShows(t *testing.T, what string, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			all := true
			for _, f := range frames {
				all = all && strings.Contains(g, f)
			}
			if all {
				return
			}
		}
		runtime.Gosched()
	}
	t.Fatalf("no goroutine %s within 20s", what)
}
