package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// gate holds the leader's handling of every request to /v1/gate until open is closed (or the
// request's context ends), so a test can keep a follower's batch calls in flight.
type gate struct {
	held atomic.Int64
	open chan struct{}
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/gate" {
			next.ServeHTTP(w, r)
			return
		}
		g.held.Add(1)
		select {
		case <-g.open:
			w.WriteHeader(http.StatusCreated)
		case <-r.Context().Done():
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
}

// pair is a leader and a follower whose forwards reach the leader's routes.
type pair struct {
	leader, follower *twin
	lf, ff           *Forwarder
}

func newPair(t *testing.T, api_ http.Handler) *pair {
	t.Helper()
	p := &pair{leader: &twin{name: "leader"}}
	p.leader.leader.Store(true)
	p.leader.index.Store(7)
	p.lf = New(p.leader, Options{Retry: 5 * time.Second, MaxBody: 4 << 20})
	p.follower = &twin{name: "f", serveAt: leaderRoutes(p.lf, api_)}
	p.ff = New(p.follower, Options{Retry: 5 * time.Second, MaxBody: 4 << 20})
	return p
}

// write sends a write to the follower, which must forward it, and hands back its reply.
func (p *pair) write(t *testing.T, ctx context.Context, uri, auth, body string) <-chan *httptest.ResponseRecorder {
	ch := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		req := httptest.NewRequest(http.MethodPost, uri, strings.NewReader(body)).WithContext(ctx)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		p.ff.ServeWrite(rec, req, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("ran on the follower") }))
		ch <- rec
	}()
	return ch
}

// fillInFlight occupies the follower's batch calls with writes the gate holds, so the next
// forwards queue; it returns their replies.
func (p *pair) fillInFlight(t *testing.T, g *gate) []<-chan *httptest.ResponseRecorder {
	t.Helper()
	var held []<-chan *httptest.ResponseRecorder
	for i := range maxInFlight {
		held = append(held, p.write(t, context.Background(), "/v1/gate", "", ""))
		until(t, "a batch call held by the leader", func() bool { return g.held.Load() == int64(i+1) })
	}
	return held
}

func (b *batcher) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := localcluster.Until(30*time.Second, time.Millisecond, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func recv(t *testing.T, ch <-chan *httptest.ResponseRecorder) *httptest.ResponseRecorder {
	t.Helper()
	select {
	case rec := <-ch:
		return rec
	case <-time.After(30 * time.Second):
		t.Fatal("no reply")
		return nil
	}
}

func created(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusCreated)
}

// Forwards made while the follower's batch calls are in flight go out together, in one call.
func TestConcurrentForwardsGoInOneBatch(t *testing.T) {
	g := newGate()
	p := newPair(t, g.wrap(http.HandlerFunc(created)))
	held := p.fillInFlight(t, g)
	var queued []<-chan *httptest.ResponseRecorder
	for range 48 {
		queued = append(queued, p.write(t, context.Background(), "/v1/tasks", "", `{"type": "echo"}`))
	}
	until(t, "48 forwards queued", func() bool { return p.ff.batch.queued() == 48 })
	close(g.open)
	for _, ch := range append(held, queued...) {
		if rec := recv(t, ch); rec.Code != http.StatusCreated {
			t.Fatalf("reply %d %s", rec.Code, rec.Body)
		}
	}
	if n := p.follower.batchCalls.Load(); n != 3 {
		t.Fatalf("%d batch calls for 2 held forwards and 48 queued behind them, want 3", n)
	}
	if calls, forwards := p.ff.Batched(); calls != 3 || forwards != 50 {
		t.Fatalf("Batched() = %d calls, %d forwards; want 3, 50", calls, forwards)
	}
}

// echo answers by the request's path: 201 for ok, 403 for denied, 400 for bad, with the caller's
// credential, body and request ID echoed in the body and the path in a header.
func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Test", r.URL.Path)
	switch r.URL.Path {
	case "/v1/tasks/denied":
		httpapi.WriteError(w, api.Errorf(api.CodeForbidden, "denied for %s", r.Header.Get("Authorization")))
	case "/v1/tasks/bad":
		httpapi.WriteError(w, api.Errorf(api.CodeInvalidInput, "bad %s", b))
	default:
		httpapi.WriteJSON(w, http.StatusCreated, map[string]string{"auth": r.Header.Get("Authorization"), "body": string(b), "id": ID(r.Context(), 0)})
	}
}

