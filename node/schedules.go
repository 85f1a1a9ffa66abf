package node

import (
	"context"
	"errors"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/scheduler"
)

// Periodic schedules: the API's side (validation, put, pause, trigger), and the building of a
// fire (prepareFire) for the leader's loop that fires their ticks (internal/leader). The FSM
// (fsm/schedule.go) decides what a fire does.

// nextRunsShown is how many upcoming ticks a schedule's record lists.
const nextRunsShown = 3

// prepareFire chooses the task's version and validates it as a submit with the task ID id.
func (n *Node) prepareFire(s *fsm.Schedule, id string) (fsm.ScheduleFire, error) {
	sub, err := n.prepareSubmit(submitRequestOf(s), id)
	if err != nil {
		return fsm.ScheduleFire{Name: s.Name, TaskID: id}, err
	}
	return fsm.ScheduleFire{Name: s.Name, TaskID: sub.ID, Version: sub.Version}, nil
}

func submitRequestOf(s *fsm.Schedule) api.SubmitRequest {
	return api.SubmitRequest{Type: s.Type, Version: s.Version, Input: s.Input, MaxAttempts: s.MaxAttempts,
		Timeout: time.Duration(s.Timeout).String()}
}

// prepareSchedule validates a schedule request and turns it into the FSM's record.
func (n *Node) prepareSchedule(name string, req api.ScheduleRequest, submittedBy string) (fsm.Schedule, error) {
	s := fsm.Schedule{
		Name: name, Spec: req.Cron, TimeZone: req.TimeZone, Type: req.Type, Version: req.Version,
		Input: req.Input, MaxAttempts: req.MaxAttempts, Start: req.Start, End: req.End,
		Overlap: fsm.Overlap(req.Overlap), CatchUp: req.CatchUp, Paused: req.Paused, SubmittedBy: submittedBy,
	}
	if s.Overlap == "" {
		s.Overlap = fsm.OverlapSkip
	}
	if s.CatchUp == 0 {
		s.CatchUp = api.DefaultCatchUp
	}
	// The task it submits is validated as a submit now, so a schedule that could never fire
	// is refused instead of failing at every tick.
	sub, err := n.prepareSubmit(api.SubmitRequest{Type: req.Type, Version: req.Version, Input: req.Input,
		MaxAttempts: req.MaxAttempts, Timeout: req.Timeout}, ulid.Make().String())
	if err != nil {
		return fsm.Schedule{}, err
	}
	s.Input, s.MaxAttempts, s.Timeout = sub.Input, sub.MaxAttempts, sub.Timeout
	return s, n.checkSchedule(&s)
}

// checkSchedule validates a schedule record.
func (n *Node) checkSchedule(s *fsm.Schedule) error {
	invalid := func(format string, a ...any) error {
		return api.Errorf(api.CodeInvalidSchedule, format, a...)
	}
	if err := fsm.CheckScheduleName(s.Name); err != nil {
		return invalid("%v", err)
	}
	if _, err := scheduler.ParseSpec(s.Spec, s.TimeZone); err != nil {
		return invalid("%v", err)
	}
	if !s.Overlap.Valid() {
		return invalid("overlap must be one of skip, buffer_one, buffer_all, cancel_other, allow_all; got %q", api.Truncate(string(s.Overlap)))
	}
	if s.CatchUp < 1 || s.CatchUp > maxCatchUp {
		return invalid("catch_up must be between 1 and %d", maxCatchUp)
	}
	if s.Start != nil && s.End != nil && s.End.Before(*s.Start) {
		return invalid("end is before start")
	}
	if _, err := n.prepareSubmit(submitRequestOf(s), ulid.Make().String()); err != nil { // as a tick would submit it now
		return err
	}
	return n.checkScheduleQuota(s)
}

// maxCatchUp bounds catch_up: a fail-over fires at most this many runs at once.
const maxCatchUp = 1000

func scheduleNotFound(name string) error {
	return api.Errorf(api.CodeNotFound, "schedule %s not found", api.Truncate(name))
}

// scheduleError gives a schedule command's error its API code.
func scheduleError(name string, err error) error {
	switch {
	case errors.Is(err, fsm.ErrScheduleNotFound):
		return scheduleNotFound(name)
	case errors.Is(err, fsm.ErrScheduleInvalid):
		return api.Errorf(api.CodeInvalidSchedule, "%v", err)
	}
	return toAPIError(err)
}

func (b apiBackend) Schedules(context.Context) ([]api.Schedule, error) {
	now := time.Now()
	all := b.n.fsm.Schedules()
	out := make([]api.Schedule, 0, len(all))
	for i := range all {
		out = append(out, toAPISchedule(&all[i], now))
	}
	return out, nil
}

