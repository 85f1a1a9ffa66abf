// Package httpapi serves taskworker's public HTTP API: routing, access control (the shared token
// or ACLs, and the management credential on the operator routes: see acl.go), request decoding
// (content type, body cap, unknown fields), query parameters, and the mapping of errors to the
// contract's status codes and JSON error bodies.
//
// It declares the interfaces it consumes, Backend and ACL, and speaks only api types: it knows nothing
// of raft, the FSM, gossip or the executor, and it has no route that accepts raw FSM commands (the
// node serves its internode routes itself).
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// Backend is what the API needs from a node. Errors that are *api.Error carry their code (and so
// their status); context.DeadlineExceeded means no leader could apply a write in time; anything
// else is an internal error.
type Backend interface {
	// Submit validates req and has the cluster store it, recording caller's principal as the
	// submitter; created is false when req's idempotency key was seen before.
	Submit(ctx context.Context, caller Caller, req api.SubmitRequest) (task api.Task, created bool, err error)
	// SubmitBatch validates each of reqs as Submit would and has the cluster store the valid ones
	// in one write; it returns one result per request, in order (a request that fails does not
	// stop the others). An error is about the whole batch: no result was stored.
	SubmitBatch(ctx context.Context, caller Caller, reqs []api.SubmitRequest) ([]api.BatchResult, error)
	// Task returns a task's record, or a not_found *api.Error.
	Task(ctx context.Context, id string) (api.Task, error)
	// WaitTask blocks until until(record) holds or ctx ends, then returns the record as it is; not_found when unknown.
	// until reads the record without its pending_reason (the record returned has it).
	WaitTask(ctx context.Context, id string, until func(api.Task) bool) (api.Task, error)
	// List returns the tasks q selects of the types visible accepts, newest first (a page holds
	// up to q.Limit visible tasks).
	List(ctx context.Context, q api.ListQuery, visible func(taskType string) bool) (api.TaskPage, error)
	// Cancel cancels a task (not_found, already_finished) for caller and returns its record once
	// this node has applied the cancel.
	Cancel(ctx context.Context, caller Caller, id string) (api.Task, error)
	// Cluster returns the leader, every node and the task counts by state.
	Cluster(ctx context.Context) (api.Cluster, error)
	// Types lists the task types and versions alive nodes offer, and those pending tasks wait for.
	Types(ctx context.Context) ([]api.TypeInfo, error)
	// Health reports whether this node can serve: Status "ok" when it is a member and a leader is known.
	Health(ctx context.Context) api.Health
	// Leave starts a graceful leave of this node (leave_refused without force when it would break the cluster).
	Leave(ctx context.Context, force bool) (api.LeaveReply, error)
	// Logs calls emit with a task's output lines in time order; with follow it streams until the task ends or ctx does.
	Logs(ctx context.Context, id string, follow bool, emit func(api.LogLine)) error
	// Metrics serves the node's Prometheus metrics.
	Metrics() http.Handler

	// JoinToken returns the cluster's join token (not_secure when the cluster has none).
	JoinToken(ctx context.Context) (api.JoinToken, error)
	// RotateJoinToken gives the join token a new secret for caller and returns it; the old one is
	// refused from then on.
	RotateJoinToken(ctx context.Context, caller Caller) (api.JoinToken, error)
	// Keyring lists the cluster's gossip keys and how many nodes hold each.
	Keyring(ctx context.Context) (api.Keyring, error)
	// Index returns the raft index this node's FSM last applied.
	Index() uint64
	// WaitIndex blocks until this node's FSM has applied an index above after, or ctx ends, and
	// returns the index it has applied then.
	WaitIndex(ctx context.Context, after uint64) uint64
	// Throughput returns the per-second task counts of the last minutes, as this node applied them.
	Throughput(ctx context.Context) api.Throughput

	// ChangeKeyring installs, uses or removes a gossip key on every node for caller
	// (invalid_request for a bad operation or key, keyring_conflict for removing the primary) and
	// returns the keyring.
	ChangeKeyring(ctx context.Context, caller Caller, req api.KeyringRequest) (api.Keyring, error)
	// Digest returns this node's FSM digest at the index it has applied.
	Digest(ctx context.Context) (api.Digest, error)
	// Barrier returns once this node, as the leader, has committed an entry of its term and
	// applied every entry before it (a raft barrier), so that what it reads next holds every
	// write acknowledged before the call; a no_leader *api.Error when it does not lead.
	Barrier(ctx context.Context) error

	ScheduleBackend  // schedules.go
	RetryPurger      // retry now and purge (uniq.go)
	QueueBackend     // queue.go
	WorkflowBackend  // workflows.go
	RateLimitBackend // ratelimits.go
}

