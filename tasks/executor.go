package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/tracing"
)

// ErrFenced is wrapped by a Reporter error when the FSM rejected the report
// because the attempt is stale: the executor stops retrying and stops the run
// without reporting anything more.
var ErrFenced = errors.New("stale attempt")

// TaskError is the error shape of the task record.
type TaskError struct {
	Type    string `json:"type" msgpack:"type"`
	Message string `json:"message" msgpack:"message"`
	// Final: the task said no retry can fix it (ErrFinal); the task fails without another attempt.
	Final bool `json:"final,omitempty" msgpack:"final,omitempty"`
}

// Error types of TaskError set by the executor.
const (
	ErrTypeTaskError   = "task_error"        // the task returned an error
	ErrTypeTimeout     = "timeout"           // the attempt timed out
	ErrTypePanic       = "panic"             // the task panicked
	ErrTypeCancelled   = "cancelled"         // a user cancelled the task
	ErrTypeUnknownType = "unknown_task_type" // this node lacks the type or version
	// ErrTypeResultTooLarge: the result is over ExecutorConfig.MaxResultBytes; it is not reported.
	ErrTypeResultTooLarge = string(limits.CodeResultTooLarge)
	// ErrTypeCheckpointTooLarge: a checkpoint was over ExecutorConfig.MaxCheckpointBytes.
	ErrTypeCheckpointTooLarge = "checkpoint_too_large"
)

// Assignment is one attempt the node must run.
type Assignment struct {
	TaskID      string
	Type        string
	Version     string // "" accepts whatever version is registered
	ExecutionID string
	Input       json.RawMessage
	Attempt     int
	Timeout     time.Duration   // 0 = none
	Checkpoint  json.RawMessage // last checkpoint, may be nil
	// Trace is the task's trace context (the span that submitted it), invalid for none: the
	// attempt's span is its child, and the task's Context carries it.
	Trace trace.SpanContext
	// Resumed is set on an attempt that follows a wait for child tasks (Context.WaitChildren),
	// and Children are then the children that wait named, with their outcomes.
	Resumed  bool
	Children []ChildResult
}

// RunRef names one attempt of a task.
type RunRef struct {
	TaskID  string
	Attempt int
}

// Outcome is how an attempt ended.
type Outcome int

// Outcomes reported through Reporter.Finished.
const (
	OutcomeSucceeded Outcome = iota
	OutcomeFailed
	OutcomeCancelled
	OutcomeInterrupted
	// OutcomeWaiting ends the attempt to wait for child tasks (Context.WaitChildren): the result
	// passed to Reporter.Finished is the JSON array of their IDs.
	OutcomeWaiting
)

