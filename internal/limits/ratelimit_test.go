package limits

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"golang.org/x/time/rate"
)

func doFrom(h http.Handler, remote, path string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestRateLimiterRefusesWith429RetryAfterAndCode(t *testing.T) {
	clock := newFakeClock()
	rl := NewRateLimiter(RateLimitConfig{Rate: 1, Burst: 2, Now: clock.Now})
	h := rl.Middleware(okHandler())

	for i := range 2 {
		if w := doFrom(h, "10.0.0.1:1000", "/v1/tasks"); w.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, w.Code)
		}
	}
	w := doFrom(h, "10.0.0.1:1001", "/v1/tasks") // another port, same client
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("request over the burst: %d, want 429", w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Fatalf("Retry-After %q, want 1", got)
	}
	var e api.Error
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != CodeRateLimited || e.Message == "" {
		t.Fatalf("body %q: %+v, %v; want code rate_limited and a message", w.Body, e, err)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}

	// Another client has its own bucket.
	if w := doFrom(h, "10.0.0.2:1000", "/v1/tasks"); w.Code != http.StatusOK {
		t.Fatalf("other client: %d", w.Code)
	}
	// A refused request did not consume the next token: one second buys exactly one request.
	clock.Advance(time.Second)
	if w := doFrom(h, "10.0.0.1:1000", "/v1/tasks"); w.Code != http.StatusOK {
		t.Fatalf("after the refill: %d", w.Code)
	}
	if w := doFrom(h, "10.0.0.1:1000", "/v1/tasks"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("second request after one second's refill: %d, want 429", w.Code)
	}
}

func TestRateLimiterRetryAfterRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		rate rate.Limit
		want string
	}{
		{rate: 0.25, want: "4"}, // one token per 4 s
		{rate: 0.4, want: "3"},  // 2.5 s rounds up
		{rate: 50, want: "1"},   // 20 ms is still "1": 0 would invite an immediate retry
	} {
		t.Run(fmt.Sprint(tc.rate), func(t *testing.T) {
			clock := newFakeClock()
			h := NewRateLimiter(RateLimitConfig{Rate: tc.rate, Burst: 1, Now: clock.Now}).Middleware(okHandler())
			doFrom(h, "10.0.0.1:1", "/")
			w := doFrom(h, "10.0.0.1:1", "/")
			if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != tc.want {
				t.Fatalf("got %d Retry-After %q, want 429 and %s", w.Code, w.Header().Get("Retry-After"), tc.want)
			}
		})
	}
}

func TestRateLimiterExemptPaths(t *testing.T) {
	clock := newFakeClock()
	rl := NewRateLimiter(RateLimitConfig{Rate: 1, Burst: 1, Now: clock.Now, ExemptPaths: []string{"/v1/health", "/metrics"}})
	h := rl.Middleware(okHandler())
	doFrom(h, "10.0.0.1:1", "/v1/tasks")
	for range 10 {
		for _, p := range []string{"/v1/health", "/metrics"} {
			if w := doFrom(h, "10.0.0.1:1", p); w.Code != http.StatusOK {
				t.Fatalf("exempt %s: %d", p, w.Code)
			}
		}
	}
	if w := doFrom(h, "10.0.0.1:1", "/v1/tasks"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("limited path after exempt ones: %d, want 429", w.Code)
	}
	if w := doFrom(h, "10.0.0.1:1", "/v1/health/x"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("exemption is by exact path, but /v1/health/x got %d", w.Code)
	}
}

func TestRateLimiterForgetsIdleClients(t *testing.T) {
	clock := newFakeClock()
	rl := NewRateLimiter(RateLimitConfig{Rate: 10, Burst: 10, IdleTTL: time.Minute, Now: clock.Now})
	for i := range 100 {
		rl.Allow(fmt.Sprintf("10.0.0.%d", i))
	}
	if rl.Len() != 100 {
		t.Fatalf("tracking %d clients, want 100", rl.Len())
	}
	clock.Advance(30 * time.Second)
	rl.Allow("10.0.1.1") // active since: must survive the next sweep
	clock.Advance(31 * time.Second)
	rl.Allow("10.0.1.2")
	if got := rl.Len(); got != 2 {
		t.Fatalf("after the first 100 idled past the TTL: tracking %d clients, want 2", got)
	}
}

func TestRateLimiterTableIsBounded(t *testing.T) {
	clock := newFakeClock()
	rl := NewRateLimiter(RateLimitConfig{Rate: 1, Burst: 1, MaxClients: 50, Now: clock.Now})
	for i := range 10_000 {
		rl.Allow(fmt.Sprintf("2001:db8::%x", i))
		if rl.Len() > 50 {
			t.Fatalf("tracking %d clients after %d, want at most 50", rl.Len(), i+1)
		}
	}
	// The most recent client is kept (and still limited).
	if ok, _ := rl.Allow("2001:db8::270f"); ok {
		t.Fatal("the most recently seen client was forgotten")
	}
}

func TestRateLimiterDefaultIdleTTLCoversRefill(t *testing.T) {
	rl := NewRateLimiter(RateLimitConfig{Rate: 1, Burst: 600})
	if rl.ttl != 10*time.Minute {
		t.Fatalf("idle TTL %v, want the 10 min the bucket takes to refill", rl.ttl)
	}
	if rl := NewRateLimiter(RateLimitConfig{}); rl.ttl != minIdleTTL || rl.rate != DefaultRate || rl.burst != DefaultBurst {
		t.Fatalf("defaults: ttl %v rate %v burst %d", rl.ttl, rl.rate, rl.burst)
	}
}

// BenchmarkRateLimitMiddleware is the cost the limiter adds to each request, compared with the bare
// handler, with one client and with many.
func BenchmarkRateLimitMiddleware(b *testing.B) {
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	run := func(b *testing.B, h http.Handler, clients int) {
		reqs := make([]*http.Request, clients)
		for i := range reqs {
			reqs[i] = httptest.NewRequest(http.MethodGet, "/v1/tasks", nil)
			reqs[i].RemoteAddr = fmt.Sprintf("10.%d.%d.%d:4000", i>>16&255, i>>8&255, i&255)
		}
		w := httptest.NewRecorder()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			h.ServeHTTP(w, reqs[i%clients])
		}
	}
	b.Run("bare", func(b *testing.B) { run(b, noop, 1) })
	for _, clients := range []int{1, 1000, 20_000} {
		b.Run(fmt.Sprintf("limited/clients=%d", clients), func(b *testing.B) {
			rl := NewRateLimiter(RateLimitConfig{Rate: rate.Inf})
			run(b, rl.Middleware(noop), clients)
		})
	}
	b.Run("limited/parallel", func(b *testing.B) {
		h := NewRateLimiter(RateLimitConfig{Rate: rate.Inf}).Middleware(noop)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := httptest.NewRequest(http.MethodGet, "/v1/tasks", nil)
			r.RemoteAddr = "10.0.0.1:4000"
			w := httptest.NewRecorder()
			for pb.Next() {
				h.ServeHTTP(w, r)
			}
		})
	})
}
