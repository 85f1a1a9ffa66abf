// Package client is the taskworker HTTP API as typed Go calls. The JSON shapes
// are the api package's, which the server uses too, so the two cannot drift;
// it knows nothing of raft, gossip or the FSM.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
)

// Task states. A task ends in one of the last three; see IsTerminal.
const (
	StateScheduled = api.StateScheduled
	StatePending   = api.StatePending
	StateAssigned  = api.StateAssigned
	StateRunning   = api.StateRunning
	StateWaiting   = api.StateWaiting // waiting for its child tasks, without a slot
	StateSucceeded = api.StateSucceeded
	StateFailed    = api.StateFailed
	StateCancelled = api.StateCancelled
)

// Gossip states of a node in NodeInfo.State.
const (
	NodeAlive   = api.NodeAlive
	NodeSuspect = api.NodeSuspect
	NodeDead    = api.NodeDead
	NodeLeft    = api.NodeLeft
)

// The wire types are the api package's, shared with the server; these names keep client code
// short and older callers compiling.
type (
	// Task is the task record.
	Task = api.Task
	// TaskError is why a task failed.
	TaskError = api.TaskError
	// HistoryEntry is one event in a task's life.
	HistoryEntry = api.HistoryEntry
	// SubmitRequest is the body of POST /v1/tasks; only Type is required.
	SubmitRequest = api.SubmitRequest
	// Cluster is the cluster at a glance.
	Cluster = api.Cluster
	// NodeInfo is one node as the cluster sees it.
	NodeInfo = api.NodeInfo
	// TypeVersion names one version of a task type.
	TypeVersion = api.TypeVersion
	// TypeInfo is a task type the cluster can run.
	TypeInfo = api.TypeInfo
	// LogLine is one line of a task's output.
	LogLine = api.LogLine
	// ListOptions filter and page GET /v1/tasks; zero fields are left out.
	ListOptions = api.ListQuery
	// APIError is a non-2xx answer from the API; errors.Is(err, &APIError{Code: c}) matches a code.
	APIError = api.Error
	// BatchResult is one task's outcome in SubmitBatch: Status 201 (created) or 200 (idempotency
	// key seen before) with Task, or an error status with Error.
	BatchResult = api.BatchResult
)

// MaxBatchTasks is how many tasks one batch request holds; SubmitBatch sends longer lists in
// requests of this size.
const MaxBatchTasks = api.MaxBatchTasks

// IsNotFound reports whether err is the API's 404.
func IsNotFound(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound
}

// IsTerminal reports whether a task in state will not change any more.
func IsTerminal(state string) bool { return api.IsTerminal(state) }

// Client calls one node's HTTP API; any node answers every request.
type Client struct {
	base  string
	token string
	hc    *http.Client
	// customHC is set by WithHTTPClient: TLS options then go into a copy of its transport.
	customHC bool
	tls      tlsOptions
	// err is a bad option, found by New; every call returns it (see Err).
	err error
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends token as a bearer token on every request.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient uses hc instead of a default client. Blocking queries and log
// streams last long, so bound requests with contexts rather than hc.Timeout.
// TLS options apply to a copy of hc's transport, which must then be nil or an *http.Transport.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc, c.customHC = hc, true }
}

