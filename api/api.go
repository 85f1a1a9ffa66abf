// Package api holds taskworker's wire types: the JSON shapes of the HTTP API (task record, submit
// request, cluster and node info, type info, log lines, list query, error body and codes). The
// server and the Go client both use these types, so the two cannot drift apart.
//
// It imports nothing of taskworker's: no raft, no FSM, no HTTP handlers.
package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Task states. A task ends in one of the last three; see IsTerminal.
const (
	StateScheduled = "scheduled" // a delayed task before its run_at; pending once due
	StatePending   = "pending"
	StateAssigned  = "assigned"
	StateRunning   = "running"
	// StateWaiting is a task waiting for its child tasks (ctx.WaitChildren): it holds no slot,
	// and is pending again once they have all finished.
	StateWaiting   = "waiting"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// States lists every task state, in lifecycle order.
var States = []string{StateScheduled, StatePending, StateAssigned, StateRunning, StateWaiting, StateSucceeded, StateFailed, StateCancelled}

// IsTerminal reports whether a task in state will not change any more.
func IsTerminal(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateCancelled
}

// History events.
const (
	EventAssigned    = "assigned"
	EventStarted     = "started"
	EventInterrupted = "interrupted"
	EventFailed      = "failed"
	EventSucceeded   = "succeeded"
	EventCancelled   = "cancelled"
	// EventRetried: sent back to pending by a retry request. EventWaiting: the attempt ended to
	// wait for child tasks; EventResumed: the last of them finished, and the task is pending.
	EventRetried = "retried"
	EventWaiting = "waiting"
	EventResumed = "resumed"
)

// Task is the task record (GET /v1/tasks/{id}, and every list item).
type Task struct {
	ID             string          `json:"id"`
	Type           string          `json:"type"`
	Version        string          `json:"version"`
	Input          json.RawMessage `json:"input"`
	State          string          `json:"state"`
	Node           string          `json:"node"`
	Attempt        int             `json:"attempt"`
	MaxAttempts    int             `json:"max_attempts"`
	Failures       int             `json:"failures"`
	Timeout        string          `json:"timeout"` // Go duration text, "30s"
	Result         json.RawMessage `json:"result"`
	Error          *TaskError      `json:"error"`
	IdempotencyKey string          `json:"idempotency_key"`
	ExecutionID    string          `json:"execution_id"`
	ParentID       string          `json:"parent_id,omitempty"`
	// SubmittedBy is who submitted the task with ACLs on: a token's accessor ID, a JWT's
	// subject, or "anonymous"; absent without ACLs. A child task records its parent's.
	SubmittedBy string `json:"submitted_by,omitempty"`
	// Schedule is the schedule that submitted the task; absent for others.
	Schedule        string          `json:"schedule,omitempty"`
	CreatedAt       time.Time       `json:"created_at"`
	StartedAt       *time.Time      `json:"started_at"`
	FinishedAt      *time.Time      `json:"finished_at"`
	NotBefore       *time.Time      `json:"not_before,omitempty"` // a retry waits until then
	CancelRequested bool            `json:"cancel_requested,omitempty"`
	Checkpoint      json.RawMessage `json:"checkpoint,omitempty"`
	CreateIndex     uint64          `json:"create_index"`
	ModifyIndex     uint64          `json:"modify_index"`
	History         []HistoryEntry  `json:"history"`
	// UniqueKey is the task's unique key, held until UniqueUntil (its creation plus unique_for).
	UniqueKey   string     `json:"unique_key,omitempty"`
	UniqueUntil *time.Time `json:"unique_until,omitempty"`
	// RunAt is when a delayed task is due (absent for a task due at once); Priority orders
	// placement, higher first; Queue is the task's queue ("default" unless it named one).
	RunAt    *time.Time `json:"run_at,omitempty"`
	Priority int        `json:"priority,omitempty"`
	Queue    string     `json:"queue,omitempty"`
	// ConcurrencyKey and ConcurrencyLimit: at most that many tasks with the key are assigned or
	// running at once (api/concurrency.go); from the submit, or the queue's key template.
	ConcurrencyKey   string `json:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `json:"concurrency_limit,omitempty"`
	// RateLimit and RateLimitKey name the rate limit bucket the task starts under; DebounceKey and
	// Debounce are its debounce (SubmitRequest).
	RateLimit    string `json:"rate_limit,omitempty"`
	RateLimitKey string `json:"rate_limit_key,omitempty"`
	DebounceKey  string `json:"debounce_key,omitempty"`
	Debounce     string `json:"debounce,omitempty"`
	// PendingReason says why a pending task waits when nothing can take it now (no node or
	// worker offers its type and version, its queue is paused, a limit is reached, every target
	// is busy, a retry backoff); absent otherwise. It is computed when the record is read.
	PendingReason string `json:"pending_reason,omitempty"`
	// TraceID is the W3C trace (32 hex digits) the task's spans belong to: the submit's
	// traceparent, or the trace the node started for it with tracing on; absent for none.
	TraceID string `json:"trace_id,omitempty"`
	// WaitFor are the child tasks the task's latest wait named (kept once it resumed: its next
	// attempt reads their results), and WaitLeft how many of them have not finished while it is
	// waiting.
	WaitFor  []string `json:"wait_for,omitempty"`
	WaitLeft int      `json:"wait_left,omitempty"`
}

// TaskError is why an attempt or a task failed.
type TaskError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
	// Final: the task said no retry could fix it, and it failed without another attempt.
	Final bool `json:"final,omitempty"`
}

// HistoryEntry is one event in a task's life.
type HistoryEntry struct {
	Attempt int       `json:"attempt"`
	Node    string    `json:"node"`
	Event   string    `json:"event"`
	At      time.Time `json:"at"`
	Error   string    `json:"error,omitempty"`
	// Final marks a failed event whose error was final (no retry followed it).
	Final bool `json:"final,omitempty"`
	// By is who asked for the event, on a "retried" event.
	By string `json:"by,omitempty"`
}

// SubmitRequest is the body of POST /v1/tasks; only Type is required. Zero values take the
// defaults: the newest version offered, 3 attempts, a 30 s timeout.
type SubmitRequest struct {
	Type           string          `json:"type"`
	Input          json.RawMessage `json:"input,omitempty"`
	Version        string          `json:"version,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	MaxAttempts    int             `json:"max_attempts,omitempty"`
	Timeout        string          `json:"timeout,omitempty"` // Go duration text, "30s"
	// ExecutionID and ParentID join a child task to its parent's execution (tasks.Context.Submit).
	ExecutionID string `json:"execution_id,omitempty"`
	ParentID    string `json:"parent_id,omitempty"`
	// UniqueKey refuses the submit (409 duplicate_unique_key) while a task of the same type with
	// the same key was created less than its UniqueFor ago; UniqueFor (Go duration text, at most
	// 30 days) is required with a key.
	UniqueKey string `json:"unique_key,omitempty"`
	UniqueFor string `json:"unique_for,omitempty"`
	// RunAt (RFC 3339) or Delay (Go duration text, "2s"), not both, delay the task: it is
	// scheduled until then.
	RunAt *time.Time `json:"run_at,omitempty"`
	Delay string     `json:"delay,omitempty"`
	// Priority orders placement, higher first, between -MaxPriority and MaxPriority (0 by default);
	// a task gains one point per 10 s it waits (ageing), up to 10 points.
	Priority int `json:"priority,omitempty"`
	// Queue names the task's queue (QueueName rules; "default" when empty).
	Queue string `json:"queue,omitempty"`
	// ConcurrencyKey, with ConcurrencyLimit (1..MaxConcurrencyLimit), holds the task to at most
	// that many tasks with the key assigned or running at once, cluster-wide; both or neither.
	// Without them the queue's key template, if any, makes the key.
	ConcurrencyKey   string `json:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `json:"concurrency_limit,omitempty"`
	// RateLimit names a rate limit (POST /v1/rate-limits/{name}) the task starts under; with
	// RateLimitKey, under that key's own bucket of the limit (one per tenant, say).
	RateLimit    string `json:"rate_limit,omitempty"`
	RateLimitKey string `json:"rate_limit_key,omitempty"`
	// DebounceKey with Debounce (Go duration text, at most 24h) debounces the submit: while a
	// task of the type with the key waits to start, the submit replaces that task's input and
	// restarts its window, and answers 200 with that task; the task runs once the key was quiet
	// for the window. Not with run_at, delay or unique_key.
	DebounceKey string `json:"debounce_key,omitempty"`
	Debounce    string `json:"debounce,omitempty"`
}

// Cluster is GET /v1/cluster: the cluster at a glance.
type Cluster struct {
	Leader string         `json:"leader"`
	Nodes  []NodeInfo     `json:"nodes"`
	Tasks  map[string]int `json:"tasks"` // count by state
	// Workers are the cluster's workers (worker.go), as GET /v1/workers lists them.
	Workers []WorkerInfo `json:"workers"`
	// TraceURLTemplate is the answering node's link from a task to its trace
	// (--trace-url-template: an http or https URL with {trace_id} in it); absent for none.
	TraceURLTemplate string `json:"trace_url_template,omitempty"`
}

// Gossip states of a node in NodeInfo.State.
const (
	NodeAlive   = "alive"
	NodeSuspect = "suspect"
	NodeDead    = "dead"
	NodeLeft    = "left"
)

// Raft roles in NodeInfo.RaftRole.
const (
	RoleLeader   = "leader"
	RoleVoter    = "voter"
	RoleNonvoter = "nonvoter"
	RoleNone     = "none"
)

// NodeInfo is one node as the cluster sees it.
type NodeInfo struct {
	Name string `json:"name"`
	// ID is the node's raft server ID: made on its first start and kept in its data dir, so a
	// node restarted on an empty dir has a new one; a node of a release before raft IDs (or
	// whose data dir predates them) runs under its name. Empty when unknown.
	ID         string `json:"id,omitempty"`
	GossipAddr string `json:"gossip_addr"`
	RaftAddr   string `json:"raft_addr"`
	HTTPAddr   string `json:"http_addr"`
	State      string `json:"state"`
	Draining   bool   `json:"draining"`
	// DrainDeadline is when a draining node hands back the tasks still running on it, as it
	// gossips it; absent when the node is not draining (or is of an older version).
	DrainDeadline *time.Time    `json:"drain_deadline,omitempty"`
	RaftRole      string        `json:"raft_role"`
	Capacity      int           `json:"capacity"`
	Running       int           `json:"running"`
	Version       string        `json:"version"`
	TaskTypes     []TypeVersion `json:"task_types"`
	BootID        string        `json:"boot_id"`
	// Insecure: the node runs without encryption and authentication between nodes (--insecure),
	// as it gossips about itself.
	Insecure bool `json:"insecure"`
	// StartedAt is when the node's process started, as it gossips it; null when unknown (a node
	// of an older version).
	StartedAt *time.Time `json:"started_at"`
	// CommitIndex and AppliedIndex are the node's raft commit and applied index: live for the
	// node answering, otherwise as the node last gossiped them (about once a second); 0 when
	// unknown.
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// Lag is how many log entries the node's applied index is behind the leader's commit index
	// (0 for the leader itself); null when either is unknown.
	Lag *uint64 `json:"lag"`
}

// TypeVersion names one version of a task type.
type TypeVersion struct {
	Type    string `json:"type"`
	Version string `json:"version"`
}

// TypeInfo is one item of GET /v1/types: a task type and version the cluster can run.
type TypeInfo struct {
	Type         string          `json:"type"`
	Version      string          `json:"version"`
	Description  string          `json:"description"`
	ExampleInput json.RawMessage `json:"example_input"`
	Nodes        []string        `json:"nodes"`   // alive nodes that offer it
	Pending      int             `json:"pending"` // tasks of this type and version waiting for a slot
}

// Log streams in LogLine.Stream.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamLog    = "log"
)

// LogLine is one line of a task's output (GET /v1/tasks/{id}/logs, one JSON object per line).
type LogLine struct {
	TS      time.Time `json:"ts"`
	Attempt int       `json:"attempt"`
	Node    string    `json:"node"`
	Stream  string    `json:"stream"`
	Level   string    `json:"level"` // "" for stdout and stderr; always present, as before api/
	Line    string    `json:"line"`
}

// Health statuses: HealthOK answers 200, the others 503.
const (
	HealthOK          = "ok"
	HealthUnavailable = "unavailable" // not a member yet, or no leader known
	HealthHalted      = "halted"      // the FSM met a log entry this build cannot apply
	HealthDraining    = "draining"    // a graceful leave is under way: send new work elsewhere
	// HealthStorageFault: the node cannot persist (a full or failed disk, its data dir gone);
	// the cluster runs its tasks elsewhere until its writes succeed again.
	HealthStorageFault = "storage_fault"
)

// HeaderLeaderAddr, on a 503 shutting_down, is the HTTP host:port of the cluster's leader as the
// leaving node last knew it ("" when it knew none), so a client has somewhere to go.
const HeaderLeaderAddr = "X-Taskworker-Leader-Addr"

// List paging headers of GET /v1/tasks (the body stays a JSON array).
const (
	// HeaderNext is the opaque cursor of the next page, passed back as ?next=; absent on the last
	// page.
	HeaderNext = "X-Taskworker-Next"
	// HeaderTotal is how many tasks match the filter, all pages together.
	HeaderTotal = "X-Taskworker-Total"
)

// TaskPage is one page of GET /v1/tasks with its paging headers.
type TaskPage struct {
	Tasks []Task
	Next  string // HeaderNext: "" on the last page
	Total int    // HeaderTotal
}

// Health is GET /v1/health: Status is HealthOK (200) or why the node cannot serve (503).
type Health struct {
	Status string `json:"status"`
	Leader string `json:"leader"`
	Reason string `json:"reason,omitempty"` // why a node that is not "ok" cannot serve
}

// LeaveReply is POST /v1/agent/leave's 202.
type LeaveReply struct {
	Status string `json:"status"`
	Node   string `json:"node"`
}

// List limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// ListQuery filters and pages GET /v1/tasks. Empty fields match everything; a list is newest
// first, and the next page starts at the cursor Next a page returned (HeaderNext), or After the
// last ID of this one.
type ListQuery struct {
	State     string
	Type      string
	Node      string
	Execution string
	Limit     int // 0 = DefaultListLimit
	After     string
	Next      string // opaque cursor from HeaderNext
	// SubmittedBy keeps tasks submitted by one caller (the task record's submitted_by).
	SubmittedBy string
	// Since and Until keep tasks created at or after, and before, these times (zero: open).
	Since, Until time.Time
	// Queue keeps the tasks of one queue ("default" for those that name none).
	Queue string
}

// Values encodes the query as URL parameters, leaving out zero fields.
func (q ListQuery) Values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"state": q.State, "type": q.Type, "node": q.Node, "execution": q.Execution, "after": q.After, "next": q.Next} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.SubmittedBy != "" {
		v.Set("submitted_by", q.SubmittedBy)
	}
	if q.Queue != "" {
		v.Set("queue", q.Queue)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	return v
}

// ParseListQuery reads a ListQuery from URL parameters; a bad value is an *Error with its code.
func ParseListQuery(v url.Values) (ListQuery, error) {
	q := ListQuery{
		State: v.Get("state"), Type: v.Get("type"), Node: v.Get("node"),
		Execution: v.Get("execution"), After: v.Get("after"), Next: v.Get("next"), Limit: DefaultListLimit,
		SubmittedBy: v.Get("submitted_by"), Queue: v.Get("queue"),
	}
	for name, at := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return q, Errorf(CodeInvalidTime, "%s must be an RFC 3339 time such as 2026-12-01T15:04:05Z, got %q", name, Truncate(s))
		}
		*at = t
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return q, Errorf(CodeInvalidTime, "until must be after since")
	}
	if q.State != "" && !validState(q.State) {
		return q, Errorf(CodeInvalidState, "unknown state %q; valid states: %v", Truncate(q.State), States)
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxListLimit {
			return q, Errorf(CodeInvalidLimit, "limit must be between 1 and %d", MaxListLimit)
		}
		q.Limit = n
	}
	return q, nil
}

func validState(s string) bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// Truncate shortens client-sent text for an error message, so an error never echoes more than a
// short prefix of what was sent.
func Truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// Code is the machine-readable part of an error body; clients branch on it.
type Code string

// Error codes. The HTTP status for each is Status(code).
const (
	CodeInvalidRequest       Code = "invalid_request"
	CodeMissingType          Code = "missing_type"
	CodeUnknownTaskType      Code = "unknown_task_type"
	CodeInvalidInput         Code = "invalid_input"
	CodeInvalidMaxAttempts   Code = "invalid_max_attempts"
	CodeInvalidTimeout       Code = "invalid_timeout"
	CodeInvalidIdempotency   Code = "invalid_idempotency_key"
	CodeInvalidVersion       Code = "invalid_version"
	CodeInvalidWait          Code = "invalid_wait"
	CodeInvalidIndex         Code = "invalid_index"
	CodeInvalidState         Code = "invalid_state"
	CodeInvalidLimit         Code = "invalid_limit"
	CodeInvalidCursor        Code = "invalid_cursor" // a ?next= cursor the server did not make
	CodeInvalidTime          Code = "invalid_time"   // a ?since= or ?until= that is not an RFC 3339 time
	CodeInvalidAttempt       Code = "invalid_attempt"
	CodeInvalidPriority      Code = "invalid_priority"
	CodeInvalidQueue         Code = "invalid_queue" // a queue name that breaks the rules, or a bad limit
	CodeUnauthorized         Code = "unauthorized"
	CodeForbidden            Code = "forbidden"
	CodeNotFound             Code = "not_found"
	CodeAlreadyFinished      Code = "already_finished"
	CodeLeaveRefused         Code = "leave_refused"
	CodeBodyTooLarge         Code = "body_too_large"
	CodeUnsupportedMediaType Code = "unsupported_media_type"
	CodeNoLeader             Code = "no_leader"
	CodeNotLeader            Code = "not_leader"
	CodeShuttingDown         Code = "shutting_down"
	CodeCancelled            Code = "cancelled"
	CodeInternal             Code = "internal"
	CodeInputTooLarge        Code = "input_too_large"      // a task's input is over the node's cap
	CodeResultTooLarge       Code = "result_too_large"     // a task's result is over the cap (a task error type)
	CodeRateLimited          Code = "rate_limited"         // over the client's request rate; see Retry-After
	CodeTooManyConnections   Code = "too_many_connections" // over the client's open connections
	CodeBatchTooLarge        Code = "batch_too_large"      // a batch submit of more than MaxBatchTasks tasks
	CodeEmptyBatch           Code = "empty_batch"          // a batch submit without tasks
	// ACL codes (api/acl.go).
	CodeACLDisabled         Code = "acl_disabled"          // an ACL route on a cluster without --acl
	CodeACLBootstrapped     Code = "acl_bootstrapped"      // bootstrap was done before
	CodeInvalidPolicy       Code = "invalid_policy"        // a policy document that does not validate
	CodeInvalidTokenRequest Code = "invalid_token_request" // a token request that does not validate
	// CodeNotSecure: an operator route about trust material on a node that has none of that kind
	// (an --insecure cluster has no join token; operator certificates mean no join token either).
	CodeNotSecure Code = "not_secure"
	// CodeKeyringConflict: a keyring change that would break gossip (removing the primary key).
	CodeKeyringConflict Code = "keyring_conflict"
	// CodeNameInUse: a node's registration under the name of another live node (internode only).
	CodeNameInUse Code = "name_in_use"
	// CodeStorageUnavailable: the node called cannot persist (see HealthStorageFault); send the
	// request to another node.
	CodeStorageUnavailable Code = "storage_unavailable"
	// CodeInvalidSchedule: a schedule that does not validate (name, cron spec, time zone,
	// overlap policy, catch_up, start after end), or a submit's bad run_at or delay (or both).
	CodeInvalidSchedule Code = "invalid_schedule"
	// CodeQueueFull: the cluster holds its cap of tasks waiting to run (--max-pending); nothing
	// was stored. Retry after the Retry-After header's seconds.
	CodeQueueFull Code = "queue_full"
	// CodeQuotaExceeded: the caller's principal holds its cap of tasks waiting to run, or of
	// schedules (its ACL policies' quota, else the agent's --quota-* settings); nothing was stored.
	CodeQuotaExceeded Code = "quota_exceeded"
	// CodeScheduleTooFrequent: a schedule whose ticks come closer than the principal's minimum
	// interval.
	CodeScheduleTooFrequent Code = "schedule_too_frequent"
)

var statusOf = map[Code]int{
	CodeInvalidRequest: 400, CodeMissingType: 400, CodeUnknownTaskType: 400, CodeInvalidInput: 400,
	CodeInvalidMaxAttempts: 400, CodeInvalidTimeout: 400, CodeInvalidIdempotency: 400, CodeInvalidVersion: 400,
	CodeInvalidWait: 400, CodeInvalidIndex: 400, CodeInvalidState: 400, CodeInvalidLimit: 400, CodeInvalidCursor: 400, CodeInvalidTime: 400, CodeInvalidAttempt: 400,
	CodeInvalidPriority: 400, CodeInvalidQueue: 400,
	CodeUnauthorized: 401, CodeForbidden: 403, CodeNotFound: 404,
	CodeAlreadyFinished: 409, CodeLeaveRefused: 409, CodeNotSecure: 409, CodeKeyringConflict: 409, CodeNameInUse: 409,
	CodeBodyTooLarge: 413, CodeInputTooLarge: 413, CodeResultTooLarge: 413, CodeUnsupportedMediaType: 415,
	CodeBatchTooLarge: 400, CodeEmptyBatch: 400, CodeInvalidSchedule: 400, CodeScheduleTooFrequent: 400,
	CodeRateLimited: 429, CodeTooManyConnections: 429, CodeQueueFull: 429, CodeQuotaExceeded: 429,
	CodeNoLeader: 503, CodeNotLeader: 503, CodeShuttingDown: 503, CodeCancelled: 503, CodeStorageUnavailable: 503,
	CodeInternal:    500,
	CodeACLDisabled: 400, CodeACLBootstrapped: 409, CodeInvalidPolicy: 400, CodeInvalidTokenRequest: 400,
}

// Status is the HTTP status that goes with a code (500 for a code it does not know).
func Status(c Code) int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return 500
}

// Error is the API's error body, {"error": "human sentence", "code": "snake_case_code"}, and a Go
// error that carries its code from the server to the client. StatusCode is set by the client from
// the response; the server derives it from the code.
type Error struct {
	Message string `json:"error"`
	Code    Code   `json:"code"`
	// ExistingTask is set with duplicate_unique_key: the task that holds the key.
	ExistingTask string `json:"existing_task,omitempty"`
	StatusCode   int    `json:"-"`
	// LeaderAddr is set by the client from HeaderLeaderAddr: where a leaving node sends its clients.
	LeaderAddr string `json:"-"`
	// RetryAfter, in seconds, is sent as the Retry-After header with a 429 (queue_full,
	// quota_exceeded); 0 sends none.
	RetryAfter int `json:"-"`
}

// Errorf makes an *Error with a code.
func Errorf(code Code, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...), StatusCode: Status(code)}
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("%s (%d)", e.Message, e.StatusCode)
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.StatusCode, e.Code)
}

// Is makes errors.Is(err, &api.Error{Code: c}) match any error with code c.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Message == ""
}
