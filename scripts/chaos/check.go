package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// taskStats counts what became of the acknowledged tasks.
type taskStats struct {
	Acked, Succeeded, Failed, Cancelled int
	Lost                                int // acknowledged, and no task with that ID at the end
	Stuck                               int // not terminal at the end
	Reruns                              int // tasks started more than once (each must follow an interruption)
	Dupes                               int // idempotency keys with more than one task, or a retried submit answered with another ID
	Stale                               int // a result or final record that does not match the attempt recorded as final
	Unjust                              int // a re-run with no interruption or failure before it
	Attempts                            int // executions started, all tasks
}

// checkTasks holds the final tasks (one replica's full list) against the outside record of
// acknowledged submits and returns the counts and every violation found, one sentence each.
// keyPrefix picks the tasks this run submitted (the probes' echo tasks carry no key).
func checkTasks(acks []ack, tasks []client.Task, keyPrefix string) (taskStats, []string) {
	var st taskStats
	var bad []string
	violate := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }

	byID := map[string]client.Task{}
	byKey := map[string][]string{}
	for _, t := range tasks {
		byID[t.ID] = t
		if t.IdempotencyKey != "" && len(t.IdempotencyKey) >= len(keyPrefix) && t.IdempotencyKey[:len(keyPrefix)] == keyPrefix {
			byKey[t.IdempotencyKey] = append(byKey[t.IdempotencyKey], t.ID)
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if ids := byKey[k]; len(ids) > 1 {
			st.Dupes++
			violate("idempotency key %s: %d tasks %v", k, len(ids), ids)
		}
	}

	st.Acked = len(acks)
	for _, a := range acks {
		t, ok := byID[a.ID]
		if !ok {
			st.Lost++
			violate("task %s (key %s, acknowledged by %s at %s) is gone", a.ID, a.Key, a.Via, a.At.Format("15:04:05.000"))
			continue
		}
		if ids := byKey[a.Key]; len(ids) == 1 && ids[0] != a.ID {
			st.Dupes++
			violate("key %s: acknowledged as %s, the cluster holds %s", a.Key, a.ID, ids[0])
		}
		switch t.State {
		case client.StateSucceeded:
			st.Succeeded++
		case client.StateFailed:
			st.Failed++
			msg := ""
			if t.Error != nil {
				msg = t.Error.Message
			}
			violate("task %s (%s %s) failed: %s (these tasks cannot fail by themselves)", t.ID, a.Type, a.Input, msg)
		case client.StateCancelled:
			st.Cancelled++
			if !a.Cancel {
				violate("task %s cancelled: nobody cancelled it", t.ID)
			}
		default:
			st.Stuck++
			violate("task %s (acknowledged %s) still %s on %q at the end", t.ID, a.At.Format("15:04:05.000"), t.State, t.Node)
			continue
		}
		if !bytes.Equal(compact(t.Input), compact(a.Input)) {
			st.Stale++
			violate("task %s: input %s, submitted %s", t.ID, t.Input, a.Input)
		}
		h := checkHistory(t)
		st.Attempts += h.started
		if h.started > 1 {
			st.Reruns++
		}
		if h.unjust > 0 {
			st.Unjust++
		}
		if h.stale {
			st.Stale++
		}
		bad = append(bad, h.bad...)
		if t.State == client.StateSucceeded {
			if err := checkResult(a.Type, a.Input, t.Result); err != nil {
				st.Stale++
				violate("task %s (attempt %d on %s): %v", t.ID, t.Attempt, t.Node, err)
			}
		}
	}
	return st, bad
}

type historyVerdict struct {
	started int  // started events
	unjust  int  // started events with no interruption or failure since the previous start
	stale   bool // the final record does not match the history's final event
	bad     []string
}

