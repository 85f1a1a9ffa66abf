package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// A submit whose context carries a span sends that span's W3C trace context; one without sends
// none.
func TestSubmitSendsTheContextsTraceparent(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Traceparent")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id": "t1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}`))
	}))
	defer srv.Close()
	c := New(srv.URL)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, TraceFlags: trace.FlagsSampled,
	})
	task, _, err := c.Submit(trace.ContextWithSpanContext(context.Background(), sc), SubmitRequest{Type: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if h := <-got; h != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Errorf("traceparent = %q", h)
	}
	if task.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("TraceID = %q", task.TraceID)
	}
	if _, _, err := c.Submit(context.Background(), SubmitRequest{Type: "echo"}); err != nil {
		t.Fatal(err)
	}
	if h := <-got; h != "" {
		t.Errorf("a context without a span sent traceparent %q", h)
	}
}
