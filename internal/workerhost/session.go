package workerhost

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/tasks"
)

// session is one registered worker's: its lease, its outbox and its executor.
type session struct {
	h         *Host
	id        string // the secret session ID: never logged
	name      string
	bootID    string // public: the worker record's BootID, which fences its reports
	principal string
	types     []api.WorkerType
	lease     time.Duration
	exec      *tasks.Executor

	ending atomic.Bool // set before its executor stops: runs return at once

	mu         sync.Mutex
	loopStop   context.CancelFunc // stops its work loop; nil until the session is open
	loopDone   chan struct{}      // closed when its work loop has returned
	isReg      bool               // its up was applied here
	deadline   time.Time          // the lease ends then while no poll is in flight
	polls      int                // polls in flight
	outbox     []api.WorkerAssignment
	cancels    []api.WorkerRun
	wake       chan struct{} // closed when the outbox or draining changes
	runs       map[tasks.RunRef]*remoteRun
	fates      map[tasks.RunRef]error // recent runs' outcome reports, by attempt (nil: committed)
	fateOrder  []tasks.RunRef         // fates' keys, oldest first, at most keptFates
	draining   bool
	isEnded    bool
	done       chan struct{} // closed when the session ends
	drainAsked bool          // a drain was proposed for the host's leave
}

// remoteRun is one attempt the worker runs.
type remoteRun struct {
	ref       tasks.RunRef
	tc        *tasks.Context
	delivered bool          // a poll handed the assignment out
	outcome   chan outcome  // the worker's outcome, at most one
	settled   bool          // an outcome was given (guarded by session.mu)
	returned  bool          // the handler returned: no more events
	reported  chan struct{} // closed once the executor's report of the outcome is decided
	reportErr error         // nil: committed; else why not
}

type outcome struct {
	result json.RawMessage
	err    error
}

func (s *session) registered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isReg
}

func (s *session) ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isEnded
}

// leaseLost reports whether the session is registered, has no poll in flight and its lease ran out.
func (s *session) leaseLost(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isReg && !s.isEnded && s.polls == 0 && now.After(s.deadline)
}

// setDraining marks the session draining for the host's leave; it reports whether a drain must
// be proposed (the first time).
func (s *session) setDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := !s.drainAsked && !s.isEnded
	s.drainAsked = true
	if !s.draining {
		s.draining = true
		s.wakeLocked()
	}
	return first
}

func (s *session) wakeLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// markEnded ends the session once; it reports whether this call did.
func (s *session) markEnded() bool {
	s.ending.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isEnded {
		return false
	}
	s.isEnded = true
	close(s.done)
	return true
}

// stopLoop stops the work loop and waits for it.
func (s *session) stopLoop() {
	s.mu.Lock()
	stop, done := s.loopStop, s.loopDone
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// addRun records an attempt the executor started and queues its assignment for the next poll.
func (s *session) addRun(rr *remoteRun, a api.WorkerAssignment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs[rr.ref] = rr
	s.outbox = append(s.outbox, a)
	s.wakeLocked()
}

// cancelRun tells the worker to stop an attempt: an assignment not handed out yet is taken back
// from the outbox; one handed out gets a cancel notice. It reports whether the worker has it.
func (s *session) cancelRun(rr *remoteRun) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !rr.delivered {
		for i, a := range s.outbox {
			if a.TaskID == rr.ref.TaskID && a.Attempt == rr.ref.Attempt {
				s.outbox = append(s.outbox[:i], s.outbox[i+1:]...)
				break
			}
		}
		return false
	}
	s.cancels = append(s.cancels, api.WorkerRun{TaskID: rr.ref.TaskID, Attempt: rr.ref.Attempt})
	s.wakeLocked()
	return true
}

// runOver is the executor's OnFinish: the run's report is decided (committed if the reporter
// said so, else not). It only records: the executor's lock is held.
func (s *session) runOver(ref tasks.RunRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rr, ok := s.runs[ref]
	if !ok {
		return
	}
	delete(s.runs, ref)
	rr.returned = true
	s.settleLocked(rr, errNotRecorded)
	if rr.settled {
		// The worker may send the outcome again (its call timed out): it gets this fate.
		if s.fates == nil {
			s.fates = map[tasks.RunRef]error{}
		}
		if len(s.fateOrder) >= keptFates {
			delete(s.fates, s.fateOrder[0])
			s.fateOrder = s.fateOrder[1:]
		}
		s.fates[ref] = rr.reportErr
		s.fateOrder = append(s.fateOrder, ref)
	}
}

// keptFates is how many finished runs' report fates a session keeps for outcomes sent again.
const keptFates = 4096

// fate is what became of an attempt's outcome report, given what the executor said (err): a
// report whose reply was cut off still landed when the FSM holds an outcome (or a wait) of that
// attempt from this worker. The run is stopped as soon as the FSM applies its outcome, which can
// end its report's wait before the reply arrives.
func (s *session) fate(ref tasks.RunRef, err error) error {
	if err == nil {
		return nil
	}
	t, ok := s.h.cfg.FSM.Task(ref.TaskID)
	if !ok {
		return err
	}
	for _, h := range t.History {
		if h.Attempt == ref.Attempt && h.Node == s.name &&
			(h.Event == fsm.EventSucceeded || h.Event == fsm.EventFailed || h.Event == fsm.EventCancelled || h.Event == fsm.EventWaiting) {
			return nil
		}
	}
	return err
}

