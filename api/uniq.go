package api

import "time"

// Unique tasks, retry now and purge.

// Paths of retry and purge.
const (
	// PathTaskRetry is POST /v1/tasks/{id}/retry (the ID replaces {id}): a failed or cancelled
	// task goes back to pending, same ID, a new attempt next, its failures reset. 202 with the record.
	PathTaskRetry = "/v1/tasks/{id}/retry"
	// PathTasksPurge is POST: delete finished tasks matching a PurgeRequest.
	PathTasksPurge = "/v1/tasks/purge"
)

// HeaderExistingTask is set on a 409 duplicate_unique_key reply: the ID of the task holding the
// unique key (also in the body's existing_task).
const HeaderExistingTask = "X-Taskworker-Existing-Task"

// MaxUniqueFor is the longest unique_for a submit may ask for.
const MaxUniqueFor = 30 * 24 * time.Hour

// Codes of these features.
const (
	// CodeDuplicateUniqueKey: a submit's (type, unique_key) is held by another task created less
	// than its unique_for ago; Error.ExistingTask names that task.
	CodeDuplicateUniqueKey Code = "duplicate_unique_key"
	// CodeInvalidUnique: unique_key without unique_for, or a unique_for that is not a duration in (0, 30 days].
	CodeInvalidUnique Code = "invalid_unique"
	// CodeNotRetryable: a retry of a task that is not failed or cancelled.
	CodeNotRetryable Code = "not_retryable"
	// CodeInvalidPurge: a purge filter naming a state that is not terminal, or a bad time or limit.
	CodeInvalidPurge Code = "invalid_purge"
	// CodeUpgradeRequired: the request needs a feature some up node's release lacks (a rolling
	// upgrade is under way); it works once every node runs the new release.
	CodeUpgradeRequired Code = "upgrade_required"
)

func init() {
	for c, s := range map[Code]int{CodeDuplicateUniqueKey: 409, CodeInvalidUnique: 400, CodeNotRetryable: 409, CodeInvalidPurge: 400, CodeUpgradeRequired: 409} {
		statusOf[c] = s
	}
}

// PurgeRequest is the body of POST /v1/tasks/purge. Every field narrows the purge; an empty body
// deletes every finished task.
type PurgeRequest struct {
	// State is one of succeeded, failed, cancelled; empty for all three.
	State string `json:"state,omitempty"`
	Type  string `json:"type,omitempty"`
	// FinishedBefore keeps tasks that finished at or after it.
	FinishedBefore *time.Time `json:"finished_before,omitempty"`
	// Limit is the most tasks to delete; 0 for no limit.
	Limit int `json:"limit,omitempty"`
}

// PurgeReply is the answer to a purge.
type PurgeReply struct {
	Purged int `json:"purged"`
}
