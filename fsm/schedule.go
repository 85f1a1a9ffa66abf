package fsm

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Periodic schedules: a schedule names a cron spec and the task it submits at each
// tick. The table is replicated so that any node may lead and fire it; what fired last is part
// of it, so a new leader continues where the old one stopped.
//
// A tick is fired exactly once: schedule_fire records the tick as the schedule's last fired one
// and submits its task (idempotency key "schedule:<name>:<tick unix seconds>") in one entry, and
// a fire for a tick at or before the last fired one changes nothing. Two leaders racing (an old
// one that has not noticed it lost) or a leader that dies between computing and firing a tick
// cannot fire it twice.
//
// The overlap policy is decided here, in Apply, from the replicated state of the schedule's
// previous run, so every replica makes the same decision.

// Command types of the schedules table.
const (
	CmdSchedulePut    CommandType = 18 // create or replace a schedule (pause and resume too)
	CmdScheduleDelete CommandType = 19
	CmdScheduleFire   CommandType = 20 // record a tick as fired and submit its task
)

func init() {
	// Put, delete and a manual fire come from the API (run on the leader); a tick's fire from
	// the leader's schedule loop.
	register(Spec[SchedulePut]{Type: CmdSchedulePut, Name: "schedule_put", Since: 2, Apply: (*FSM).applySchedulePut})
	register(Spec[ScheduleDelete]{Type: CmdScheduleDelete, Name: "schedule_delete", Since: 2, Apply: (*FSM).applyScheduleDelete})
	register(Spec[ScheduleFire]{Type: CmdScheduleFire, Name: "schedule_fire", Since: 2, Apply: (*FSM).applyScheduleFire, Prepare: prepareFire})

	registerTable(Table[[]Schedule]{
		Name: "schedules",
		Pos:  50,
		// Absent while there are none: snapshots and digests of clusters without schedules are
		// those of releases before them.
		Capture: func(f *FSM) ([]Schedule, bool) {
			var out []Schedule
			for _, name := range sortedKeys(f.schedules) {
				out = append(out, f.schedules[name].clone())
			}
			return out, len(out) > 0
		},
		Install: func(f *FSM, s *[]Schedule) {
			f.schedules = byName(s, func(s *Schedule) string { return s.Name })
			f.wakeSchedules()
		},
		Digest: func(f *FSM, put func(any)) {
			if len(f.schedules) > 0 {
				put("schedules")
				for _, name := range sortedKeys(f.schedules) {
					put(f.schedules[name])
				}
			}
		},
	})
}

// Overlap is what a schedule does with a tick while its previous run is unfinished. The names
// are Temporal's (ScheduleOverlapPolicy).
type Overlap string

// Overlap policies.
const (
	// OverlapSkip (the default) does not fire while the previous run is unfinished: the tick is
	// recorded as fired (and counted as skipped) and no task is submitted.
	OverlapSkip Overlap = "skip"
	// OverlapBufferOne keeps at most one tick waiting behind the unfinished run; it starts when
	// that run finishes, and later ticks meanwhile are skipped.
	OverlapBufferOne Overlap = "buffer_one"
	// OverlapBufferAll queues every tick behind the unfinished run (up to MaxBuffered), each
	// starting once the one before it finished.
	OverlapBufferAll Overlap = "buffer_all"
	// OverlapCancelOther cancels the unfinished previous run, then fires.
	OverlapCancelOther Overlap = "cancel_other"
	// OverlapAllowAll fires regardless of the previous run.
	OverlapAllowAll Overlap = "allow_all"
)

// Overlaps lists the policies.
var Overlaps = []Overlap{OverlapSkip, OverlapBufferOne, OverlapBufferAll, OverlapCancelOther, OverlapAllowAll}

// Valid reports whether o is a known policy ("" is not: callers default it first).
func (o Overlap) Valid() bool {
	for _, v := range Overlaps {
		if o == v {
			return true
		}
	}
	return false
}

// MaxBuffered bounds a buffer_all schedule's queue of waiting ticks: a run that hangs for a week
// behind an every-second schedule must not grow the replicated state without bound.
const MaxBuffered = 1000

