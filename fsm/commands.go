package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// CommandType names what a command does.
type CommandType uint8

// Command types. Values are stored in the raft log: never renumber.
const (
	CmdSubmit   CommandType = 1 // add tasks (batch)
	CmdAssign   CommandType = 2 // place pending tasks on nodes (batch)
	CmdReport   CommandType = 3 // executor reports: started, checkpoint, outcome (batch)
	CmdRegister CommandType = 4 // a node announces itself (new boot ID, addresses, types)
	CmdNodeDown CommandType = 5 // a node crashed or left: take back its tasks
	CmdDrain    CommandType = 6 // a node starts (or stops) draining
	CmdCancel   CommandType = 7 // cancel tasks
	CmdRemove   CommandType = 8 // drop finished tasks past retention
)

func (c CommandType) String() string {
	switch c {
	case CmdSubmit:
		return "submit"
	case CmdAssign:
		return "assign"
	case CmdReport:
		return "report"
	case CmdRegister:
		return "register"
	case CmdNodeDown:
		return "node_down"
	case CmdDrain:
		return "drain"
	case CmdCancel:
		return "cancel"
	case CmdRemove:
		return "remove"
	}
	return fmt.Sprintf("command(%d)", uint8(c))
}

// Command is one raft log entry. Now is the leader's clock when it built the command; Apply uses
// it for every timestamp so replicas agree.
type Command struct {
	Type     CommandType `msgpack:"t"`
	Now      time.Time   `msgpack:"now"`
	Submits  []Submit    `msgpack:"submits,omitempty"`
	Assigns  []Assign    `msgpack:"assigns,omitempty"`
	Reports  []Report    `msgpack:"reports,omitempty"`
	Node     *Node       `msgpack:"node,omitempty"`
	NodeName string      `msgpack:"node_name,omitempty"`
	Left     bool        `msgpack:"left,omitempty"`
	Draining bool        `msgpack:"draining,omitempty"`
	TaskIDs  []string    `msgpack:"task_ids,omitempty"`
	Reason   string      `msgpack:"reason,omitempty"`
}

// Submit adds one task. ID and ExecutionID are chosen before Apply.
type Submit struct {
	ID             string          `msgpack:"id"`
	Type           string          `msgpack:"type"`
	Version        string          `msgpack:"version"`
	Input          json.RawMessage `msgpack:"input"`
	MaxAttempts    int             `msgpack:"max_attempts"`
	Timeout        Duration        `msgpack:"timeout"`
	IdempotencyKey string          `msgpack:"idempotency_key,omitempty"`
	ExecutionID    string          `msgpack:"execution_id"`
	ParentID       string          `msgpack:"parent_id,omitempty"`
}

// Assign places a pending task on a node incarnation.
type Assign struct {
	TaskID string `msgpack:"task_id"`
	Node   string `msgpack:"node"`
	BootID string `msgpack:"boot_id"`
}

// ReportKind is what an executor reports about an attempt.
type ReportKind uint8

// Report kinds.
const (
	ReportStarted     ReportKind = 1
	ReportCheckpoint  ReportKind = 2
	ReportSucceeded   ReportKind = 3
	ReportFailed      ReportKind = 4
	ReportCancelled   ReportKind = 5
	ReportInterrupted ReportKind = 6 // handed back on drain: runs again, not a failure
)

// Report is one executor report, fenced by (Node, BootID, Attempt).
type Report struct {
	TaskID     string          `msgpack:"task_id"`
	Attempt    int             `msgpack:"attempt"`
	Node       string          `msgpack:"node"`
	BootID     string          `msgpack:"boot_id"`
	Kind       ReportKind      `msgpack:"kind"`
	Result     json.RawMessage `msgpack:"result,omitempty"`
	Error      *TaskError      `msgpack:"error,omitempty"`
	Checkpoint json.RawMessage `msgpack:"checkpoint,omitempty"`
	// NotBefore is when a failed attempt may be retried; the leader computes the backoff.
	NotBefore *time.Time `msgpack:"not_before,omitempty"`
}

// Encode serialises a command for raft.
func Encode(c *Command) ([]byte, error) {
	b, err := msgpack.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", c.Type, err)
	}
	return b, nil
}

// Decode parses a command from a raft log entry or a forwarded request.
func Decode(b []byte) (*Command, error) {
	var c Command
	if err := Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("decode command: %w", err)
	}
	return &c, nil
}

// Unmarshal is msgpack.Unmarshal that returns an error instead of panicking: msgpack v5 panics on
// some malformed input (a nil where a struct such as time.Time is expected), and what we decode
// comes from peers and clients.
func Unmarshal(b []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("malformed msgpack: %v", p)
		}
	}()
	return msgpack.Unmarshal(b, v)
}

// Errors an applied command reports per item; callers branch on them.
var (
	ErrNotFound      = errors.New("task not found")
	ErrStale         = errors.New("stale attempt")
	ErrFinished      = errors.New("task already finished")
	ErrDuplicateID   = errors.New("duplicate task id")
	ErrUnknownNode   = errors.New("unknown node")
	ErrNotPlaceable  = errors.New("task or node not placeable")
	ErrBadCommand    = errors.New("bad command")
	ErrInvalidReport = errors.New("invalid report")
)

// Result is what Apply returns for a command: the log index, and one entry per item for batches.
type Result struct {
	Index uint64
	// Items holds, per submit/assign/report/cancel item in order, the task ID it concerns.
	Items []ItemResult
	Err   error
}

// ItemResult is the outcome of one item of a batch command.
type ItemResult struct {
	ID       string
	Existing bool // submit: the idempotency key was seen; ID is the existing task
	Err      error
}