func (o Outcome) String() string {
	switch o {
	case OutcomeSucceeded:
		return "succeeded"
	case OutcomeFailed:
		return "failed"
	case OutcomeCancelled:
		return "cancelled"
	case OutcomeInterrupted:
		return "interrupted"
	case OutcomeWaiting:
		return "waiting"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Reporter carries a run's progress to the cluster. Calls block until the
// report is accepted or fails; an error wrapping ErrFenced means the attempt
// is stale.
type Reporter interface {
	// Started reports that the attempt began running.
	Started(ctx context.Context, run RunRef) error
	// Checkpoint records the attempt's progress.
	Checkpoint(ctx context.Context, run RunRef, data json.RawMessage) error
	// Finished reports how the attempt ended; terr is nil on success.
	Finished(ctx context.Context, run RunRef, outcome Outcome, result json.RawMessage, terr *TaskError) error
}

// StartFinisher is a Reporter that can report an attempt's start and its outcome together, as
// one write to the cluster, in that order. With ExecutorConfig.StartWindow set, an attempt that
// ends within the window is reported through it; a Reporter without it gets Started then
// Finished.
type StartFinisher interface {
	StartedAndFinished(ctx context.Context, run RunRef, outcome Outcome, result json.RawMessage, terr *TaskError) error
}

// StopReason says why a run is stopped, which decides what is reported.
type StopReason int

const (
	// StopCancel is a user cancel: the run is reported OutcomeCancelled.
	StopCancel StopReason = iota
	// StopDrain hands the task back: the run is reported OutcomeInterrupted.
	StopDrain
	// StopRevoke means the task now belongs elsewhere: nothing more is reported.
	StopRevoke
)

func (r StopReason) String() string {
	switch r {
	case StopCancel:
		return "cancel"
	case StopDrain:
		return "drain"
	case StopRevoke:
		return "revoke"
	}
	return fmt.Sprintf("StopReason(%d)", int(r))
}

// ExecutorConfig configures an Executor. Zero values take the defaults.
type ExecutorConfig struct {
	Registry    *Registry
	Reporter    Reporter
	Logs        *LogStore // may be nil: task output is dropped
	NodeName    string
	Logger      *slog.Logger  // default slog.Default()
	ReportRetry time.Duration // pause between report retries, default 200ms
	Submit      Submitter     // lets tasks submit child tasks; may be nil

	// MaxResultBytes caps a result (default limits.DefaultMaxPayloadBytes, 256 KiB): a larger one
	// fails the attempt with error type "result_too_large" instead of being reported, since it
	// would be stored by raft on every node.
	MaxResultBytes int
	// MaxCheckpointBytes caps one checkpoint (default MaxCheckpointBytes, 64 KiB): a larger one
	// fails the attempt with error type "checkpoint_too_large".
	MaxCheckpointBytes int
	// CheckpointsPerSecond and CheckpointBurst are each run's checkpoint budget (defaults
	// limits.DefaultCheckpointsPerSecond and limits.DefaultCheckpointBurst: 10 a second, burst 5).
	// Every checkpoint is a raft write, so a task checkpointing in a tight loop would take the
	// leader from everyone else; over the budget only the newest checkpoint is kept, and it is
	// reported when the budget allows or when the handler returns, before the outcome.
	CheckpointsPerSecond float64
	CheckpointBurst      int

	// StartWindow, when positive, runs the handler at once and holds the Started report back
	// for this long: an attempt that ends within it reports start and outcome together (one
	// raft write instead of two serial ones, through StartFinisher), a longer one reports
	// Started when the window ends (or before its first checkpoint). Zero keeps the stricter
	// order: the handler runs only once the cluster accepted Started, so an attempt fenced at
	// its start never runs at all; with a window it may run for up to the window (or to its
	// end, if shorter) before the fencing stops it, its outcome then refused like any stale
	// attempt's.
	StartWindow time.Duration

	// OnFinish, when set, is called once a run is over: its last report was accepted, refused
	// or given up, or it was revoked and reports nothing.
	OnFinish func(RunRef)

	// Tracer, when set, records each attempt of a traced task (Assignment.Trace) as a span:
	// node, attempt, start, end, outcome and error type, never input, output or error text. Nil
	// is tracing off; the task's Context still carries its trace context then.
	Tracer trace.Tracer
}

// rememberFinished is how many finished runs Start recognises as already done.
const rememberFinished = 16384

// Executor runs assigned attempts in goroutines and reports their progress.
type Executor struct {
	cfg ExecutorConfig

	mu       sync.Mutex
	runs     map[RunRef]*run
	idle     chan struct{} // closed while no run is active
	finished map[RunRef]struct{}
	order    []RunRef // finished runs, oldest first, to bound the map
	closed   bool
	wg       sync.WaitGroup
}

type run struct {
	ref RunRef
	// stopRun cancels the task's context; stopReports also ends report retries.
	stopRun     context.CancelFunc
	stopReports context.CancelFunc
	runCtx      context.Context
	reportCtx   context.Context
	// span is the attempt's span, nil when the task is not traced or tracing is off.
	span trace.Span

	// Guarded by Executor.mu.
	stopped bool
	reason  StopReason
	// returned: the handler is done (or never ran); the run only reports what it came to.
	returned bool
}

// NewExecutor returns an executor with no runs.
func NewExecutor(cfg ExecutorConfig) *Executor {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReportRetry <= 0 {
		cfg.ReportRetry = 200 * time.Millisecond
	}
	if cfg.MaxResultBytes <= 0 {
		cfg.MaxResultBytes = limits.DefaultMaxPayloadBytes
	}
	if cfg.MaxCheckpointBytes <= 0 {
		cfg.MaxCheckpointBytes = MaxCheckpointBytes
	}
	if cfg.CheckpointsPerSecond <= 0 {
		cfg.CheckpointsPerSecond = limits.DefaultCheckpointsPerSecond
	}
	if cfg.CheckpointBurst <= 0 {
		cfg.CheckpointBurst = limits.DefaultCheckpointBurst
	}
	idle := make(chan struct{})
	close(idle)
	return &Executor{cfg: cfg, runs: make(map[RunRef]*run), idle: idle, finished: make(map[RunRef]struct{})}
}

// Start runs the attempt in a new goroutine. It returns false, doing nothing,
// if that attempt is already running here, recently finished here, or the
// executor is closed. An attempt of a type or version not registered here is
// reported failed with TaskError type "unknown_task_type".
func (e *Executor) Start(a Assignment) bool {
	ref := RunRef{TaskID: a.TaskID, Attempt: a.Attempt}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	if _, ok := e.runs[ref]; ok {
		return false
	}
	if _, ok := e.finished[ref]; ok {
		return false
	}
	reportCtx, stopReports := context.WithCancel(context.Background())
	runCtx, stopRun := context.WithCancel(reportCtx)
	r := &run{ref: ref, runCtx: runCtx, stopRun: stopRun, reportCtx: reportCtx, stopReports: stopReports}
	if len(e.runs) == 0 {
		e.idle = make(chan struct{})
	}
	e.runs[ref] = r
	e.wg.Add(1)
	go e.execute(r, a)
	return true
}

// Stop cancels the run's context; reason decides what is reported. A revoke
// overrides an earlier reason; otherwise the first reason stands.
func (e *Executor) Stop(taskID string, attempt int, reason StopReason) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r, ok := e.runs[RunRef{TaskID: taskID, Attempt: attempt}]; ok {
		e.stopLocked(r, reason)
	}
}

// Settled is Stop(StopRevoke) for a run whose attempt's outcome the cluster already holds: a run
// whose handler has returned is reporting that outcome, or has, and is left to end on its own
// (revoking it would only cancel its contexts and the report call waiting on them); a run whose
// handler still runs is revoked, its outcome known without it.
func (e *Executor) Settled(taskID string, attempt int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r, ok := e.runs[RunRef{TaskID: taskID, Attempt: attempt}]; ok && !r.returned {
		e.stopLocked(r, StopRevoke)
	}
}

// handlerReturned marks r's handler done (Settled).
func (e *Executor) handlerReturned(r *run) {
	e.mu.Lock()
	r.returned = true
	e.mu.Unlock()
}

// StopAll stops every run with the same reason.
func (e *Executor) StopAll(reason StopReason) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.runs {
		e.stopLocked(r, reason)
	}
}

