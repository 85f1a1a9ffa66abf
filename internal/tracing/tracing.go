// Package tracing owns a node's OpenTelemetry tracing: the tracer provider and its OTLP/HTTP
// exporter, configured by the standard OTEL_* environment variables and off when none names an
// exporter endpoint; the strict reading and writing of W3C trace context headers; and the
// conversion between a span context and the trace context a task record keeps (Stored, which
// fsm.TraceContext converts to).
//
// A trace context is for correlation only: nothing in the cluster decides anything by it, and
// no span attribute holds a task's input, output, a token or a secret.
package tracing

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// InstrumentationName names the tracer of taskworker's spans.
const InstrumentationName = "github.com/taskworker/taskworker"

// Span attribute keys of taskworker's own spans.
const (
	AttrTaskID   = attribute.Key("taskworker.task.id")
	AttrTaskType = attribute.Key("taskworker.task.type")
	AttrNode     = attribute.Key("taskworker.node")
	AttrAttempt  = attribute.Key("taskworker.attempt")
	AttrOutcome  = attribute.Key("taskworker.outcome")
	AttrError    = attribute.Key("taskworker.error.type")
	AttrCount    = attribute.Key("taskworker.count")
	AttrCommand  = attribute.Key("taskworker.command")
)

// Provider is a node's tracer provider. The zero value and nil are tracing off: Tracer returns
// nil and Shutdown does nothing.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// Enabled reports whether the environment turns tracing on: an OTLP endpoint is named
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), the SDK is not disabled
// (OTEL_SDK_DISABLED=true) and the traces exporter is not "none" (OTEL_TRACES_EXPORTER).
func Enabled(getenv func(string) string) bool {
	if v, _ := strconv.ParseBool(strings.TrimSpace(getenv("OTEL_SDK_DISABLED"))); v {
		return false
	}
	switch strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")) {
	case "", "otlp":
	default:
		return false // "none", or an exporter this build does not have
	}
	return strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) != "" ||
		strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) != ""
}

// New returns the node's provider as the environment configures it: nil (off) unless Enabled;
// else an OTLP/HTTP exporter (its endpoint, headers, timeout and compression from
// OTEL_EXPORTER_OTLP_*), the sampler from OTEL_TRACES_SAMPLER (parent-based, always on, by
// default), batching from OTEL_BSP_*, and a resource with service.name "taskworker" (or
// OTEL_SERVICE_NAME), service.version, service.instance.id and taskworker.node (the node's name),
// and OTEL_RESOURCE_ATTRIBUTES. OTEL_EXPORTER_OTLP_PROTOCOL, when set, must be http/protobuf.
//
// getenv supplies what decides on and where to: the variables of Enabled, the endpoint,
// OTEL_SERVICE_NAME and OTEL_BSP_SCHEDULE_DELAY, so that nodes in one process can differ; the
// SDK reads the others (headers, sampler, queue sizes, resource attributes) from the process's
// environment itself.
func New(ctx context.Context, getenv func(string) string, node, version string) (*Provider, error) {
	if !Enabled(getenv) {
		return nil, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		if p := strings.TrimSpace(getenv(k)); p != "" && p != "http/protobuf" {
			return nil, fmt.Errorf("%s=%q: taskworker exports traces over OTLP/HTTP only (http/protobuf)", k, p)
		}
	}
	// The endpoint is read from getenv (the exporter would read only the process's environment);
	// the other OTEL_EXPORTER_OTLP_* settings from the process's, by the exporter itself.
	endpoint := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
	if endpoint == "" {
		endpoint = strings.TrimRight(strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")), "/") + "/v1/traces"
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("OTLP traces endpoint %q: want an http:// or https:// URL", endpoint)
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	service := strings.TrimSpace(getenv("OTEL_SERVICE_NAME"))
	if service == "" {
		service = "taskworker"
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(
			attribute.String("service.version", version),
			attribute.String("service.instance.id", node),
			AttrNode.String(node),
		),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, from the process's environment
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	var batch []sdktrace.BatchSpanProcessorOption
	if v := strings.TrimSpace(getenv("OTEL_BSP_SCHEDULE_DELAY")); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("OTEL_BSP_SCHEDULE_DELAY=%q: want milliseconds", v)
		}
		batch = append(batch, sdktrace.WithBatchTimeout(time.Duration(ms)*time.Millisecond))
	}
	return &Provider{tp: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, batch...), sdktrace.WithResource(res))}, nil
}

// Tracer is the node's tracer, nil when tracing is off: callers skip their spans then, so
// tracing off costs a nil check.
func (p *Provider) Tracer() trace.Tracer {
	if p == nil || p.tp == nil {
		return nil
	}
	return p.tp.Tracer(InstrumentationName)
}

// Shutdown exports the spans still queued and stops the exporter, within ctx.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || p.tp == nil {
		return nil
	}
	return p.tp.Shutdown(ctx)
}

// Header names of the W3C trace context.
const (
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
)

// maxTracestate caps the tracestate header kept (W3C: 32 members of at most 256 bytes each).
const maxTracestate = 512