// New returns a client for the node at addr, a URL like http://127.0.0.1:7948
// or https://node1:7948, or a bare host:port (HTTPS when a TLS option is given,
// HTTP otherwise). A bad option (an unreadable CA file, a malformed fingerprint,
// TLS options with an http:// address) does not stop New: every call returns
// the error instead, and Err reports it at once.
func New(addr string, opts ...Option) *Client {
	c := &Client{hc: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	if !strings.Contains(addr, "://") {
		scheme := "http://"
		if c.tls.any() {
			scheme = "https://"
		}
		addr = scheme + addr
	}
	c.base = strings.TrimRight(addr, "/")
	c.err = c.applyTLS()
	return c
}

// Err is the error of a bad option given to New, or nil; every call of a client
// with a bad option fails with it.
func (c *Client) Err() error { return c.err }

// Submit submits a task. created is false when the idempotency key was seen
// before and the existing record is returned.
//
// A ctx that carries an OpenTelemetry span sends its W3C trace context (traceparent): the task's
// spans join the caller's trace, and Task.TraceID names it.
func (c *Client) Submit(ctx context.Context, req SubmitRequest) (task *Task, created bool, err error) {
	task = new(Task)
	status, err := c.do(ctx, http.MethodPost, "/v1/tasks", nil, req, task)
	if err != nil {
		return nil, false, err
	}
	return task, status == http.StatusCreated, nil
}

// SubmitBatch submits many tasks with few requests (POST /v1/tasks/batch, MaxBatchTasks tasks
// each, one raft entry each) and returns one result per request, in order: a task that fails
// fails alone, with its Error set. An error means the request of some batch failed as a whole;
// the results of the batches sent before it are returned with it.
func (c *Client) SubmitBatch(ctx context.Context, reqs []SubmitRequest) ([]BatchResult, error) {
	out := make([]BatchResult, 0, len(reqs))
	for len(reqs) > 0 {
		n := min(len(reqs), MaxBatchTasks)
		var reply api.BatchSubmitReply
		if _, err := c.do(ctx, http.MethodPost, api.PathTasksBatch, nil, api.BatchSubmitRequest{Tasks: reqs[:n]}, &reply); err != nil {
			return out, err
		}
		if len(reply.Results) != n {
			return out, fmt.Errorf("POST %s: %d results for %d tasks", api.PathTasksBatch, len(reply.Results), n)
		}
		for i := range reply.Results {
			if e := reply.Results[i].Error; e != nil {
				e.StatusCode = reply.Results[i].Status
			}
		}
		out = append(out, reply.Results...)
		reqs = reqs[n:]
	}
	return out, nil
}

// SubmitWait submits a task and holds the reply until the task ends or wait
// elapses; the returned record may still be in progress.
func (c *Client) SubmitWait(ctx context.Context, req SubmitRequest, wait time.Duration) (*Task, error) {
	task := new(Task)
	q := url.Values{"wait": {wait.String()}}
	if _, err := c.do(ctx, http.MethodPost, "/v1/tasks", q, req, task); err != nil {
		return nil, err
	}
	return task, nil
}

// Get returns a task record.
func (c *Client) Get(ctx context.Context, id string) (*Task, error) {
	return c.Wait(ctx, id, 0, 0)
}

// GetConsistent reads a task as the leader holds it (?consistent): the answer reflects every
// write the cluster acknowledged before the call, whichever node is asked. It costs a round
// trip to the leader and a raft round there; Get reads this node's replica, which may lag.
func (c *Client) GetConsistent(ctx context.Context, id string) (*Task, error) {
	task := new(Task)
	if _, err := c.do(ctx, http.MethodGet, taskPath(id), url.Values{"consistent": {"true"}}, nil, task); err != nil {
		return nil, err
	}
	return task, nil
}

// Wait is a blocking query: it returns the task once its modify index exceeds
// index, or as it is when wait elapses. A zero wait does not block.
func (c *Client) Wait(ctx context.Context, id string, index uint64, wait time.Duration) (*Task, error) {
	var q url.Values
	if wait > 0 {
		q = url.Values{"wait": {wait.String()}, "index": {strconv.FormatUint(index, 10)}}
	}
	task := new(Task)
	if _, err := c.do(ctx, http.MethodGet, taskPath(id), q, nil, task); err != nil {
		return nil, err
	}
	return task, nil
}

// How long one blocking query of WaitDone lasts, and how long it pauses before
// asking again after an unchanged answer or a 503 (say, during an election).
const (
	waitChunk  = time.Minute
	retryPause = 250 * time.Millisecond
)

// WaitDone blocks until the task has ended or ctx is done.
func (c *Client) WaitDone(ctx context.Context, id string) (*Task, error) {
	return c.waitDone(ctx, id, nil)
}

// waitDone is WaitDone calling seen (when not nil) with every version of the record it gets.
func (c *Client) waitDone(ctx context.Context, id string, seen func(*Task)) (*Task, error) {
	var index uint64
	for {
		task, err := c.Wait(ctx, id, index, waitChunk)
		if err == nil && seen != nil {
			seen(task)
		}
		var apiErr *APIError
		switch {
		case err == nil && IsTerminal(task.State):
			return task, nil
		case err == nil && task.ModifyIndex > index:
			index = task.ModifyIndex
			continue
		case err != nil && (NodeGone(err) || !(errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusServiceUnavailable)):
			// A 503 while the cluster elects a leader passes; a node that goes away does not
			// come back (Roaming carries the wait over to another).
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for task %s: %w", id, ctx.Err())
		case <-time.After(retryPause):
		}
	}
}

// List returns tasks, newest first.
func (c *Client) List(ctx context.Context, opts ListOptions) ([]Task, error) {
	var raw json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, "/v1/tasks", opts.Values(), nil, &raw); err != nil {
		return nil, err
	}
	// The contract leaves the list's envelope open: accept a bare array or {"tasks": [...]}.
	var tasks []Task
	if raw = bytes.TrimSpace(raw); len(raw) > 0 && raw[0] == '{' {
		var page struct {
			Tasks []Task `json:"tasks"`
		}
		err := json.Unmarshal(raw, &page)
		return page.Tasks, wrapDecode("GET /v1/tasks", err)
	}
	return tasks, wrapDecode("GET /v1/tasks", json.Unmarshal(raw, &tasks))
}

