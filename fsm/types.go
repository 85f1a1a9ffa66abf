// Package fsm owns taskworker's replicated state: tasks, nodes and idempotency keys, the msgpack
// commands that change them, and raft's FSM (Apply, Snapshot, Restore) with watch notifications.
//
// It knows nothing of networking or clocks: every timestamp, ID and backoff deadline arrives inside
// a command, chosen by the leader before Apply, so every replica computes the same state.
package fsm

import (
	"encoding/json"
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

// Duration is a task timeout. It has no JSON form of its own: the API writes it as Go duration
// text (node/convert.go).
type Duration time.Duration

// TaskError is the error of a failed attempt or task.
type TaskError struct {
	Type    string `msgpack:"type"`
	Message string `msgpack:"message"`
}

// HistoryEntry records one event in a task's life.
type HistoryEntry struct {
	Attempt int       `msgpack:"attempt"`
	Node    string    `msgpack:"node"`
	Event   string    `msgpack:"event"`
	At      time.Time `msgpack:"at"`
	Error   string    `msgpack:"error,omitempty"`
}

// Task is the task record as the FSM keeps it; its JSON form is api.Task (node/convert.go).
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
	Type         string          `msgpack:"type"`
	Version      string          `msgpack:"version"`
	Description  string          `msgpack:"description"`
	ExampleInput json.RawMessage `msgpack:"example_input"`
}

// Node is a node as registered in the FSM.
type Node struct {
	Name         string     `msgpack:"name"`
	GossipAddr   string     `msgpack:"gossip_addr"`
	RaftAddr     string     `msgpack:"raft_addr"`
	HTTPAddr     string     `msgpack:"http_addr"`
	BootID       string     `msgpack:"boot_id"`
	Capacity     int        `msgpack:"capacity"`
	Version      string     `msgpack:"version"`
	Types        []TypeInfo `msgpack:"types"`
	Draining     bool       `msgpack:"draining"`
	Status       NodeStatus `msgpack:"status"`
	RegisteredAt time.Time  `msgpack:"registered_at"`
	ModifyIndex  uint64     `msgpack:"modify_index"`
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
