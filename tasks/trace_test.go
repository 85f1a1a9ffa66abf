package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var testParent = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
	SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, TraceFlags: trace.FlagsSampled, Remote: true,
})

// tracedExecutor runs "traced" (fails with a secret message on attempt 1, starts a span of its
// own on attempt 2) with tracer (nil: tracing off), logging to the returned buffer; seen
// receives the span context each run's Context carries.
func tracedExecutor(t *testing.T, tracer trace.Tracer, seen chan<- trace.SpanContext) (*Executor, *syncBuffer) {
	reg := NewRegistry()
	err := reg.Register(Func(def("traced", "", `null`), func(ctx *Context, _ any) (any, error) {
		seen <- ctx.Span().SpanContext()
		if ctx.Attempt == 1 {
			return nil, errors.New("secret-error-text")
		}
		_, span := ctx.Span().TracerProvider().Tracer("user").Start(ctx, "user.work")
		span.End()
		return "ok", nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: &fakeReporter{}, NodeName: "n1", ReportRetry: time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Tracer: tracer})
	t.Cleanup(e.Close)
	return e, logs
}

// Each attempt of a traced task is a span, a child of the task's trace context, with its node,
// attempt and outcome (and error type, never the message); the task's Context carries it, so the
// task's own span is its child; and the executor's log lines carry the trace ID.
func TestExecutorTracesAttemptsAndLogsTheTraceID(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	seen := make(chan trace.SpanContext, 2)
	e, logs := tracedExecutor(t, tp.Tracer("test"), seen)
	for attempt := 1; attempt <= 2; attempt++ {
		e.Start(Assignment{TaskID: "t1", Type: "traced", Attempt: attempt, Input: json.RawMessage(`null`), Trace: testParent})
		waitIdle(t, e)
		if sc := <-seen; sc.TraceID() != testParent.TraceID() || sc.SpanID() == testParent.SpanID() {
			t.Errorf("attempt %d: the task's Context carries %v, want a span of trace %s", attempt, sc, testParent.TraceID())
		}
	}
	spans := rec.Ended()
	attempts := map[string]sdktrace.ReadOnlySpan{}
	var user sdktrace.ReadOnlySpan
	for _, s := range spans {
		a := map[string]string{}
		for _, kv := range s.Attributes() {
			a[string(kv.Key)] = kv.Value.Emit()
			if strings.Contains(kv.Value.Emit(), "secret-error-text") {
				t.Errorf("span %s attribute %s holds the error message", s.Name(), kv.Key)
			}
		}
		switch s.Name() {
		case "task.attempt":
			if s.Parent().SpanID() != testParent.SpanID() || s.SpanContext().TraceID() != testParent.TraceID() {
				t.Errorf("attempt span's parent = %v, want %v", s.Parent(), testParent)
			}
			if a["taskworker.node"] != "n1" || a["taskworker.task.id"] != "t1" {
				t.Errorf("attempt span attributes = %v", a)
			}
			attempts[a["taskworker.attempt"]+" "+a["taskworker.outcome"]+" "+a["taskworker.error.type"]] = s
		case "user.work":
			user = s
		}
	}
	first, second := attempts["1 failed task_error"], attempts["2 succeeded "]
	if first == nil || second == nil || len(attempts) != 2 {
		t.Fatalf("attempt spans = %v, want 1 failed (task_error), 2 succeeded", attempts)
	}
	if user == nil || user.Parent().SpanID() != second.SpanContext().SpanID() {
		t.Errorf("the task's own span is not its attempt's child")
	}
	if !strings.Contains(logs.String(), `"trace_id":"`+testParent.TraceID().String()+`"`) {
		t.Errorf("no executor log line carries the trace ID:\n%s", logs)
	}
}

// With tracing off the task's Context still names its trace (for the task's own logs), and
// nothing is recorded; an untraced task's names none.
func TestExecutorWithoutTracerCarriesTheTraceContextOnly(t *testing.T) {
	seen := make(chan trace.SpanContext, 2)
	e, logs := tracedExecutor(t, nil, seen)
	e.Start(Assignment{TaskID: "t1", Type: "traced", Attempt: 2, Input: json.RawMessage(`null`), Trace: testParent})
	waitIdle(t, e)
	if sc := <-seen; !sc.Equal(testParent) {
		t.Errorf("Context carries %v, want the task's trace context %v", sc, testParent)
	}
	e.Start(Assignment{TaskID: "t2", Type: "traced", Attempt: 2, Input: json.RawMessage(`null`)})
	waitIdle(t, e)
	if sc := <-seen; sc.IsValid() {
		t.Errorf("an untraced task's Context carries %v", sc)
	}
	if strings.Contains(logs.String(), `"task":"t2"`) && strings.Contains(logs.String(), `"task":"t2","attempt":2,"type":"traced","trace_id"`) {
		t.Errorf("an untraced task's log lines carry a trace ID:\n%s", logs)
	}
}
