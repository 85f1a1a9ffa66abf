package endpoint

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing"
)

// traceOf is the trace context a task submitted under ctx records: the span of the submit
// request (internal/httpapi's, or the caller's own traceparent with tracing off), or of the
// parent task's attempt for a child task. Nil without one.
func traceOf(ctx context.Context) *fsm.TraceContext {
	s, ok := tracing.Store(trace.SpanContextFromContext(ctx))
	if !ok {
		return nil
	}
	tc := fsm.TraceContext(s)
	return &tc
}

// traceIDOf is the hex trace ID of a record's trace context, "" for none.
func traceIDOf(tc *fsm.TraceContext) string {
	if tc == nil {
		return ""
	}
	return tracing.Stored(*tc).Hex()
}
