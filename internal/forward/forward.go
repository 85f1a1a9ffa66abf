// Package forward runs the public API's writes where they can be applied, and its consistent
// reads where they can be answered: on the raft leader.
//
// A node that is not the leader sends the whole request (method, path and query, headers with the
// caller's credential, body) over the authenticated internode channel; forwards made while others
// are in flight go together, in one batch call (batch.go). The leader serves each with the same
// handler as a request it received itself, so authorization, validation and propose are written
// once, in the API's handlers, and run where the write happens. A write received by the leader
// runs there at once.
//
// It owns the retries across leader changes and a follower's wait for its own FSM to hold the
// write before it answers (read your writes). It never looks inside a request or a reply beyond
// the error code of a 503 and, for a forwarded GET, the consistent parameter that makes it a
// consistent read, and it may not touch raft, the FSM or the ACLs: what it needs of the node
// comes through Cluster.
package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/tracing"
)

// Path is the leader's internode route for forwarded requests.
const Path = "/v1/internode/api"

// Headers of a forwarded request and of its reply. A client's own X-Taskworker-Forward-* headers
// never reach the leader's handler: Send drops them and Serve reads them only from a node.
const (
	headerPrefix  = "X-Taskworker-Forward-"
	headerMethod  = headerPrefix + "Method"
	headerURI     = headerPrefix + "Uri"
	headerClient  = headerPrefix + "Client"
	headerRequest = headerPrefix + "Request"
	// HeaderIndex is the raft index the leader had applied when it answered: the follower
	// answers once its own FSM holds it.
	HeaderIndex = "X-Taskworker-Index"
	// HeaderLeader names the leader in a not-leader reply.
	HeaderLeader = "X-Taskworker-Leader"
	// HeaderServedBy names the node whose handler ran a forwarded write.
	HeaderServedBy = "X-Taskworker-Served-By"
)

// Cluster is what forwarding needs of the node.
type Cluster interface {
	// Name is this node's name.
	Name() string
	// IsLeader reports whether raft on this node is the leader.
	IsLeader() bool
	// Leader is the name of the leader raft names, "" when it names none.
	Leader() string
	// LeaderAddr is the internode address of the leader raft names; else, of any other member
	// (which answers with the leader's name); "" when there is none.
	LeaderAddr() string
	// LeaderChanges returns a channel closed at raft's next leader change on this node.
	LeaderChanges() <-chan struct{}
	// Index is the raft index this node's FSM has applied.
	Index() uint64
	// WaitIndex blocks until this node's FSM has applied index, or ctx ends.
	WaitIndex(ctx context.Context, index uint64) error
	// Refuse is why this node takes no write now (its storage failed: it could not show the
	// caller its own write), as an *api.Error; nil when it takes them.
	Refuse() error
	// Call sends an internode request to addr and returns the reply.
	Call(ctx context.Context, addr, path string, header http.Header, body []byte) (*http.Response, error)
}

// Forwarder runs writes on the leader.
type Forwarder struct {
	c Cluster
	// Retry is how long a write is retried across leader changes before its last answer is
	// given (the API's write timeout).
	retry time.Duration
	// maxBody caps the body a write may carry (the largest of the API's caps); a longer one is
	// cut one byte past it, so the handler's own cap refuses it.
	maxBody int64
	log     *slog.Logger
	// abandoned counts forwards given up because raft named another leader meanwhile.
	abandoned func()
	batch     *batcher // a follower's forwards, gathered into batch calls (batch.go)
}

// Options configure a Forwarder.
type Options struct {
	Retry     time.Duration
	MaxBody   int64
	Logger    *slog.Logger
	Abandoned func()
}

// New returns a Forwarder over c.
func New(c Cluster, o Options) *Forwarder {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Abandoned == nil {
		o.Abandoned = func() {}
	}
	f := &Forwarder{c: c, retry: o.Retry, maxBody: o.MaxBody, log: o.Logger, abandoned: o.Abandoned}
	f.batch = &batcher{call: c.Call, single: f.single}
	return f
}

// Batched reports how many batch calls this node has made to the leader, and how many forwards
// they carried.
func (f *Forwarder) Batched() (calls, forwards int64) {
	return f.batch.calls.Load(), f.batch.items.Load()
}

type servedKey struct{}

// request is a write's identity, the same on every try: the leader derives the IDs it gives the
// write's new objects from it (RequestID), so a retry after a lost reply finds what the first try
// made instead of making it twice.
type requestKey struct{}

// RequestID returns the write's request ID: a ULID chosen by the node that received it.
func RequestID(ctx context.Context) (ulid.ULID, bool) {
	switch id := ctx.Value(requestKey{}).(type) {
	case ulid.ULID:
		return id, true
	case *ulid.ULID: // servedContext's
		return *id, true
	}
	return ulid.ULID{}, false
}