// Defaults for Options.
const (
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxBatchBodyBytes caps a batch submit's body: room for api.MaxBatchTasks tasks of
	// 16 KiB each.
	DefaultMaxBatchBodyBytes = 16 << 20
	DefaultWriteTimeout      = 15 * time.Second
	// MaxWait caps ?wait= on submits and blocking reads.
	MaxWait = 10 * time.Minute
)

// Options configure the handler; zero values take the defaults.
type Options struct {
	Token string // when set (and ACL is nil), every route but health and metrics needs "Authorization: Bearer Token"
	// ACL, when set, turns on access control by tokens, policies and JWTs (acl.go) in place of
	// the shared Token; nil leaves ACLs off, and the /v1/acl/ routes answer acl_disabled.
	ACL          ACL
	MaxBodyBytes int64 // request body cap (413 above it)
	// MaxBatchBodyBytes is the body cap of a batch submit (413 above it); each task's input is
	// still held to the node's input cap.
	MaxBatchBodyBytes int64
	WriteTimeout      time.Duration // how long a submit or cancel may take to reach the leader and apply
	Logger            *slog.Logger  // for errors after a streaming reply has started
	// Observe, when set, is told of every request (route pattern, status, duration), for metrics.
	Observe ObserveFunc
	// UI, when set, is the web console, served at /ui/ without a credential (its pages hold no
	// data; they call the API with the user's token), and / redirects to it.
	UI http.Handler
	// Management, when set, checks a credential against the cluster's management credential, and
	// then the operator routes (/v1/operator/..., /debug/pprof/) answer only a caller holding it
	// (without ACLs; with ACLs, Resolve turns that credential into a management identity). Nil
	// leaves them as open as the rest of the API: an insecure or dev node.
	Management func(credential string) bool
	// Forward, when set, runs every write route on the leader (internal/forward); nil runs them
	// here.
	Forward Forwarder
	// Pprof, when set, is Go's profiler, served at /debug/pprof/ behind the operator routes' guard.
	Pprof http.Handler
	// Workers, when set, serves the worker protocol's sessions (workers.go); nil answers its
	// routes not_found.
	Workers WorkerSessions
	// Tracer, when set, records a server span for each submit (trace.go); nil is tracing off,
	// and a submit's valid traceparent is still recorded with its tasks.
	Tracer trace.Tracer
}

type server struct {
	b    Backend
	acl  ACL
	opts Options
	log  *slog.Logger
}

// New returns the public API's handler over b. Routes are the contract's (docs in the README).
func New(b Backend, opts Options) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.MaxBatchBodyBytes <= 0 {
		opts.MaxBatchBodyBytes = max(DefaultMaxBatchBodyBytes, opts.MaxBodyBytes)
	}
	s := &server{b: b, acl: opts.ACL, opts: opts, log: opts.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	mux := newRouteMux()
	s.register(mux)
	if opts.Pprof != nil {
		mux.Handle("/debug/pprof/", opts.Pprof)
	}
	mux.HandleFunc("/", NotFound)
	if opts.UI != nil {
		mux.Handle("GET /ui/", opts.UI)
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
		mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	}
	var h http.Handler = mux
	switch {
	case s.acl != nil:
		h = s.requireACL(mux.ServeMux)
	case opts.Token != "":
		h = RequireToken(opts.Token, mux)
	}
	if s.acl == nil && opts.Management != nil {
		h = s.requireManagement(h, mux.ServeMux)
	}
	if opts.Forward != nil {
		h = s.forwardWrites(mux, opts.Forward, h)
	}
	if opts.Observe != nil {
		h = observe(mux.ServeMux, h, opts.Observe)
	}
	return traceSubmits(opts.Tracer, h)
}

