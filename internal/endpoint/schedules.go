package endpoint

import (
	"context"
	"errors"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/scheduler"
)

// ScheduleEndpoint serves periodic schedules: validation, put, pause, trigger, and the building of
// a fire (PrepareFire) for the leader's loop that fires their ticks (internal/leader). The FSM
// (fsm/schedule.go) decides what a fire does.
type ScheduleEndpoint struct{ srv *Server }

// nextRunsShown is how many upcoming ticks a schedule's record lists.
const nextRunsShown = 3

// PrepareFire chooses the task's version and validates it as a submit with the task ID id; with
// an error, the fire it returns is still recorded, with the reason.
func (e *ScheduleEndpoint) PrepareFire(s *fsm.Schedule, id string) (fsm.ScheduleFire, error) {
	sub, err := e.srv.prepareSubmit(submitRequestOf(s), id)
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
func (srv *Server) prepareSchedule(name string, req api.ScheduleRequest, submittedBy string) (fsm.Schedule, error) {
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
	sub, err := srv.prepareSubmit(api.SubmitRequest{Type: req.Type, Version: req.Version, Input: req.Input,
		MaxAttempts: req.MaxAttempts, Timeout: req.Timeout}, ulid.Make().String())
	if err != nil {
		return fsm.Schedule{}, err
	}
	s.Input, s.MaxAttempts, s.Timeout = sub.Input, sub.MaxAttempts, sub.Timeout
	return s, srv.checkSchedule(&s)
}

// checkSchedule validates a schedule record.
func (srv *Server) checkSchedule(s *fsm.Schedule) error {
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
	if _, err := srv.prepareSubmit(submitRequestOf(s), ulid.Make().String()); err != nil { // as a tick would submit it now
		return err
	}
	return srv.checkScheduleQuota(s)
}

// maxCatchUp bounds catch_up: a fail-over fires at most this many runs at once.
const maxCatchUp = 1000

func scheduleNotFound(name string) error {
	return api.Errorf(api.CodeNotFound, "schedule %s not found", api.Truncate(name))
}

// scheduleError gives a schedule command's error its API code.
func (srv *Server) scheduleError(name string, err error) error {
	switch {
	case errors.Is(err, fsm.ErrScheduleNotFound):
		return scheduleNotFound(name)
	case errors.Is(err, fsm.ErrScheduleInvalid):
		return api.Errorf(api.CodeInvalidSchedule, "%v", err)
	}
	return srv.apiError(err)
}

func (e *ScheduleEndpoint) Schedules(context.Context) ([]api.Schedule, error) {
	now := time.Now()
	all := e.srv.cfg.FSM.Schedules()
	out := make([]api.Schedule, 0, len(all))
	for i := range all {
		out = append(out, toAPISchedule(&all[i], now))
	}
	return out, nil
}

func (e *ScheduleEndpoint) Schedule(_ context.Context, name string) (api.Schedule, error) {
	s, ok := e.srv.cfg.FSM.Schedule(name)
	if !ok {
		return api.Schedule{}, scheduleNotFound(name)
	}
	return toAPISchedule(&s, time.Now()), nil
}

func (e *ScheduleEndpoint) PutSchedule(ctx context.Context, caller httpapi.Caller, name string, req api.ScheduleRequest) (api.Schedule, bool, error) {
	s, err := e.srv.prepareSchedule(name, req, caller.Principal())
	if err != nil {
		return api.Schedule{}, false, err
	}
	_, existed := e.srv.cfg.FSM.Schedule(name)
	return e.putSchedule(ctx, caller, s, !existed)
}

func (e *ScheduleEndpoint) putSchedule(ctx context.Context, caller httpapi.Caller, s fsm.Schedule, created bool) (api.Schedule, bool, error) {
	res, err := e.srv.propose(ctx, &fsm.Command{Body: &fsm.SchedulePut{Schedule: s}})
	if err != nil {
		return api.Schedule{}, false, e.srv.scheduleError(s.Name, err)
	}
	_ = e.srv.waitIndex(ctx, res.Index) // answer with what this node knows, even if it lags
	out, err := e.Schedule(ctx, s.Name)
	return out, created, err
}

func (e *ScheduleEndpoint) DeleteSchedule(ctx context.Context, caller httpapi.Caller, name string) error {
	res, err := e.srv.propose(ctx, &fsm.Command{Body: &fsm.ScheduleDelete{Name: name}})
	if err != nil {
		return e.srv.scheduleError(name, err)
	}
	_ = e.srv.waitIndex(ctx, res.Index)
	return nil
}

func (e *ScheduleEndpoint) PauseSchedule(ctx context.Context, caller httpapi.Caller, name string, paused bool) (api.Schedule, error) {
	s, ok := e.srv.cfg.FSM.Schedule(name)
	if !ok {
		return api.Schedule{}, scheduleNotFound(name)
	}
	if s.Paused == paused {
		return toAPISchedule(&s, time.Now()), nil
	}
	s.Paused = paused
	// A pause is a put: the schedule's submitter becomes the caller, as for any put.
	s.SubmittedBy = caller.Principal()
	out, _, err := e.putSchedule(ctx, caller, s, false)
	return out, err
}

func (e *ScheduleEndpoint) TriggerSchedule(ctx context.Context, caller httpapi.Caller, name string) (api.Task, error) {
	s, ok := e.srv.cfg.FSM.Schedule(name)
	if !ok {
		return api.Task{}, scheduleNotFound(name)
	}
	fire, err := e.PrepareFire(&s, e.srv.cfg.NewID(ctx, 0))
	if err != nil {
		return api.Task{}, err
	}
	fire.Manual = true
	res, err := e.srv.propose(ctx, &fsm.Command{Body: &fire})
	if err != nil {
		return api.Task{}, e.srv.scheduleError(name, err)
	}
	item := fsm.ItemResult{ID: fire.TaskID} // a repeat: the first try fired it (fsm.Result.Repeat)
	if !res.Repeat {
		item = res.Items[0]
	}
	if errors.Is(item.Err, fsm.ErrDuplicateID) {
		item = fsm.ItemResult{ID: fire.TaskID} // a retried request whose first try fired it
	} else if item.Err != nil {
		return api.Task{}, e.srv.noteRefusal(submitItemError(fsm.Submit{Type: s.Type}, item))
	}
	if err := e.srv.waitIndex(ctx, res.Index); err != nil {
		return api.Task{}, err
	}
	t, ok := e.srv.cfg.FSM.Task(item.ID)
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
