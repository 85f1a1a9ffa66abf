package endpoint

import (
	"encoding/json"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// This file turns the FSM's and the executor's records of tasks, log lines and nodes into the
// API's wire types. Queues, schedules and ACL records are converted beside their endpoints
// (toAPIQueue in queues.go, toAPISchedule in schedules.go, toAPIPolicy and toAPIACLToken in
// acl.go). A field added to an api type is filled where that type is converted (node's
// TestEveryRouteMatchesItsAPIType fails until it is).

// toAPITask converts a task record. Absent input and result are JSON null and an empty history
// is [], as the contract shows; the timeout is Go duration text ("" for none); the boot ID stays
// inside the cluster.
func toAPITask(t *fsm.Task) api.Task {
	out := api.Task{
		ID: t.ID, Type: t.Type, Version: t.Version, Input: rawOrNull(t.Input), State: string(t.State),
		Node: t.Node, Attempt: t.Attempt, MaxAttempts: t.MaxAttempts, Failures: t.Failures,
		Timeout: durationText(t.Timeout), Result: rawOrNull(t.Result), IdempotencyKey: t.IdempotencyKey,
		ExecutionID: t.ExecutionID, ParentID: t.ParentID, SubmittedBy: t.SubmittedBy, Schedule: t.Schedule, CreatedAt: t.CreatedAt, StartedAt: t.StartedAt,
		FinishedAt: t.FinishedAt, NotBefore: t.NotBefore, CancelRequested: t.CancelRequested,
		Checkpoint: t.Checkpoint, CreateIndex: t.CreateIndex, ModifyIndex: t.ModifyIndex,
		History:   make([]api.HistoryEntry, 0, len(t.History)),
		UniqueKey: t.UniqueKey, UniqueUntil: t.UniqueUntil,
		RunAt: t.RunAt, Priority: t.Priority, Queue: t.QueueName(), TraceID: traceIDOf(t.Trace),
		ConcurrencyKey: t.ConcurrencyKey, ConcurrencyLimit: t.ConcurrencyLimit,
		RateLimit: t.RateLimit, RateLimitKey: t.RateKey, DebounceKey: t.DebounceKey, Debounce: durationText(t.Debounce),
		WaitFor: t.WaitFor, WaitLeft: t.WaitLeft,
	}
	if t.Error != nil {
		out.Error = &api.TaskError{Type: t.Error.Type, Message: t.Error.Message, Final: t.Error.Final}
	}
	for _, h := range t.History {
		out.History = append(out.History, api.HistoryEntry{Attempt: h.Attempt, Node: h.Node, Event: h.Event, At: h.At, Error: h.Error,
			Final: h.Final, By: h.By})
	}
	return out
}

func toAPITasks(ts []fsm.Task) []api.Task {
	out := make([]api.Task, 0, len(ts))
	for i := range ts {
		out = append(out, toAPITask(&ts[i]))
	}
	return out
}

func rawOrNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

// durationText writes a timeout as Go duration text, "" for zero.
func durationText(d fsm.Duration) string {
	if d == 0 {
		return ""
	}
	return time.Duration(d).String()
}

func toAPILogLine(l tasks.LogLine) api.LogLine {
	return api.LogLine{TS: l.TS, Attempt: l.Attempt, Node: l.Node, Stream: l.Stream, Level: l.Level, Line: l.Line}
}

// toFilter reads a list query; its zero limit is the API's default, not the FSM's "no limit".
func toFilter(q api.ListQuery) fsm.Filter {
	if q.Limit <= 0 {
		q.Limit = api.DefaultListLimit
	}
	return fsm.Filter{State: fsm.State(q.State), Type: q.Type, Node: q.Node, ExecutionID: q.Execution, After: q.After, Next: q.Next, Limit: q.Limit,
		SubmittedBy: q.SubmittedBy, Since: q.Since, Until: q.Until, Queue: q.Queue}
}

// nodeState is a registered node's gossip-like state before gossip's own view is applied.
func nodeState(s fsm.NodeStatus) string {
	switch s {
	case fsm.NodeDown:
		return api.NodeDead
	case fsm.NodeLeft:
		return api.NodeLeft
	}
	return api.NodeAlive
}

func toAPINodeInfo(nd *fsm.Node, running int) api.NodeInfo {
	types := make([]api.TypeVersion, 0, len(nd.Types))
	for _, t := range nd.Types {
		types = append(types, api.TypeVersion{Type: t.Type, Version: t.Version})
	}
	return api.NodeInfo{
		Name: nd.Name, GossipAddr: nd.GossipAddr, RaftAddr: nd.RaftAddr, HTTPAddr: nd.HTTPAddr, State: nodeState(nd.Status),
		Draining: nd.Draining, Capacity: nd.Capacity, Running: running, Version: nd.Version, TaskTypes: types, BootID: nd.BootID,
	}
}