// register adds the API's routes to mux: every route of the contract is here or in the
// *Routes functions it calls.
func (s *server) register(mux *routeMux) {
	mux.HandleFunc("POST /v1/tasks", s.submit)
	mux.HandleFunc("POST "+api.PathTasksBatch, s.submitBatch)
	mux.HandleFunc("GET /v1/tasks", s.list)
	mux.HandleFunc("GET /v1/tasks/{id}", s.get)
	mux.HandleFunc("POST /v1/tasks/{id}/cancel", s.cancel)
	mux.HandleFunc("GET /v1/tasks/{id}/logs", s.logs)
	s.uniqRoutes(mux)
	mux.HandleFunc("GET /v1/cluster", s.cluster)
	mux.HandleFunc("GET "+api.PathThroughput, s.throughput)
	mux.HandleFunc("GET /v1/types", s.types)
	mux.HandleFunc("GET /v1/health", s.health)
	mux.HandleFunc("POST /v1/agent/leave", s.leave)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { s.b.Metrics().ServeHTTP(w, r) })
	s.aclRoutes(mux)
	s.scheduleRoutes(mux)
	mux.HandleFunc("GET "+api.PathJoinToken, s.joinToken)
	mux.HandleFunc("POST "+api.PathJoinTokenRotate, s.rotateJoinToken)
	mux.HandleFunc("GET "+api.PathKeyring, s.keyring)
	mux.HandleFunc("POST "+api.PathKeyring, s.changeKeyring)
	mux.HandleFunc("GET "+api.PathDigest, s.digest)
	s.queueRoutes(mux)
	s.workerRoutes(mux)
	s.workflowRoutes(mux)
	s.rateLimitRoutes(mux)
}

// NotFound answers a request for a route that does not exist.
func NotFound(w http.ResponseWriter, r *http.Request) {
	WriteError(w, api.Errorf(api.CodeNotFound, "no such endpoint: %s %s", api.Truncate(r.Method), api.Truncate(r.URL.Path)))
}

// RequireToken guards every route but health and metrics with the cluster's shared token, sent as
// "Authorization: Bearer TOKEN": 401 without one, 403 with a wrong one. It is a user credential
// only: nodes call each other on their own authenticated channel, never with it.
func RequireToken(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health" || r.URL.Path == "/metrics" || isConsole(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || got == "":
			WriteError(w, api.Errorf(api.CodeUnauthorized, "this cluster needs a token: --token or TASKWORKER_TOKEN"))
		case subtle.ConstantTimeCompare([]byte(got), want) != 1:
			WriteError(w, api.Errorf(api.CodeForbidden, "wrong token"))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// WriteJSON writes v as the JSON reply with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes err as the contract's error body: an *api.Error with the status of its code;
// a deadline as no_leader (a write found no leader in time); a cancelled request as cancelled;
// anything else as internal.
func WriteError(w http.ResponseWriter, err error) {
	ae := asAPIError(err)
	if ae.ExistingTask != "" {
		w.Header().Set(api.HeaderExistingTask, ae.ExistingTask)
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	WriteJSON(w, api.Status(ae.Code), api.Error{Message: ae.Message, Code: ae.Code, ExistingTask: ae.ExistingTask})
}

// asAPIError is err as the contract's error, whatever it is: the last step before a reply (a
// backend has already given its own errors their codes, node.toAPIError).
func asAPIError(err error) *api.Error {
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, context.DeadlineExceeded):
		ae = api.Errorf(api.CodeNoLeader, "no cluster leader could apply the request: %v", err)
	case errors.Is(err, context.Canceled):
		ae = api.Errorf(api.CodeCancelled, "request cancelled")
	default:
		ae = api.Errorf(api.CodeInternal, "%v", err)
	}
	return ae
}

// decodeBody reads a JSON request body into v, enforcing the content type, the size cap, one
// value, and no unknown fields.
func (s *server) decodeBody(r *http.Request, w http.ResponseWriter, v any) error {
	return decodeBodyMax(r, w, v, s.opts.MaxBodyBytes)
}

func decodeBodyMax(r *http.Request, w http.ResponseWriter, v any, maxBytes int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return api.Errorf(api.CodeUnsupportedMediaType, "content type must be application/json, got %s", api.Truncate(ct))
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return api.Errorf(api.CodeBodyTooLarge, "request body exceeds %d bytes", maxBytes)
		}
		return api.Errorf(api.CodeInvalidRequest, "request body is not valid JSON for this endpoint: %s", api.Truncate(err.Error()))
	}
	if dec.More() {
		return api.Errorf(api.CodeInvalidRequest, "request body holds more than one JSON value")
	}
	return nil
}

// waitParam parses ?wait=DURATION: 0 when absent, capped at MaxWait.
func waitParam(r *http.Request) (time.Duration, error) {
	s := queryGet(r.URL.RawQuery, "wait")
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, api.Errorf(api.CodeInvalidWait, "wait must be a duration like 30s, got %q", api.Truncate(s))
	}
	return min(d, MaxWait), nil
}

// queryGet is url.ParseQuery(raw).Get(key) without building the map of every parameter: the
// first value of key, "" when there is none. It skips what ParseQuery skips (a pair with a
// semicolon or a bad escape) and leaves a query with very many parameters to ParseQuery itself.
func queryGet(raw, key string) string {
	if strings.Count(raw, "&") >= 1000 {
		v, _ := url.ParseQuery(raw)
		return v.Get(key)
	}
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if k, err := url.QueryUnescape(k); err != nil || k != key {
			continue
		}
		if v, err := url.QueryUnescape(v); err == nil {
			return v
		}
	}
	return ""
}