// WithRequestID returns ctx carrying id as its write's request ID.
func WithRequestID(ctx context.Context, id ulid.ULID) context.Context {
	return context.WithValue(ctx, requestKey{}, id)
}

// ID returns the ID of the i-th new object of the write in ctx: its request ID plus i (in the
// ULID's random part, so the time part stays the request's). Outside a write it is a new ULID.
func ID(ctx context.Context, i int) string {
	id, ok := RequestID(ctx)
	if !ok {
		return ulid.Make().String()
	}
	lo := binary.BigEndian.Uint64(id[8:]) + uint64(i)
	hi := binary.BigEndian.Uint16(id[6:8])
	if lo < uint64(i) {
		hi++
	}
	binary.BigEndian.PutUint16(id[6:8], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return id.String()
}

// Forwarded reports whether r is a write a follower forwarded to this node.
func Forwarded(r *http.Request) bool { return r.Context().Value(servedKey{}) != nil }

// Forwarded is the package's Forwarded, for the API's handlers.
func (f *Forwarder) Forwarded(r *http.Request) bool { return Forwarded(r) }

// ServeWrite runs the write r where it can be applied: with here on this node when it is the
// leader (or when r was forwarded to it), else on the leader through Serve. A reply that says
// there is no leader is retried, here or on the new leader, until the retry time has passed.
func (f *Forwarder) ServeWrite(w http.ResponseWriter, r *http.Request, here http.Handler) {
	if Forwarded(r) {
		here.ServeHTTP(w, r) // the follower retries; it must see this node's answer as it is
		return
	}
	if err := f.c.Refuse(); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	f.serve(w, r, here, true)
}

// ServeRead runs the read r on the leader, as ServeWrite runs a write, for a consistent read
// (?consistent): the leader's handler confirms it still leads before it reads its own state, and
// its answer is given as it is, without waiting for this node's replica to catch up. A read holds
// no body; a storage fault here does not stop it.
func (f *Forwarder) ServeRead(w http.ResponseWriter, r *http.Request, here http.Handler) {
	if Forwarded(r) {
		here.ServeHTTP(w, r)
		return
	}
	r2 := *r
	r2.Body = http.NoBody
	f.serve(w, &r2, here, false)
}

// serve runs r with here when this node leads, else on the leader, retrying answers that say no
// leader could run it; a write (catchUp) then waits for this node to hold what the leader had
// applied.
func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, here http.Handler, catchUp bool) {
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, f.maxBody+1))
		if err != nil {
			httpapi.WriteError(w, api.Errorf(api.CodeInvalidRequest, "read body: %v", err))
			return
		}
		body = b
	}
	id, err := ulid.New(ulid.Now(), rand.Reader)
	if err != nil {
		httpapi.WriteError(w, api.Errorf(api.CodeInternal, "request ID: %v", err))
		return
	}
	ctx := WithRequestID(r.Context(), id)
	start := time.Now()
	backoff := 20 * time.Millisecond
	var last *reply
	for {
		if f.c.IsLeader() {
			rec := newReply()
			here.ServeHTTP(rec, withBody(r.WithContext(ctx), body))
			last = rec
			if !retryHere(rec) {
				break
			}
		} else {
			rep, err := f.send(ctx, r, id, body)
			if err == nil {
				last = rep
				if !retryForward(rep) {
					if !catchUp {
						break
					}
					if err := f.waitIndex(ctx, rep); err != nil {
						last = errorReply(err)
					}
					break
				}
			} else {
				last = errorReply(api.Errorf(api.CodeNoLeader, "no cluster leader could apply the request: %v", err))
			}
		}
		if time.Since(start) >= f.retry || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
	last.writeTo(w)
}

// withBody is r with a fresh reader of body, for one try.
func withBody(r *http.Request, body []byte) *http.Request {
	r2 := *r
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	return &r2
}

// retryHere reports whether the leader's own answer says the write found no leader: raft lost
// leadership under it, so the new leader must run it.
func retryHere(rep *reply) bool {
	return rep.status == http.StatusServiceUnavailable && rep.code() == api.CodeNoLeader
}

// retryForward reports whether a forward's answer asks for another try: the node was not (or no
// longer) the leader, or is stopping.
func retryForward(rep *reply) bool {
	if rep.status != http.StatusServiceUnavailable {
		return false
	}
	switch rep.code() {
	case api.CodeNoLeader, api.CodeNotLeader, api.CodeShuttingDown:
		return true
	}
	return false
}

