package fsm

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

func workerUpCmd(name, session, host string, capacity int) *Command {
	return &Command{Body: &WorkerChange{Op: WorkerUp, Worker: &Node{Name: name, BootID: session, Host: host,
		Capacity: capacity, Labels: map[string]string{"zone": "a"}, Types: []TypeInfo{{Type: "py", Version: "1"}}}}}
}

func workerDownCmd(name, session string, left bool) *Command {
	return &Command{Body: &WorkerChange{Op: WorkerDown, Name: name, BootID: session, Left: left}}
}

func workerDrainCmd(name, session string, on bool) *Command {
	return &Command{Body: &WorkerChange{Op: WorkerDrain, Name: name, BootID: session, Draining: on}}
}

func (h *harness) worker(name string) Node {
	h.t.Helper()
	n, ok := h.f.Worker(name)
	if !ok {
		h.t.Fatalf("worker %s not found", name)
	}
	return n
}

// withWorker: node n1 up, worker w1 (session s1) on it, task "a" of its type running on w1.
func withWorker(t *testing.T) *harness {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	h.must(workerUpCmd("w1", "s1", "n1", 2))
	h.must(submitCmd(Submit{ID: "a", Type: "py", Version: "1", MaxAttempts: 1}))
	h.must(assignCmd("a", "w1", "s1"))
	h.must(reportCmd(rep("a", 1, "w1", "s1", ReportStarted)))
	return h
}

func TestWorkerUpIsARecordOfItsOwn(t *testing.T) {
	h := withWorker(t)
	w := h.worker("w1")
	if w.Status != NodeUp || w.Host != "n1" || w.Labels["zone"] != "a" || !w.IsWorker() || w.RegisteredAt.IsZero() {
		t.Fatalf("worker record %+v", w)
	}
	if _, ok := h.f.Node("w1"); ok {
		t.Error("a worker is listed as a node")
	}
	if ns := h.f.Nodes(); len(ns) != 1 || ns[0].Name != "n1" {
		t.Errorf("Nodes() = %v, want n1 alone", ns)
	}
	if ws := h.f.Workers(); len(ws) != 1 || ws[0].Name != "w1" {
		t.Errorf("Workers() = %v", ws)
	}
	if tk := h.task("a"); tk.State != Running || tk.Node != "w1" || tk.BootID != "s1" {
		t.Errorf("task on worker: %s on %s/%s", tk.State, tk.Node, tk.BootID)
	}
	// The same session again changes nothing; another session while this one holds its lease
	// on an up host is refused, and so is a worker named as a node.
	h.must(workerUpCmd("w1", "s1", "n1", 2))
	if r := h.apply(workerUpCmd("w1", "s2", "n1", 2)); !errors.Is(r.Err, ErrWorkerExists) {
		t.Errorf("second session: %v, want ErrWorkerExists", r.Err)
	}
	if r := h.apply(workerUpCmd("n1", "s3", "n1", 2)); !errors.Is(r.Err, ErrWorkerExists) {
		t.Errorf("worker named as a node: %v, want ErrWorkerExists", r.Err)
	}
	if r := h.apply(workerUpCmd("w2", "s4", "nope", 2)); !errors.Is(r.Err, ErrUnknownNode) {
		t.Errorf("worker on an unknown host: %v, want ErrUnknownNode", r.Err)
	}
	for _, bad := range []*Node{nil, {Name: "x", BootID: "s", Host: "n1"}, {Name: "", BootID: "s", Host: "n1", Capacity: 1}} {
		if r := h.apply(&Command{Body: &WorkerChange{Op: WorkerUp, Worker: bad}}); !errors.Is(r.Err, ErrBadCommand) {
			t.Errorf("worker up %+v: %v, want ErrBadCommand", bad, r.Err)
		}
	}
	if tk := h.task("a"); tk.State != Running || tk.Attempt != 1 {
		t.Errorf("refused ups changed the task: %s attempt %d", tk.State, tk.Attempt)
	}
}

func TestWorkerDownIsFencedBySessionAndTakesBackItsTasks(t *testing.T) {
	h := withWorker(t)
	if r := h.apply(workerDownCmd("w1", "old-session", false)); !errors.Is(r.Err, ErrStale) {
		t.Fatalf("down of another session: %v, want ErrStale", r.Err)
	}
	if w := h.worker("w1"); w.Status != NodeUp {
		t.Fatalf("a stale down took the worker %s", w.Status)
	}
	if r := h.apply(workerDownCmd("n1", "b1", false)); !errors.Is(r.Err, ErrUnknownNode) {
		t.Errorf("worker down of a node: %v, want ErrUnknownNode", r.Err)
	}
	h.must(workerDownCmd("w1", "s1", false))
	if w := h.worker("w1"); w.Status != NodeDown {
		t.Fatalf("worker %s, want down", w.Status)
	}
	tk := h.task("a")
	if tk.State != Pending || tk.Failures != 0 || tk.Node != "" {
		t.Fatalf("task after its worker went down: %s failures %d node %q", tk.State, tk.Failures, tk.Node)
	}
	if ev := events(tk); ev[len(ev)-1] != EventInterrupted {
		t.Errorf("history %v, want it to end interrupted", ev)
	}
	// A late report of the lost session lands nowhere.
	if it := h.item(reportCmd(rep("a", 1, "w1", "s1", ReportSucceeded))); !errors.Is(it.Err, ErrStale) {
		t.Errorf("late report: %v, want ErrStale", it.Err)
	}
	// A new session may take the name; an up-then-left one is left.
	h.must(workerUpCmd("w1", "s2", "n1", 2))
	h.must(workerDownCmd("w1", "s2", true))
	if w := h.worker("w1"); w.Status != NodeLeft {
		t.Errorf("worker %s, want left", w.Status)
	}
}

