package httpapi

import (
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/tracing"
)

// tracedRoutes are the routes whose requests start or continue a trace: the submits, whose
// tasks record it.
var tracedRoutes = map[string]string{
	"/v1/tasks":        "POST /v1/tasks",
	api.PathTasksBatch: "POST " + api.PathTasksBatch,
	api.PathWorkflows:  "POST " + api.PathWorkflows,
}

// traceSubmits wraps h, the whole API, so that a submit continues the W3C trace context of its
// traceparent header (parsed strictly: a malformed one is ignored and a new trace starts) or
// starts a trace, in a server span that the backend's submit finds in the request's context.
// With tr nil (tracing off) it starts no span, and only a valid traceparent is put in the
// context, so the task still records the caller's trace ID for log correlation.
//
// It is the outermost layer: on a follower the span exists before the request is forwarded, and
// the forward carries it to the leader (internal/forward), so a submit through a follower is one
// trace. The span holds the route, never the body or the credential.
func traceSubmits(tr trace.Tracer, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route, ok := tracedRoutes[r.URL.Path]
		if !ok || r.Method != http.MethodPost {
			h.ServeHTTP(w, r)
			return
		}
		ctx := r.Context()
		if sc := tracing.Extract(r.Header); sc.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		}
		if tr == nil {
			h.ServeHTTP(w, r.WithContext(ctx))
			return
		}
		ctx, span := tr.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
			attribute.String("http.request.method", r.Method),
			attribute.String("http.route", r.URL.Path),
		))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r.WithContext(ctx))
		code := sw.code()
		span.SetAttributes(attribute.Int("http.response.status_code", code))
		if code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(code))
		}
	})
}
