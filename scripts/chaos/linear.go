package main

// The linearizability check: every client operation of the load (submit, get, cancel, wait until
// terminal) is recorded with the times it was invoked and answered, and the history is checked
// against a sequential model of one task's API with porcupine, as Jepsen checks etcd and Consul
// with Knossos. The history is partitioned by idempotency key (every operation on a task carries
// the key it was submitted under), so each partition holds a few operations and checking a run of
// thousands of tasks takes moments.
//
// An operation whose answer never came (a timeout, a connection error, a 5xx to a write) may
// have taken effect or not: it is recorded as pending, answered at the end of the history, with
// an unknown output, and the model lets it take effect at any point after its invocation, or
// never. A read that failed changed nothing and is left out.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/taskworker/taskworker/client"
)

// opKind is what a recorded operation did.
type opKind uint8

const (
	opSubmit opKind = iota + 1 // POST /v1/tasks with an idempotency key
	opGet                      // GET /v1/tasks/{id}?consistent
	opCancel                   // POST /v1/tasks/{id}/cancel
	opWait                     // blocking GETs until the task is terminal
)

func (k opKind) String() string {
	return map[opKind]string{opSubmit: "submit", opGet: "get", opCancel: "cancel", opWait: "wait"}[k]
}

// linInput is an operation's request.
type linInput struct {
	Kind opKind
	Key  string // the idempotency key of the task: the partition
	ID   string // the task (get, cancel, wait)
	Node string // the node asked
}

// linOutput is an operation's answer.
type linOutput struct {
	Unknown bool   // no answer: it may or may not have taken effect
	ID      string // submit: the task ID acknowledged
	Found   bool   // get, cancel: the task was there
	State   string // get, wait, cancel: the record's state in the answer
	CancelR bool   // get, cancel: the record's cancel_requested
	Code    string // cancel: the error code of a refusal (already_finished, not_found)
}

// Task phases in the model.
const (
	phAbsent uint8 = iota // no submit has taken effect
	phLive                // submitted, not terminal
	phDone                // terminal: Mask holds the terminal states it may be in
)

// Terminal states as bits of taskModel.Mask.
const (
	tSucceeded uint8 = 1 << iota
	tFailed
	tCancelled
)

func terminalBit(state string) uint8 {
	switch state {
	case client.StateSucceeded:
		return tSucceeded
	case client.StateFailed:
		return tFailed
	case client.StateCancelled:
		return tCancelled
	}
	return 0
}

// taskModel is the sequential state of one task, as its clients can know it.
type taskModel struct {
	ID        string // the acknowledged ID, "" before a submit was acknowledged
	Phase     uint8
	CancelReq bool  // a cancel took effect (a live task then may end cancelled)
	Mask      uint8 // phDone: the terminal states it may be in (one once a read has shown it)
}

// The model's rules, which a linearizable history obeys:
//   - a submit with a key creates the task once; every acknowledged submit of the key answers the
//     same ID;
//   - a read that misses the task follows no submit that took effect;
//   - a terminal task stays terminal, in the same state; a live one may end succeeded or failed by
//     itself, and cancelled only after a cancel took effect;
//   - a cancel that answered 200 took effect: the task stays cancel_requested until it ends, and a
//     task whose cancel answered 200 while pending is cancelled for good;
//   - a cancel answered already_finished found the task terminal; not_found, absent.
func stepTask(s taskModel, in linInput, out linOutput) []taskModel {
	none := []taskModel(nil)
	switch in.Kind {
	case opSubmit:
		if out.Unknown { // it took effect, or not (yet)
			t := s
			if t.Phase == phAbsent {
				t.Phase = phLive
			}
			return []taskModel{s, t}
		}
		if s.ID != "" && s.ID != out.ID {
			return none
		}
		s.ID = out.ID
		if s.Phase == phAbsent {
			s.Phase = phLive
		}
		return []taskModel{s}
	case opGet, opWait:
		if t, ok := observe(s, out); ok {
			return []taskModel{t}
		}
		return none
	case opCancel:
		if out.Unknown {
			t := s
			if t.Phase == phLive {
				t.CancelReq = true
			}
			return []taskModel{s, t}
		}
		switch out.Code {
		case "":
			switch s.Phase {
			case phAbsent:
				return none
			case phLive:
				s.CancelReq = true
			}
			// The record in the answer was read once the cancel had applied: it holds it.
			if t, ok := observe(s, out); ok {
				return []taskModel{t}
			}
			return none
		case "already_finished":
			switch s.Phase {
			case phAbsent:
				return none
			case phLive:
				s.Phase, s.Mask = phDone, tSucceeded|tFailed
				if s.CancelReq {
					s.Mask |= tCancelled
				}
			}
			return []taskModel{s}
		case "not_found":
			if s.Phase == phAbsent {
				return []taskModel{s}
			}
			return none
		}
	}
	return none
}

