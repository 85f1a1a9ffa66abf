package tracing

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

func TestParseTraceparentAcceptsOnlyAWellFormedVersion00Header(t *testing.T) {
	const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	sc, ok := ParseTraceparent(good)
	if !ok || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.SpanID().String() != "00f067aa0ba902b7" || !sc.IsSampled() || !sc.IsRemote() {
		t.Fatalf("ParseTraceparent(%q) = %v, %v", good, sc, ok)
	}
	if got := Traceparent(sc); got != good {
		t.Errorf("Traceparent = %q, want %q", got, good)
	}
	if sc, ok := ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"); !ok || sc.IsSampled() {
		t.Errorf("unsampled header: %v, %v", sc, ok)
	}
	for _, bad := range []string{
		"",
		"garbage",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // a version this build does not read strictly
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // the forbidden version
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // uppercase
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // all-zero trace ID
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // all-zero span ID
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx", // trailing data
		"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",    // dashes misplaced
		"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",    // not hex
		"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
		" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
		strings.Repeat("0", 100000),
	} {
		if sc, ok := ParseTraceparent(bad); ok || sc.IsValid() {
			t.Errorf("ParseTraceparent(%.60q) accepted: %v", bad, sc)
		}
	}
}

func TestExtractIgnoresTwoTraceparentsAndABadTracestate(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := http.Header{}
	h.Add("traceparent", tp)
	h.Add("traceparent", "00-11111111111111111111111111111111-2222222222222222-01")
	if sc := Extract(h); sc.IsValid() {
		t.Errorf("two traceparent headers: extracted %v", sc)
	}
	h = http.Header{}
	h.Set("traceparent", tp)
	h.Set("tracestate", "vendor=,,,=broken")
	sc := Extract(h)
	if !sc.IsValid() || sc.TraceState().Len() != 0 {
		t.Errorf("bad tracestate: %v, state %q", sc, sc.TraceState())
	}
	h.Set("tracestate", "congo=t61rcWkgMzE")
	sc = Extract(h)
	if sc.TraceState().Get("congo") != "t61rcWkgMzE" {
		t.Errorf("tracestate = %q", sc.TraceState())
	}
	out := http.Header{}
	out.Set("traceparent", "00-11111111111111111111111111111111-2222222222222222-01")
	Inject(out, sc)
	if out.Get("traceparent") != tp || out.Get("tracestate") != "congo=t61rcWkgMzE" {
		t.Errorf("inject: %v", out)
	}
}

func TestStoredRoundTripsASpanContext(t *testing.T) {
	sc, _ := ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	s, ok := Store(sc)
	if !ok || s.Hex() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("Store = %+v, %v", s, ok)
	}
	back := s.SpanContext()
	if back.TraceID() != sc.TraceID() || back.SpanID() != sc.SpanID() || !back.IsSampled() {
		t.Errorf("SpanContext = %v, want %v", back, sc)
	}
	if _, ok := Store((Stored{}).SpanContext()); ok {
		t.Error("a zero Stored is a valid span context")
	}
	if (Stored{}).Context(context.Background()) != context.Background() {
		t.Error("a zero Stored changed the context")
	}
}

func TestEnabledNeedsAnEndpointAndNoOptOut(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{}, false},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, false},
	} {
		if got := Enabled(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("Enabled(%v) = %v, want %v", c.env, got, c.want)
		}
	}
	p, err := New(context.Background(), func(string) string { return "" }, "n1", "dev")
	if err != nil || p != nil || p.Tracer() != nil || p.Shutdown(context.Background()) != nil {
		t.Errorf("New without configuration = %v, %v: want tracing off", p, err)
	}
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
	if _, err := New(context.Background(), func(k string) string { return env[k] }, "n1", "dev"); err == nil {
		t.Error("New accepted the grpc protocol it cannot speak")
	}
}

// A link template is an http or https URL with a host and {trace_id}: anything that could make
// the console's link run script, load data or point nowhere is refused.
func TestCheckURLTemplateAcceptsOnlyHTTPLinksWithTheTraceID(t *testing.T) {
	for _, ok := range []string{
		"http://jaeger:16686/trace/{trace_id}",
		"https://tempo.example.com/explore?traceId={trace_id}&x=1",
		"HTTPS://grafana.example.com/d/x?var-trace={trace_id}",
	} {
		if err := CheckURLTemplate(ok); err != nil {
			t.Errorf("CheckURLTemplate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"",
		"http://jaeger:16686/trace/",         // no placeholder
		"javascript:alert(1)//{trace_id}",    // script
		"data:text/html,<script>{trace_id}",  // data
		"/trace/{trace_id}",                  // relative
		"//evil.example/{trace_id}",          // scheme-relative
		"http:///{trace_id}",                 // no host
		"http://user:pass@jaeger/{trace_id}", // credentials in the link
		"ftp://jaeger/{trace_id}",            // another scheme
		"http://jae ger/{trace_id}",          // not a URL
		" javascript:alert(1)//{trace_id}",
	} {
		if err := CheckURLTemplate(bad); err == nil {
			t.Errorf("CheckURLTemplate(%q) accepted", bad)
		}
	}
}

// An oversized or malformed tracestate is dropped and the traceparent kept; it never reaches a
// task.
func TestExtractDropsAnOversizedTracestate(t *testing.T) {
	h := http.Header{}
	h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Set("tracestate", "a="+strings.Repeat("x", maxTracestate))
	sc := Extract(h)
	if !sc.IsValid() || sc.TraceState().Len() != 0 {
		t.Errorf("oversized tracestate: valid %v, state %d bytes", sc.IsValid(), len(sc.TraceState().String()))
	}
}

func FuzzParseTraceparent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("00-00000000000000000000000000000000-0000000000000000-00")
	f.Add("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Fuzz(func(t *testing.T, h string) {
		sc, ok := ParseTraceparent(h)
		if !ok {
			if sc.IsValid() {
				t.Fatalf("%q: refused but valid", h)
			}
			return
		}
		// What it accepts is exactly what it writes back.
		if got := Traceparent(sc); got[:53] != h[:53] || !sc.IsValid() {
			t.Fatalf("%q: accepted, written back as %q", h, got)
		}
	})
}