// Each forward of a batch gets its own reply: its status, headers and body, run with its own
// credential and request ID.
func TestEachForwardOfABatchGetsItsOwnReply(t *testing.T) {
	g := newGate()
	p := newPair(t, g.wrap(http.HandlerFunc(echo)))
	held := p.fillInFlight(t, g)
	type want struct {
		path   string
		status int
		code   api.Code
	}
	wants := []want{
		{"/v1/tasks/ok", 201, ""}, {"/v1/tasks/denied", 403, api.CodeForbidden}, {"/v1/tasks/bad", 400, api.CodeInvalidInput},
		{"/v1/tasks/ok2", 201, ""}, {"/v1/tasks/denied", 403, api.CodeForbidden},
	}
	var chans []<-chan *httptest.ResponseRecorder
	for i, w := range wants {
		chans = append(chans, p.write(t, context.Background(), w.path, "Bearer "+string(rune('a'+i)), "body "+string(rune('a'+i))))
	}
	until(t, "the forwards queued", func() bool { return p.ff.batch.queued() == len(wants) })
	close(g.open)
	for _, ch := range held {
		recv(t, ch)
	}
	ids := map[string]bool{}
	for i, w := range wants {
		rec := recv(t, chans[i])
		rep := &reply{status: rec.Code, body: rec.Body.Bytes()}
		if rec.Code != w.status || rep.code() != w.code || rec.Header().Get("X-Test") != w.path ||
			rec.Header().Get(HeaderIndex) != "7" || rec.Header().Get(HeaderServedBy) != "leader" {
			t.Fatalf("%s: reply %d %v %s", w.path, rec.Code, rec.Header(), rec.Body)
		}
		if w.status != 201 {
			continue
		}
		var got map[string]string
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got["auth"] != "Bearer "+string(rune('a'+i)) || got["body"] != "body "+string(rune('a'+i)) || ids[got["id"]] {
			t.Fatalf("%s: the leader saw %v", w.path, got)
		}
		ids[got["id"]] = true
	}
	if n := p.follower.batchCalls.Load(); n != 3 {
		t.Fatalf("%d batch calls, want 3", n)
	}
	if p.follower.waited.Load() != 7 {
		t.Fatalf("the follower waited for index %d, want 7", p.follower.waited.Load())
	}
}

// A forward whose request in a batch met a leader that lost leadership is tried again alone, with
// its request ID; the others of its batch are answered once. A batch the node refuses whole as
// not the leader is retried request by request.
func TestANotLeaderReplyInABatchIsRetriedPerRequest(t *testing.T) {
	g := newGate()
	var mu sync.Mutex
	tries := map[string][]string{}
	p := newPair(t, g.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tries[r.URL.Path] = append(tries[r.URL.Path], ID(r.Context(), 0))
		n := len(tries[r.URL.Path])
		mu.Unlock()
		if r.URL.Path == "/v1/tasks/flaky" && n == 1 {
			httpapi.WriteError(w, api.Errorf(api.CodeNoLeader, "lost leadership"))
			return
		}
		created(w, r)
	})))
	held := p.fillInFlight(t, g)
	paths := []string{"/v1/tasks/a", "/v1/tasks/flaky", "/v1/tasks/b"}
	var chans []<-chan *httptest.ResponseRecorder
	for _, path := range paths {
		chans = append(chans, p.write(t, context.Background(), path, "", "x"))
	}
	until(t, "the forwards queued", func() bool { return p.ff.batch.queued() == len(paths) })
	close(g.open)
	for _, ch := range append(held, chans...) {
		if rec := recv(t, ch); rec.Code != http.StatusCreated {
			t.Fatalf("reply %d %s", rec.Code, rec.Body)
		}
	}
	mu.Lock()
	if len(tries["/v1/tasks/a"]) != 1 || len(tries["/v1/tasks/b"]) != 1 {
		t.Errorf("the others were tried %d and %d times, want once", len(tries["/v1/tasks/a"]), len(tries["/v1/tasks/b"]))
	}
	if f := tries["/v1/tasks/flaky"]; len(f) != 2 || f[0] != f[1] {
		t.Errorf("the flaky one was tried with IDs %v, want twice the same", f)
	}
	mu.Unlock()

	p.leader.leader.Store(false)
	before := p.follower.batchCalls.Load()
	ch := p.write(t, context.Background(), "/v1/tasks/c", "", "x")
	until(t, "a batch refused as not the leader, and tried again", func() bool { return p.follower.batchCalls.Load() >= before+2 })
	p.leader.leader.Store(true)
	if rec := recv(t, ch); rec.Code != http.StatusCreated {
		t.Fatalf("after not_leader: reply %d %s", rec.Code, rec.Body)
	}
}

