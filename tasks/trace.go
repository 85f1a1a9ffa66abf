package tasks

import (
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/internal/tracing"
)

// endSpan ends an attempt's span with its outcome and, for an error, the error's type: never its
// message, which may hold what the task was given.
func endSpan(span trace.Span, outcome string, terr *TaskError) {
	span.SetAttributes(tracing.AttrOutcome.String(outcome))
	if terr != nil {
		span.SetAttributes(tracing.AttrError.String(terr.Type))
		if outcome == OutcomeFailed.String() {
			span.SetStatus(codes.Error, terr.Type)
		}
	}
	span.End()
}

// Span is the attempt's span, for the task's own spans and events: a non-recording span when
// tracing is off or the task is not traced (its SpanContext still names the task's trace when
// the submit carried one).
func (c *Context) Span() trace.Span { return trace.SpanFromContext(c) }
