package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/tasks"
)

// RegisterLoop keeps this node's FSM record in step with this incarnation: registered under its
// boot ID, with its addresses, capacity and task types, and up. It re-registers after a false
// death verdict (gossip saw it again) and after a restart.
//
// It also re-registers when raft has not heard from a leader for a while. A node cut off long
// enough (frozen by SIGSTOP, partitioned) is declared down and removed from raft; its own FSM
// stopped before the verdict, still reads "up", and nothing would ever reach it again to say
// otherwise: the leader re-adds only registered members. The forwarded registration (through any
// member when no leader is known) brings it back; for a node that was only between leaders it
// is one harmless entry.
func (w *Worker) RegisterLoop(ctx context.Context) {
	want := w.nodeRecord()
	check := time.NewTicker(orphanCheck)
	defer check.Stop()
	var lastForced time.Time
	for {
		changed := w.cfg.FSM.Changed()
		storageChanged := w.cfg.StorageChanged()
		orphaned := w.orphaned() && time.Since(lastForced) > w.orphanAfter()
		if orphaned {
			lastForced = time.Now()
			w.log.Info("no word from a raft leader; registering again", "since", w.cfg.Raft.LastContact())
		}
		if cur, ok := w.cfg.FSM.Node(w.cfg.Name); orphaned || !ok || !sameRegistration(cur, want) {
			if w.draining() {
				return
			}
			if w.cfg.StorageFault() != "" {
				// The leader took this node down for it; registering would only bring it back
				// up to be taken down again. Wait for the disk.
				select {
				case <-ctx.Done():
					return
				case <-storageChanged:
				}
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, registerTimeout)
			_, err := w.cfg.ProposeNode(cctx, &fsm.Command{Body: &fsm.Register{Node: want}})
			cancel()
			if err != nil && ctx.Err() == nil {
				w.log.Debug("register", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-check.C:
		}
	}
}

// orphanCheck is how often RegisterLoop asks whether raft lost touch with the leader.
const orphanCheck = time.Second

// orphanAfter is how long without contact from a leader makes a follower register again: well past
// an election (so a normal leader change does not trigger it) and past the dead-server grace
// after which the leader removes a silent voter.
func (w *Worker) orphanAfter() time.Duration {
	return max(4*w.cfg.RaftElection, w.cfg.DeadServerGrace+w.cfg.RaftHeartbeat)
}

// orphaned reports whether this node, not the leader, has gone orphanAfter without contact from
// one while other members are alive to forward a registration.
func (w *Worker) orphaned() bool {
	if w.cfg.Raft.State() == raft.Leader || time.Since(w.cfg.StartedAt) < w.orphanAfter() {
		return false
	}
	last := w.cfg.Raft.LastContact()
	if !last.IsZero() && time.Since(last) < w.orphanAfter() {
		return false
	}
	return w.cfg.AnyPeerAddr() != ""
}

func (w *Worker) draining() bool { return w.cfg.Gossip.Local().Meta.Draining }

func (w *Worker) nodeRecord() fsm.Node {
	rec := fsm.Node{
		Name: w.cfg.Name, GossipAddr: w.cfg.Gossip.GossipAddr(), RaftAddr: w.cfg.RaftAddr,
		HTTPAddr: w.cfg.HTTPAddr, BootID: w.cfg.BootID, Capacity: w.cfg.Capacity, Version: w.cfg.Version,
		Protocol: fsm.Protocol,
	}
	if w.cfg.Protocol != 0 {
		rec.Protocol = w.cfg.Protocol
	}
	for _, d := range w.cfg.Executor.Registry.Definitions() {
		rec.Types = append(rec.Types, fsm.TypeInfo{Type: d.Name, Version: d.Version, Description: d.Description, ExampleInput: d.ExampleInput})
	}
	return rec
}

func sameRegistration(cur, want fsm.Node) bool {
	return cur.Status == fsm.NodeUp && cur.BootID == want.BootID && cur.HTTPAddr == want.HTTPAddr &&
		cur.RaftAddr == want.RaftAddr && cur.GossipAddr == want.GossipAddr && cur.Capacity == want.Capacity &&
		cur.Protocol == want.Protocol &&
		slices.EqualFunc(cur.Types, want.Types, func(a, b fsm.TypeInfo) bool { return a.Type == b.Type && a.Version == b.Version })
}

// WorkLoop runs what the FSM assigns to this incarnation and stops runs that were taken away
// (reassigned, fenced) or cancelled.
func (w *Worker) WorkLoop(ctx context.Context) {
	w.workLoop(ctx, w.cfg.Name, w.cfg.BootID, w.exec, w.Reporter())
}

// WorkFor is WorkLoop for a worker this node hosts (internal/workerhost): it runs on exec what
// the FSM assigns to the worker's name and session (bootID), reports through rep (ReporterFor),
// and stops runs taken away or cancelled, until ctx ends.
func (w *Worker) WorkFor(ctx context.Context, name, bootID string, exec *tasks.Executor, rep tasks.Reporter) {
	w.workLoop(ctx, name, bootID, exec, rep)
}

func (w *Worker) workLoop(ctx context.Context, name, bootID string, exec *tasks.Executor, rep tasks.Reporter) {
	cancelling := map[tasks.RunRef]bool{} // cancelled before they started: reported without running
	for {
		changed := w.cfg.FSM.Changed()
		storageChanged := w.cfg.StorageChanged()
		// A node that cannot persist takes no new task: the leader is moving its tasks away.
		faulty := w.cfg.StorageFault() != ""
		mine := map[tasks.RunRef]bool{}
		running := map[tasks.RunRef]bool{}
		for _, ref := range exec.Running() {
			running[ref] = true
		}
		for _, t := range w.cfg.FSM.Active(name) {
			if t.BootID != bootID {
				continue
			}
			ref := tasks.RunRef{TaskID: t.ID, Attempt: t.Attempt}
			mine[ref] = true
			switch {
			case t.CancelRequested && running[ref]:
				exec.Stop(t.ID, t.Attempt, tasks.StopCancel)
				continue
			case t.CancelRequested:
				if !cancelling[ref] {
					cancelling[ref] = true
					go w.finishUnstarted(ctx, rep, ref, tasks.OutcomeCancelled, &tasks.TaskError{Type: tasks.ErrTypeCancelled, Message: "task cancelled"})
				}
				continue
			}
			if faulty || running[ref] {
				continue // started already, or this node takes no new task
			}
			exec.Start(tasks.Assignment{
				TaskID: t.ID, Type: t.Type, Version: t.Version, ExecutionID: t.ExecutionID,
				Input: t.Input, Attempt: t.Attempt, Timeout: time.Duration(t.Timeout), Checkpoint: t.Checkpoint,
				Trace:   traceOf(t.Trace),
				Resumed: len(t.WaitFor) > 0, Children: w.childResults(t.WaitFor),
			})
		}
		for ref := range cancelling {
			if !mine[ref] {
				delete(cancelling, ref)
			}
		}
		for ref := range running {
			if mine[ref] {
				continue
			}
			// Runs whose outcome the FSM already holds are only wrapping up: their report is
			// applied and its call is returning, so they are left to end (Settled); any other run
			// was taken away (reassigned after a false death verdict, or this node was declared
			// dead).
			t, ok := w.cfg.FSM.Task(ref.TaskID)
			if ok && attemptEnded(&t, ref.Attempt) {
				exec.Settled(ref.TaskID, ref.Attempt)
				continue
			}
			if ok {
				w.log.Warn("task taken away; stopping its run", "runner", name, "task", ref.TaskID, "attempt", ref.Attempt,
					"now", string(t.State)+" on "+t.Node)
			}
			exec.Stop(ref.TaskID, ref.Attempt, tasks.StopRevoke)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-storageChanged:
		}
	}
}

// traceOf is the span context a task record's trace context names, invalid for none.
func traceOf(tc *fsm.TraceContext) trace.SpanContext {
	if tc == nil {
		return trace.SpanContext{}
	}
	return tracing.Stored(*tc).SpanContext()
}

// childResults reads the outcomes of the children a task waited for from this node's FSM, which
// holds them: the entry that resumed the task made the last of them finish, and the assignment
// being run came after it.
func (w *Worker) childResults(ids []string) []tasks.ChildResult {
	if len(ids) == 0 {
		return nil
	}
	out := make([]tasks.ChildResult, 0, len(ids))
	for _, id := range ids {
		c, ok := w.cfg.FSM.Task(id)
		if !ok {
			out = append(out, tasks.ChildResult{ID: id, Error: &tasks.TaskError{Type: "not_found", Message: "the child task was removed before its parent resumed"}})
			continue
		}
		r := tasks.ChildResult{ID: id, State: string(c.State), Result: c.Result}
		if c.Error != nil && c.State != fsm.Succeeded {
			r.Error = &tasks.TaskError{Type: c.Error.Type, Message: c.Error.Message, Final: c.Error.Final}
		}
		out = append(out, r)
	}
	return out
}

// finishUnstarted reports the outcome of an assignment that never ran here (cancelled before it
// started, or handed back by a drain), retrying until it lands, is fenced, or ctx ends.
func (w *Worker) finishUnstarted(ctx context.Context, rep tasks.Reporter, ref tasks.RunRef, outcome tasks.Outcome, terr *tasks.TaskError) {
	for {
		err := rep.Finished(ctx, ref, outcome, nil, terr)
		if err == nil || errors.Is(err, tasks.ErrFenced) || ctx.Err() != nil {
			return
		}
		w.log.Warn("report unstarted task, retrying", "task", ref.TaskID, "outcome", outcome, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ErrTypeWaitUnsupported is the error type of an attempt whose wait for child tasks could not be
// recorded because a node of a release before WaitProtocol is up.
const ErrTypeWaitUnsupported = "wait_unsupported"

// attemptEnded reports whether the FSM holds an outcome (succeeded, failed, cancelled, or a wait
// for child tasks) for the attempt.
func attemptEnded(t *fsm.Task, attempt int) bool {
	for i := len(t.History) - 1; i >= 0; i-- {
		if h := t.History[i]; h.Attempt == attempt && h.Event != fsm.EventRetried {
			return h.Event == fsm.EventSucceeded || h.Event == fsm.EventFailed || h.Event == fsm.EventCancelled ||
				h.Event == fsm.EventWaiting || h.Event == fsm.EventResumed
		}
	}
	return false
}

// reporter sends executor reports to the leader, fenced by attempt and boot ID, through the
// node's report batcher: one command carries many runs' reports. name and bootID are this node's,
// or those of a worker it hosts (ReporterFor).
type reporter struct {
	w            *Worker
	name, bootID string
}

func (r reporter) send(ctx context.Context, reps ...fsm.Report) error {
	for i := range reps {
		reps[i].Node, reps[i].BootID = r.name, r.bootID
	}
	cctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	items, err := r.w.reports.send(cctx, reps)
	if err != nil {
		return err
	}
	if len(items) != len(reps) {
		return fmt.Errorf("report: %d results for %d reports", len(items), len(reps))
	}
	for _, it := range items {
		if it.Err == nil {
			continue
		}
		if errors.Is(it.Err, fsm.ErrStale) || errors.Is(it.Err, fsm.ErrNotFound) {
			return errors.Join(tasks.ErrFenced, it.Err)
		}
		return it.Err
	}
	return nil
}

func (r reporter) Started(ctx context.Context, run tasks.RunRef) error {
	return r.send(ctx, fsm.Report{TaskID: run.TaskID, Attempt: run.Attempt, Kind: fsm.ReportStarted})
}

func (r reporter) Checkpoint(ctx context.Context, run tasks.RunRef, data json.RawMessage) error {
	return r.send(ctx, fsm.Report{TaskID: run.TaskID, Attempt: run.Attempt, Kind: fsm.ReportCheckpoint, Checkpoint: data})
}

func (r reporter) Finished(ctx context.Context, run tasks.RunRef, outcome tasks.Outcome, result json.RawMessage, terr *tasks.TaskError) error {
	return r.sendOutcome(ctx, run, outcomeReport(run, outcome, result, terr))
}

// sendOutcome sends reports whose last is an attempt's outcome. A final error needs protocol 2:
// while a node of a release before final errors is up the leader may not write the flag, so the
// failure is sent again as an ordinary one (retried while attempts are left).
func (r reporter) sendOutcome(ctx context.Context, run tasks.RunRef, reps ...fsm.Report) error {
	err := r.send(ctx, reps...)
	if last := &reps[len(reps)-1]; last.Kind == fsm.ReportWait && errors.Is(err, fsm.ErrProtocolTooOld) {
		// Nothing can record the wait while a node of an older release is up: the attempt fails
		// instead (retried while attempts are left, by when the upgrade may be over), rather than
		// reporting in vain until the node is gone.
		r.w.log.Warn("wait for child tasks reported as a failure: a node of an older release is up", "task", run.TaskID, "runner", r.name)
		// A copy: the batcher may still read the reports it was given.
		reps = slices.Clone(reps)
		reps[len(reps)-1] = fsm.Report{TaskID: last.TaskID, Attempt: last.Attempt, Kind: fsm.ReportFailed,
			Error: &fsm.TaskError{Type: ErrTypeWaitUnsupported, Message: fmt.Sprintf("waiting for child tasks needs every node at protocol %d or newer: %v", fsm.WaitProtocol, err)}}
		err = r.send(ctx, reps...)
	}
	if last := &reps[len(reps)-1]; last.Error != nil && last.Error.Final && errors.Is(err, fsm.ErrProtocolTooOld) {
		r.w.log.Warn("final error reported as an ordinary failure: a node of an older release is up", "task", run.TaskID, "runner", r.name)
		last.Error.Final = false
		err = r.send(ctx, reps...)
	}
	return err
}

// StartedAndFinished reports a short attempt's start and outcome in one entry: the FSM applies
// the items in order, so the history holds both events, fenced like any report.
func (r reporter) StartedAndFinished(ctx context.Context, run tasks.RunRef, outcome tasks.Outcome, result json.RawMessage, terr *tasks.TaskError) error {
	return r.sendOutcome(ctx, run,
		fsm.Report{TaskID: run.TaskID, Attempt: run.Attempt, Kind: fsm.ReportStarted},
		outcomeReport(run, outcome, result, terr))
}

func outcomeReport(run tasks.RunRef, outcome tasks.Outcome, result json.RawMessage, terr *tasks.TaskError) fsm.Report {
	rep := fsm.Report{TaskID: run.TaskID, Attempt: run.Attempt, Result: result}
	if terr != nil {
		rep.Error = &fsm.TaskError{Type: terr.Type, Message: terr.Message, Final: terr.Final}
	}
	switch outcome {
	case tasks.OutcomeSucceeded:
		rep.Kind = fsm.ReportSucceeded
	case tasks.OutcomeFailed:
		rep.Kind = fsm.ReportFailed
	case tasks.OutcomeCancelled:
		rep.Kind = fsm.ReportCancelled
	case tasks.OutcomeWaiting:
		rep.Kind, rep.Result = fsm.ReportWait, nil
		ids, err := tasks.WaitList(result)
		if err != nil || ids == nil {
			ids = []string{} // the FSM refuses an empty wait: the task fails, saying why
		}
		rep.WaitFor = ids
	default:
		rep.Kind = fsm.ReportInterrupted
	}
	return rep
}