func (b apiBackend) Schedule(_ context.Context, name string) (api.Schedule, error) {
	s, ok := b.n.fsm.Schedule(name)
	if !ok {
		return api.Schedule{}, scheduleNotFound(name)
	}
	return toAPISchedule(&s, time.Now()), nil
}

func (b apiBackend) PutSchedule(ctx context.Context, caller httpapi.Caller, name string, req api.ScheduleRequest) (api.Schedule, bool, error) {
	s, err := b.n.prepareSchedule(name, req, caller.Principal())
	if err != nil {
		return api.Schedule{}, false, err
	}
	_, existed := b.n.fsm.Schedule(name)
	return b.putSchedule(ctx, caller, s, !existed)
}

func (b apiBackend) putSchedule(ctx context.Context, caller httpapi.Caller, s fsm.Schedule, created bool) (api.Schedule, bool, error) {
	res, err := b.n.internode.Propose(ctx, &fsm.Command{Body: &fsm.SchedulePut{Schedule: s}})
	if err != nil {
		return api.Schedule{}, false, scheduleError(s.Name, err)
	}
	_ = b.n.internode.WaitIndex(ctx, res.Index) // answer with what this node knows, even if it lags
	out, err := b.Schedule(ctx, s.Name)
	return out, created, err
}

func (b apiBackend) DeleteSchedule(ctx context.Context, caller httpapi.Caller, name string) error {
	res, err := b.n.internode.Propose(ctx, &fsm.Command{Body: &fsm.ScheduleDelete{Name: name}})
	if err != nil {
		return scheduleError(name, err)
	}
	_ = b.n.internode.WaitIndex(ctx, res.Index)
	return nil
}

func (b apiBackend) PauseSchedule(ctx context.Context, caller httpapi.Caller, name string, paused bool) (api.Schedule, error) {
	s, ok := b.n.fsm.Schedule(name)
	if !ok {
		return api.Schedule{}, scheduleNotFound(name)
	}
	if s.Paused == paused {
		return toAPISchedule(&s, time.Now()), nil
	}
	s.Paused = paused
	// A pause is a put: the schedule's submitter becomes the caller, as the leader records it
	// for a forwarded put (authorizeForward).
	s.SubmittedBy = caller.Principal()
	out, _, err := b.putSchedule(ctx, caller, s, false)
	return out, err
}

func (b apiBackend) TriggerSchedule(ctx context.Context, caller httpapi.Caller, name string) (api.Task, error) {
	s, ok := b.n.fsm.Schedule(name)
	if !ok {
		return api.Task{}, scheduleNotFound(name)
	}
	fire, err := b.n.prepareFire(&s, forward.ID(ctx, 0))
	if err != nil {
		return api.Task{}, err
	}
	fire.Manual = true
	res, err := b.n.internode.Propose(ctx, &fsm.Command{Body: &fire})
	if err != nil {
		return api.Task{}, scheduleError(name, err)
	}
	item := res.Items[0]
	if errors.Is(item.Err, fsm.ErrDuplicateID) {
		item = fsm.ItemResult{ID: fire.TaskID} // a retried request whose first try fired it
	} else if item.Err != nil {
		return api.Task{}, b.n.noteRefusal(submitItemError(fsm.Submit{Type: s.Type}, item))
	}
	if err := b.n.internode.WaitIndex(ctx, res.Index); err != nil {
		return api.Task{}, err
	}
	t, ok := b.n.fsm.Task(item.ID)
	if !ok {
		return api.Task{}, taskNotFound(item.ID)
	}
	return toAPITask(&t), nil
}

func toAPISchedule(s *fsm.Schedule, now time.Time) api.Schedule {
	out := api.Schedule{
		Name: s.Name, Cron: s.Spec, TimeZone: s.TimeZone, Type: s.Type, Version: s.Version, Input: rawOrNull(s.Input),
		MaxAttempts: s.MaxAttempts, Timeout: durationText(s.Timeout), Start: s.Start, End: s.End,
		Overlap: string(s.Overlap), CatchUp: s.CatchUp, Paused: s.Paused, SubmittedBy: s.SubmittedBy,
		NextRuns: []time.Time{}, LastTaskID: s.LastTaskID, Buffered: s.Buffered, Fired: s.Fired, Skipped: s.Skipped,
		Manual: s.Manual, LastError: s.LastError, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
		CreateIndex: s.CreateIndex, ModifyIndex: s.ModifyIndex,
	}
	if !s.LastFired.IsZero() {
		lf := s.LastFired
		out.LastFired = &lf
	}
	if next, err := scheduler.NextTicks(s, now, nextRunsShown); err == nil && next != nil {
		out.NextRuns = next
	}
	return out
}
