package httpapi

import (
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// WorkerSessions is the node's side of the worker protocol (docs/workers.md; internal/workerhost):
// the sessions of the workers registered with this node. Its calls are served by the node that
// was called, never forwarded: the session lives there. Every call gets the caller, which the
// backend checks again (the work capability on the worker's types); id is the secret session ID.
type WorkerSessions interface {
	// RegisterWorker opens a session (invalid_worker, forbidden, worker_exists, too_many_workers).
	RegisterWorker(ctx context.Context, caller Caller, req api.WorkerRegistration) (api.WorkerSession, error)
	// PollWorker returns the session's assignments and cancel notices, held up to the wait.
	PollWorker(ctx context.Context, caller Caller, id string, req api.WorkerPollRequest) (api.WorkerPoll, error)
	// WorkerEvents applies the worker's events, one result each.
	WorkerEvents(ctx context.Context, caller Caller, id string, req api.WorkerEvents) (api.WorkerEventResults, error)
	// DrainWorker stops new assignments to the worker.
	DrainWorker(ctx context.Context, caller Caller, id string) (api.WorkerDrained, error)
	// DeleteWorker hands back the worker's running attempts and ends its session.
	DeleteWorker(ctx context.Context, caller Caller, id string) (api.WorkerLeft, error)
}

// WorkerLister lists the cluster's workers (GET /v1/workers).
type WorkerLister interface {
	Workers(ctx context.Context) ([]api.WorkerInfo, error)
}

// workerRoutes are the worker protocol's routes. They act on this node (localWrites).
func (s *server) workerRoutes(mux *routeMux) {
	mux.HandleFunc("GET "+api.PathWorkers, s.workers)
	mux.HandleFunc("POST "+api.PathWorkers, s.registerWorker)
	mux.HandleFunc("POST "+api.PathWorkers+"/{id}/poll", s.pollWorker)
	mux.HandleFunc("POST "+api.PathWorkers+"/{id}/events", s.workerEvents)
	mux.HandleFunc("POST "+api.PathWorkers+"/{id}/drain", s.drainWorker)
	mux.HandleFunc("DELETE "+api.PathWorkers+"/{id}", s.deleteWorker)
}

func init() {
	for _, p := range []string{"POST " + api.PathWorkers, "POST " + api.PathWorkers + "/{id}/poll",
		"POST " + api.PathWorkers + "/{id}/events", "POST " + api.PathWorkers + "/{id}/drain", "DELETE " + api.PathWorkers + "/{id}"} {
		localWrites[p] = true
	}
}

// sessions returns the worker sessions backend, or writes why there is none.
func (s *server) sessions(w http.ResponseWriter) WorkerSessions {
	if s.opts.Workers == nil {
		WriteError(w, api.Errorf(api.CodeNotFound, "this node serves no workers"))
		return nil
	}
	return s.opts.Workers
}

func (s *server) workers(w http.ResponseWriter, r *http.Request) {
	l, ok := s.b.(WorkerLister)
	if !ok {
		WriteJSON(w, http.StatusOK, []api.WorkerInfo{})
		return
	}
	out, err := l.Workers(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	if out == nil {
		out = []api.WorkerInfo{}
	}
	WriteJSON(w, http.StatusOK, visibleWorkers(callerOf(r), out))
}

func (s *server) registerWorker(w http.ResponseWriter, r *http.Request) {
	ws := s.sessions(w)
	if ws == nil {
		return
	}
	var req api.WorkerRegistration
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	out, err := ws.RegisterWorker(r.Context(), callerOf(r), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusCreated, out)
}

func (s *server) pollWorker(w http.ResponseWriter, r *http.Request) {
	ws := s.sessions(w)
	if ws == nil {
		return
	}
	var req api.WorkerPollRequest
	if err := s.decodeOptionalBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	out, err := ws.PollWorker(r.Context(), callerOf(r), r.PathValue("id"), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) workerEvents(w http.ResponseWriter, r *http.Request) {
	ws := s.sessions(w)
	if ws == nil {
		return
	}
	var req api.WorkerEvents
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	if len(req.Events) > api.MaxWorkerEvents {
		WriteError(w, api.Errorf(api.CodeInvalidRequest, "at most %d events per call, got %d", api.MaxWorkerEvents, len(req.Events)))
		return
	}
	out, err := ws.WorkerEvents(r.Context(), callerOf(r), r.PathValue("id"), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) drainWorker(w http.ResponseWriter, r *http.Request) {
	ws := s.sessions(w)
	if ws == nil {
		return
	}
	var req struct{}
	if err := s.decodeOptionalBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	out, err := ws.DrainWorker(r.Context(), callerOf(r), r.PathValue("id"))
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) deleteWorker(w http.ResponseWriter, r *http.Request) {
	ws := s.sessions(w)
	if ws == nil {
		return
	}
	out, err := ws.DeleteWorker(r.Context(), callerOf(r), r.PathValue("id"))
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

// decodeOptionalBody is decodeBody for a body that may be empty.
func (s *server) decodeOptionalBody(r *http.Request, w http.ResponseWriter, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return s.decodeBody(r, w, v)
}

// visibleWorkers zeroes the running counts for a caller that may not read every type: they tell
// when a victim's tasks run.
func visibleWorkers(caller Caller, ws []api.WorkerInfo) []api.WorkerInfo {
	if !restricted(caller) {
		return ws
	}
	out := make([]api.WorkerInfo, len(ws))
	copy(out, ws)
	for i := range out {
		out[i].Running = 0
	}
	return out
}
