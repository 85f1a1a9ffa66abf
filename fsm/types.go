// Package fsm owns taskworker's replicated state: tasks, nodes, idempotency keys, ACLs, security,
// schedules, unique locks, queue settings and rate limits, the msgpack commands that change them,
// and raft's FSM (Apply, Snapshot, Restore) with watch notifications.
//
// It knows nothing of networking or clocks: every timestamp, ID and backoff deadline arrives inside
// a command, chosen by the leader before Apply, so every replica computes the same state.
//
// # Adding a command type
//
// A command type is one registration (register, commands.go) in an init function: commands.go's
// for the task and node commands (their apply functions are in fsm.go), and for the others that
// of the file holding their apply functions and state (acl.go, security.go, queue.go,
// schedule.go):
//
//  1. Add a CommandType constant with the next free number (below 0x80; never renumber or reuse).
//  2. Define its payload struct with msgpack tags; implement Batch (Len, Append) if the leader's
//     batcher may merge proposals of it.
//  3. Raise Protocol by one and register the type with Since set to the new Protocol, its Name,
//     its Apply (the state changes) and, if the leader must decide something first (a deadline,
//     a backoff), Prepare.
//
// Encoding, decoding, the leader's apply and the batcher read the table: nothing else changes.
// The leader emits the type only once every up node has registered a protocol >= Since (Emit
// returns ErrProtocolTooOld before that), so an older replica never meets it; one that does
// anyway halts instead of skipping it (Apply, Halted). A field added to an existing payload makes
// older replicas halt when they meet it, so a field that must be emitted during a rolling upgrade
// belongs in a new command type. legacy.go is frozen: new types have no legacy form.
//
// # Adding state
//
// New replicated state is a field of FSM and one registerTable (table.go) in the file that owns
// it, with a Pos after every other table's: how to copy it for a snapshot, install it from one,
// and add it to the digest. Snapshot, Restore (snapshot.go), New and Digest (digest.go) walk the
// registered tables. A table left out of snapshots while unused keeps them readable by releases
// before it; older releases skip sections they do not know.
package fsm

import (
	"encoding/json"
	"maps"
	"time"
)

// State is a task's lifecycle state.
type State string

