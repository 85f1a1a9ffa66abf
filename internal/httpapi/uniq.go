package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// The routes of retry now and purge. Their Backend methods are on RetryPurger, which Backend
// embeds.

// RetryPurger is the part of Backend these routes use.
type RetryPurger interface {
	// Retry sends a failed or cancelled task back to pending for caller (not_found,
	// not_retryable) and returns its record once this node has applied the retry.
	Retry(ctx context.Context, caller Caller, id string) (api.Task, error)
	// Purge deletes the finished tasks req selects, validated by the handler, and says how many.
	Purge(ctx context.Context, caller Caller, req api.PurgeRequest) (api.PurgeReply, error)
}

func (s *server) uniqRoutes(mux *routeMux) {
	mux.HandleFunc("POST "+api.PathTaskRetry, s.retry)
	mux.HandleFunc("POST "+api.PathTasksPurge, s.purge)
}

// retry is POST /v1/tasks/{id}/retry. It needs the submit capability on the task's type: it runs
// the task again, as a new submit would.
func (s *server) retry(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, err := s.taskFor(r, id, acl.CapSubmit)
	if err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if t, err = s.b.Retry(ctx, callerOf(r), id); err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, t)
}

// purgeTimeout bounds one purge request: it deletes in entries of up to fsm.MaxPurgeBatch tasks.
const purgeTimeout = 2 * time.Minute

// purge is POST /v1/tasks/purge. It needs the cancel capability on the type named, and a
// management token when no type is named (it then deletes tasks of every type).
func (s *server) purge(w http.ResponseWriter, r *http.Request) {
	var req api.PurgeRequest
	if r.ContentLength != 0 {
		if err := s.decodeBody(r, w, &req); err != nil {
			WriteError(w, err)
			return
		}
	}
	if err := ValidatePurge(req); err != nil {
		WriteError(w, err)
		return
	}
	caller := callerOf(r)
	if req.Type == "" && caller.Identity != nil && !caller.Identity.Management {
		WriteError(w, api.Errorf(api.CodeForbidden, "purging tasks of every type needs a management token; name a type"))
		return
	}
	if req.Type != "" {
		if err := authorize(r, acl.CapCancel, req.Type); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), max(s.opts.WriteTimeout, purgeTimeout))
	defer cancel()
	reply, err := s.b.Purge(ctx, caller, req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, reply)
}

// ValidatePurge checks a purge filter: only terminal states, a limit of 0 or more.
func ValidatePurge(req api.PurgeRequest) error {
	switch req.State {
	case "", api.StateSucceeded, api.StateFailed, api.StateCancelled:
	default:
		return api.Errorf(api.CodeInvalidPurge, "purge state must be succeeded, failed or cancelled, got %q", api.Truncate(req.State))
	}
	if req.Limit < 0 {
		return api.Errorf(api.CodeInvalidPurge, "purge limit must not be negative")
	}
	return nil
}