// Schedule is a periodic schedule as the FSM keeps it; its JSON form is api.Schedule.
type Schedule struct {
	Name string `msgpack:"name"`
	// Spec is the cron spec (robfig/cron syntax, seconds optional, descriptors such as @every 30s).
	Spec string `msgpack:"spec"`
	// TimeZone is the IANA zone the spec is read in ("" = UTC).
	TimeZone    string          `msgpack:"time_zone,omitempty"`
	Type        string          `msgpack:"type"`
	Version     string          `msgpack:"version,omitempty"`
	Input       json.RawMessage `msgpack:"input"`
	MaxAttempts int             `msgpack:"max_attempts"`
	Timeout     Duration        `msgpack:"timeout"`
	// Start and End bound the ticks fired (both inclusive); nil is unbounded.
	Start   *time.Time `msgpack:"start,omitempty"`
	End     *time.Time `msgpack:"end,omitempty"`
	Overlap Overlap    `msgpack:"overlap"`
	// CatchUp is how many missed ticks at most are fired after an outage or a leader change (the
	// newest ones); older missed ticks are skipped. At least 1.
	CatchUp int  `msgpack:"catch_up"`
	Paused  bool `msgpack:"paused,omitempty"`
	// SubmittedBy is who last put the schedule; its tasks record it as their submitter.
	SubmittedBy string `msgpack:"submitted_by,omitempty"`

	// LastFired is the last tick fired (whether it submitted, skipped or buffered), or the
	// moment the schedule was resumed, whichever is later; zero before the first. Ticks are
	// computed after it.
	LastFired time.Time `msgpack:"last_fired"`
	// LastTaskID is the task of the latest run started (not manual ones): the overlap policy
	// looks at it.
	LastTaskID string `msgpack:"last_task_id,omitempty"`
	// Buffered are the ticks waiting for the previous run to finish (buffer_one, buffer_all),
	// oldest first.
	Buffered []time.Time `msgpack:"buffered,omitempty"`
	Fired    int         `msgpack:"fired"`   // tasks submitted for ticks (and buffered ticks)
	Skipped  int         `msgpack:"skipped"` // ticks skipped because the previous run was unfinished
	Manual   int         `msgpack:"manual"`  // manual triggers
	// LastError is why the last tick submitted no task (its type unknown then, say).
	LastError string `msgpack:"last_error,omitempty"`

	CreatedAt   time.Time `msgpack:"created_at"`
	UpdatedAt   time.Time `msgpack:"updated_at"`
	CreateIndex uint64    `msgpack:"create_index"`
	ModifyIndex uint64    `msgpack:"modify_index"`
}

func (s *Schedule) clone() Schedule {
	c := *s
	c.Buffered = append([]time.Time(nil), s.Buffered...)
	return c
}

// SchedulePut creates or replaces a schedule. Replacing keeps its firing state (last fired tick,
// buffered ticks, counters), so pausing and resuming, or changing the input, neither re-fires nor
// forgets a tick.
type SchedulePut struct {
	Schedule Schedule `msgpack:"schedule"`
}

// ScheduleDelete removes a schedule; tasks it submitted stay.
type ScheduleDelete struct {
	Name string `msgpack:"name"`
}

// ScheduleFire fires one tick of a schedule: Tick for a scheduled tick, Buffered for the oldest
// buffered tick once the previous run finished, Manual for a trigger. TaskID is the ID of the
// task it may submit, chosen by the leader, and Version the version it asks for.
type ScheduleFire struct {
	Name     string    `msgpack:"name"`
	Tick     time.Time `msgpack:"tick"`
	Manual   bool      `msgpack:"manual,omitempty"`
	Buffered bool      `msgpack:"buffered,omitempty"`
	TaskID   string    `msgpack:"task_id"`
	Version  string    `msgpack:"version,omitempty"`
	// Error, set by the leader when it could not build the task (its type unknown now, say),
	// records the tick as fired without a task, with the reason.
	Error string `msgpack:"error,omitempty"`
	// Admission is what the task is admitted under, as a submit's (prepareFire): a tick past a
	// cap is recorded as fired, with the refusal as the schedule's last error. Protocol 5.
	Admission *Admission `msgpack:"admission,omitempty"`
}

