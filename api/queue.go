package api

import "fmt"

// Queues: GET /v1/queues lists them, POST /v1/queues/{name} changes one; GET /v1/type-limits
// lists the types' limits, POST /v1/type-limits/{type} sets one.
const (
	PathQueues     = "/v1/queues"
	PathTypeLimits = "/v1/type-limits"
)

// DefaultQueue is the queue of tasks that name none.
const DefaultQueue = "default"

// MaxPriority bounds a task's priority: -MaxPriority..MaxPriority.
const MaxPriority = 1000

// Queue is one queue: its settings and how many of its tasks are in each active state.
type Queue struct {
	Name string `json:"name"`
	// Limit is the most tasks of the queue assigned or running at once across the cluster; 0 = none.
	Limit     int  `json:"limit"`
	Paused    bool `json:"paused"`
	Scheduled int  `json:"scheduled"`
	Pending   int  `json:"pending"`
	Running   int  `json:"running"` // assigned or running
	// ConcurrencyKey is the queue's key template (see QueueUpdate), with ConcurrencyLimit.
	ConcurrencyKey   string `json:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `json:"concurrency_limit,omitempty"`
}

// QueueList is GET /v1/queues.
type QueueList struct {
	Queues []Queue `json:"queues"`
}

// QueueUpdate is the body of POST /v1/queues/{name}: the fields given change, the others stay.
type QueueUpdate struct {
	Limit  *int  `json:"limit,omitempty"`
	Paused *bool `json:"paused,omitempty"`
	// ConcurrencyKey is a key template, "tenant-{/tenant}": each {/json/pointer} (at most 8) is replaced by
	// that part of a task's input (a string as it is, null or nothing as "", anything else as
	// its JSON), and a task of the queue submitted without a key of its own gets the key, with
	// ConcurrencyLimit. The two come together; "" (with a limit of 0) removes the template.
	ConcurrencyKey   *string `json:"concurrency_key,omitempty"`
	ConcurrencyLimit *int    `json:"concurrency_limit,omitempty"`
}

// TypeLimit is a task type's cluster-wide limit on tasks assigned or running at once.
type TypeLimit struct {
	Type    string `json:"type"`
	Limit   int    `json:"limit"` // 0 = none (and the type is not listed)
	Running int    `json:"running"`
}

// TypeLimitList is GET /v1/type-limits.
type TypeLimitList struct {
	Limits []TypeLimit `json:"limits"`
}

// TypeLimitUpdate is the body of POST /v1/type-limits/{type}; a limit of 0 removes it.
type TypeLimitUpdate struct {
	Limit int `json:"limit"`
}

// MaxQueueLimit bounds queue and type limits.
const MaxQueueLimit = 1_000_000

// CheckQueueName validates a queue name: 1 to 64 bytes, a letter or digit, then letters, digits,
// '_', '-' and '.'.
func CheckQueueName(name string) error {
	if name == "" || len(name) > 64 {
		return Errorf(CodeInvalidQueue, "a queue name has 1 to 64 characters, got %d", len(name))
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && (r == '_' || r == '-' || r == '.')
		if !ok {
			return Errorf(CodeInvalidQueue, "queue name %q: %s", Truncate(name),
				fmt.Sprintf("character %d must be a letter, a digit%s", i+1, map[bool]string{true: ", '_', '-' or '.'", false: ""}[i > 0]))
		}
	}
	return nil
}

// CheckLimit validates a queue or type limit.
func CheckLimit(n int) error {
	if n < 0 || n > MaxQueueLimit {
		return Errorf(CodeInvalidQueue, "a limit is between 0 (none) and %d, got %d", MaxQueueLimit, n)
	}
	return nil
}