func (s *server) submit(w http.ResponseWriter, r *http.Request) {
	var req api.SubmitRequest
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	wait, err := waitParam(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	if req.Type != "" { // without one the backend answers missing_type
		if err := authorize(r, acl.CapSubmit, req.Type); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	t, created, err := s.b.Submit(ctx, callerOf(r), req)
	cancel()
	if err != nil {
		WriteError(w, err)
		return
	}
	if wait > 0 && s.opts.Forward != nil && s.opts.Forward.Forwarded(r) {
		w.Header().Set(headerWaitThere, "1") // the node the client called waits (forwardWrites)
		wait = 0
	}
	if wait > 0 {
		if t, err = s.waitTask(r.Context(), t.ID, wait, func(t api.Task) bool { return api.IsTerminal(t.State) }); err != nil {
			WriteError(w, err)
			return
		}
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK
	}
	WriteJSON(w, status, t)
}

// submitBatch is POST /v1/tasks/batch: up to api.MaxBatchTasks submits in one request and one
// raft entry, each with its own result. ACLs are checked per task, by its type: a task the
// caller may not submit fails alone with 403, as a bad one fails alone with 400.
func (s *server) submitBatch(w http.ResponseWriter, r *http.Request) {
	var req api.BatchSubmitRequest
	if err := decodeBodyMax(r, w, &req, s.opts.MaxBatchBodyBytes); err != nil {
		WriteError(w, err)
		return
	}
	switch n := len(req.Tasks); {
	case n == 0:
		WriteError(w, api.Errorf(api.CodeEmptyBatch, "a batch submit needs at least one task in \"tasks\""))
		return
	case n > api.MaxBatchTasks:
		WriteError(w, api.Errorf(api.CodeBatchTooLarge, "a batch submit holds at most %d tasks, got %d", api.MaxBatchTasks, n))
		return
	}
	results := make([]api.BatchResult, len(req.Tasks))
	allowed := make([]api.SubmitRequest, 0, len(req.Tasks))
	at := make([]int, 0, len(req.Tasks)) // allowed[j] is req.Tasks[at[j]]
	for i, t := range req.Tasks {
		if t.Type != "" { // without one the backend answers missing_type
			if err := authorize(r, acl.CapSubmit, t.Type); err != nil {
				results[i] = ErrorResult(err)
				continue
			}
		}
		allowed = append(allowed, t)
		at = append(at, i)
	}
	if len(allowed) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
		out, err := s.b.SubmitBatch(ctx, callerOf(r), allowed)
		cancel()
		if err == nil && len(out) != len(allowed) {
			err = fmt.Errorf("batch submit: %d results for %d tasks", len(out), len(allowed))
		}
		if err != nil {
			WriteError(w, err)
			return
		}
		for j, res := range out {
			results[at[j]] = res
		}
	}
	retryAfter := 0 // items refused for a cap (queue_full): the reply says when to try them again
	for _, r := range results {
		if r.Error != nil {
			retryAfter = max(retryAfter, r.Error.RetryAfter)
		}
	}
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	WriteJSON(w, http.StatusOK, api.BatchSubmitReply{Results: results})
}

// ErrorResult is a batch item's result for err, with the status and body WriteError would give it.
func ErrorResult(err error) api.BatchResult {
	ae := asAPIError(err)
	return api.BatchResult{Status: api.Status(ae.Code), Error: &api.Error{Message: ae.Message, Code: ae.Code, ExistingTask: ae.ExistingTask, RetryAfter: ae.RetryAfter}}
}

func (s *server) waitTask(ctx context.Context, id string, wait time.Duration, until func(api.Task) bool) (api.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.b.WaitTask(ctx, id, until)
}

func (s *server) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wait, err := waitParam(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	var index uint64
	if v := r.URL.Query().Get("index"); v != "" {
		if index, err = strconv.ParseUint(v, 10, 64); err != nil {
			WriteError(w, api.Errorf(api.CodeInvalidIndex, "index must be a non-negative integer"))
			return
		}
	}
	if err := s.consistent(r); err != nil {
		WriteError(w, err)
		return
	}
	// The type decides who may read the task, and it never changes: check it before waiting.
	t, err := s.taskFor(r, id, acl.CapRead)
	if err != nil {
		WriteError(w, err)
		return
	}
	if wait > 0 {
		if t, err = s.waitTask(r.Context(), id, wait, func(t api.Task) bool { return t.ModifyIndex > index }); err != nil {
			WriteError(w, err)
			return
		}
	}
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(t.ModifyIndex, 10))
	WriteJSON(w, http.StatusOK, t)
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	q, err := api.ParseListQuery(r.URL.Query())
	if err != nil {
		WriteError(w, err)
		return
	}
	index, wait, err := blockingParams(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	if err := s.consistent(r); err != nil {
		WriteError(w, err)
		return
	}
	caller := callerOf(r)
	var page api.TaskPage
	var at uint64
	if restricted(caller) {
		// The raft index would tell this caller when tasks it may not see change.
		page, at, err = s.visibleList(r.Context(), caller, q, index, wait)
	} else {
		if at = s.b.Index(); wait > 0 && at <= index {
			ctx, cancel := context.WithTimeout(r.Context(), wait)
			at = s.b.WaitIndex(ctx, index)
			cancel()
		}
		page, err = s.b.List(r.Context(), q, caller.CanRead)
	}
	if err != nil {
		WriteError(w, err)
		return
	}
	out := page.Tasks
	if page.Total >= 0 { // unknown when a filter no index counts is set
		w.Header().Set(api.HeaderTotal, strconv.Itoa(page.Total))
	}
	if page.Next != "" {
		w.Header().Set(api.HeaderNext, page.Next)
	}
	// The backend pages over visible tasks; filtering here too means no backend can leak one.
	if caller.Identity != nil {
		out = acl.FilterReadable(caller.Identity, out, func(t api.Task) string { return t.Type })
	}
	if out == nil {
		out = []api.Task{}
	}
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(at, 10))
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) cancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, err := s.taskFor(r, id, acl.CapCancel)
	if err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	t, err = s.b.Cancel(ctx, callerOf(r), id)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, t)
}