// ParseTraceparent reads a W3C traceparent header strictly: version 00, exactly
// "00-<32 hex>-<16 hex>-<2 hex>" in lowercase, IDs not all zero. Anything else is not a trace
// context (false), and the caller starts a new trace instead.
func ParseTraceparent(h string) (trace.SpanContext, bool) {
	if len(h) != 55 || h[0] != '0' || h[1] != '0' || h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if !lowerHex(h[3:35], tid[:]) || !lowerHex(h[36:52], sid[:]) || !lowerHex(h[53:55], flags[:]) {
		return trace.SpanContext{}, false
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags[0]) & trace.FlagsSampled, Remote: true,
	})
	return sc, sc.IsValid()
}

func lowerHex(s string, dst []byte) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	_, err := hex.Decode(dst, []byte(s))
	return err == nil
}

// Traceparent is sc's W3C traceparent header, "" for an invalid sc.
func Traceparent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// Extract is the trace context of a request's traceparent and tracestate headers; an invalid
// context (no header, a malformed one, two of them) when there is none to continue. A malformed
// tracestate is dropped, and the traceparent kept.
func Extract(h http.Header) trace.SpanContext {
	tp := h.Values(HeaderTraceparent)
	if len(tp) != 1 {
		return trace.SpanContext{}
	}
	sc, ok := ParseTraceparent(tp[0])
	if !ok {
		return trace.SpanContext{}
	}
	if ts := h.Values(HeaderTracestate); len(ts) > 0 {
		joined := strings.Join(ts, ",")
		if len(joined) <= maxTracestate {
			if state, err := trace.ParseTraceState(joined); err == nil {
				sc = sc.WithTraceState(state)
			}
		}
	}
	return sc
}

// Inject sets h's traceparent and tracestate to sc's, replacing any; it removes them for an
// invalid sc.
func Inject(h http.Header, sc trace.SpanContext) {
	h.Del(HeaderTraceparent)
	h.Del(HeaderTracestate)
	if !sc.IsValid() {
		return
	}
	h.Set(HeaderTraceparent, Traceparent(sc))
	if ts := sc.TraceState().String(); ts != "" {
		h.Set(HeaderTracestate, ts)
	}
}

// Stored is the trace context a task record keeps: fsm.TraceContext converts to it and back
// (the same fields), so this package needs nothing of the FSM.
type Stored struct {
	TraceID [16]byte
	SpanID  [8]byte
	Flags   byte
}

// Store is the trace context a task record keeps for sc; false for an invalid sc.
func Store(sc trace.SpanContext) (Stored, bool) {
	if !sc.IsValid() {
		return Stored{}, false
	}
	return Stored{TraceID: sc.TraceID(), SpanID: sc.SpanID(), Flags: byte(sc.TraceFlags() & trace.FlagsSampled)}, true
}

// SpanContext is the remote span context s names: the parent of the spans of the task's later
// phases, on whichever node runs them. Invalid for a zero s.
func (s Stored) SpanContext() trace.SpanContext {
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: s.TraceID, SpanID: s.SpanID, TraceFlags: trace.TraceFlags(s.Flags) & trace.FlagsSampled, Remote: true,
	})
}

// Hex is s's trace ID in hex, "" for none.
func (s Stored) Hex() string {
	if s.TraceID == [16]byte{} {
		return ""
	}
	return trace.TraceID(s.TraceID).String()
}

// Context is ctx carrying s as its remote parent; ctx itself for an invalid s.
func (s Stored) Context(ctx context.Context) context.Context {
	if sc := s.SpanContext(); sc.IsValid() {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

// PhaseSpan records a finished span of one of a task's phases that happened between start and
// end (its placement, say), as a child of the task's trace context, with attrs. It does nothing
// when tr is nil or the task has no trace context.
func PhaseSpan(tr trace.Tracer, s Stored, name string, start, end time.Time, attrs ...attribute.KeyValue) {
	if tr == nil || !s.SpanContext().IsValid() {
		return
	}
	_, span := tr.Start(s.Context(context.Background()), name,
		trace.WithTimestamp(start), trace.WithAttributes(attrs...), trace.WithSpanKind(trace.SpanKindInternal))
	span.End(trace.WithTimestamp(end))
}

// TraceIDPlaceholder is what a trace link template (--trace-url-template) has in place of the
// trace ID.
const TraceIDPlaceholder = "{trace_id}"

// CheckURLTemplate validates a trace link template: an absolute http or https URL with a host
// and TraceIDPlaceholder in it. Anything else (javascript:, data:, a relative path) could turn
// the console's link into something other than a link to a trace viewer.
func CheckURLTemplate(tmpl string) error {
	if !strings.Contains(tmpl, TraceIDPlaceholder) {
		return fmt.Errorf("trace URL template %q: it must contain %s", tmpl, TraceIDPlaceholder)
	}
	u, err := url.Parse(strings.ReplaceAll(tmpl, TraceIDPlaceholder, "0af7651916cd43dd8448eb211c80319c"))
	if err != nil {
		return fmt.Errorf("trace URL template %q: %v", tmpl, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return fmt.Errorf("trace URL template %q: want an http:// or https:// URL with a host and no user info", tmpl)
	}
	return nil
}
