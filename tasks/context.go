package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/taskworker/taskworker/internal/limits"
)

// MaxCheckpointBytes is the default cap on one encoded checkpoint (ExecutorConfig.MaxCheckpointBytes):
// every checkpoint travels through raft and replaces the last one in every node's FSM.
const MaxCheckpointBytes = 64 << 10

// ErrCheckpointTooLarge is returned by Context.Checkpoint for values over the cap; the error also
// wraps a *limits.SizeError with the sizes. The attempt then fails with "checkpoint_too_large".
var ErrCheckpointTooLarge = errors.New("checkpoint too large")

// PayloadCheckpoint names a checkpoint in a *limits.SizeError.
const PayloadCheckpoint limits.Payload = "checkpoint"

// Context is what a running task sees. The embedded context.Context is
// cancelled on user cancel, timeout, drain handback, fencing, or a checkpoint over the cap.
type Context struct {
	// The embedded context carries the attempt's span (Span): spans the task starts from it join
	// the task's trace.
	context.Context
	TaskID      string
	ExecutionID string
	Attempt     int
	Timeout     time.Duration // the attempt's timeout (the embedded context's deadline), 0: none
	Logger      *slog.Logger  // lines go into the task's log stream "log", with their level
	Stdout      io.Writer     // line-split into stream "stdout"
	Stderr      io.Writer     // line-split into stream "stderr"

	checkpoint    func(json.RawMessage) error // nil: checkpoints are only kept in memory
	submit        Submitter                   // nil: child tasks are not supported here
	maxCheckpoint int                         // 0: MaxCheckpointBytes
	maxResult     int                         // 0: limits.DefaultMaxPayloadBytes
	tooLarge      func(error)                 // fails the attempt; nil outside an executor
	out           *runOutput                  // nil outside an executor

	canWait  bool                   // inside an executor: WaitChildren can end the attempt
	resumed  bool                   // the attempt follows a wait
	children map[string]ChildResult // the children of the wait it follows, by ID

	mu        sync.Mutex
	last      json.RawMessage
	closed    bool     // the handler returned: later checkpoints are refused
	submitted []string // children this run submitted, in order
	wait      []string // the children WaitChildren asked to wait for, sorted; nil: none
}

// errRunOver is returned by Checkpoint once the attempt's handler has returned, to a goroutine the
// task left behind: its progress would arrive after the outcome.
var errRunOver = errors.New("checkpoint after the attempt ended")

// Checkpoint records v (JSON-encoded) as the run's progress, so that a later attempt can resume
// from it. Inside an executor checkpoints are rate-limited per run: one within the budget is
// reported before Checkpoint returns; one over it returns at once and waits, replaced by any newer
// one, to be reported when the budget allows or when the handler returns (before the outcome). So
// the newest checkpoint always reaches the cluster, but not every one. A checkpoint over the cap is
// an error and fails the attempt.
func (c *Context) Checkpoint(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if err := c.checkCheckpointSize(len(data)); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errRunOver
	}
	if c.checkpoint != nil {
		if err := c.checkpoint(data); err != nil {
			return err
		}
	}
	c.last = data
	return nil
}

// checkCheckpointSize returns an error wrapping ErrCheckpointTooLarge and a *limits.SizeError when
// size is over the cap, and then fails the attempt.
func (c *Context) checkCheckpointSize(size int) error {
	limit := c.maxCheckpoint
	if limit <= 0 {
		limit = MaxCheckpointBytes
	}
	serr := limits.CheckSize(PayloadCheckpoint, size, limit)
	if serr == nil {
		return nil
	}
	err := fmt.Errorf("%w: %w", ErrCheckpointTooLarge, serr)
	if c.tooLarge != nil {
		c.tooLarge(err)
	}
	return err
}

// WriteLine adds one line to the task's output as it is: stream is "stdout", "stderr" or
// "log" (anything else is "log"), level is for "log" lines ("" for none). Lines that are too long
// are cut at the output's line limit. Outside an executor it does nothing.
func (c *Context) WriteLine(stream, level, line string) {
	if c.out == nil {
		return
	}
	switch stream {
	case "stdout", "stderr":
		level = ""
	default:
		stream = "log"
	}
	if len(line) > maxLineBytes {
		line = line[:maxLineBytes]
	}
	c.out.emit(stream, level, line)
}

// close refuses checkpoints from now on; it waits for one in progress.
func (c *Context) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// ChildTask is a task a running task submits. It joins the parent's execution.
type ChildTask struct {
	Type           string
	Input          any
	Version        string // "" = newest offered
	IdempotencyKey string // a retried parent that resubmits with the same key gets the same child
	MaxAttempts    int    // 0 = cluster default
	Timeout        time.Duration
}

