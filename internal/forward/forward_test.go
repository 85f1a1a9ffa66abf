package forward

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
)

// twin is a Cluster whose leader is the handler of another Forwarder in the same process.
type twin struct {
	name    string
	leader  atomic.Bool
	index   atomic.Uint64
	waited  atomic.Uint64
	serveAt http.Handler // the leader's routes (leaderRoutes), for Call
	// url, when set, is a server of serveAt that Call sends to instead, so replies stream.
	url        string
	calls      atomic.Int64
	batchCalls atomic.Int64
}

// leaderRoutes are the routes of a leader whose forwarder is lf and whose API is api_.
func leaderRoutes(lf *Forwarder, api_ http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+Path, lf.Serve(api_))
	mux.Handle("POST "+BatchPath, lf.ServeBatch(api_))
	return mux
}

func (c *twin) Name() string                   { return c.name }
func (c *twin) IsLeader() bool                 { return c.leader.Load() }
func (c *twin) Leader() string                 { return "leader" }
func (c *twin) LeaderAddr() string             { return "leader:1" }
func (c *twin) LeaderChanges() <-chan struct{} { return make(chan struct{}) }
func (c *twin) Index() uint64                  { return c.index.Load() }
func (c *twin) Refuse() error                  { return nil }
func (c *twin) WaitIndex(_ context.Context, i uint64) error {
	c.waited.Store(i)
	return nil
}

func (c *twin) Call(ctx context.Context, addr, path string, h http.Header, body []byte) (*http.Response, error) {
	c.calls.Add(1)
	if path == BatchPath {
		c.batchCalls.Add(1)
	}
	if c.url != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+path, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header = h
		return http.DefaultClient.Do(req)
	}
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(body))).WithContext(ctx)
	req.Header = h
	rec := httptest.NewRecorder()
	c.serveAt.ServeHTTP(rec, req)
	return rec.Result(), nil
}

func TestIDsOfOneRequestAreStableAndDistinct(t *testing.T) {
	id := ulid.Make()
	ctx := WithRequestID(context.Background(), id)
	seen := map[string]bool{}
	for i := range 1000 {
		a, b := ID(ctx, i), ID(ctx, i)
		if a != b {
			t.Fatalf("ID(%d) = %s then %s", i, a, b)
		}
		if seen[a] {
			t.Fatalf("ID(%d) = %s repeats", i, a)
		}
		seen[a] = true
		if got, _ := ulid.Parse(a); got.Time() != id.Time() {
			t.Fatalf("ID(%d) has another time", i)
		}
	}
	if ID(ctx, 0) != id.String() {
		t.Fatal("the first ID is not the request's")
	}
	if ID(context.Background(), 0) == ID(context.Background(), 0) {
		t.Fatal("outside a request IDs repeat")
	}
}

// A follower's write runs on the leader's handler with the caller's headers, and the follower
// waits for the index the leader answered with.
func TestAFollowerWriteRunsOnTheLeader(t *testing.T) {
	leader := &twin{name: "leader"}
	leader.leader.Store(true)
	leader.index.Store(42)
	var got *http.Request
	var gotBody string
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Forwarded(r) {
			t.Error("the leader's handler did not see a forwarded request")
		}
		b, _ := io.ReadAll(r.Body)
		got, gotBody = r, string(b)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id": "x"}`)
	})
	lf := New(leader, Options{Retry: time.Second, MaxBody: 1 << 20})
	follower := &twin{name: "f", serveAt: leaderRoutes(lf, handler)}
	ff := New(follower, Options{Retry: time.Second, MaxBody: 1 << 20})

	req := httptest.NewRequest(http.MethodPost, "/v1/tasks?wait=1s", strings.NewReader(`{"type": "echo"}`))
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set(headerURI, "/v1/evil") // a client's own forward headers never reach the leader
	req.RemoteAddr = "192.0.2.1:4000"
	rec := httptest.NewRecorder()
	ff.ServeWrite(rec, req, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("ran on the follower") }))
	if rec.Code != http.StatusCreated || rec.Header().Get(HeaderServedBy) != "leader" || rec.Header().Get(HeaderIndex) != "42" {
		t.Fatalf("reply %d %v", rec.Code, rec.Header())
	}
	if got.Method != http.MethodPost || got.URL.RequestURI() != "/v1/tasks?wait=1s" || got.Header.Get("Authorization") != "Bearer secret" ||
		got.RemoteAddr != "192.0.2.1:4000" || gotBody != `{"type": "echo"}` {
		t.Fatalf("the leader saw %s %s %v from %s: %q", got.Method, got.URL, got.Header, got.RemoteAddr, gotBody)
	}
	if follower.waited.Load() != 42 {
		t.Fatalf("the follower waited for index %d, want 42", follower.waited.Load())
	}
}

