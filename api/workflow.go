package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// Workflows: /v1/workflows. A workflow is a graph of steps, each a task; a step runs once every
// step it depends on has succeeded, and may take their results as its input.

// Workflow routes.
const (
	PathWorkflows = "/v1/workflows"
)

// Workflow limits and policies.
const (
	// MaxWorkflowSteps is the most steps one workflow may have.
	MaxWorkflowSteps = 10_000
	// OnFailureCancel (the default): when a step fails for good or is cancelled, every step not
	// finished is cancelled, and the workflow ends failed (or cancelled).
	OnFailureCancel = "cancel"
	// OnFailureContinue: the steps that do not depend on the failed one go on; the workflow ends
	// failed once they are done.
	OnFailureContinue = "continue"
)

// Workflow states.
const (
	WorkflowRunning   = "running"
	WorkflowSucceeded = "succeeded"
	WorkflowFailed    = "failed"
	WorkflowCancelled = "cancelled"
)

// StepWaiting is the state of a step whose task does not exist yet: its dependencies have not
// all succeeded. Once its task exists, a step's state is its task's.
const StepWaiting = "waiting"

// CodeInvalidWorkflow: a workflow that does not validate (a cycle, a dependency or an input source
// that is not a step, two steps of one name, no steps or too many, a bad JSON pointer), or one of
// its steps with task options a submit would refuse (then the message names the step).
const CodeInvalidWorkflow Code = "invalid_workflow"

func init() { statusOf[CodeInvalidWorkflow] = 400 }

// WorkflowRequest is POST /v1/workflows.
type WorkflowRequest struct {
	Name string `json:"name,omitempty"`
	// OnFailure is OnFailureCancel (when empty) or OnFailureContinue.
	OnFailure string                `json:"on_failure,omitempty"`
	Steps     []WorkflowStepRequest `json:"steps"`
}

// WorkflowStepRequest is one step of a WorkflowRequest: a task, as a submit gives it, with its
// dependencies and where its input comes from.
type WorkflowStepRequest struct {
	// Name is unique in the workflow: letters, digits, '_' and '-', at most 64.
	Name string `json:"name"`
	// DependsOn names the steps that must succeed before this one runs.
	DependsOn []string `json:"depends_on,omitempty"`
	// InputFrom, when set, replaces Input with parents' results (InputFrom says how); the steps
	// it names are dependencies whether DependsOn names them or not.
	InputFrom InputFrom `json:"input_from,omitzero"`

	Type        string          `json:"type"`
	Input       json.RawMessage `json:"input,omitempty"`
	Version     string          `json:"version,omitempty"`
	MaxAttempts int             `json:"max_attempts,omitempty"`
	Timeout     string          `json:"timeout,omitempty"`
	Priority    int             `json:"priority,omitempty"`
	Queue       string          `json:"queue,omitempty"`
}

// InputFrom is a step's input_from, a string or an array of strings:
//
//   - "a": the input is step a's result;
//   - "a#/items/0": the part of a's result the JSON pointer (RFC 6901) after '#' names;
//   - ["a", "b#/x"]: an object of the sources' values by step name, {"a": ..., "b": ...};
//   - "*": an object of every dependency's result by step name.
//
// A pointer that names nothing in the parent's result fails the step.
type InputFrom struct {
	Sources []string
	// Object: the input is an object by step name (an array, or "*").
	Object bool
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *InputFrom) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*f = InputFrom{Sources: []string{one}, Object: one == "*"}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("input_from must be a string or an array of strings")
	}
	*f = InputFrom{Sources: many, Object: true}
	return nil
}

// MarshalJSON implements json.Marshaler.
func (f InputFrom) MarshalJSON() ([]byte, error) {
	if !f.Object && len(f.Sources) == 1 || len(f.Sources) == 1 && f.Sources[0] == "*" {
		return json.Marshal(f.Sources[0])
	}
	if len(f.Sources) == 0 {
		return []byte("null"), nil
	}
	return json.Marshal(f.Sources)
}

// IsZero reports whether f is unset, for omitempty.
func (f InputFrom) IsZero() bool { return len(f.Sources) == 0 }

// Workflow is a workflow's record (POST and GET /v1/workflows/{id}).
type Workflow struct {
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"`
	OnFailure string `json:"on_failure"`
	// State is one of the Workflow* states.
	State string `json:"state"`
	// Steps are in the order submitted; a list leaves them out.
	Steps []WorkflowStep `json:"steps,omitempty"`
	// Result is the succeeded workflow's result: the results of the steps no other step depends
	// on, an object by step name, or the one such step's result.
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	SubmittedBy string          `json:"submitted_by,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	FinishedAt  *time.Time      `json:"finished_at,omitempty"`
	// Types are the task types of its steps, sorted.
	Types []string `json:"types"`
	// StepsTotal counts its steps, StepsDone those finished (succeeded, failed or cancelled,
	// including the steps that will never run); a list gives both too.
	StepsTotal int `json:"steps_total"`
	StepsDone  int `json:"steps_done"`
}

// WorkflowStep is one step of a Workflow record.
type WorkflowStep struct {
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	DependsOn []string  `json:"depends_on,omitempty"`
	InputFrom InputFrom `json:"input_from,omitzero"`
	// State is StepWaiting before the step's task exists, then the task's state.
	State  string          `json:"state"`
	TaskID string          `json:"task_id,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// WorkflowPage is GET /v1/workflows: workflows newest first, without their steps; Next, when
// set, is the ?after= of the next page.
type WorkflowPage struct {
	Workflows []Workflow `json:"workflows"`
	Next      string     `json:"next,omitempty"`
}
