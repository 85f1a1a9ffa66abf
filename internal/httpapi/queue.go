package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// QueueBackend is what the queue routes need from a node (part of Backend).
type QueueBackend interface {
	// Queues lists every queue with settings or tasks, and the default queue.
	Queues(ctx context.Context) (api.QueueList, error)
	// UpdateQueue changes a queue's limit or paused flag (invalid_queue for a bad name or limit)
	// and returns the queue once this node has applied the change.
	UpdateQueue(ctx context.Context, caller Caller, name string, u api.QueueUpdate) (api.Queue, error)
	// TypeLimits lists the task types that have a limit.
	TypeLimits(ctx context.Context) (api.TypeLimitList, error)
	// SetTypeLimit sets (0: removes) a type's limit and returns it once this node has applied it.
	SetTypeLimit(ctx context.Context, caller Caller, typ string, u api.TypeLimitUpdate) (api.TypeLimit, error)
}

func (s *server) queueRoutes(mux *routeMux) {
	mux.HandleFunc("GET "+api.PathQueues, s.queues)
	mux.HandleFunc("POST "+api.PathQueues+"/{name}", s.updateQueue)
	mux.HandleFunc("GET "+api.PathTypeLimits, s.typeLimits)
	mux.HandleFunc("POST "+api.PathTypeLimits+"/{type}", s.setTypeLimit)
}

// queueRight is the cluster right a queue route needs: reading queues needs only a working
// credential; changing a queue or a type limit (which stops or slows everyone's tasks) is the
// operator's, as leave and keyring changes are.
func queueRight(method, path string) acl.ClusterRight {
	if method != http.MethodGet && method != http.MethodHead &&
		(strings.HasPrefix(path, api.PathQueues+"/") || strings.HasPrefix(path, api.PathTypeLimits+"/")) {
		return acl.RightOperator
	}
	return ""
}

func (s *server) queues(w http.ResponseWriter, r *http.Request) {
	l, err := s.b.Queues(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	visibleQueues(callerOf(r), &l)
	WriteJSON(w, http.StatusOK, l)
}

func (s *server) updateQueue(w http.ResponseWriter, r *http.Request) {
	var u api.QueueUpdate
	if err := s.decodeBody(r, w, &u); err != nil {
		WriteError(w, err)
		return
	}
	name := r.PathValue("name")
	if err := api.CheckQueueName(name); err != nil {
		WriteError(w, err)
		return
	}
	if u.Limit == nil && u.Paused == nil && u.ConcurrencyKey == nil && u.ConcurrencyLimit == nil {
		WriteError(w, api.Errorf(api.CodeInvalidRequest, "give limit, paused, concurrency_key with concurrency_limit, or several"))
		return
	}
	if u.Limit != nil {
		if err := api.CheckLimit(*u.Limit); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	q, err := s.b.UpdateQueue(ctx, callerOf(r), name, u)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, q)
}

func (s *server) typeLimits(w http.ResponseWriter, r *http.Request) {
	l, err := s.b.TypeLimits(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	visibleTypeLimits(callerOf(r), &l)
	WriteJSON(w, http.StatusOK, l)
}

func (s *server) setTypeLimit(w http.ResponseWriter, r *http.Request) {
	var u api.TypeLimitUpdate
	if err := s.decodeBody(r, w, &u); err != nil {
		WriteError(w, err)
		return
	}
	if err := api.CheckLimit(u.Limit); err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	l, err := s.b.SetTypeLimit(ctx, callerOf(r), r.PathValue("type"), u)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, l)
}