// observe is a read of the task showing out: legal in s, and what s becomes.
func observe(s taskModel, out linOutput) (taskModel, bool) {
	if !out.Found {
		return s, s.Phase == phAbsent
	}
	if bit := terminalBit(out.State); bit != 0 {
		switch s.Phase {
		case phAbsent:
			return s, false
		case phLive:
			if bit == tCancelled && !s.CancelReq {
				return s, false
			}
		case phDone:
			if s.Mask&bit == 0 {
				return s, false
			}
		}
		s.Phase, s.Mask = phDone, bit
		return s, true
	}
	// Live: the cancel flag can be neither missing after a cancel nor there without one.
	return s, s.Phase == phLive && s.CancelReq == out.CancelR
}

// taskLinModel is the porcupine model of the task API, partitioned by idempotency key.
var taskLinModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(linInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{taskModel{}} },
	Step: func(state, input, output any) []any {
		next := stepTask(state.(taskModel), input.(linInput), output.(linOutput))
		out := make([]any, len(next))
		for i, n := range next {
			out[i] = n
		}
		return out
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var b strings.Builder
		fmt.Fprintf(&b, "%s(%s", in.Kind, in.Key)
		if in.ID != "" {
			fmt.Fprintf(&b, ", %s", in.ID)
		}
		fmt.Fprintf(&b, ") via %s -> ", in.Node)
		switch {
		case out.Unknown:
			b.WriteString("unknown")
		case in.Kind == opSubmit:
			b.WriteString(out.ID)
		case out.Code != "":
			b.WriteString(out.Code)
		case !out.Found:
			b.WriteString("not found")
		default:
			b.WriteString(out.State)
			if out.CancelR {
				b.WriteString(" (cancel requested)")
			}
		}
		return b.String()
	},
	DescribeState: func(state any) string {
		s := state.(taskModel)
		switch s.Phase {
		case phAbsent:
			return "absent"
		case phLive:
			return fmt.Sprintf("live %s cancel_requested=%v", s.ID, s.CancelReq)
		}
		var states []string
		for _, st := range []string{client.StateSucceeded, client.StateFailed, client.StateCancelled} {
			if s.Mask&terminalBit(st) != 0 {
				states = append(states, st)
			}
		}
		return fmt.Sprintf("done %s %s", s.ID, strings.Join(states, "|"))
	},
}

// history records the operations of a run, safe for concurrent clients.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func newHistory() *history { return &history{start: time.Now()} }

// call is an operation under way: invoke returns it, and done or ambiguous records it.
type call struct {
	h      *history
	client int
	in     linInput
	at     int64
}

// invoke starts an operation of client (a small integer: one row of the visualization).
func (h *history) invoke(clientID int, in linInput) *call {
	return &call{h: h, client: clientID, in: in, at: int64(time.Since(h.start))}
}

// done records the operation with its answer.
func (c *call) done(out linOutput) {
	ret := int64(time.Since(c.h.start))
	c.h.mu.Lock()
	c.h.ops = append(c.h.ops, porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.at, Output: out, Return: ret})
	c.h.mu.Unlock()
}

// pending is the Return of an operation that was never answered: after everything.
const pending = math.MaxInt64 / 2

// ambiguous records an operation that got no answer: it may take effect at any time after its
// invocation, or never.
func (c *call) ambiguous() {
	c.h.mu.Lock()
	c.h.ops = append(c.h.ops, porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.at, Output: linOutput{Unknown: true}, Return: pending})
	c.h.mu.Unlock()
}