// NeedsProtocol implements NeedsProtocol: AdmissionProtocol with caps.
func (p *ScheduleFire) NeedsProtocol() int {
	if p.Admission != nil {
		return AdmissionProtocol
	}
	return 0
}

// prepareFire stamps the leader's caps for the schedule's submitter, as prepareSubmit does.
func prepareFire(f *FSM, _ time.Time, p *ScheduleFire, env PrepareEnv) {
	f.mu.RLock()
	var by string
	if s, ok := f.schedules[p.Name]; ok {
		by = s.SubmittedBy
	}
	f.mu.RUnlock()
	p.Admission = f.admissionFor(env, []string{by})
}

// Errors of the schedule commands.
var (
	ErrScheduleNotFound = newError("schedule_not_found", "schedule not found")
	ErrScheduleInvalid  = newError("invalid_schedule", "invalid schedule")
)

var scheduleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckScheduleName validates a schedule name: like a task type name, letters, digits, '.', '_'
// and '-', starting with a letter or digit, at most 128 bytes (it ends up in idempotency keys
// and URL paths).
func CheckScheduleName(name string) error {
	if !scheduleName.MatchString(name) {
		return fmt.Errorf("%w: name %q: use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)", ErrScheduleInvalid, name)
	}
	return nil
}

// TickKey is the idempotency key of the task a tick submits.
func TickKey(name string, tick time.Time) string {
	return "schedule:" + name + ":" + strconv.FormatInt(tick.Unix(), 10)
}

// ManualKey is the idempotency key of a manual trigger's task, made unique by its log index.
func ManualKey(name string, index uint64) string {
	return "schedule:" + name + ":manual:" + strconv.FormatUint(index, 10)
}

func (f *FSM) applySchedulePut(index uint64, now time.Time, p *SchedulePut) ([]ItemResult, error) {
	s := p.Schedule.clone()
	if err := CheckScheduleName(s.Name); err != nil {
		return nil, err
	}
	if s.Spec == "" || s.Type == "" || !s.Overlap.Valid() || s.CatchUp < 1 {
		return nil, fmt.Errorf("%w: a schedule needs a spec, a type, a known overlap policy and catch_up >= 1", ErrScheduleInvalid)
	}
	if old, ok := f.schedules[s.Name]; ok {
		s.LastFired, s.LastTaskID, s.Buffered = old.LastFired, old.LastTaskID, old.Buffered
		s.Fired, s.Skipped, s.Manual, s.LastError = old.Fired, old.Skipped, old.Manual, old.LastError
		s.CreatedAt, s.CreateIndex = old.CreatedAt, old.CreateIndex
		if old.Paused && !s.Paused && now.After(s.LastFired) {
			// Resuming passes over the ticks that fell while paused: a week's pause does not
			// end in a burst of catch-up runs.
			s.LastFired = now
		}
	} else {
		s.LastFired, s.LastTaskID, s.Buffered = time.Time{}, "", nil
		s.Fired, s.Skipped, s.Manual, s.LastError = 0, 0, 0, ""
		s.CreatedAt, s.CreateIndex = now, index
	}
	s.UpdatedAt, s.ModifyIndex = now, index
	f.schedules[s.Name] = &s
	f.wakeSchedules()
	return nil, nil
}

func (f *FSM) applyScheduleDelete(_ uint64, _ time.Time, p *ScheduleDelete) ([]ItemResult, error) {
	if _, ok := f.schedules[p.Name]; !ok {
		return nil, ErrScheduleNotFound
	}
	delete(f.schedules, p.Name)
	f.wakeSchedules()
	return nil, nil
}