var errNotRecorded = errors.New("the attempt's outcome was not recorded: it is no longer this worker's")

// settleLocked decides a run's report once.
func (s *session) settleLocked(rr *remoteRun, err error) {
	select {
	case <-rr.reported:
	default:
		rr.reportErr = err
		close(rr.reported)
	}
}

// reportDone records what became of the report of a run's outcome.
func (s *session) reportDone(ref tasks.RunRef, err error) {
	if err != nil && !errors.Is(err, tasks.ErrFenced) {
		return // the executor retries it
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rr, ok := s.runs[ref]; ok {
		if err != nil {
			err = errNotRecorded
		}
		s.settleLocked(rr, err)
	}
}

// remoteHandler is a task type the worker registered: Run hands the attempt to the worker and
// waits for its outcome.
type remoteHandler struct {
	s   *session
	def tasks.Definition
}

func (rh *remoteHandler) Definition() tasks.Definition { return rh.def }

// Validate accepts any JSON: the worker validates its own input.
func (rh *remoteHandler) Validate(json.RawMessage) error { return nil }

func (rh *remoteHandler) Run(tc *tasks.Context, input json.RawMessage) (json.RawMessage, error) {
	s := rh.s
	ref := tasks.RunRef{TaskID: tc.TaskID, Attempt: tc.Attempt}
	var cp json.RawMessage
	if ok, err := tc.LastCheckpoint(&cp); !ok || err != nil {
		cp = nil
	}
	rr := &remoteRun{ref: ref, tc: tc, outcome: make(chan outcome, 1), reported: make(chan struct{})}
	s.addRun(rr, api.WorkerAssignment{
		TaskID: tc.TaskID, Attempt: tc.Attempt, Type: rh.def.Name, Version: rh.def.Version,
		Input: rawOrNull(input), Checkpoint: rawOrNull(cp), Timeout: durationText(tc.Timeout), ExecutionID: tc.ExecutionID,
		Traceparent: tracing.Traceparent(trace.SpanContextFromContext(tc)),
		Resumed:     tc.Resumed(), Children: childResults(tc),
	})
	defer func() {
		s.mu.Lock()
		rr.returned = true
		s.mu.Unlock()
	}()
	select {
	case o := <-rr.outcome:
		return o.result, o.err
	case <-tc.Done():
	}
	// Stopped: a cancel, a timeout, a drain, a revoke. The worker is told; after a cancel or a
	// timeout it has a moment to report how the attempt ended. A session that ends waits for
	// nothing.
	if !s.cancelRun(rr) || s.ending.Load() {
		return nil, tc.Err()
	}
	grace := time.NewTimer(cancelGrace)
	defer grace.Stop()
	select {
	case o := <-rr.outcome:
		if o.err == nil {
			return o.result, nil
		}
	case <-grace.C:
	case <-s.done:
	}
	return nil, tc.Err()
}

// childResults are the children of the wait a resumed attempt follows, sorted by ID.
func childResults(tc *tasks.Context) []api.ChildResult {
	m := tc.ChildResults()
	if len(m) == 0 {
		return nil
	}
	out := make([]api.ChildResult, 0, len(m))
	for _, id := range slices.Sorted(maps.Keys(m)) {
		r := m[id]
		c := api.ChildResult{ID: r.ID, State: r.State, Result: r.Result}
		if r.Error != nil {
			c.Error = &api.TaskError{Type: r.Error.Type, Message: r.Error.Message, Final: r.Error.Final}
		}
		out = append(out, c)
	}
	return out
}

// workerError is a failure the worker reported: its type becomes the task error's.
type workerError struct {
	typ, msg string
}

func (e *workerError) Error() string         { return e.msg }
func (e *workerError) TaskErrorType() string { return e.typ }

// sessionReporter is the node's reporter on the worker's behalf, which tells the session when
// an outcome's report is decided.
type sessionReporter struct {
	inner tasks.Reporter
	s     *session
}

func (r sessionReporter) Started(ctx context.Context, run tasks.RunRef) error {
	return r.inner.Started(ctx, run)
}

func (r sessionReporter) Checkpoint(ctx context.Context, run tasks.RunRef, data json.RawMessage) error {
	return r.inner.Checkpoint(ctx, run, data)
}

func (r sessionReporter) Finished(ctx context.Context, run tasks.RunRef, o tasks.Outcome, result json.RawMessage, terr *tasks.TaskError) error {
	err := r.inner.Finished(ctx, run, o, result, terr)
	r.s.reportDone(run, err)
	return err
}

func (r sessionReporter) StartedAndFinished(ctx context.Context, run tasks.RunRef, o tasks.Outcome, result json.RawMessage, terr *tasks.TaskError) error {
	var err error
	if sf, ok := r.inner.(tasks.StartFinisher); ok {
		err = sf.StartedAndFinished(ctx, run, o, result, terr)
	} else if err = r.inner.Started(ctx, run); err == nil {
		err = r.inner.Finished(ctx, run, o, result, terr)
	}
	r.s.reportDone(run, err)
	return err
}