// waitIndex waits until this node's FSM holds what the leader had applied when it answered, so
// the caller reads its own write here. A replica that does not catch up within the retry time
// (its disk failed since the write began) is not waited for longer: the write is done, and the
// caller gets the leader's answer.
func (f *Forwarder) waitIndex(ctx context.Context, rep *reply) error {
	idx, err := strconv.ParseUint(rep.header.Get(HeaderIndex), 10, 64)
	if err != nil {
		return nil // an error reply from before the handler ran: nothing was written
	}
	wctx, cancel := context.WithTimeout(ctx, f.retry)
	defer cancel()
	if err := f.c.WaitIndex(wctx, idx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// ErrLeaderChanged is the cause of a forward given up because raft stopped naming its leader.
var ErrLeaderChanged = errors.New("leader changed")

// WhileLeader returns ctx, cancelled with ErrLeaderChanged as its cause as soon as raft on this
// node names a leader other than target ("" when it named none). changed must come from changes
// before target was read, so that a change in between is seen; cancel frees the watch.
func WhileLeader(ctx context.Context, changed <-chan struct{}, changes func() <-chan struct{}, leader func() string, target string) (_ context.Context, cancel func()) {
	fctx, stop := context.WithCancelCause(ctx)
	go func() {
		for {
			select {
			case <-fctx.Done():
				return
			case <-changed:
			}
			changed = changes()
			if now := leader(); now != target {
				stop(fmt.Errorf("%w: raft names %q now, not %q", ErrLeaderChanged, now, target))
				return
			}
		}
	}()
	return fctx, func() { stop(nil) }
}

// send forwards r to the leader, in the next batch call when it fits one, and reads the whole
// reply. It gives the forward up as soon as
// raft on this node names another leader, or none: a frozen or cut-off leader holds a forward
// until the caller's deadline, while raft on the followers stops naming it after a heartbeat
// timeout and elects a new one about a second later.
//
// Retrying is safe because a write is idempotent when the first try did commit: its new objects
// take their IDs from the request ID, so a second try meets the first one's objects (a duplicate
// task ID is success to a submit, a keyed submit finds its key), and the other writes' commands
// carry the request ID, which the FSM applies once (fsm/once.go): a second try answers as the
// write that took effect, not for the state the first left (a delete's not_found).
func (f *Forwarder) send(ctx context.Context, r *http.Request, id ulid.ULID, body []byte) (*reply, error) {
	changed := f.c.LeaderChanges() // before the leader is read: a change after that closes it
	target := f.c.Leader()
	addr := f.c.LeaderAddr()
	if addr == "" {
		return nil, errors.New("no leader known")
	}
	fctx, cancel := WhileLeader(ctx, changed, f.c.LeaderChanges, f.c.Leader, target)
	defer cancel()
	h := make(http.Header, len(r.Header)+4)
	for k, v := range r.Header {
		if !hopByHop(k) && !strings.HasPrefix(k, headerPrefix) {
			h[k] = v
		}
	}
	// The request's trace (internal/httpapi's span on this node, or the caller's own) goes with
	// it, so the leader's spans join the same trace.
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		tracing.Inject(h, sc)
	}
	h.Set(headerMethod, r.Method)
	h.Set(headerURI, r.URL.RequestURI())
	h.Set(headerClient, r.RemoteAddr)
	h.Set(headerRequest, id.String())
	var rep *reply
	var err error
	if size, ok := itemSize(h, body); ok && size <= maxItemBytes {
		rep, err = f.batch.forward(fctx, addr, h, body, size)
	} else {
		rep, err = f.single(fctx, addr, h, body)
	}
	if err == nil {
		return rep, nil
	}
	if cause := context.Cause(fctx); errors.Is(cause, ErrLeaderChanged) && ctx.Err() == nil {
		f.abandoned()
		f.log.Info("gave up a forward to a leader raft no longer names; retrying against the new one",
			"path", api.Truncate(r.URL.Path), "to", target, "leader", f.c.Leader())
		return nil, fmt.Errorf("forward to %s: %w", addr, cause)
	}
	return nil, fmt.Errorf("forward to %s: %w", addr, err)
}

// single sends one forward to the leader at addr in a call of its own and reads the whole reply.
func (f *Forwarder) single(ctx context.Context, addr string, h http.Header, body []byte) (*reply, error) {
	resp, err := f.c.Call(ctx, addr, Path, h, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBody))
	if err != nil {
		return nil, err
	}
	return &reply{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// hopByHop reports a header that belongs to one connection, not to the request.
func hopByHop(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", "Content-Length":
		return true
	}
	return false
}

// Serve is the leader's side: it serves a forwarded write with api, the node's public handler,
// as if its caller had sent it here, and adds the index its FSM has applied to the reply.
func (f *Forwarder) Serve(api_ http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.serveForward(api_, w, r, r.Header, r.Body, r.ContentLength)
	})
}