// Task states, as the contract names them.
const (
	// Scheduled is a delayed task before its RunAt: the leader makes it Pending once due.
	Scheduled State = "scheduled"
	Pending   State = "pending"
	Assigned  State = "assigned"
	Running   State = "running"
	// Waiting is a task whose last attempt ended to wait for child tasks (wait.go): it holds no
	// slot, and goes back to Pending once every child it waits for has finished.
	Waiting   State = "waiting"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// States lists every state, in lifecycle order.
var States = []State{Scheduled, Pending, Assigned, Running, Waiting, Succeeded, Failed, Cancelled}

// Terminal reports whether a task in state s will never change again.
func (s State) Terminal() bool { return s == Succeeded || s == Failed || s == Cancelled }

// Active reports whether a task in state s holds a slot on a node.
func (s State) Active() bool { return s == Assigned || s == Running }

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// History events.
const (
	EventAssigned    = "assigned"
	EventStarted     = "started"
	EventInterrupted = "interrupted"
	EventFailed      = "failed"
	EventSucceeded   = "succeeded"
	EventCancelled   = "cancelled"
	// EventRetried: a failed or cancelled task was sent back to pending by a retry request
	// (HistoryEntry.By says who asked); its next attempt follows.
	EventRetried = "retried"
	// EventWaiting: the attempt ended to wait for child tasks; EventResumed: the last of them
	// finished and the task is pending again (wait.go).
	EventWaiting = "waiting"
	EventResumed = "resumed"
)

// Duration is a task timeout. It has no JSON form of its own: the API writes it as Go duration
// text (internal/endpoint/convert.go).
type Duration time.Duration

// TaskError is the error of a failed attempt or task.
type TaskError struct {
	Type    string `msgpack:"type"`
	Message string `msgpack:"message"`
	// Final marks an error the task said no retry can fix (tasks.Final, exit code 3): the task
	// fails at once, whatever attempts it has left.
	Final bool `msgpack:"final,omitempty"`
}

// HistoryEntry records one event in a task's life.
type HistoryEntry struct {
	Attempt int       `msgpack:"attempt"`
	Node    string    `msgpack:"node"`
	Event   string    `msgpack:"event"`
	At      time.Time `msgpack:"at"`
	Error   string    `msgpack:"error,omitempty"`
	// Final is set on a failed event whose error was final (no retry followed).
	Final bool `msgpack:"final,omitempty"`
	// By is who asked for the event, on events people ask for (retried): a principal, or
	// "anonymous" without ACLs.
	By string `msgpack:"by,omitempty"`
}

// Task is the task record as the FSM keeps it; its JSON form is api.Task (internal/endpoint/convert.go).
type Task struct {
	ID              string          `msgpack:"id"`
	Type            string          `msgpack:"type"`
	Version         string          `msgpack:"version"`
	Input           json.RawMessage `msgpack:"input"`
	State           State           `msgpack:"state"`
	Node            string          `msgpack:"node"`
	BootID          string          `msgpack:"boot_id"`
	Attempt         int             `msgpack:"attempt"`
	MaxAttempts     int             `msgpack:"max_attempts"`
	Failures        int             `msgpack:"failures"`
	Timeout         Duration        `msgpack:"timeout"`
	Result          json.RawMessage `msgpack:"result"`
	Error           *TaskError      `msgpack:"error"`
	IdempotencyKey  string          `msgpack:"idempotency_key"`
	ExecutionID     string          `msgpack:"execution_id"`
	ParentID        string          `msgpack:"parent_id"`
	CreatedAt       time.Time       `msgpack:"created_at"`
	StartedAt       *time.Time      `msgpack:"started_at"`
	FinishedAt      *time.Time      `msgpack:"finished_at"`
	NotBefore       *time.Time      `msgpack:"not_before"`
	CancelRequested bool            `msgpack:"cancel_requested"`
	Checkpoint      json.RawMessage `msgpack:"checkpoint"`
	CreateIndex     uint64          `msgpack:"create_index"`
	ModifyIndex     uint64          `msgpack:"modify_index"`
	History         []HistoryEntry  `msgpack:"history"`
	// SubmittedBy is who submitted the task (Submit.SubmittedBy); empty without ACLs.
	SubmittedBy string `msgpack:"submitted_by,omitempty"`
	// Schedule is the schedule that submitted the task (schedule.go); empty for others.
	Schedule string `msgpack:"schedule,omitempty"`
	// UniqueKey and UniqueUntil are the task's uniqueness lock (Submit.UniqueKey): no other task
	// of its type with the key could be submitted before UniqueUntil.
	UniqueKey   string     `msgpack:"unique_key,omitempty"`
	UniqueUntil *time.Time `msgpack:"unique_until,omitempty"`
	// RunAt is when a delayed task becomes due (Submit.RunAt); nil for a task due at once.
	RunAt *time.Time `msgpack:"run_at,omitempty"`
	// Priority orders placement: higher first (Submit.Priority), 0 by default.
	Priority int `msgpack:"priority,omitempty"`
	// Queue is the queue the task belongs to; "" is the default queue (DefaultQueue), kept empty
	// so records and digests of tasks that name no queue are what they were before queues.
	Queue string `msgpack:"queue,omitempty"`
	// ConcurrencyKey and ConcurrencyLimit: at most ConcurrencyLimit tasks with the key are
	// assigned or running at once (concurrency.go); from the submit or the queue's template.
	ConcurrencyKey   string `msgpack:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `msgpack:"concurrency_limit,omitempty"`
	// FairSeq is a keyed task's place in its priority band's rotation of keys (store.fairSeq),
	// set when it becomes pending; 0 without a key.
	FairSeq uint64 `msgpack:"fair_seq,omitempty"`
	// RateLimit and RateKey name the bucket the task starts under (Submit.RateLimit).
	RateLimit string `msgpack:"rate_limit,omitempty"`
	RateKey   string `msgpack:"rate_key,omitempty"`
	// DebounceKey and Debounce are the task's debounce (Submit.DebounceKey): until it is assigned,
	// a submit of its type with the key replaces its input and moves its RunAt.
	DebounceKey string   `msgpack:"debounce_key,omitempty"`
	Debounce    Duration `msgpack:"debounce,omitempty"`
	// Trace is the trace context the task's spans continue (Submit.Trace); nil: none.
	Trace *TraceContext `msgpack:"trace,omitempty"`
	// WaitFor are the child tasks the task's latest wait named, sorted (wait.go); kept after it
	// resumed, so that its next attempt reads their results. WaitLeft counts those not finished
	// while it is Waiting. Protocol 10.
	WaitFor  []string `msgpack:"wait_for,omitempty"`
	WaitLeft int      `msgpack:"wait_left,omitempty"`
}

// DefaultQueue is the name of the queue of tasks that name none.
const DefaultQueue = "default"

// QueueName is the queue t belongs to, DefaultQueue for "".
func (t *Task) QueueName() string {
	if t.Queue == "" {
		return DefaultQueue
	}
	return t.Queue
}

// ReadyAt is when t became ready to run: its RunAt for a delayed task, else its creation. Ageing
// counts from it, and tasks of one priority are placed in its order. A run_at in the past is not
// a delay: counting from it would let a submitter age its tasks at will and jump every queue.
func (t *Task) ReadyAt() time.Time {
	if t.RunAt != nil && t.RunAt.After(t.CreatedAt) {
		return *t.RunAt
	}
	return t.CreatedAt
}

// clone returns a copy that shares no mutable memory with t.
func (t *Task) clone() Task {
	c := *t
	c.History = append([]HistoryEntry(nil), t.History...)
	if t.WaitFor != nil {
		c.WaitFor = append([]string{}, t.WaitFor...)
	}
	return c
}

// NodeStatus is the FSM's view of a node's membership.
type NodeStatus string

// Node statuses: up (registered and not known gone), down (crashed), left (graceful leave).
const (
	NodeUp   NodeStatus = "up"
	NodeDown NodeStatus = "down"
	NodeLeft NodeStatus = "left"
)

// TypeInfo is one task type and version a node offers.
type TypeInfo struct {
	Type         string          `msgpack:"type"`
	Version      string          `msgpack:"version"`
	Description  string          `msgpack:"description"`
	ExampleInput json.RawMessage `msgpack:"example_input"`
}

// Node is a node as registered in the FSM.
type Node struct {
	Name       string `msgpack:"name"`
	GossipAddr string `msgpack:"gossip_addr"`
	RaftAddr   string `msgpack:"raft_addr"`
	HTTPAddr   string `msgpack:"http_addr"`
	BootID     string `msgpack:"boot_id"`
	Capacity   int    `msgpack:"capacity"`
	Version    string `msgpack:"version"`
	// Protocol is the command protocol the node's build speaks (0: a build before protocols).
	Protocol     int        `msgpack:"protocol,omitempty"`
	Types        []TypeInfo `msgpack:"types"`
	Draining     bool       `msgpack:"draining"`
	Status       NodeStatus `msgpack:"status"`
	RegisteredAt time.Time  `msgpack:"registered_at"`
	ModifyIndex  uint64     `msgpack:"modify_index"`
	// Host is, for a worker (workers.go), the name of the node that hosts it; "" for a node.
	Host string `msgpack:"host,omitempty"`
	// Labels are a worker's labels; nodes have none.
	Labels map[string]string `msgpack:"labels,omitempty"`
}

// IsWorker reports whether the record is a worker's, hosted by a node, rather than a node's.
func (n *Node) IsWorker() bool { return n.Host != "" }

// Alive reports whether the record's process can run tasks by gossip's word: a node when alive
// names it, a worker when alive names its host (the host holds the worker's lease).
func (n *Node) Alive(alive map[string]bool) bool {
	if n.Host != "" {
		return alive[n.Host]
	}
	return alive[n.Name]
}

// Offers reports whether the node offers typ at version (any version when version is "").
func (n *Node) Offers(typ, version string) bool {
	for _, t := range n.Types {
		if t.Type == typ && (version == "" || t.Version == version) {
			return true
		}
	}
	return false
}

func (n *Node) clone() Node {
	c := *n
	c.Types = append([]TypeInfo(nil), n.Types...)
	if n.Labels != nil {
		c.Labels = maps.Clone(n.Labels)
	}
	return c
}