// A forward on an idle follower goes to the leader at once, alone.
func TestAnIdleForwardGoesAtOnce(t *testing.T) {
	g := newGate()
	p := newPair(t, g.wrap(http.HandlerFunc(created)))
	ch := p.write(t, context.Background(), "/v1/gate", "", "")
	until(t, "the forward reached the leader", func() bool { return g.held.Load() == 1 })
	close(g.open)
	if rec := recv(t, ch); rec.Code != http.StatusCreated {
		t.Fatalf("reply %d %s", rec.Code, rec.Body)
	}
	if calls, forwards := p.ff.Batched(); calls != 1 || forwards != 1 {
		t.Fatalf("Batched() = %d, %d; want one call of one", calls, forwards)
	}
}

// The leader streams each reply of a batch as it completes: a write that takes long does not
// hold the replies of the others.
func TestASlowWriteDoesNotHoldTheOthersReplies(t *testing.T) {
	g := newGate()
	slow := make(chan struct{})
	p := newPair(t, g.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/tasks/slow" {
			<-slow
		}
		created(w, r)
	})))
	srv := httptest.NewServer(p.follower.serveAt)
	defer srv.Close()
	var once sync.Once
	release := func() { once.Do(func() { close(slow) }) }
	defer release() // before the server closes: it waits for its handlers
	p.follower.url = srv.URL
	held := p.fillInFlight(t, g)
	slowReply := p.write(t, context.Background(), "/v1/tasks/slow", "", "x")
	fast := p.write(t, context.Background(), "/v1/tasks/fast", "", "x")
	until(t, "the forwards queued", func() bool { return p.ff.batch.queued() == 2 })
	close(g.open)
	for _, ch := range held {
		recv(t, ch)
	}
	if rec := recv(t, fast); rec.Code != http.StatusCreated {
		t.Fatalf("fast: reply %d %s", rec.Code, rec.Body)
	}
	release()
	if rec := recv(t, slowReply); rec.Code != http.StatusCreated {
		t.Fatalf("slow: reply %d %s", rec.Code, rec.Body)
	}
	if n := p.follower.batchCalls.Load(); n != 3 {
		t.Fatalf("%d batch calls, want 3: slow and fast in one", n)
	}
}

// A batch call whose callers all gave up is cancelled: the leader's handler sees its request end.
func TestABatchWhoseCallersAllGaveUpIsCancelled(t *testing.T) {
	g := newGate()
	p := newPair(t, g.wrap(http.HandlerFunc(created)))
	ctx, cancel := context.WithCancel(context.Background())
	ch := p.write(t, ctx, "/v1/gate", "", "")
	until(t, "the forward reached the leader", func() bool { return g.held.Load() == 1 })
	cancel()
	recv(t, ch)
	until(t, "the batch call ended", func() bool {
		p.ff.batch.mu.Lock()
		defer p.ff.batch.mu.Unlock()
		return p.ff.batch.inFlight == 0
	})
}

// A leader that serves no batches (an earlier release answers 404) gets each forward alone.
func TestALeaderWithoutBatchesGetsSingleForwards(t *testing.T) {
	p := newPair(t, http.HandlerFunc(created))
	mux := http.NewServeMux()
	mux.Handle("POST "+Path, p.lf.Serve(http.HandlerFunc(created)))
	p.follower.serveAt = mux
	if rec := recv(t, p.write(t, context.Background(), "/v1/tasks", "", "x")); rec.Code != http.StatusCreated {
		t.Fatalf("reply %d %s", rec.Code, rec.Body)
	}
	if p.follower.calls.Load() != 2 || p.follower.batchCalls.Load() != 1 {
		t.Fatalf("%d calls, %d of them batches; want a batch then a single forward", p.follower.calls.Load(), p.follower.batchCalls.Load())
	}
}