func (e *Executor) stopLocked(r *run, reason StopReason) {
	if !r.stopped || reason == StopRevoke {
		r.stopped, r.reason = true, reason
	}
	r.stopRun()
	if reason == StopRevoke {
		r.stopReports()
	}
}

// Running lists the active runs, sorted by task ID then attempt.
func (e *Executor) Running() []RunRef {
	e.mu.Lock()
	refs := make([]RunRef, 0, len(e.runs))
	for ref := range e.runs {
		refs = append(refs, ref)
	}
	e.mu.Unlock()
	slices.SortFunc(refs, func(a, b RunRef) int {
		return cmp.Or(strings.Compare(a.TaskID, b.TaskID), cmp.Compare(a.Attempt, b.Attempt))
	})
	return refs
}

// Wait blocks until no run is active or ctx is done.
func (e *Executor) Wait(ctx context.Context) error {
	e.mu.Lock()
	idle := e.idle
	e.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops every run without reporting (process shutdown) and waits for
// their goroutines. Later Starts are refused.
func (e *Executor) Close() {
	e.mu.Lock()
	e.closed = true
	for _, r := range e.runs {
		e.stopLocked(r, StopRevoke)
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (e *Executor) execute(r *run, a Assignment) {
	defer e.wg.Done()
	log := slog.New(&attemptHandler{Handler: e.cfg.Logger.Handler(), task: a.TaskID, attempt: a.Attempt, typ: a.Type})
	defer e.finish(r)
	// How the attempt ended, for its span: a revoked run reports nothing and says so.
	spanOutcome, spanErr := "revoked", (*TaskError)(nil)
	if a.Trace.IsValid() {
		log = log.With("trace_id", a.Trace.TraceID().String())
		if e.cfg.Tracer != nil {
			_, r.span = e.cfg.Tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), a.Trace), "task.attempt",
				trace.WithAttributes(tracing.AttrTaskID.String(a.TaskID), tracing.AttrTaskType.String(a.Type),
					tracing.AttrAttempt.Int(a.Attempt), tracing.AttrNode.String(e.cfg.NodeName)))
			defer func() { endSpan(r.span, spanOutcome, spanErr) }()
		}
	}

	h, err := e.cfg.Registry.Lookup(a.Type)
	if err == nil && a.Version != "" && h.Definition().Version != a.Version {
		err = fmt.Errorf("%w %q version %q on node %s", ErrUnknownType, a.Type, a.Version, e.cfg.NodeName)
	}
	if err != nil {
		terr := &TaskError{Type: ErrTypeUnknownType, Message: err.Error()}
		spanOutcome, spanErr = OutcomeFailed.String(), terr
		e.handlerReturned(r)
		e.report(r.reportCtx, r, log, "finished", func(ctx context.Context) error {
			return e.cfg.Reporter.Finished(ctx, r.ref, OutcomeFailed, nil, terr)
		})
		return
	}

	// Started is retried only while the run is wanted; a run stopped before
	// it began still reports its cancel or handback below.
	g := &startGate{done: make(chan struct{})}
	sendStarted := func() bool {
		if !g.begin() {
			return g.wait()
		}
		ok := e.report(r.runCtx, r, log, "started", func(ctx context.Context) error {
			return e.cfg.Reporter.Started(ctx, r.ref)
		})
		g.finish(ok)
		return ok
	}
	var (
		started bool
		outcome = OutcomeFailed
		result  json.RawMessage
		terr    *TaskError
	)
	if e.cfg.StartWindow <= 0 {
		if started = sendStarted(); started {
			outcome, result, terr = e.attempt(r, a, h, log, sendStarted)
		}
		e.handlerReturned(r)
	} else {
		// A timer, not a goroutine waiting on one: a short task ends within the window and
		// leaves nothing to wake.
		window := time.AfterFunc(e.cfg.StartWindow, func() { sendStarted() })
		outcome, result, terr = e.attempt(r, a, h, log, sendStarted)
		e.handlerReturned(r)
		window.Stop()
		// Not sent yet: the attempt ended within the window, and its start goes with the outcome.
		sent, ok := g.skip()
		started = !sent || ok
		if !sent {
			e.mu.Lock()
			stopped := r.stopped
			e.mu.Unlock()
			if !stopped {
				spanOutcome, spanErr = outcome.String(), terr
				if e.report(r.reportCtx, r, log, "started and finished", func(ctx context.Context) error {
					return e.startedAndFinished(ctx, r.ref, outcome, result, terr)
				}) {
					log.Debug("task attempt finished", "outcome", outcome)
				}
				return
			}
			// Stopped within the window: the outcome alone says how, as for a run stopped
			// before its start was reported without a window.
			started = false
		}
	}
	e.mu.Lock()
	stopped, reason := r.stopped, r.reason
	e.mu.Unlock()
	switch {
	case stopped && reason == StopRevoke:
		return // revoked, fenced or closed: the attempt is no longer ours to report
	case stopped && (!started || outcome != OutcomeSucceeded):
		// A result that made it despite the stop is still reported as a result.
		if reason == StopCancel {
			outcome, result, terr = OutcomeCancelled, nil, &TaskError{Type: ErrTypeCancelled, Message: "task cancelled"}
		} else {
			outcome, result, terr = OutcomeInterrupted, nil, nil
		}
	}
	spanOutcome, spanErr = outcome.String(), terr
	if e.report(r.reportCtx, r, log, "finished", func(ctx context.Context) error {
		return e.cfg.Reporter.Finished(ctx, r.ref, outcome, result, terr)
	}) {
		log.Debug("task attempt finished", "outcome", outcome)
	}
}