// serveForward serves one forwarded write or consistent read, its header and body, that came on
// conn (a single forward's own request, or a batch's).
func (f *Forwarder) serveForward(api_ http.Handler, w http.ResponseWriter, conn *http.Request, header http.Header, body io.ReadCloser, n int64) {
	if !f.c.IsLeader() {
		w.Header().Set(HeaderLeader, f.c.Leader())
		httpapi.WriteError(w, api.Errorf(api.CodeNotLeader, "this node is not the leader"))
		return
	}
	req, err := unwrap(conn, header, body, n)
	if err != nil {
		httpapi.WriteError(w, api.Errorf(api.CodeInvalidRequest, "forwarded request: %v", err))
		return
	}
	w.Header().Set(HeaderServedBy, f.c.Name())
	if req.Method == http.MethodGet { // a consistent read: the follower does not wait for an index
		api_.ServeHTTP(w, req)
		return
	}
	api_.ServeHTTP(&indexWriter{ResponseWriter: w, index: f.c.Index}, req)
}

// ConsistentRead reports whether the request URI asks for a consistent read: a consistent
// parameter that is not false (httpapi.Consistent reads it the same way).
func ConsistentRead(uri string) bool {
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return false
	}
	on, err := httpapi.Consistent(u.Query())
	return err == nil && on
}

// unwrap rebuilds the caller's request from a forward's header and body, which came on conn:
// one request, built once. The forward's own headers are taken out of header, which the
// rebuilt request then owns.
func unwrap(conn *http.Request, header http.Header, body io.ReadCloser, n int64) (*http.Request, error) {
	method := header.Get(headerMethod)
	uri := header.Get(headerURI)
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodDelete:
	case http.MethodGet:
		if !ConsistentRead(uri) {
			return nil, fmt.Errorf("GET %q is not a consistent read", api.Truncate(uri))
		}
	default:
		return nil, fmt.Errorf("method %q is not a write", api.Truncate(method))
	}
	if !strings.HasPrefix(uri, "/v1/") {
		return nil, fmt.Errorf("path %q is not the API's", api.Truncate(uri))
	}
	id, err := ulid.ParseStrict(header.Get(headerRequest))
	if err != nil {
		return nil, fmt.Errorf("request ID: %v", err)
	}
	remote := conn.RemoteAddr
	if client := header.Get(headerClient); client != "" {
		if _, _, err := net.SplitHostPort(client); err == nil {
			remote = client
		}
	}
	req, err := http.NewRequestWithContext(&servedContext{Context: conn.Context(), id: id}, method, uri, body)
	if err != nil {
		return nil, err
	}
	for k := range header {
		if strings.HasPrefix(k, headerPrefix) {
			delete(header, k)
		}
	}
	req.Header = header
	req.ContentLength = n
	req.Host = conn.Host
	req.RemoteAddr = remote
	return req, nil
}

// servedContext is a forwarded write's context: its request ID (RequestID) and the mark that a
// follower forwarded it (Forwarded), one value where context.WithValue would take three.
type servedContext struct {
	context.Context
	id ulid.ULID
}

func (c *servedContext) Value(key any) any {
	switch key.(type) {
	case requestKey:
		return &c.id
	case servedKey:
		return true
	}
	return c.Context.Value(key)
}

// indexWriter adds the index the FSM has applied to a reply's headers as it is written: the
// handler replies after its write has applied here, so the follower waits for at least that.
type indexWriter struct {
	http.ResponseWriter
	index   func() uint64
	written bool
}

func (w *indexWriter) WriteHeader(status int) {
	if !w.written {
		w.written = true
		w.Header().Set(HeaderIndex, strconv.FormatUint(w.index(), 10))
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *indexWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// reply is a whole answer held before it is given: a try that may be retried must not reach the
// client.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func newReply() *reply { return &reply{header: http.Header{}} }

func (r *reply) Header() http.Header { return r.header }

func (r *reply) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *reply) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body = append(r.body, b...)
	return len(b), nil
}

// code is the contract's error code of the reply's body, "" when it has none.
func (r *reply) code() api.Code {
	var e api.Error
	if json.Unmarshal(r.body, &e) != nil {
		return ""
	}
	return e.Code
}

func (r *reply) writeTo(w http.ResponseWriter) {
	for k, v := range r.header {
		if !hopByHop(k) {
			w.Header()[k] = v
		}
	}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

func errorReply(err error) *reply {
	rep := newReply()
	httpapi.WriteError(rep, err)
	return rep
}
