package api

import (
	"encoding/json"
	"time"
)

// The worker protocol (docs/workers.md): a process outside the agent registers with a node, its
// host, takes assignments by long polling and reports events.

// Paths of the worker protocol. {id} is the session ID registration returns.
const (
	PathWorkers = "/v1/workers"
)

// Codes of the worker protocol.
const (
	// CodeInvalidWorker: a registration field out of range.
	CodeInvalidWorker Code = "invalid_worker"
	// CodeWorkerExists: a worker of that name holds a lease, or a node has that name.
	CodeWorkerExists Code = "worker_exists"
	// CodeUnknownWorker: the session is gone (lease lost, token revoked, host restarted) or
	// never was.
	CodeUnknownWorker Code = "unknown_worker"
	// CodeStaleAttempt: an event about an attempt that is no longer the worker's.
	CodeStaleAttempt Code = "stale_attempt"
	// CodeTooManyWorkers: the host holds as many sessions as it takes.
	CodeTooManyWorkers Code = "too_many_workers"
	// CodeInvalidEvent: an event that breaks the protocol (unknown kind, missing field).
	CodeInvalidEvent Code = "invalid_event"
)

func init() {
	for c, s := range map[Code]int{CodeInvalidWorker: 400, CodeWorkerExists: 409, CodeUnknownWorker: 404,
		CodeStaleAttempt: 409, CodeTooManyWorkers: 503, CodeInvalidEvent: 400} {
		statusOf[c] = s
	}
}

// Bounds of a registration.
const (
	MaxWorkerNameLen    = 64
	MaxWorkerCapacity   = 1024
	MaxWorkerTypes      = 256
	MaxWorkerLabels     = 32
	MaxWorkerLabelBytes = 128
	MaxWorkerEvents     = 1000
	MinWorkerLease      = 500 * time.Millisecond
	MaxWorkerLease      = 60 * time.Second
	DefaultWorkerLease  = time.Second
)

// WorkerType is a task type a worker offers.
type WorkerType struct {
	Type         string          `json:"type"`
	Version      string          `json:"version,omitempty"`
	Description  string          `json:"description,omitempty"`
	ExampleInput json.RawMessage `json:"example_input,omitempty"`
}

// WorkerRegistration is the body of POST /v1/workers.
type WorkerRegistration struct {
	Name     string            `json:"name"`
	Capacity int               `json:"capacity"`
	Lease    string            `json:"lease,omitempty"` // Go duration text; "" is DefaultWorkerLease
	Labels   map[string]string `json:"labels,omitempty"`
	Types    []WorkerType      `json:"types"`
}

// WorkerSession is the reply to a registration. ID is a secret: whoever holds it speaks for the
// worker.
type WorkerSession struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Node     string `json:"node"`
	Lease    string `json:"lease"`
	PollWait string `json:"poll_wait"`
}

// WorkerPollRequest is the body of POST /v1/workers/{id}/poll.
type WorkerPollRequest struct {
	Wait string `json:"wait,omitempty"`
}

// WorkerAssignment is one attempt handed to a worker.
type WorkerAssignment struct {
	TaskID      string          `json:"task_id"`
	Attempt     int             `json:"attempt"`
	Type        string          `json:"type"`
	Version     string          `json:"version"`
	Input       json.RawMessage `json:"input"`
	Checkpoint  json.RawMessage `json:"checkpoint"`
	Timeout     string          `json:"timeout"`
	ExecutionID string          `json:"execution_id"`
	// Traceparent is the W3C trace context of the attempt (its span with tracing on, else the
	// task's trace context), absent for an untraced task: the worker's own spans may continue it.
	Traceparent string `json:"traceparent,omitempty"`
	// Resumed is set on an attempt that follows a wait_children event, and Children are then
	// the children that wait named, with how each ended.
	Resumed  bool          `json:"resumed,omitempty"`
	Children []ChildResult `json:"children,omitempty"`
}

// ChildResult is how a child task a resumed attempt waited for ended: State is succeeded, failed
// or cancelled ("" when the child was removed before its parent resumed).
type ChildResult struct {
	ID     string          `json:"id"`
	State  string          `json:"state"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *TaskError      `json:"error,omitempty"`
}

// WorkerRun names one attempt.
type WorkerRun struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
}

// WorkerPoll is the reply to a poll.
type WorkerPoll struct {
	Assignments []WorkerAssignment `json:"assignments"`
	Cancel      []WorkerRun        `json:"cancel"`
	Draining    bool               `json:"draining"`
}

// Worker event kinds.
const (
	WorkerEventLog        = "log"
	WorkerEventCheckpoint = "checkpoint"
	WorkerEventSucceeded  = "succeeded"
	WorkerEventFailed     = "failed"
	WorkerEventCancelled  = "cancelled"
	// WorkerEventWaitChildren ends the attempt to wait for the child tasks in Children: the task
	// runs again (Resumed) once they have all finished.
	WorkerEventWaitChildren = "wait_children"
)

// WorkerEvent is one event a worker reports about an attempt.
type WorkerEvent struct {
	TaskID     string          `json:"task_id"`
	Attempt    int             `json:"attempt"`
	Kind       string          `json:"kind"`
	Stream     string          `json:"stream,omitempty"`
	Level      string          `json:"level,omitempty"`
	Line       string          `json:"line,omitempty"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *TaskError      `json:"error,omitempty"`
	// Children are the child tasks a wait_children event waits for.
	Children []string `json:"children,omitempty"`
}

// WorkerEvents is the body of POST /v1/workers/{id}/events.
type WorkerEvents struct {
	Events []WorkerEvent `json:"events"`
}

// WorkerEventResult is the outcome of one event.
type WorkerEventResult struct {
	OK    bool   `json:"ok"`
	Code  Code   `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// WorkerEventResults is the reply to an events call: one result per event, in order.
type WorkerEventResults struct {
	Results []WorkerEventResult `json:"results"`
}

// WorkerDrained is the reply to POST /v1/workers/{id}/drain.
type WorkerDrained struct {
	Draining bool `json:"draining"`
}

// WorkerLeft is the reply to DELETE /v1/workers/{id}.
type WorkerLeft struct {
	Left bool `json:"left"`
}

// Worker states in WorkerInfo.State.
const (
	WorkerStateUp   = "up"
	WorkerStateDown = "down"
	WorkerStateLeft = "left"
)

// WorkerInfo is a worker as GET /v1/workers and GET /v1/cluster show it.
type WorkerInfo struct {
	Name         string            `json:"name"`
	Node         string            `json:"node"`
	State        string            `json:"state"`
	Draining     bool              `json:"draining"`
	Capacity     int               `json:"capacity"`
	Running      int               `json:"running"`
	Labels       map[string]string `json:"labels"`
	TaskTypes    []WorkerType      `json:"task_types"`
	RegisteredAt time.Time         `json:"registered_at"`
}