// attempt runs the handler once and classifies how it ended.
// sendStarted reports the start if that is still to do (StartWindow), before the first checkpoint.
func (e *Executor) attempt(r *run, a Assignment, h Handler, log *slog.Logger, sendStarted func() bool) (Outcome, json.RawMessage, *TaskError) {
	ctx := r.runCtx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	// The task's code sees its attempt's span (or, with tracing off, its trace context), so
	// spans of its own join the task's trace.
	if r.span != nil {
		ctx = trace.ContextWithSpan(ctx, r.span)
	} else if a.Trace.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, a.Trace)
	}
	// A checkpoint over the cap ends the attempt: its cause tells the classification below why.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)

	// The throttle sends waiting checkpoints until the attempt is over, even past a cancel or a
	// timeout: a drained task's newest progress is what its next attempt resumes from. It and its
	// goroutine are made with the first checkpoint: most tasks make none.
	lt := &lazyThrottle{make: func() *limits.Throttle {
		return limits.NewThrottle(
			limits.NewCoalescer(e.cfg.CheckpointsPerSecond, e.cfg.CheckpointBurst, nil),
			func(ctx context.Context, data []byte) error {
				if !sendStarted() {
					return fmt.Errorf("checkpoint of %s attempt %d: its start was not recorded", r.ref.TaskID, r.ref.Attempt)
				}
				err := e.cfg.Reporter.Checkpoint(ctx, r.ref, data)
				if errors.Is(err, ErrFenced) {
					e.fence(r, log)
				}
				return err
			})
	}}
	defer lt.stop()

	out := &runOutput{
		store: e.cfg.Logs, taskID: a.TaskID, attempt: a.Attempt, node: e.cfg.NodeName,
		onErr: func(err error) { log.Warn("task output dropped", "err", err) },
	}
	tc := &Context{
		Context:       ctx,
		TaskID:        a.TaskID,
		ExecutionID:   a.ExecutionID,
		Attempt:       a.Attempt,
		Timeout:       a.Timeout,
		Logger:        slog.New(&logHandler{out: out}),
		Stdout:        streamWriter{out: out, stream: "stdout"},
		Stderr:        streamWriter{out: out, stream: "stderr"},
		last:          a.Checkpoint,
		submit:        e.cfg.Submit,
		maxCheckpoint: e.cfg.MaxCheckpointBytes,
		maxResult:     e.cfg.MaxResultBytes,
		tooLarge:      fail,
		out:           out,
		canWait:       true,
		resumed:       a.Resumed,
		children:      childMap(a.Children),
		checkpoint: func(data json.RawMessage) error {
			t := lt.start(r.reportCtx)
			if t == nil {
				return errRunOver
			}
			if err := t.Checkpoint(ctx, data); err != nil {
				return fmt.Errorf("report checkpoint: %w", err)
			}
			return nil
		},
	}

	result, err := runHandler(h, tc, a.Input, out)
	// Whatever the task left running is told to stop (a cause set before, a timeout or an
	// oversized checkpoint, stays), and from here on it cannot checkpoint.
	fail(nil)
	tc.close()
	out.flush()
	e.flushCheckpoint(r, lt.made(), log)

	if err == nil && len(result) > e.cfg.MaxResultBytes {
		err = limits.CheckSize(limits.PayloadResult, len(result), e.cfg.MaxResultBytes)
	}
	if cause := sizeCause(ctx); cause != nil {
		err = cause // whatever the task made of it, the checkpoint over the cap failed the attempt
	}
	if err == nil {
		if !json.Valid(result) {
			return OutcomeFailed, nil, &TaskError{Type: ErrTypeTaskError, Message: "task returned invalid JSON as its result"}
		}
		return OutcomeSucceeded, result, nil
	}
	if errors.Is(err, ErrWaiting) && tc.waitFor() != nil {
		ids, _ := json.Marshal(tc.waitFor())
		return OutcomeWaiting, ids, nil
	}
	return e.failed(ctx, r, a, err, log)
}