// applyScheduleFire returns one item: the task submitted (Existing when the tick was fired
// before, or ID "" when the tick submitted none: skipped, buffered, or an error).
func (f *FSM) applyScheduleFire(index uint64, now time.Time, p *ScheduleFire) ([]ItemResult, error) {
	old, ok := f.schedules[p.Name]
	if !ok {
		return nil, ErrScheduleNotFound
	}
	if p.TaskID == "" {
		return nil, fmt.Errorf("%w: schedule_fire needs a task id", ErrBadCommand)
	}
	s := old.clone()
	defer func() {
		s.ModifyIndex = index
		f.schedules[s.Name] = &s
		f.wakeSchedules()
	}()
	switch {
	case p.Manual:
		if _, ok := f.tasks.get(p.TaskID); ok { // the same trigger, proposed again after a lost reply
			return []ItemResult{{ID: p.TaskID, Existing: true}}, nil
		}
		s.Manual++
		return []ItemResult{f.submitFor(index, now, &s, p, ManualKey(s.Name, index), p.Admission)}, nil
	case p.Buffered:
		if len(s.Buffered) == 0 || !s.Buffered[0].Equal(p.Tick) || f.running(s.LastTaskID) {
			return []ItemResult{{Existing: true}}, nil // started before, or not its turn yet
		}
		s.Buffered = s.Buffered[1:]
		return []ItemResult{f.startRun(index, now, &s, p)}, nil
	}
	if !p.Tick.After(s.LastFired) {
		return []ItemResult{{ID: f.tasks.idem[TickKey(s.Name, p.Tick)], Existing: true}}, nil
	}
	s.LastFired = p.Tick
	if p.Error != "" {
		s.LastError = p.Error
		return []ItemResult{{}}, nil
	}
	busy := f.running(s.LastTaskID) || len(s.Buffered) > 0
	switch {
	case !busy || s.Overlap == OverlapAllowAll:
	case s.Overlap == OverlapCancelOther:
		if f.running(s.LastTaskID) {
			f.cancel(index, now, s.LastTaskID)
		}
	case s.Overlap == OverlapBufferOne && len(s.Buffered) == 0,
		s.Overlap == OverlapBufferAll && len(s.Buffered) < MaxBuffered:
		s.Buffered = append(s.Buffered, p.Tick)
		return []ItemResult{{}}, nil
	default: // skip, or a full buffer
		s.Skipped++
		return []ItemResult{{}}, nil
	}
	return []ItemResult{f.startRun(index, now, &s, p)}, nil
}

// startRun submits the task of a tick and makes it the schedule's latest run.
func (f *FSM) startRun(index uint64, now time.Time, s *Schedule, p *ScheduleFire) ItemResult {
	res := f.submitFor(index, now, s, p, TickKey(s.Name, p.Tick), p.Admission)
	if res.Err == nil {
		s.Fired++
		s.LastTaskID = res.ID
		s.LastError = ""
	} else {
		s.LastError = res.Err.Error()
	}
	return res
}

func (f *FSM) submitFor(index uint64, now time.Time, s *Schedule, p *ScheduleFire, key string, a *Admission) ItemResult {
	return f.submit(index, now, &Submit{
		ID: p.TaskID, Type: s.Type, Version: p.Version, Input: s.Input, MaxAttempts: s.MaxAttempts,
		Timeout: s.Timeout, IdempotencyKey: key, ExecutionID: p.TaskID, SubmittedBy: s.SubmittedBy,
		Schedule: s.Name,
	}, a)
}

// running reports whether a task exists and has not finished. f.mu is held.
func (f *FSM) running(id string) bool {
	if id == "" {
		return false
	}
	t, ok := f.tasks.get(id)
	return ok && !t.State.Terminal()
}

// wakeSchedules wakes the leader's schedule loop. f.mu is held.
func (f *FSM) wakeSchedules() {
	close(f.schedChanged)
	f.schedChanged = make(chan struct{})
}

// SchedulesChanged returns a channel closed at the next change of the schedules table or the end
// of a scheduled task's run (which may let a buffered tick start).
func (f *FSM) SchedulesChanged() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.schedChanged
}

// Schedules returns every schedule, by name.
func (f *FSM) Schedules() []Schedule {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Schedule, 0, len(f.schedules))
	for _, name := range sortedKeys(f.schedules) {
		out = append(out, f.schedules[name].clone())
	}
	return out
}

// Schedule returns one schedule.
func (f *FSM) Schedule(name string) (Schedule, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.schedules[name]
	if !ok {
		return Schedule{}, false
	}
	return s.clone(), true
}

// ScheduleRunning reports whether the schedule's latest run is unfinished, or ticks wait behind
// it: the leader starts a buffered tick only when this is false for the run itself.
func (f *FSM) ScheduleRunning(name string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.schedules[name]
	return ok && f.running(s.LastTaskID)
}