// TaskPage is one page of a list: its tasks, the cursor of the next page
// ("" on the last) and how many tasks match the filter on every page.
type TaskPage struct {
	Tasks []Task
	Next  string
	Total int
}

// ListPage returns one page of tasks, newest first, with the cursor of the
// next page: pass it back as opts.Next. Total is -1 when the server did not
// say (a node of an older release).
func (c *Client) ListPage(ctx context.Context, opts ListOptions) (*TaskPage, error) {
	const what = "GET /v1/tasks"
	resp, err := c.send(ctx, http.MethodGet, "/v1/tasks", opts.Values(), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	page := &TaskPage{Next: resp.Header.Get(api.HeaderNext), Total: -1}
	if s := resp.Header.Get(api.HeaderTotal); s != "" {
		if page.Total, err = strconv.Atoi(s); err != nil {
			return nil, fmt.Errorf("%s: %s header %q: %w", what, api.HeaderTotal, s, err)
		}
	}
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return nil, wrapDecode(what, err)
	}
	if raw = bytes.TrimSpace(raw); len(raw) > 0 && raw[0] == '{' {
		var env struct {
			Tasks []Task `json:"tasks"`
		}
		err = json.Unmarshal(raw, &env)
		page.Tasks = env.Tasks
	} else {
		err = json.Unmarshal(raw, &page.Tasks)
	}
	return page, wrapDecode(what, err)
}

// ListAll yields every task matching opts, newest first, fetching a page at a
// time with the server's cursor; it stops at the first error, which it yields.
func (c *Client) ListAll(ctx context.Context, opts ListOptions) iter.Seq2[Task, error] {
	return func(yield func(Task, error) bool) {
		for {
			page, err := c.ListPage(ctx, opts)
			if err != nil {
				yield(Task{}, err)
				return
			}
			for _, t := range page.Tasks {
				if !yield(t, nil) {
					return
				}
			}
			if page.Next == "" || len(page.Tasks) == 0 {
				return
			}
			opts.Next, opts.After = page.Next, ""
		}
	}
}

// Cancel cancels a task: a pending one never runs, a running one has its
// context cancelled.
func (c *Client) Cancel(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, taskPath(id)+"/cancel", nil, nil, nil)
	return err
}

