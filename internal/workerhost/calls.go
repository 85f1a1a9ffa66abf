package workerhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/scheduler"
	"github.com/taskworker/taskworker/tasks"
)

// Bounds of a registration's text fields, beyond api's.
const (
	maxTypeNameLen     = 128
	maxDescriptionLen  = 1024
	maxExampleInputLen = 16 << 10
	maxEventsWait      = 60 * time.Second // an events call waiting for its outcomes' reports
)

// Register validates req, checks caller's work on each type, records the worker in the FSM and
// opens its session. Nothing is registered when it fails.
func (h *Host) Register(ctx context.Context, caller Caller, req api.WorkerRegistration) (api.WorkerSession, error) {
	lease, err := checkRegistration(&req)
	if err != nil {
		return api.WorkerSession{}, err
	}
	for _, t := range req.Types {
		if err := caller.Allow(acl.CapWork, t.Type); err != nil {
			return api.WorkerSession{}, api.Errorf(api.CodeForbidden, "%v", err)
		}
	}
	id, err := newSecret()
	if err != nil {
		return api.WorkerSession{}, err
	}
	bootID, err := newSecret()
	if err != nil {
		return api.WorkerSession{}, err
	}
	s := &session{
		h: h, id: id, name: req.Name, bootID: bootID, principal: caller.Principal(), types: req.Types, lease: lease,
		wake: make(chan struct{}), runs: map[tasks.RunRef]*remoteRun{}, done: make(chan struct{}),
	}
	reg := tasks.NewRegistry()
	for _, t := range req.Types {
		def := tasks.Definition{Name: t.Type, Version: t.Version, Description: t.Description, ExampleInput: t.ExampleInput}
		if err := reg.Register(&remoteHandler{s: s, def: def}); err != nil {
			return api.WorkerSession{}, api.Errorf(api.CodeInvalidWorker, "%v", err)
		}
	}
	rep := sessionReporter{inner: h.cfg.ReporterFor(req.Name, bootID), s: s}
	ec := h.cfg.Executor
	ec.Registry, ec.Reporter, ec.NodeName, ec.OnFinish = reg, rep, req.Name, s.runOver
	ec.Logger = h.log.With("worker", req.Name)
	s.exec = tasks.NewExecutor(ec)

	h.mu.Lock()
	switch {
	case h.closed || h.ctx.Err() != nil:
		h.mu.Unlock()
		return api.WorkerSession{}, api.Errorf(api.CodeShuttingDown, "this node is shutting down: register with another")
	case len(h.sessions) >= h.cfg.MaxSessions:
		h.mu.Unlock()
		return api.WorkerSession{}, api.Errorf(api.CodeTooManyWorkers, "this node holds %d worker sessions, its most: register with another node", h.cfg.MaxSessions)
	case h.byName[req.Name] != nil:
		h.mu.Unlock()
		return api.WorkerSession{}, api.Errorf(api.CodeWorkerExists, "a worker named %s holds a lease on this node", req.Name)
	}
	h.sessions[id] = s
	h.byName[req.Name] = s
	h.mu.Unlock()

	if h.cfg.Draining() {
		h.drop(s)
		return api.WorkerSession{}, api.Errorf(api.CodeShuttingDown, "this node is leaving: register with another")
	}
	if old, ok := h.cfg.FSM.Worker(req.Name); ok && old.Status == fsm.NodeUp && old.Host == h.cfg.Node {
		// An earlier session of this name here ended (its lease lost) and its down may not be
		// in yet: no session of the name lives here, so that record is stale. Take it down first,
		// fenced by its own session, so the worker can register again at once.
		stale := &session{name: old.Name, bootID: old.BootID}
		if err := h.proposeDown(stale, false, "worker "+old.Name+" registered again"); err != nil {
			h.drop(s)
			return api.WorkerSession{}, apiError(err)
		}
	}
	rec := &fsm.Node{Name: req.Name, BootID: bootID, Host: h.cfg.Node, HTTPAddr: h.cfg.HTTPAddr, Capacity: req.Capacity, Labels: req.Labels}
	for _, t := range req.Types {
		rec.Types = append(rec.Types, fsm.TypeInfo{Type: t.Type, Version: t.Version, Description: t.Description, ExampleInput: t.ExampleInput})
	}
	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	res, err := h.cfg.Propose(pctx, &fsm.Command{Body: &fsm.WorkerChange{Op: fsm.WorkerUp, Worker: rec}})
	if err == nil {
		err = waitIndex(pctx, h.cfg.FSM, res.Index)
	}
	cancel()
	if err != nil {
		h.drop(s)
		if !errors.Is(err, fsm.ErrWorkerExists) && !errors.Is(err, fsm.ErrUnknownNode) {
			// It may have been applied (a reply lost): take the record down again, unless the
			// host is closed (its node is going down).
			h.goTracked(func() { _ = h.proposeDown(s, true, "worker "+s.name+" registration failed") })
		}
		return api.WorkerSession{}, apiError(err)
	}
	loopCtx, stop := context.WithCancel(h.ctx)
	loopDone := make(chan struct{})
	s.mu.Lock()
	if s.isEnded {
		// Close ended the session while its up was on its way: the node is going down, and its
		// workers with it.
		s.mu.Unlock()
		stop()
		return api.WorkerSession{}, api.Errorf(api.CodeShuttingDown, "this node is shutting down: register with another")
	}
	s.loopStop, s.loopDone = stop, loopDone
	s.isReg = true
	s.deadline = time.Now().Add(lease)
	s.mu.Unlock()
	go func() {
		defer close(loopDone)
		h.cfg.WorkFor(loopCtx, s.name, s.bootID, s.exec, rep)
	}()
	h.log.Info("worker registered", "worker", s.name, "capacity", req.Capacity, "types", len(req.Types), "lease", lease)
	return api.WorkerSession{ID: id, Name: s.name, Node: h.cfg.Node, Lease: lease.String(), PollWait: (lease / 2).String()}, nil
}

