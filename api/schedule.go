package api

import (
	"encoding/json"
	"time"
)

// Periodic schedules: /v1/schedules.

// Schedule routes.
const (
	PathSchedules = "/v1/schedules"
)

// Overlap policies of a schedule (Temporal's names): what a tick does while the schedule's
// previous run is unfinished.
const (
	OverlapSkip        = "skip"         // default: do not fire; the tick is counted as skipped
	OverlapBufferOne   = "buffer_one"   // keep one tick waiting; it starts when the run ends
	OverlapBufferAll   = "buffer_all"   // queue every tick; each starts when the one before ends
	OverlapCancelOther = "cancel_other" // cancel the unfinished run, then fire
	OverlapAllowAll    = "allow_all"    // fire regardless
)

// DefaultCatchUp is how many missed ticks a schedule fires after an outage unless told.
const DefaultCatchUp = 1

// ScheduleRequest is PUT /v1/schedules/{name}: create or replace a schedule. Replacing keeps what
// fired last, so no tick fires twice.
type ScheduleRequest struct {
	// Cron is the spec: five fields (minute first), six (seconds first), or a descriptor such as
	// @hourly or @every 30s; a CRON_TZ=Zone prefix names its time zone.
	Cron string `json:"cron"`
	// TimeZone is the IANA zone the spec is read in, when Cron has no CRON_TZ= prefix (UTC when neither).
	TimeZone    string          `json:"time_zone,omitempty"`
	Type        string          `json:"type"`
	Version     string          `json:"version,omitempty"`
	Input       json.RawMessage `json:"input,omitempty"`
	MaxAttempts int             `json:"max_attempts,omitempty"`
	Timeout     string          `json:"timeout,omitempty"`
	// Start and End bound the ticks fired (inclusive); absent is unbounded.
	Start *time.Time `json:"start,omitempty"`
	End   *time.Time `json:"end,omitempty"`
	// Overlap is one of the Overlap* policies; "" is skip.
	Overlap string `json:"overlap,omitempty"`
	// CatchUp is how many missed ticks at most fire after an outage or a leader change (the
	// newest ones); 0 is DefaultCatchUp.
	CatchUp int  `json:"catch_up,omitempty"`
	Paused  bool `json:"paused,omitempty"`
}

// Schedule is a schedule's record (GET /v1/schedules/{name}, and every list item).
type Schedule struct {
	Name        string          `json:"name"`
	Cron        string          `json:"cron"`
	TimeZone    string          `json:"time_zone,omitempty"`
	Type        string          `json:"type"`
	Version     string          `json:"version,omitempty"`
	Input       json.RawMessage `json:"input"`
	MaxAttempts int             `json:"max_attempts"`
	Timeout     string          `json:"timeout"`
	Start       *time.Time      `json:"start,omitempty"`
	End         *time.Time      `json:"end,omitempty"`
	Overlap     string          `json:"overlap"`
	CatchUp     int             `json:"catch_up"`
	Paused      bool            `json:"paused"`
	SubmittedBy string          `json:"submitted_by,omitempty"`
	// NextRuns are the next ticks (up to 3), whether paused or not; empty once past its end.
	NextRuns []time.Time `json:"next_runs"`
	// LastFired is the last tick fired or passed over (absent before the first).
	LastFired *time.Time `json:"last_fired,omitempty"`
	// LastTaskID is the task of the latest run a tick started.
	LastTaskID string `json:"last_task_id,omitempty"`
	// Buffered are ticks waiting for the latest run to finish (buffer_one, buffer_all).
	Buffered []time.Time `json:"buffered,omitempty"`
	Fired    int         `json:"fired"`   // tasks ticks submitted
	Skipped  int         `json:"skipped"` // ticks skipped: the previous run was unfinished
	Manual   int         `json:"manual"`  // manual triggers
	// LastError is why the last tick submitted no task, if it did not.
	LastError   string    `json:"last_error,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}