func TestWorkerDrainStopsPlacement(t *testing.T) {
	h := withWorker(t)
	if r := h.apply(workerDrainCmd("w1", "other", true)); !errors.Is(r.Err, ErrStale) {
		t.Fatalf("drain of another session: %v", r.Err)
	}
	h.must(workerDrainCmd("w1", "s1", true))
	if !h.worker("w1").Draining {
		t.Fatal("not draining")
	}
	h.must(submitCmd(Submit{ID: "b", Type: "py", Version: "1"}))
	if it := h.item(assignCmd("b", "w1", "s1")); !errors.Is(it.Err, ErrNotPlaceable) {
		t.Errorf("assign to a draining worker: %v", it.Err)
	}
	if r := h.apply(drainCmd("w1", true)); !errors.Is(r.Err, ErrUnknownNode) {
		t.Errorf("node drain of a worker: %v, want ErrUnknownNode", r.Err)
	}
}

func TestHostDownTakesItsWorkersDown(t *testing.T) {
	for _, how := range []string{"down", "left", "restart"} {
		t.Run(how, func(t *testing.T) {
			h := withWorker(t)
			h.must(registerCmd("n2", "b2", 4))
			h.must(workerUpCmd("w2", "s2", "n2", 1))
			switch how {
			case "down":
				h.must(downCmd("n1", false))
			case "left":
				h.must(downCmd("n1", true))
			case "restart":
				h.must(registerCmd("n1", "b1-new", 4))
			}
			if w := h.worker("w1"); w.Status != NodeDown {
				t.Errorf("worker of the gone host: %s", w.Status)
			}
			if w := h.worker("w2"); w.Status != NodeUp {
				t.Errorf("worker of another host: %s", w.Status)
			}
			if tk := h.task("a"); tk.State != Pending || tk.Failures != 0 {
				t.Errorf("task of the worker: %s failures %d", tk.State, tk.Failures)
			}
			// Down of a worker as a node is refused.
			if r := h.apply(downCmd("w2", false)); !errors.Is(r.Err, ErrUnknownNode) {
				t.Errorf("node down of a worker: %v", r.Err)
			}
		})
	}
}

func TestGoneWorkersAreBounded(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	for i := range MaxGoneWorkers + 10 {
		name, session := fmt.Sprintf("w%04d", i), fmt.Sprintf("s%d", i)
		h.must(workerUpCmd(name, session, "n1", 1))
		h.must(workerDownCmd(name, session, false))
	}
	h.must(workerUpCmd("live", "s", "n1", 1))
	ws := h.f.Workers()
	if len(ws) != MaxGoneWorkers+1 {
		t.Fatalf("%d worker records, want %d", len(ws), MaxGoneWorkers+1)
	}
	if _, ok := h.f.Worker("w0000"); ok {
		t.Error("the oldest gone worker was kept")
	}
	if _, ok := h.f.Worker(fmt.Sprintf("w%04d", MaxGoneWorkers+9)); !ok {
		t.Error("the newest gone worker was dropped")
	}
}

func TestWorkersSurviveSnapshotsAndDigest(t *testing.T) {
	h := withWorker(t)
	h.must(workerDrainCmd("w1", "s1", true))
	_, before := h.f.Digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink digestSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if _, after := g.Digest(); after != before {
		t.Fatal("restored digest differs")
	}
	w, ok := g.Worker("w1")
	if !ok || w.Host != "n1" || w.Labels["zone"] != "a" || !w.Draining {
		t.Fatalf("restored worker %+v", w)
	}
	// The digest sees a worker's fields.
	h.must(workerDownCmd("w1", "s1", false))
	if _, changed := h.f.Digest(); changed == before {
		t.Error("digest did not change with the worker's state")
	}
}

func TestWorkerCommandNeedsProtocol6(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: WorkerProtocol - 1}}})
	if _, err := h.f.Emit(workerUpCmd("w", "s", "old", 1)); !errors.Is(err, ErrProtocolTooOld) {
		t.Errorf("emit a worker command with a protocol 5 node up: %v", err)
	}
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b2", Protocol: Protocol}}})
	if _, err := h.f.Emit(workerUpCmd("w", "s", "old", 1)); err != nil {
		t.Errorf("emit with every node at protocol %d: %v", Protocol, err)
	}
	// Workers speak no protocol: an up worker does not hold the cluster back.
	h.must(workerUpCmd("w", "s", "old", 1))
	if lowest, who := h.f.lowestProtocol(); lowest != Protocol || who != "old" {
		t.Errorf("lowest protocol %d (%s) with a worker up", lowest, who)
	}
}