// sizeCause is the cause of ctx's end when it is a *limits.SizeError (a checkpoint over the cap),
// nil otherwise. Apart so that an attempt that ended plainly allocates no error target.
func sizeCause(ctx context.Context) error {
	cause := context.Cause(ctx)
	if cause == nil || cause == context.Canceled || cause == context.DeadlineExceeded {
		return nil
	}
	var serr *limits.SizeError
	if errors.As(cause, &serr) {
		return cause
	}
	return nil
}

// failed classifies an attempt that ended with err.
func (e *Executor) failed(ctx context.Context, r *run, a Assignment, err error, log *slog.Logger) (Outcome, json.RawMessage, *TaskError) {
	var (
		perr *panicError
		serr *limits.SizeError
	)
	switch {
	case errors.As(err, &serr) && serr.What == limits.PayloadResult:
		return OutcomeFailed, nil, &TaskError{Type: ErrTypeResultTooLarge, Message: serr.Error()}
	case errors.As(err, &serr) && serr.What == PayloadCheckpoint:
		return OutcomeFailed, nil, &TaskError{Type: ErrTypeCheckpointTooLarge, Message: serr.Error()}
	case errors.As(err, &perr):
		log.Error("task panicked", "panic", perr.value)
		return OutcomeFailed, nil, &TaskError{Type: ErrTypePanic, Message: fmt.Sprint(perr.value)}
	case r.runCtx.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return OutcomeFailed, nil, &TaskError{Type: ErrTypeTimeout, Message: "attempt timed out after " + a.Timeout.String()}
	case r.runCtx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		// A deadline of the task's own, such as a command type's timeout.
		return OutcomeFailed, nil, &TaskError{Type: ErrTypeTimeout, Message: err.Error()}
	}
	typ := ErrTypeTaskError
	var typed TypedError
	if errors.As(err, &typed) && typed.TaskErrorType() != "" {
		typ = typed.TaskErrorType()
	}
	return OutcomeFailed, nil, &TaskError{Type: typ, Message: err.Error(), Final: errors.Is(err, ErrFinal)}
}