// A request larger than a batch may carry goes alone.
func TestALargeForwardGoesAlone(t *testing.T) {
	var got atomic.Int64
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
		w.WriteHeader(http.StatusCreated)
	}))
	body := strings.Repeat("x", maxItemBytes+1)
	if rec := recv(t, p.write(t, context.Background(), "/v1/tasks/batch", "", body)); rec.Code != http.StatusCreated {
		t.Fatalf("reply %d %s", rec.Code, rec.Body)
	}
	if got.Load() != int64(len(body)) || p.follower.batchCalls.Load() != 0 || p.follower.calls.Load() != 1 {
		t.Fatalf("the leader read %d bytes; %d batch calls of %d", got.Load(), p.follower.batchCalls.Load(), p.follower.calls.Load())
	}
}

func pendingOf(h http.Header, body string) *pending {
	size, _ := itemSize(h, []byte(body))
	return &pending{header: h, body: []byte(body), size: size}
}

func validBatch() []byte {
	h := http.Header{headerMethod: {"POST"}, headerURI: {"/v1/tasks"}, headerRequest: {"01J0000000000000000000000A"},
		"Authorization": {"Bearer x"}, "Accept": {"a", "b"}}
	return encodeBatch([]*pending{pendingOf(h, `{"type": "echo"}`), pendingOf(http.Header{}, "")})
}

// A batch decodes to the headers and bodies it was made of, and replies read back as written, in
// any order.
func TestBatchWireRoundTrips(t *testing.T) {
	a := http.Header{"Authorization": {"Bearer x"}, "Accept": {"a", "b"}, headerURI: {"/v1/tasks?wait=1s"}}
	items, err := decodeBatch(encodeBatch([]*pending{pendingOf(a, "body"), pendingOf(http.Header{}, "")}))
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || !reflect.DeepEqual(items[0].header, a) || string(items[0].body) != "body" ||
		len(items[1].header) != 0 || len(items[1].body) != 0 {
		t.Fatalf("decoded %+v", items)
	}
	reps := []*reply{
		{status: 201, header: http.Header{"X-A": {"1"}}, body: []byte("one")},
		{status: 503, header: http.Header{}, body: []byte(strings.Repeat("z", 10000))},
		{status: 200, header: http.Header{"X-B": {"1", "2"}}},
	}
	stream := []byte{batchVersion}
	for _, i := range []int{2, 0, 1} {
		stream = appendReply(stream, i, reps[i])
	}
	var got [3]*reply
	if err := readReplies(bytes.NewReader(stream), 3, func(i int, r *reply) { got[i] = r }); err != nil {
		t.Fatal(err)
	}
	for i := range reps {
		if got[i].status != reps[i].status || !reflect.DeepEqual(got[i].header, reps[i].header) || !bytes.Equal(got[i].body, reps[i].body) {
			t.Fatalf("reply %d: %+v, want %+v", i, got[i], reps[i])
		}
	}
	if err := readReplies(bytes.NewReader(stream[:len(stream)-1]), 3, func(int, *reply) {}); err == nil {
		t.Fatal("a cut stream read whole")
	}
}

// The leader refuses a batch that does not decode whole, with 400, before any of its requests
// runs; off the leader it answers not_leader.
func TestServeBatchRefusesMalformedBatches(t *testing.T) {
	c := &twin{name: "n"}
	var ran atomic.Int64
	h := New(c, Options{}).ServeBatch(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran.Add(1) }))
	call := func(body []byte) (*httptest.ResponseRecorder, api.Code) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, BatchPath, bytes.NewReader(body)))
		return rec, (&reply{status: rec.Code, body: rec.Body.Bytes()}).code()
	}
	if rec, code := call(validBatch()); rec.Code != 503 || code != api.CodeNotLeader || rec.Header().Get(HeaderLeader) != "leader" {
		t.Fatalf("off the leader: %d %s %v", rec.Code, code, rec.Header())
	}
	c.leader.Store(true)
	good := validBatch()
	pair := func(k, v string) []byte { return appendBytes(appendBytes([]byte{1, 1, 1}, k), v) }
	for name, body := range map[string][]byte{
		"empty":              nil,
		"another version":    append([]byte{2}, good[1:]...),
		"no requests":        {1, 0},
		"too many requests":  binary.AppendUvarint([]byte{1}, maxBatchItems+1),
		"fewer than counted": good[:len(good)-1],
		"more than counted":  append(append([]byte{}, good...), 0),
		"a bad length":       {1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"too many headers":   binary.AppendUvarint([]byte{1, 1}, maxItemHeaders+1),
		"a huge body":        binary.AppendUvarint([]byte{1, 1, 0}, maxItemBytes+1),
		"a bad header name":  append(pair("Bad Name", "v"), 0),
		"a bad header value": append(pair("X-A", "a\r\nb"), 0),
		"too large":          append(append([]byte{}, good...), make([]byte, maxBatchBytes)...),
	} {
		if rec, code := call(body); rec.Code != 400 || code != api.CodeInvalidRequest {
			t.Errorf("%s: %d %s, want 400 invalid_request", name, rec.Code, code)
		}
	}
	if ran.Load() != 0 {
		t.Fatalf("the handler ran %d times for refused batches", ran.Load())
	}
	// A request of a batch that is not a forwarded write is refused as a single forward is.
	rec, _ := call(encodeBatch([]*pending{pendingOf(http.Header{headerMethod: {"GET"}}, "")}))
	var rep *reply
	if err := readReplies(rec.Body, 1, func(_ int, r *reply) { rep = r }); err != nil || rep.status != 400 || rep.code() != api.CodeInvalidRequest {
		t.Fatalf("a GET in a batch: %v %+v", err, rep)
	}
	if ran.Load() != 0 {
		t.Fatal("the handler ran a GET")
	}
}

