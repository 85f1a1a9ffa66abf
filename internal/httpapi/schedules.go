package httpapi

import (
	"context"
	"errors"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// ScheduleBackend is what the schedule routes need from a node (Backend embeds it). Writes go
// through the leader, which authorizes a forwarded caller again.
type ScheduleBackend interface {
	// Schedules lists every schedule by name, with its next run times.
	Schedules(ctx context.Context) ([]api.Schedule, error)
	// Schedule returns one schedule, or a not_found *api.Error.
	Schedule(ctx context.Context, name string) (api.Schedule, error)
	// PutSchedule creates or replaces a schedule (invalid_schedule, and a submit's codes for its
	// task); created is false when it replaced one.
	PutSchedule(ctx context.Context, caller Caller, name string, req api.ScheduleRequest) (s api.Schedule, created bool, err error)
	// DeleteSchedule removes a schedule (not_found when unknown); its tasks stay.
	DeleteSchedule(ctx context.Context, caller Caller, name string) error
	// PauseSchedule pauses (paused true) or resumes a schedule; resuming fires none of the ticks
	// that fell while it was paused.
	PauseSchedule(ctx context.Context, caller Caller, name string, paused bool) (api.Schedule, error)
	// TriggerSchedule submits the schedule's task now, once, besides its ticks.
	TriggerSchedule(ctx context.Context, caller Caller, name string) (api.Task, error)
}

// scheduleRoutes serves /v1/schedules. A schedule submits tasks of its type on behalf of whoever
// put it, so every write needs the submit capability on that type (on the old and the new type
// when an update changes it), and reading one needs read on it.
func (s *server) scheduleRoutes(mux *routeMux) {
	mux.HandleFunc("GET "+api.PathSchedules, s.schedules)
	mux.HandleFunc("GET "+api.PathSchedules+"/{name}", s.schedule)
	mux.HandleFunc("PUT "+api.PathSchedules+"/{name}", s.putSchedule)
	mux.HandleFunc("DELETE "+api.PathSchedules+"/{name}", s.deleteSchedule)
	mux.HandleFunc("POST "+api.PathSchedules+"/{name}/pause", s.pauseSchedule(true))
	mux.HandleFunc("POST "+api.PathSchedules+"/{name}/resume", s.pauseSchedule(false))
	mux.HandleFunc("POST "+api.PathSchedules+"/{name}/trigger", s.triggerSchedule)
}

func (s *server) schedules(w http.ResponseWriter, r *http.Request) {
	all, err := s.b.Schedules(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	out := all
	if id := callerOf(r).Identity; id != nil {
		out = acl.FilterReadable(id, all, func(s api.Schedule) string { return s.Type })
	}
	if out == nil {
		out = []api.Schedule{}
	}
	WriteJSON(w, http.StatusOK, out)
}

// scheduleFor returns the named schedule once the caller may use capability on its type.
func (s *server) scheduleFor(r *http.Request, capability acl.Capability) (api.Schedule, error) {
	sc, err := s.b.Schedule(r.Context(), r.PathValue("name"))
	if err == nil {
		err = authorize(r, capability, sc.Type)
	}
	return sc, err
}

func (s *server) schedule(w http.ResponseWriter, r *http.Request) {
	sc, err := s.scheduleFor(r, acl.CapRead)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, sc)
}

func (s *server) putSchedule(w http.ResponseWriter, r *http.Request) {
	var req api.ScheduleRequest
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	if req.Type == "" {
		WriteError(w, api.Errorf(api.CodeMissingType, "type is required"))
		return
	}
	if err := authorize(r, acl.CapSubmit, req.Type); err != nil {
		WriteError(w, err)
		return
	}
	if old, err := s.b.Schedule(r.Context(), r.PathValue("name")); err == nil && old.Type != req.Type {
		if err := authorize(r, acl.CapSubmit, old.Type); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	sc, created, err := s.b.PutSchedule(ctx, callerOf(r), r.PathValue("name"), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	WriteJSON(w, status, sc)
}

func (s *server) deleteSchedule(w http.ResponseWriter, r *http.Request) {
	sc, err := s.scheduleFor(r, acl.CapSubmit)
	if errors.Is(err, &api.Error{Code: api.CodeNotFound}) && s.repeated(r) {
		// The retry of a delete whose first try applied (a forward whose reply was lost): it
		// answers as the delete that took effect.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if err := s.b.DeleteSchedule(ctx, callerOf(r), sc.Name); err != nil {
		WriteError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) pauseSchedule(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sc, err := s.scheduleFor(r, acl.CapSubmit)
		if err != nil {
			WriteError(w, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
		defer cancel()
		if sc, err = s.b.PauseSchedule(ctx, callerOf(r), sc.Name, paused); err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, sc)
	}
}

func (s *server) triggerSchedule(w http.ResponseWriter, r *http.Request) {
	sc, err := s.scheduleFor(r, acl.CapSubmit)
	if err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	t, err := s.b.TriggerSchedule(ctx, callerOf(r), sc.Name)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusCreated, t)
}

// Repeater is implemented by a backend that knows whether the write in ctx has applied already:
// its first try committed and this is its retry (a forward whose reply was lost), so a route
// that looks up what the write acts on answers the write's success instead of not_found.
type Repeater interface {
	Repeated(ctx context.Context) bool
}

// repeated reports whether the backend takes r for the retry of a write that applied.
func (s *server) repeated(r *http.Request) bool {
	rp, ok := s.b.(Repeater)
	return ok && rp.Repeated(r.Context())
}