// CancelTask is Cancel returning the task's record as the node answered it, once the cancel has
// applied there: cancelled (it was not running yet), or still running with CancelRequested set
// until its executor stops it.
func (c *Client) CancelTask(ctx context.Context, id string) (*Task, error) {
	task := new(Task)
	if _, err := c.do(ctx, http.MethodPost, taskPath(id)+"/cancel", nil, nil, task); err != nil {
		return nil, err
	}
	return task, nil
}

// Logs calls fn with each line of a task's output as it arrives. With follow
// it streams until the task ends. An error from fn stops the stream and is returned.
func (c *Client) Logs(ctx context.Context, id string, follow bool, fn func(LogLine) error) error {
	var q url.Values
	if follow {
		q = url.Values{"follow": {"true"}}
	}
	path := taskPath(id) + "/logs"
	resp, err := c.send(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var line LogLine
		if err := dec.Decode(&line); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("GET %s: read: %w", path, err)
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}

// Exec submits a task, passes its output to onLog as it happens (when onLog
// is not nil) and returns the record once the task has ended. It is ExecWith with only OnLog.
func (c *Client) Exec(ctx context.Context, req SubmitRequest, onLog func(LogLine)) (*Task, error) {
	return c.ExecWith(ctx, req, ExecHooks{OnLog: onLog})
}

// ExecHooks are what ExecWith reports while a task runs; nil ones are skipped. ExecWith calls
// them one at a time, never concurrently, so they may share a writer.
type ExecHooks struct {
	// OnSubmit gets the record the submit returned, before anything waits, so the caller can
	// always find the task again; created is false when the idempotency key was seen before and
	// the record is that earlier task's.
	OnSubmit func(task *Task, created bool)
	// OnLog gets each line of the task's output, in order, each once.
	OnLog func(LogLine)
	// OnRetry gets each failed or interrupted attempt that the task will run again after.
	OnRetry func(failed HistoryEntry)
	// OnMove is told when the node went away and the wait carries on at another (Roaming).
	OnMove func(from, to string, why error)
}

// ExecWith submits a task, follows its output and its record at once (the record to see
// retries as they happen), and returns the finished record after the last output line. The
// submit goes to c's node only; the wait and the log stream then move to another member when
// that node goes away (a graceful leave included), without submitting again. Output cannot fail
// the call: when the log stream breaks, the lines it missed are fetched once the task has ended.
// An error after the submit names the task.
func (c *Client) ExecWith(ctx context.Context, req SubmitRequest, h ExecHooks) (*Task, error) {
	task, created, err := c.Submit(ctx, req)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex // the hooks run one at a time
	call := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		f()
	}
	if h.OnSubmit != nil {
		call(func() { h.OnSubmit(task, created) })
	}
	// A Roaming client is not safe for concurrent use: the log follow and the wait each have
	// their own, and the wait's reports the moves.
	var moved func(from, to string, why error)
	if h.OnMove != nil {
		moved = func(from, to string, why error) { call(func() { h.OnMove(from, to, why) }) }
	}
	waits := c.Roaming(ctx, moved)
	logDone := make(chan error, 1)
	var lines *logDedup
	var logs *Roaming
	if h.OnLog != nil {
		lines = newLogDedup(func(l LogLine) error { call(func() { h.OnLog(l) }); return nil })
		logs = c.Roaming(ctx, nil)
		go func() { logDone <- logs.followLogs(ctx, task.ID, lines.emit) }()
	} else {
		logDone <- nil
	}
	reported := 0 // history entries already looked at for retries
	done, err := waits.waitDone(ctx, task.ID, func(t *Task) {
		if h.OnRetry == nil {
			return
		}
		for ; reported < len(t.History); reported++ {
			e := t.History[reported]
			final := reported == len(t.History)-1 && IsTerminal(t.State)
			if (e.Event == api.EventFailed || e.Event == api.EventInterrupted) && !final {
				call(func() { h.OnRetry(e) })
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", task.ID, err)
	}
	if logErr := <-logDone; logErr != nil {
		// Best effort: the record, not its output, is what Exec returns. Lines already shown
		// are skipped.
		_ = waits.Client().Logs(ctx, task.ID, false, lines.emit)
	}
	return done, nil
}

// Cluster returns the leader, every node and the task counts by state.
func (c *Client) Cluster(ctx context.Context) (*Cluster, error) {
	cl := new(Cluster)
	if _, err := c.do(ctx, http.MethodGet, "/v1/cluster", nil, nil, cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// Types returns the task types the cluster can run.
func (c *Client) Types(ctx context.Context) ([]TypeInfo, error) {
	var types []TypeInfo
	if _, err := c.do(ctx, http.MethodGet, "/v1/types", nil, nil, &types); err != nil {
		return nil, err
	}
	return types, nil
}

// Health returns the leader's name when the node is a member and a leader is
// known; otherwise an *APIError with status 503.
func (c *Client) Health(ctx context.Context) (leader string, err error) {
	var h api.Health
	if _, err := c.do(ctx, http.MethodGet, "/v1/health", nil, nil, &h); err != nil {
		return "", err
	}
	return h.Leader, nil
}

// Leave asks the node to leave the cluster gracefully; it answers at once and
// then drains. force makes it leave even as the last node or when its leave would break raft quorum (it still drains).
func (c *Client) Leave(ctx context.Context, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	_, err := c.do(ctx, http.MethodPost, "/v1/agent/leave", q, nil, nil)
	return err
}

// Raw returns the JSON body of a GET as the API sent it, for callers that print it unchanged.
func (c *Client) Raw(ctx context.Context, path string, q url.Values) (json.RawMessage, error) {
	var raw json.RawMessage
	_, err := c.do(ctx, http.MethodGet, path, q, nil, &raw)
	return raw, err
}

// TaskPath is the API path of a task.
func TaskPath(id string) string { return "/v1/tasks/" + url.PathEscape(id) }

func taskPath(id string) string { return TaskPath(id) }

// do sends a request with body (when not nil) as JSON and decodes the answer
// into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) (int, error) {
	resp, err := c.send(ctx, method, path, q, body)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body) // lets the connection be reused
		return resp.StatusCode, nil
	}
	return resp.StatusCode, wrapDecode(method+" "+path, json.NewDecoder(resp.Body).Decode(out))
}

// plainToTLS is what Go's HTTPS server answers, with a 400, to a request in plain HTTP.
const plainToTLS = "Client sent an HTTP request to an HTTPS server"

// send returns the response to a request when its status is 2xx, and an
// *APIError otherwise. The caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	if c.err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, c.err)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	setTraceparent(ctx, req.Header)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err // a *url.Error, which names the method and URL
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	apiErr := &APIError{StatusCode: resp.StatusCode, LeaderAddr: resp.Header.Get(api.HeaderLeaderAddr)}
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10)); err == nil {
		_ = json.Unmarshal(b, apiErr) // not JSON: fall back to the status text below
		if resp.StatusCode == http.StatusBadRequest && bytes.Contains(b, []byte(plainToTLS)) {
			apiErr.Message = fmt.Sprintf("%s serves HTTPS: use %s", strings.TrimSuffix(c.base, "/"), "https://"+strings.TrimPrefix(c.base, "http://"))
		}
	}
	if apiErr.Message == "" {
		apiErr.Message = http.StatusText(resp.StatusCode)
	}
	if apiErr.ExistingTask == "" {
		apiErr.ExistingTask = resp.Header.Get(api.HeaderExistingTask)
	}
	return nil, fmt.Errorf("%s %s: %w", method, path, apiErr)
}

func wrapDecode(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: decode answer: %w", what, err)
	}
	return nil
}

// setTraceparent sets the W3C trace context of the span ctx carries, if any, on a request: a
// submit continues the caller's trace. Only the API package of OpenTelemetry is needed for it.
func setTraceparent(ctx context.Context, h http.Header) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return
	}
	h.Set("Traceparent", "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-"+sc.TraceFlags().String())
	if ts := sc.TraceState().String(); ts != "" {
		h.Set("Tracestate", ts)
	}
}