// FuzzForwardBatch feeds arbitrary bytes to both ends of a batch: the leader's decoding of a batch
// and the follower's reading of a reply stream. Neither may panic; a batch that decodes holds
// 1 to maxBatchItems requests and encodes back to one that decodes the same; a reply stream gives
// each request at most one reply.
func FuzzForwardBatch(f *testing.F) {
	f.Add(validBatch())
	stream := appendReply([]byte{batchVersion}, 1, &reply{status: 201, header: http.Header{"X-A": {"1"}}, body: []byte("b")})
	f.Add(appendReply(stream, 0, &reply{status: 503, header: http.Header{}}))
	f.Add([]byte{1, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if items, err := decodeBatch(b); err == nil {
			if len(items) == 0 || len(items) > maxBatchItems {
				t.Fatalf("%d requests", len(items))
			}
			ps := make([]*pending, len(items))
			for i, it := range items {
				ps[i] = pendingOf(it.header, string(it.body))
			}
			again, err := decodeBatch(encodeBatch(ps))
			if err != nil || len(again) != len(items) {
				t.Fatalf("re-encoded: %v", err)
			}
			for i := range items {
				if !reflect.DeepEqual(again[i].header, items[i].header) || !bytes.Equal(again[i].body, items[i].body) {
					t.Fatalf("request %d changed: %+v, was %+v", i, again[i], items[i])
				}
			}
		}
		seen := map[int]bool{}
		_ = readReplies(bytes.NewReader(b), 4, func(i int, r *reply) {
			if i < 0 || i >= 4 || seen[i] || r == nil || r.status < 100 || r.status > 999 {
				t.Fatalf("reply %d: %+v", i, r)
			}
			seen[i] = true
		})
	})
}