// operations returns the recorded history, pending operations answered just after the last
// answer (porcupine's visualization needs a finite time).
func (h *history) operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	var last int64
	for _, op := range ops {
		if op.Return != pending {
			last = max(last, op.Return)
		}
		last = max(last, op.Call)
	}
	for i := range ops {
		if ops[i].Return == pending {
			ops[i].Return = last + 1
		}
	}
	return ops
}

// linCheckTimeout bounds the check; a history it cannot decide in time is reported, not failed.
const linCheckTimeout = 2 * time.Minute

// kinds says how many operations of each kind the check saw.
func (v linVerdict) kinds() string {
	var parts []string
	for _, k := range []opKind{opSubmit, opGet, opCancel, opWait} {
		parts = append(parts, fmt.Sprintf("%d %ss", v.ByKind[k], k))
	}
	return strings.Join(parts, ", ")
}

// linVerdict is the outcome of a linearizability check.
type linVerdict struct {
	Ops       int
	ByKind    map[opKind]int
	Keys      int
	Pending   int
	Result    porcupine.CheckResult
	Took      time.Duration
	VizPath   string // the visualization of a history that is not linearizable
	Violation string // "" when linearizable (or undecided in time)
}

// checkLinear checks ops against the model; a history that is not linearizable is written as
// porcupine's visualization (an HTML file) into dir and named in the violation.
func checkLinear(ops []porcupine.Operation, dir string) linVerdict {
	v := linVerdict{Ops: len(ops), ByKind: map[opKind]int{}}
	keys := map[string]bool{}
	for _, op := range ops {
		keys[op.Input.(linInput).Key] = true
		v.ByKind[op.Input.(linInput).Kind]++
		if op.Output.(linOutput).Unknown {
			v.Pending++
		}
	}
	v.Keys = len(keys)
	model := taskLinModel.ToModel()
	t0 := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, ops, linCheckTimeout)
	v.Took, v.Result = time.Since(t0), res
	if res != porcupine.Illegal {
		return v
	}
	v.VizPath = filepath.Join(dir, "linearizability.html")
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = porcupine.VisualizePath(model, info, v.VizPath)
	}
	if err != nil {
		v.Violation = fmt.Sprintf("the history of %d operations is not linearizable (visualization not written: %v)", len(ops), err)
		v.VizPath = ""
		return v
	}
	v.Violation = fmt.Sprintf("the history of %d operations is not linearizable%s; porcupine's visualization: %s",
		len(ops), illegalKeys(model, ops), v.VizPath)
	return v
}

// illegalKeys names up to three partitions (idempotency keys) that are not linearizable alone,
// and lists the operations of the first, in call order, with times in ms from the run's start.
func illegalKeys(model porcupine.Model, ops []porcupine.Operation) string {
	var bad []string
	var first []porcupine.Operation
	for _, part := range model.Partition(ops) {
		if !porcupine.CheckOperations(model, part) {
			bad = append(bad, part[0].Input.(linInput).Key)
			if first == nil {
				first = part
			}
			if len(bad) == 3 {
				break
			}
		}
	}
	if len(bad) == 0 {
		return ""
	}
	sort.SliceStable(first, func(i, j int) bool { return first[i].Call < first[j].Call })
	var b strings.Builder
	fmt.Fprintf(&b, " (keys %s; %s:", strings.Join(bad, ", "), bad[0])
	for i, op := range first {
		if i == 12 {
			fmt.Fprintf(&b, " ... %d more", len(first)-i)
			break
		}
		ret := fmt.Sprintf("%d", op.Return/1e6)
		if op.Output.(linOutput).Unknown {
			ret = "never"
		}
		fmt.Fprintf(&b, " [%d-%s ms] %s;", op.Call/1e6, ret, model.DescribeOperation(op.Input, op.Output))
	}
	return strings.TrimSuffix(b.String(), ";") + ")"
}

// errCode is the contract's error code of err, "" for none.
func errCode(err error) string {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return string(ae.Code)
	}
	return ""
}