// TypedError is an error a handler returns that names its own TaskError type (a worker's
// error.type, say) in place of "task_error".
type TypedError interface {
	error
	TaskErrorType() string
}

// flushCheckpoint reports the run's newest checkpoint still held back by its budget, before the
// outcome, so a later attempt resumes from the newest progress. Once only: a checkpoint is
// superseded by the outcome anyway.
func (e *Executor) flushCheckpoint(r *run, throttle *limits.Throttle, log *slog.Logger) {
	if throttle == nil {
		return // no checkpoint was made
	}
	e.mu.Lock()
	revoked := r.stopped && r.reason == StopRevoke
	e.mu.Unlock()
	if revoked {
		return // fenced or closed: nothing more is ours to report
	}
	if err := throttle.Flush(r.reportCtx); err != nil && !errors.Is(err, ErrFenced) && r.reportCtx.Err() == nil {
		log.Warn("last checkpoint not recorded", "err", err)
	}
}

// attemptHandler is an attempt's log handler: the records it writes carry the attempt's task,
// attempt and type first, as Logger.With would put them, but they are added when a record is
// written rather than formatted for every attempt, most of which log nothing.
type attemptHandler struct {
	slog.Handler
	task    string
	attempt int
	typ     string
}

func (h *attemptHandler) attrs() []slog.Attr {
	return []slog.Attr{slog.String("task", h.task), slog.Int("attempt", h.attempt), slog.String("type", h.typ)}
}

func (h *attemptHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(h.attrs()...)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(a)
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h *attemptHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return h.Handler.WithAttrs(append(h.attrs(), as...))
}

func (h *attemptHandler) WithGroup(name string) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithGroup(name)
}

// lazyThrottle is an attempt's checkpoint throttle, made with its first checkpoint, and the
// goroutine that sends what it holds back.
type lazyThrottle struct {
	make func() *limits.Throttle
	once sync.Once
	t    *limits.Throttle
	halt context.CancelFunc
	done chan struct{}
}

// start makes the throttle and starts its goroutine under ctx, once; nil once made() or stop()
// was called without a checkpoint before.
func (l *lazyThrottle) start(ctx context.Context) *limits.Throttle {
	l.once.Do(func() {
		l.t = l.make()
		var tctx context.Context
		tctx, l.halt = context.WithCancel(ctx)
		l.done = make(chan struct{})
		go func() { defer close(l.done); l.t.Run(tctx) }()
	})
	return l.t
}

// made is the throttle if a checkpoint made it, nil otherwise; none is made after it.
func (l *lazyThrottle) made() *limits.Throttle {
	l.once.Do(func() {})
	return l.t
}