// A write that finds no leader on the leader (raft lost leadership under it) is tried again with
// the same request ID, so its objects keep their IDs.
func TestALostLeadershipIsRetriedWithTheSameRequestID(t *testing.T) {
	c := &twin{name: "n"}
	c.leader.Store(true)
	var ids []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ids = append(ids, ID(r.Context(), 0))
		if len(ids) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error": "lost it", "code": "no_leader"}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b)
	})
	f := New(c, Options{Retry: 5 * time.Second, MaxBody: 1 << 20})
	rec := httptest.NewRecorder()
	f.ServeWrite(rec, httptest.NewRequest(http.MethodPost, "/v1/tasks", strings.NewReader("body")), h)
	if rec.Code != http.StatusCreated || rec.Body.String() != "body" || len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("reply %d %q after tries with IDs %v", rec.Code, rec.Body, ids)
	}
}

// Serve refuses a request that is not a write of the API, and answers not_leader off the leader.
func TestServeRefusesWhatIsNotAForwardedWrite(t *testing.T) {
	c := &twin{name: "n"}
	f := New(c, Options{})
	h := f.Serve(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("handler ran") }))
	call := func(method, uri, id string) (int, api.Code) {
		req := httptest.NewRequest(http.MethodPost, Path, nil)
		req.Header.Set(headerMethod, method)
		req.Header.Set(headerURI, uri)
		req.Header.Set(headerRequest, id)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, (&reply{status: rec.Code, body: rec.Body.Bytes()}).code()
	}
	if code, ec := call("POST", "/v1/tasks", ulid.Make().String()); code != 503 || ec != api.CodeNotLeader {
		t.Fatalf("off the leader: %d %s", code, ec)
	}
	c.leader.Store(true)
	for _, tt := range [][3]string{
		{"GET", "/v1/tasks", ulid.Make().String()},
		{"POST", "/debug/pprof/", ulid.Make().String()},
		{"POST", "http://evil/v1/tasks", ulid.Make().String()},
		{"POST", "/v1/tasks", "not-a-ulid"},
	} {
		if code, ec := call(tt[0], tt[1], tt[2]); code != 400 || ec != api.CodeInvalidRequest {
			t.Errorf("%v: %d %s, want 400 invalid_request", tt, code, ec)
		}
	}
}

// Serve runs a forwarded GET only as a consistent read (?consistent not false), on the leader.
func TestServeRunsForwardedConsistentReads(t *testing.T) {
	c := &twin{name: "n"}
	c.leader.Store(true)
	f := New(c, Options{})
	var ran []string
	h := f.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran = append(ran, r.Method+" "+r.URL.RequestURI())
		if !Forwarded(r) {
			t.Error("a forwarded read is not marked forwarded")
		}
	}))
	call := func(uri string) int {
		req := httptest.NewRequest(http.MethodPost, Path, nil)
		req.Header.Set(headerMethod, http.MethodGet)
		req.Header.Set(headerURI, uri)
		req.Header.Set(headerRequest, ulid.Make().String())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, uri := range []string{"/v1/tasks/a?consistent", "/v1/tasks?consistent=true&state=running"} {
		if code := call(uri); code != 200 {
			t.Fatalf("%s: %d", uri, code)
		}
	}
	for _, uri := range []string{"/v1/tasks/a", "/v1/tasks/a?consistent=false", "/v1/tasks/a?consistent=x", "/debug/pprof/?consistent"} {
		if code := call(uri); code != 400 {
			t.Fatalf("%s: %d, want 400", uri, code)
		}
	}
	if len(ran) != 2 || ran[0] != "GET /v1/tasks/a?consistent" {
		t.Fatalf("ran %q", ran)
	}
}