// Submitter hands a child task to the cluster and returns its ID. The node provides it.
type Submitter func(ctx context.Context, parent RunRef, executionID string, child ChildTask) (string, error)

// ErrNoSubmitter is returned by Submit where the executor was given no Submitter.
var ErrNoSubmitter = errors.New("child tasks are not supported by this executor")

// Submit submits a child task: it inherits this task's execution ID (its trace) and records this
// task as its parent. It returns the child's ID once the cluster has accepted it.
func (c *Context) Submit(child ChildTask) (string, error) {
	if c.submit == nil {
		return "", ErrNoSubmitter
	}
	id, err := c.submit(c, RunRef{TaskID: c.TaskID, Attempt: c.Attempt}, c.ExecutionID, child)
	if err == nil {
		c.mu.Lock()
		c.submitted = append(c.submitted, id)
		c.mu.Unlock()
	}
	return id, err
}

// LastCheckpoint decodes the last checkpoint (from an earlier attempt or this
// one) into v. It reports false when there is none.
func (c *Context) LastCheckpoint(v any) (bool, error) {
	c.mu.Lock()
	data := c.last
	c.mu.Unlock()
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("decode checkpoint: %w", err)
	}
	return true, nil
}

// maxLineBytes splits output that never ends a line, so a run cannot buffer unbounded memory.
const maxLineBytes = 64 << 10

// runOutput turns one run's stdout, stderr and log records into LogLines.
// One mutex serialises all three streams so their relative order survives.
type runOutput struct {
	store   *LogStore // nil: output is dropped
	taskID  string
	attempt int
	node    string
	onErr   func(error)

	mu      sync.Mutex
	partial map[string][]byte // stream -> bytes not yet ended by a newline
	failed  bool
}

func (o *runOutput) emitLocked(stream, level, line string) {
	if o.store == nil || o.failed {
		return
	}
	err := o.store.Append(o.taskID, LogLine{
		TS: time.Now().UTC(), Attempt: o.attempt, Node: o.node,
		Stream: stream, Level: level, Line: line,
	})
	if err != nil {
		// Report once and drop the rest: a broken log disk must not fail the task.
		o.failed = true
		if o.onErr != nil {
			o.onErr(err)
		}
	}
}

func (o *runOutput) emit(stream, level, line string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.emitLocked(stream, level, line)
}

func (o *runOutput) write(stream string, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	buf := append(o.partial[stream], p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		o.emitLocked(stream, "", string(bytes.TrimSuffix(buf[:i], []byte("\r"))))
		buf = buf[i+1:]
	}
	for len(buf) >= maxLineBytes {
		o.emitLocked(stream, "", string(buf[:maxLineBytes]))
		buf = buf[maxLineBytes:]
	}
	if o.partial == nil {
		o.partial = make(map[string][]byte)
	}
	o.partial[stream] = bytes.Clone(buf)
}

// flush emits the unterminated last line of each stream, stdout first.
func (o *runOutput) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, stream := range []string{"stdout", "stderr"} {
		if buf := o.partial[stream]; len(buf) > 0 {
			o.emitLocked(stream, "", string(buf))
		}
	}
	o.partial = nil
}

// streamWriter is the io.Writer a task sees as Stdout or Stderr.
type streamWriter struct {
	out    *runOutput
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.out.write(w.stream, p)
	return len(p), nil
}

// logHandler writes each slog record as one line "message key=value ..." into stream "log".
type logHandler struct {
	out    *runOutput
	prefix string // open groups, as "a.b."
	attrs  string // attributes from WithAttrs, already formatted
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.prefix, a)
		return true
	})
	h.out.emit("log", strings.ToLower(r.Level.String()), b.String())
	return nil
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range attrs {
		appendAttr(&b, h.prefix, a)
	}
	return &logHandler{out: h.out, prefix: h.prefix, attrs: b.String()}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &logHandler{out: h.out, prefix: h.prefix + name + ".", attrs: h.attrs}
}

func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, ga := range a.Value.Group() {
			appendAttr(b, prefix, ga)
		}
		return
	}
	s := a.Value.String()
	if s == "" || strings.ContainsAny(s, " \t\n\r\"=") {
		s = strconv.Quote(s)
	}
	b.WriteByte(' ')
	b.WriteString(prefix + a.Key)
	b.WriteByte('=')
	b.WriteString(s)
}
