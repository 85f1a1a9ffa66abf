package api

// PathTasksBatch is POST: submit up to MaxBatchTasks tasks in one request (BatchSubmitRequest),
// answered with one BatchResult per task, in order (BatchSubmitReply).
const PathTasksBatch = "/v1/tasks/batch"

// MaxBatchTasks is how many tasks one batch submit may hold; more is a 400 batch_too_large.
const MaxBatchTasks = 1000

// BatchSubmitRequest is the body of POST /v1/tasks/batch.
type BatchSubmitRequest struct {
	Tasks []SubmitRequest `json:"tasks"`
}

// BatchSubmitReply is the 200 answer to a batch submit: Results[i] is the outcome of Tasks[i].
type BatchSubmitReply struct {
	Results []BatchResult `json:"results"`
}

// BatchResult is one task's outcome in a batch submit. Status is what a single POST /v1/tasks of
// that task would have answered: 201 with Task when it was created, 200 with the existing Task
// when its idempotency key was seen before (earlier in the same batch too), or an error status with
// Error. A task that fails does not stop the others.
type BatchResult struct {
	Status int    `json:"status"`
	Task   *Task  `json:"task,omitempty"`
	Error  *Error `json:"error,omitempty"`
}
