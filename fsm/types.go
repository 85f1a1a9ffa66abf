// Package fsm owns taskworker's replicated state: tasks, nodes and idempotency keys, the msgpack
// commands that change them, and raft's FSM (Apply, Snapshot, Restore) with watch notifications.
//
// It knows nothing of networking or clocks: every timestamp, ID and backoff deadline arrives inside
// a command, chosen by the leader before Apply, so every replica computes the same state.
//
// # Adding a command type
//
// Everything about a command type lives in one registration in commands.go's init:
//
//  1. Add a CommandType constant with the next free number (below 0x80; never renumber or reuse).
//  2. Define its payload struct with msgpack tags next to the others; implement Batch (Len,
//     Append) if the leader's batcher may merge proposals of it.
//  3. Raise Protocol by one and register the type with Since set to the new Protocol, its Name,
//     Forwardable if followers may send it to the leader, its Apply (in fsm.go, with the state
//     changes) and, if the leader must decide something first (a deadline, a backoff), Prepare.
//
// Node's forwarding, the leader's apply and the batcher read the table: nothing else changes.
// The leader emits the type only once every up node has registered a protocol >= Since (Emit
// returns ErrProtocolTooOld before that), so an older replica never meets it; one that does
// anyway halts instead of skipping it (Apply, Halted). A field added to an existing payload makes
// older replicas halt when they meet it, so a field that must be emitted during a rolling upgrade
// belongs in a new command type. legacy.go is frozen: new types have no legacy form.
package fsm

import (
	"encoding/json"
	"fmt"
	"time"
)

// State is a task's lifecycle state.
type State string

// Task states, as the contract names them.
const (
	Pending   State = "pending"
	Assigned  State = "assigned"
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// States lists every state, in lifecycle order.
var States = []State{Pending, Assigned, Running, Succeeded, Failed, Cancelled}

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
)

// Duration is a time.Duration that reads and writes JSON as Go duration text ("30s").
type Duration time.Duration

// MarshalJSON writes the duration as text, "" for zero.
func (d Duration) MarshalJSON() ([]byte, error) {
	if d == 0 {
		return []byte(`""`), nil
	}
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads duration text such as "30s" or "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\"")
	}
	if s == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// TaskError is the error of a failed attempt or task.
type TaskError struct {
	Type    string `json:"type" msgpack:"type"`
	Message string `json:"message" msgpack:"message"`
}

// HistoryEntry records one event in a task's life.
type HistoryEntry struct {
	Attempt int       `json:"attempt" msgpack:"attempt"`
	Node    string    `json:"node" msgpack:"node"`
	Event   string    `json:"event" msgpack:"event"`
	At      time.Time `json:"at" msgpack:"at"`
	Error   string    `json:"error,omitempty" msgpack:"error,omitempty"`
}

// Task is the task record; its JSON form is the contract's.
type Task struct {
	ID              string          `json:"id" msgpack:"id"`
	Type            string          `json:"type" msgpack:"type"`
	Version         string          `json:"version" msgpack:"version"`
	Input           json.RawMessage `json:"input" msgpack:"input"`
	State           State           `json:"state" msgpack:"state"`
	Node            string          `json:"node" msgpack:"node"`
	BootID          string          `json:"-" msgpack:"boot_id"`
	Attempt         int             `json:"attempt" msgpack:"attempt"`
	MaxAttempts     int             `json:"max_attempts" msgpack:"max_attempts"`
	Failures        int             `json:"failures" msgpack:"failures"`
	Timeout         Duration        `json:"timeout" msgpack:"timeout"`
	Result          json.RawMessage `json:"result" msgpack:"result"`
	Error           *TaskError      `json:"error" msgpack:"error"`
	IdempotencyKey  string          `json:"idempotency_key" msgpack:"idempotency_key"`
	ExecutionID     string          `json:"execution_id" msgpack:"execution_id"`
	ParentID        string          `json:"parent_id,omitempty" msgpack:"parent_id"`
	CreatedAt       time.Time       `json:"created_at" msgpack:"created_at"`
	StartedAt       *time.Time      `json:"started_at" msgpack:"started_at"`
	FinishedAt      *time.Time      `json:"finished_at" msgpack:"finished_at"`
	NotBefore       *time.Time      `json:"not_before,omitempty" msgpack:"not_before"`
	CancelRequested bool            `json:"cancel_requested,omitempty" msgpack:"cancel_requested"`
	Checkpoint      json.RawMessage `json:"checkpoint,omitempty" msgpack:"checkpoint"`
	CreateIndex     uint64          `json:"create_index" msgpack:"create_index"`
	ModifyIndex     uint64          `json:"modify_index" msgpack:"modify_index"`
	History         []HistoryEntry  `json:"history" msgpack:"history"`
}

// MarshalJSON writes JSON null for an absent input or result, as the contract shows.
func (t Task) MarshalJSON() ([]byte, error) {
	type plain Task
	p := plain(t)
	if len(p.Input) == 0 {
		p.Input = json.RawMessage("null")
	}
	if len(p.Result) == 0 {
		p.Result = json.RawMessage("null")
	}
	if p.History == nil {
		p.History = []HistoryEntry{}
	}
	return json.Marshal(p)
}

// clone returns a copy that shares no mutable memory with t.
func (t *Task) clone() Task {
	c := *t
	c.History = append([]HistoryEntry(nil), t.History...)
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
	Type         string          `json:"type" msgpack:"type"`
	Version      string          `json:"version" msgpack:"version"`
	Description  string          `json:"description,omitempty" msgpack:"description"`
	ExampleInput json.RawMessage `json:"example_input,omitempty" msgpack:"example_input"`
}

// Node is a node as registered in the FSM.
type Node struct {
	Name       string `json:"name" msgpack:"name"`
	GossipAddr string `json:"gossip_addr" msgpack:"gossip_addr"`
	RaftAddr   string `json:"raft_addr" msgpack:"raft_addr"`
	HTTPAddr   string `json:"http_addr" msgpack:"http_addr"`
	BootID     string `json:"boot_id" msgpack:"boot_id"`
	Capacity   int    `json:"capacity" msgpack:"capacity"`
	Version    string `json:"version" msgpack:"version"`
	// Protocol is the command protocol the node's build speaks (0: a build before protocols).
	Protocol     int        `json:"-" msgpack:"protocol,omitempty"`
	Types        []TypeInfo `json:"task_types" msgpack:"types"`
	Draining     bool       `json:"draining" msgpack:"draining"`
	Status       NodeStatus `json:"status" msgpack:"status"`
	RegisteredAt time.Time  `json:"registered_at" msgpack:"registered_at"`
	ModifyIndex  uint64     `json:"modify_index" msgpack:"modify_index"`
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
	return c
}