// checkHistory checks one terminal task's history: every run after the first follows an
// interruption or a failure of the one before; attempts count up one by one; exactly one
// terminal event, the last one, whose attempt and node are the record's own.
func checkHistory(t client.Task) historyVerdict {
	var v historyVerdict
	violate := func(format string, args ...any) {
		v.bad = append(v.bad, fmt.Sprintf("task %s: ", t.ID)+fmt.Sprintf(format, args...))
	}
	endedSinceStart := true // before the first start, nothing needs ending
	lastStarted := 0
	terminal := 0
	for i, h := range t.History {
		switch h.Event {
		case api.EventStarted:
			v.started++
			if !endedSinceStart {
				v.unjust++
				violate("attempt %d started on %s with no interruption or failure of attempt %d before it", h.Attempt, h.Node, h.Attempt-1)
			}
			// An attempt can start without its started event reaching the log (the node died
			// first), so attempts may skip a number, never go back.
			if h.Attempt <= lastStarted {
				violate("attempt %d started on %s after attempt %d had", h.Attempt, h.Node, lastStarted)
			}
			lastStarted = h.Attempt
			endedSinceStart = false
		case api.EventInterrupted, api.EventFailed:
			endedSinceStart = true
		case api.EventSucceeded, api.EventCancelled:
			terminal++
			if i != len(t.History)-1 {
				v.stale = true
				violate("%s event of attempt %d on %s is followed by %d more events", h.Event, h.Attempt, h.Node, len(t.History)-1-i)
			}
		}
	}
	if t.State == client.StateFailed && len(t.History) > 0 && t.History[len(t.History)-1].Event == api.EventFailed {
		terminal++
	}
	// A run interrupted after a cancel was asked for ends the task cancelled, with no event of
	// its own.
	if t.State == client.StateCancelled && len(t.History) > 0 && t.History[len(t.History)-1].Event == api.EventInterrupted && t.CancelRequested {
		terminal++
	}
	if terminal != 1 {
		v.stale = true
		violate("%d terminal events in its history, want 1", terminal)
	}
	if t.Attempt < lastStarted {
		violate("attempt %d, but attempt %d started", t.Attempt, lastStarted)
	}
	if n := len(t.History); n > 0 && t.State == client.StateSucceeded {
		last := t.History[n-1]
		if last.Event != api.EventSucceeded || last.Attempt != t.Attempt || last.Node != t.Node {
			v.stale = true
			violate("record says attempt %d on %s succeeded; its history ends with %s of attempt %d on %s",
				t.Attempt, t.Node, last.Event, last.Attempt, last.Node)
		}
	}
	return v
}

// checkResult compares a result with the one its input implies.
func checkResult(typ string, input, result json.RawMessage) error {
	switch typ {
	case "sleep":
		var in struct{ Ms int }
		var out struct {
			SleptMs *int `json:"slept_ms"`
		}
		if err := json.Unmarshal(input, &in); err != nil {
			return fmt.Errorf("input %s: %w", input, err)
		}
		if err := json.Unmarshal(result, &out); err != nil || out.SleptMs == nil || *out.SleptMs != in.Ms {
			return fmt.Errorf("result %s, want {\"slept_ms\":%d}", result, in.Ms)
		}
	case "count":
		var in struct{ To int }
		var out struct {
			Counted     *int `json:"counted"`
			ResumedFrom *int `json:"resumed_from"`
		}
		if err := json.Unmarshal(input, &in); err != nil {
			return fmt.Errorf("input %s: %w", input, err)
		}
		if err := json.Unmarshal(result, &out); err != nil || out.Counted == nil || *out.Counted != in.To ||
			out.ResumedFrom == nil || *out.ResumedFrom < 0 || *out.ResumedFrom > in.To {
			return fmt.Errorf("result %s, want counted %d and resumed_from between 0 and %d", result, in.To, in.To)
		}
	default:
		return fmt.Errorf("unknown type %q", typ)
	}
	return nil
}

func compact(b json.RawMessage) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

// compareReplicas returns "" when every replica's task list is the same, or a sentence naming
// the first difference.
func compareReplicas(lists map[string][]client.Task) string {
	names := make([]string, 0, len(lists))
	for n := range lists {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) < 2 {
		return ""
	}
	index := func(ts []client.Task) map[string][]byte {
		m := map[string][]byte{}
		for _, t := range ts {
			b, _ := json.Marshal(t)
			m[t.ID] = b
		}
		return m
	}
	ref := index(lists[names[0]])
	for _, n := range names[1:] {
		other := index(lists[n])
		if len(other) != len(ref) {
			return fmt.Sprintf("%s holds %d tasks, %s %d", names[0], len(ref), n, len(other))
		}
		ids := make([]string, 0, len(ref))
		for id := range ref {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			if !bytes.Equal(ref[id], other[id]) {
				return fmt.Sprintf("task %s differs: %s has %s; %s has %s", id, names[0], ref[id], n, other[id])
			}
		}
	}
	return ""
}