// A forwarded request's header and a reply's cost a few allocations each, not several per pair:
// the leader decodes one per forwarded write and the follower reads one reply per write.
func TestBatchWireAllocations(t *testing.T) {
	h := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"Go-http-client/1.1"},
		"Accept-Encoding": {"gzip"}, "Authorization": {"Bearer x"}, headerMethod: {"POST"},
		headerURI: {"/v1/tasks?wait=30s"}, headerClient: {"127.0.0.1:4242"}, headerRequest: {"01J0000000000000000000000A"}}
	b := encodeBatch([]*pending{pendingOf(h, `{"type":"echo","input":"x"}`)})
	items, err := decodeBatch(b)
	if err != nil || !reflect.DeepEqual(items[0].header, h) {
		t.Fatalf("decoded %+v, %v", items, err)
	}
	// The batch's item slice, the header map and its table, one string, one slice of values.
	if n := testing.AllocsPerRun(100, func() { _, _ = decodeBatch(b) }); n > 6 {
		t.Errorf("decoding a forwarded request: %.0f allocations, want at most 6", n)
	}
	rep := &reply{status: 201, header: http.Header{"Content-Type": {"application/json"}, HeaderIndex: {"123456"},
		HeaderServedBy: {"n1"}, "X-Request-Id": {"01J0000000000000000000000A"}}, body: []byte(`{"id":"01J0000000000000000000000A"}`)}
	stream := appendReply([]byte{batchVersion}, 0, rep)
	read := func() *reply {
		var got *reply
		if err := readReplies(bytes.NewReader(stream), 1, func(_ int, r *reply) { got = r }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := read(); !reflect.DeepEqual(got.header, rep.header) || !bytes.Equal(got.body, rep.body) {
		t.Fatalf("read %+v, want %+v", got, rep)
	}
	// Beside the stream's reader and bookkeeping: the reply, its header (map, pairs, one string,
	// values) and its body.
	if n := testing.AllocsPerRun(100, func() { read() }); n > 10 {
		t.Errorf("reading a reply: %.0f allocations, want at most 10", n)
	}
}

// Header names in any case are made canonical, and a name sent twice keeps both values in order.
func TestBatchHeaderNamesCanonical(t *testing.T) {
	b := []byte{batchVersion, 1, 3}
	for _, s := range []string{"x-a", "1", "X-A", "2", "content-type", "text/plain"} {
		b = appendBytes(b, s)
	}
	b = appendBytes(b, "")
	items, err := decodeBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{"X-A": {"1", "2"}, "Content-Type": {"text/plain"}}
	if !reflect.DeepEqual(items[0].header, want) {
		t.Fatalf("header %v, want %v", items[0].header, want)
	}
}

// A reply stream cut anywhere, or with a header name that is not one, is an error, never a reply.
func TestTruncatedOrBadReplyIsRefused(t *testing.T) {
	rep := &reply{status: 201, header: http.Header{"X-A": {"1", "2"}, HeaderIndex: {"7"}}, body: []byte("body")}
	stream := appendReply([]byte{batchVersion}, 0, rep)
	for i := 1; i < len(stream); i++ {
		if err := readReplies(bytes.NewReader(stream[:i]), 1, func(int, *reply) { t.Fatalf("a reply from %d of %d bytes", i, len(stream)) }); err == nil {
			t.Fatalf("%d of %d bytes: no error", i, len(stream))
		}
	}
	bad := appendReply([]byte{batchVersion}, 0, &reply{status: 200, header: http.Header{"Bad Name": {"v"}}})
	if err := readReplies(bytes.NewReader(bad), 1, func(int, *reply) { t.Fatal("a reply with a bad header name") }); !errors.Is(err, errBatch) {
		t.Fatalf("bad header name: %v", err)
	}
}

// The leader rebuilds a batched forward into the caller's request once: the request, its URL,
// its context carrying the request ID and the forwarded mark, the header taken over as decoded.
func TestUnwrapBuildsTheRequestOnce(t *testing.T) {
	conn := httptest.NewRequest(http.MethodPost, BatchPath, nil)
	conn.RemoteAddr, conn.Host = "127.0.0.1:7001", "n1:7001"
	own := map[string][]string{headerMethod: {"POST"}, headerURI: {"/v1/tasks?wait=30s"},
		headerClient: {"127.0.0.1:4242"}, headerRequest: {"01J0000000000000000000000A"}}
	h := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer x"}}
	maps.Copy(h, own)
	body := &itemBody{}
	payload := []byte(`{"type":"echo","input":"x"}`)
	body.Reset(payload)
	req, err := unwrap(conn, h, body, int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	id, ok := RequestID(req.Context())
	if req.Method != http.MethodPost || req.URL.String() != "/v1/tasks?wait=30s" || req.RemoteAddr != "127.0.0.1:4242" ||
		req.Host != "n1:7001" || req.ContentLength != int64(len(payload)) || !Forwarded(req) ||
		!ok || id.String() != "01J0000000000000000000000A" {
		t.Fatalf("rebuilt %s %s from %s host %s, length %d, forwarded %v, ID %v %v",
			req.Method, req.URL, req.RemoteAddr, req.Host, req.ContentLength, Forwarded(req), id, ok)
	}
	if want := (http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer x"}}); !reflect.DeepEqual(req.Header, want) {
		t.Fatalf("header %v, want %v", req.Header, want)
	}
	if b, _ := io.ReadAll(req.Body); !bytes.Equal(b, payload) {
		t.Fatalf("body %q", b)
	}
	if _, ok := RequestID(conn.Context()); ok || Forwarded(conn) {
		t.Fatal("the batch's own request carries the item's marks")
	}
	n := testing.AllocsPerRun(100, func() {
		maps.Copy(h, own)
		_, _ = unwrap(conn, h, body, int64(len(payload)))
	})
	// The request, its URL and its context.
	if n > 4 {
		t.Errorf("rebuilding a forwarded request: %.0f allocations, want at most 4", n)
	}
	t.Logf("%.0f allocations", n)
}