func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// Check the task first: once the stream has begun, the status is 200 whatever happens.
	_, err := s.taskFor(r, id, acl.CapLogs)
	if err != nil {
		WriteError(w, err)
		return
	}
	follow := r.URL.Query().Get("follow") == "true"
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	err = s.b.Logs(r.Context(), id, follow, func(l api.LogLine) {
		_ = enc.Encode(l)
		if follow && flusher != nil {
			flusher.Flush()
		}
	})
	if err != nil && r.Context().Err() == nil {
		s.log.Warn("task logs", "task", id, "err", err)
	}
}

func (s *server) cluster(w http.ResponseWriter, r *http.Request) {
	index, wait, err := blockingParams(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	c, hash, err := s.waitCluster(r.Context(), index, wait)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(hash, 10))
	WriteJSON(w, http.StatusOK, c)
}

func (s *server) types(w http.ResponseWriter, r *http.Request) {
	out, err := s.b.Types(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	if out == nil {
		out = []api.TypeInfo{}
	}
	out = visibleTypes(callerOf(r), out)
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) health(w http.ResponseWriter, r *http.Request) {
	h := s.b.Health(r.Context())
	status := http.StatusOK
	if h.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	WriteJSON(w, status, h)
}

func (s *server) leave(w http.ResponseWriter, r *http.Request) {
	reply, err := s.b.Leave(r.Context(), r.URL.Query().Get("force") == "true")
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, reply)
}

func (s *server) digest(w http.ResponseWriter, r *http.Request) {
	d, err := s.b.Digest(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, d)
}

func (s *server) joinToken(w http.ResponseWriter, r *http.Request) {
	tok, err := s.b.JoinToken(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, tok)
}

func (s *server) rotateJoinToken(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	tok, err := s.b.RotateJoinToken(ctx, callerOf(r))
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, tok)
}

func (s *server) keyring(w http.ResponseWriter, r *http.Request) {
	ring, err := s.b.Keyring(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, ring)
}

func (s *server) changeKeyring(w http.ResponseWriter, r *http.Request) {
	var req api.KeyringRequest
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	switch req.Op {
	case api.KeyringInstall, api.KeyringUse, api.KeyringRemove:
	default:
		WriteError(w, api.Errorf(api.CodeInvalidRequest, "op must be %s, %s or %s, not %q",
			api.KeyringInstall, api.KeyringUse, api.KeyringRemove, api.Truncate(req.Op)))
		return
	}
	if req.Key == "" {
		WriteError(w, api.Errorf(api.CodeInvalidRequest, "key is required (base64 of 16, 24 or 32 bytes)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	ring, err := s.b.ChangeKeyring(ctx, callerOf(r), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, ring)
}