// drop forgets a session that never registered.
func (h *Host) drop(s *session) {
	s.markEnded()
	h.mu.Lock()
	delete(h.sessions, s.id)
	if h.byName[s.name] == s {
		delete(h.byName, s.name)
	}
	h.mu.Unlock()
	s.exec.Close()
}

// waitIndex waits until f has applied index.
func waitIndex(ctx context.Context, f *fsm.FSM, index uint64) error {
	for {
		changed := f.Changed()
		if f.Index() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// checkRegistration validates req, filling in defaults, and returns its lease.
func checkRegistration(req *api.WorkerRegistration) (time.Duration, error) {
	bad := func(format string, a ...any) (time.Duration, error) {
		return 0, api.Errorf(api.CodeInvalidWorker, format, a...)
	}
	if err := CheckName(req.Name); err != nil {
		return 0, err
	}
	if req.Capacity < 1 || req.Capacity > api.MaxWorkerCapacity {
		return bad("capacity must be between 1 and %d, got %d", api.MaxWorkerCapacity, req.Capacity)
	}
	lease := api.DefaultWorkerLease
	if req.Lease != "" {
		d, err := time.ParseDuration(req.Lease)
		if err != nil || d < api.MinWorkerLease || d > api.MaxWorkerLease {
			return bad("lease must be a duration between %s and %s, got %q", api.MinWorkerLease, api.MaxWorkerLease, api.Truncate(req.Lease))
		}
		lease = d
	}
	if len(req.Labels) > api.MaxWorkerLabels {
		return bad("at most %d labels, got %d", api.MaxWorkerLabels, len(req.Labels))
	}
	for k, v := range req.Labels {
		if k == "" || len(k) > api.MaxWorkerLabelBytes || len(v) > api.MaxWorkerLabelBytes || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return bad("label keys must be 1 to %d bytes and values at most %d, in UTF-8", api.MaxWorkerLabelBytes, api.MaxWorkerLabelBytes)
		}
	}
	if len(req.Types) < 1 || len(req.Types) > api.MaxWorkerTypes {
		return bad("a worker registers 1 to %d types, got %d", api.MaxWorkerTypes, len(req.Types))
	}
	seen := map[string]bool{}
	for i := range req.Types {
		t := &req.Types[i]
		if t.Version == "" {
			t.Version = "1"
		}
		if t.Type == "" || len(t.Type) > maxTypeNameLen || !printable(t.Type) {
			return bad("types[%d]: type must be 1 to %d printable characters", i, maxTypeNameLen)
		}
		if seen[t.Type] {
			return bad("types[%d]: type %q is registered twice (a worker offers one version of a type)", i, api.Truncate(t.Type))
		}
		seen[t.Type] = true
		if err := scheduler.CheckVersion(t.Version); err != nil {
			return bad("types[%d]: invalid version %q: %v", i, api.Truncate(t.Version), err)
		}
		if len(t.Description) > maxDescriptionLen {
			return bad("types[%d]: description is over %d bytes", i, maxDescriptionLen)
		}
		if len(t.ExampleInput) > maxExampleInputLen || len(t.ExampleInput) > 0 && !json.Valid(t.ExampleInput) {
			return bad("types[%d]: example_input must be JSON of at most %d bytes", i, maxExampleInputLen)
		}
	}
	return lease, nil
}

// CheckName returns an invalid_worker error unless name is 1 to 64 characters of [A-Za-z0-9._-].
func CheckName(name string) error {
	ok := name != "" && len(name) <= api.MaxWorkerNameLen
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			ok = false
			break
		}
	}
	if !ok {
		return api.Errorf(api.CodeInvalidWorker, "name must be 1 to %d characters of A-Z a-z 0-9 . _ -, got %q", api.MaxWorkerNameLen, api.Truncate(name))
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Poll hands the worker its queued assignments and cancel notices, waiting up to the asked wait
// (at most half the lease) for some. It renews the lease when it arrives and when it returns.
func (h *Host) Poll(ctx context.Context, caller Caller, id string, req api.WorkerPollRequest) (api.WorkerPoll, error) {
	s, err := h.lookup(id, caller)
	if err != nil {
		return api.WorkerPoll{}, err
	}
	wait := s.lease / 2
	if req.Wait != "" {
		d, err := time.ParseDuration(req.Wait)
		if err != nil || d < 0 {
			return api.WorkerPoll{}, api.Errorf(api.CodeInvalidWait, "wait must be a duration like 500ms, got %q", api.Truncate(req.Wait))
		}
		wait = min(d, wait)
	}
	s.mu.Lock()
	if s.isEnded {
		s.mu.Unlock()
		return api.WorkerPoll{}, errUnknownWorker()
	}
	s.polls++
	s.deadline = time.Now().Add(s.lease)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.polls--
		s.deadline = time.Now().Add(s.lease)
		s.mu.Unlock()
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	wasDraining := false
	for first := true; ; first = false {
		s.mu.Lock()
		if s.isEnded {
			s.mu.Unlock()
			return api.WorkerPoll{}, errUnknownWorker()
		}
		draining := s.draining || h.cfg.Draining()
		if first {
			wasDraining = draining
		}
		if len(s.outbox) > 0 || len(s.cancels) > 0 || draining != wasDraining {
			out := api.WorkerPoll{Assignments: s.outbox, Cancel: s.cancels, Draining: draining}
			for _, a := range s.outbox {
				if rr := s.runs[tasks.RunRef{TaskID: a.TaskID, Attempt: a.Attempt}]; rr != nil {
					rr.delivered = true
				}
			}
			s.outbox, s.cancels = nil, nil
			s.mu.Unlock()
			return normalPoll(out), nil
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return normalPoll(api.WorkerPoll{Draining: draining}), nil
		case <-timer.C:
			return normalPoll(api.WorkerPoll{Draining: draining}), nil
		case <-wake:
		}
	}
}

func normalPoll(p api.WorkerPoll) api.WorkerPoll {
	if p.Assignments == nil {
		p.Assignments = []api.WorkerAssignment{}
	}
	if p.Cancel == nil {
		p.Cancel = []api.WorkerRun{}
	}
	return p
}

// Events applies the worker's events in order: log lines go to the task's output, checkpoints
// and outcomes to its run. It returns once every outcome's report was committed or refused, one
// result per event.
func (h *Host) Events(ctx context.Context, caller Caller, id string, req api.WorkerEvents) (api.WorkerEventResults, error) {
	if len(req.Events) > api.MaxWorkerEvents {
		return api.WorkerEventResults{}, api.Errorf(api.CodeInvalidRequest, "at most %d events per call, got %d", api.MaxWorkerEvents, len(req.Events))
	}
	s, err := h.lookup(id, caller)
	if err != nil {
		return api.WorkerEventResults{}, err
	}
	results := make([]api.WorkerEventResult, len(req.Events))
	type waiter struct {
		i  int
		rr *remoteRun
	}
	var waiters []waiter
	for i := range req.Events {
		ev := &req.Events[i]
		rr, res := s.event(ev)
		results[i] = res
		if rr != nil {
			waiters = append(waiters, waiter{i, rr})
		}
	}
	wctx, cancel := context.WithTimeout(ctx, maxEventsWait)
	defer cancel()
	for _, w := range waiters {
		select {
		case <-w.rr.reported:
			s.mu.Lock()
			err := w.rr.reportErr
			s.mu.Unlock()
			if s.fate(w.rr.ref, err) != nil {
				results[w.i] = stale(w.rr.ref)
			} else {
				results[w.i] = api.WorkerEventResult{OK: true}
			}
		case <-wctx.Done():
			results[w.i] = api.WorkerEventResult{Code: api.CodeNoLeader, Error: "the outcome is not recorded yet: report it again"}
		}
	}
	return api.WorkerEventResults{Results: results}, nil
}

// outcomeKind reports whether an event kind ends its attempt.
func outcomeKind(kind string) bool {
	return kind == api.WorkerEventSucceeded || kind == api.WorkerEventFailed || kind == api.WorkerEventCancelled ||
		kind == api.WorkerEventWaitChildren
}

func stale(ref tasks.RunRef) api.WorkerEventResult {
	return api.WorkerEventResult{Code: api.CodeStaleAttempt,
		Error: fmt.Sprintf("attempt %d of %s is no longer this worker's", ref.Attempt, api.Truncate(ref.TaskID))}
}

func invalidEvent(format string, a ...any) api.WorkerEventResult {
	return api.WorkerEventResult{Code: api.CodeInvalidEvent, Error: fmt.Sprintf(format, a...)}
}

// event applies one event; for an outcome it returns the run whose report decides its result.
func (s *session) event(ev *api.WorkerEvent) (*remoteRun, api.WorkerEventResult) {
	ref := tasks.RunRef{TaskID: ev.TaskID, Attempt: ev.Attempt}
	s.mu.Lock()
	rr := s.runs[ref]
	live := rr != nil && !rr.returned && !rr.settled && rr.delivered
	s.mu.Unlock()
	switch ev.Kind {
	case api.WorkerEventLog, api.WorkerEventCheckpoint, api.WorkerEventSucceeded, api.WorkerEventFailed, api.WorkerEventCancelled:
	case api.WorkerEventWaitChildren:
		if len(ev.Children) == 0 || len(ev.Children) > fsm.MaxWaitChildren {
			return nil, invalidEvent("wait_children needs 1 to %d children, got %d", fsm.MaxWaitChildren, len(ev.Children))
		}
	default:
		return nil, invalidEvent("kind must be log, checkpoint, succeeded, failed, cancelled or wait_children, got %q", api.Truncate(ev.Kind))
	}
	if outcomeKind(ev.Kind) {
		// An outcome sent again (the first call's answer was no_leader, or was lost) gets the
		// first one's fate, whatever it says: the first outcome is the attempt's.
		s.mu.Lock()
		if rr != nil && rr.settled {
			s.mu.Unlock()
			return rr, api.WorkerEventResult{}
		}
		if err, ok := s.fates[ref]; ok {
			s.mu.Unlock()
			if s.fate(ref, err) != nil {
				return nil, stale(ref)
			}
			return nil, api.WorkerEventResult{OK: true}
		}
		s.mu.Unlock()
	}
	if !live {
		return nil, stale(ref)
	}
	switch ev.Kind {
	case api.WorkerEventLog:
		switch ev.Stream {
		case "", "log", "stdout", "stderr":
		default:
			return nil, invalidEvent("stream must be stdout, stderr or log, got %q", api.Truncate(ev.Stream))
		}
		if len(ev.Level) > 16 {
			return nil, invalidEvent("level is over 16 bytes")
		}
		rr.tc.WriteLine(ev.Stream, ev.Level, ev.Line)
		return nil, api.WorkerEventResult{OK: true}
	case api.WorkerEventCheckpoint:
		if len(ev.Checkpoint) == 0 || !json.Valid(ev.Checkpoint) {
			return nil, invalidEvent("checkpoint must be JSON")
		}
		err := rr.tc.Checkpoint(ev.Checkpoint)
		switch {
		case err == nil:
			return nil, api.WorkerEventResult{OK: true}
		case errors.Is(err, tasks.ErrCheckpointTooLarge):
			return nil, api.WorkerEventResult{Code: tasks.ErrTypeCheckpointTooLarge, Error: err.Error()}
		case errors.Is(err, tasks.ErrFenced):
			return nil, stale(ref)
		}
		return nil, api.WorkerEventResult{Code: api.CodeInternal, Error: err.Error()}
	}
	var o outcome
	switch ev.Kind {
	case api.WorkerEventSucceeded:
		o.result = ev.Result
		if len(o.result) == 0 {
			o.result = json.RawMessage("null")
		}
		if !json.Valid(o.result) {
			return nil, invalidEvent("result must be JSON")
		}
	case api.WorkerEventFailed:
		e := ev.Error
		if e == nil {
			e = &api.TaskError{}
		}
		typ, msg := e.Type, e.Message
		if typ == "" {
			typ = tasks.ErrTypeTaskError
		}
		if msg == "" {
			msg = "the worker reported a failure"
		}
		var err error = &workerError{typ: api.Truncate(typ), msg: msg}
		if e.Final {
			err = tasks.Final(err)
		}
		o.err = err
	case api.WorkerEventWaitChildren:
		// Whether the children are its own, the cluster decides: a wait for other tasks fails
		// the task (invalid_wait).
		o.err = rr.tc.WaitFor(ev.Children)
	case api.WorkerEventCancelled:
		if rr.tc.Err() != nil {
			o.err = rr.tc.Err()
		} else {
			o.err = &workerError{typ: tasks.ErrTypeCancelled, msg: "the worker cancelled the attempt"}
		}
	}
	s.mu.Lock()
	if rr.settled {
		s.mu.Unlock()
		return rr, api.WorkerEventResult{} // a concurrent copy of this outcome: the same fate
	}
	if rr.returned {
		s.mu.Unlock()
		return nil, stale(ref)
	}
	rr.settled = true
	s.mu.Unlock()
	rr.outcome <- o // buffered for the one outcome
	return rr, api.WorkerEventResult{}
}

// Drain marks the worker draining in the cluster: no new assignments; running ones go on.
func (h *Host) Drain(ctx context.Context, caller Caller, id string) (api.WorkerDrained, error) {
	s, err := h.lookup(id, caller)
	if err != nil {
		return api.WorkerDrained{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	c := &fsm.Command{Body: &fsm.WorkerChange{Op: fsm.WorkerDrain, Name: s.name, BootID: s.bootID, Draining: true}}
	if _, err := h.cfg.Propose(pctx, c); err != nil {
		if errors.Is(err, fsm.ErrStale) || errors.Is(err, fsm.ErrUnknownNode) {
			h.end(s, endGone)
			return api.WorkerDrained{}, errUnknownWorker()
		}
		return api.WorkerDrained{}, apiError(err)
	}
	s.mu.Lock()
	s.draining = true
	s.wakeLocked()
	s.mu.Unlock()
	return api.WorkerDrained{Draining: true}, nil
}

// Delete hands back the attempts the worker still runs (interrupted: they run again elsewhere),
// ends the session and records the worker as left.
func (h *Host) Delete(ctx context.Context, caller Caller, id string) (api.WorkerLeft, error) {
	s, err := h.lookup(id, caller)
	if err != nil {
		if h.leftLately(id, caller, time.Now()) {
			// The DELETE tried again after its first try ended the session (its reply was
			// lost): it answers as the one that took effect, not unknown_worker.
			return api.WorkerLeft{Left: true}, nil
		}
		return api.WorkerLeft{}, err
	}
	s.ending.Store(true)
	s.stopLoop()
	s.exec.StopAll(tasks.StopDrain)
	wctx, cancel := context.WithTimeout(ctx, handBackWait)
	_ = s.exec.Wait(wctx)
	cancel()
	h.end(s, endLeft)
	s.exec.Close()
	if err := h.proposeDown(s, true, "worker "+s.name+" left"); err != nil {
		return api.WorkerLeft{}, apiError(err)
	}
	h.noteLeft(s, time.Now())
	h.log.Info("worker left", "worker", s.name)
	return api.WorkerLeft{Left: true}, nil
}