// stop ends the throttle's goroutine, if it was started, and waits for it.
func (l *lazyThrottle) stop() {
	if l.made() != nil {
		l.halt()
		<-l.done
	}
}

type panicError struct{ value any }

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// runHandler runs h, turning a panic into a *panicError so a task cannot
// crash the node; the stack goes to the task's own log.
func runHandler(h Handler, tc *Context, input json.RawMessage, out *runOutput) (result json.RawMessage, err error) {
	defer func() {
		if v := recover(); v != nil {
			out.emit("log", "error", fmt.Sprintf("panic: %v\n%s", v, debug.Stack()))
			result, err = nil, &panicError{value: v}
		}
	}()
	result, err = h.Run(tc, input)
	if err == nil && result == nil {
		result = json.RawMessage("null")
	}
	return result, err
}

// report calls send until it succeeds, every ReportRetry, giving up when ctx
// is done or the cluster fences the attempt. It reports whether send succeeded.
func (e *Executor) report(ctx context.Context, r *run, log *slog.Logger, what string, send func(context.Context) error) bool {
	for failures := 0; ; failures++ {
		err := send(ctx)
		switch {
		case err == nil:
			return true
		case errors.Is(err, ErrFenced):
			e.fence(r, log)
			return false
		case ctx.Err() != nil:
			return false
		case failures == 0:
			log.Warn("report failed, retrying", "report", what, "err", err)
		default:
			log.Debug("report failed, retrying", "report", what, "err", err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(e.cfg.ReportRetry):
		}
	}
}

// startedAndFinished reports an attempt's start and outcome together when the Reporter can, else
// one after the other. A Started fenced or failed is retried as a whole by report; a Started
// applied twice changes nothing.
func (e *Executor) startedAndFinished(ctx context.Context, run RunRef, outcome Outcome, result json.RawMessage, terr *TaskError) error {
	if sf, ok := e.cfg.Reporter.(StartFinisher); ok {
		return sf.StartedAndFinished(ctx, run, outcome, result, terr)
	}
	if err := e.cfg.Reporter.Started(ctx, run); err != nil {
		return err
	}
	return e.cfg.Reporter.Finished(ctx, run, outcome, result, terr)
}

// startGate sends a run's Started report at most once, from whichever comes first: the end of
// the start window, the first checkpoint, or (skip) the end of the attempt, which then reports
// its start together with its outcome.
type startGate struct {
	mu    sync.Mutex
	state int // gateIdle, gateSending, gateDone, gateSkipped
	ok    bool
	done  chan struct{} // closed once state is gateDone or gateSkipped
}

const (
	gateIdle = iota
	gateSending
	gateDone
	gateSkipped
)

// begin reports whether the caller is the one to send Started now.
func (g *startGate) begin() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != gateIdle {
		return false
	}
	g.state = gateSending
	return true
}

func (g *startGate) finish(ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.state, g.ok = gateDone, ok
	close(g.done)
}

// wait returns whether the Started report, sent or being sent by another caller, was accepted;
// false when it was skipped.
func (g *startGate) wait() bool {
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state == gateDone && g.ok
}

// skip ends the window: unless Started was already sent (or is being sent, then waited for), it
// never will be. It returns whether it was sent and whether it was accepted.
func (g *startGate) skip() (sent, ok bool) {
	g.mu.Lock()
	if g.state == gateIdle {
		g.state = gateSkipped
		close(g.done)
		g.mu.Unlock()
		return false, false
	}
	g.mu.Unlock()
	return true, g.wait()
}

// fence stops a run whose attempt the cluster no longer accepts.
func (e *Executor) fence(r *run, log *slog.Logger) {
	log.Info("attempt is stale, stopping it")
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked(r, StopRevoke)
}

func (e *Executor) finish(r *run) {
	r.stopReports()
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.runs, r.ref)
	if len(e.runs) == 0 {
		close(e.idle)
	}
	e.finished[r.ref] = struct{}{}
	e.order = append(e.order, r.ref)
	if len(e.order) > rememberFinished {
		delete(e.finished, e.order[0])
		e.order = e.order[1:]
	}
	if e.cfg.OnFinish != nil {
		e.cfg.OnFinish(r.ref) // under e.mu: it must only record
	}
}
