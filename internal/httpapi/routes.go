package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/taskworker/taskworker/api"
)

// Forwarder runs a write where it can be applied (internal/forward): with here on this node when
// it is the leader, else on the leader, which serves it with this same handler.
type Forwarder interface {
	ServeWrite(w http.ResponseWriter, r *http.Request, here http.Handler)
	// ServeRead runs a consistent read with here on the leader, wherever it is, and gives its
	// answer as it is.
	ServeRead(w http.ResponseWriter, r *http.Request, here http.Handler)
	// Forwarded reports whether r came from another node, which answers its caller.
	Forwarded(r *http.Request) bool
}

// headerWaitThere, on a forwarded submit's reply, says the submit's ?wait is left to the node
// the client called: it holds the wait on its own replica, and answers it when it leaves
// (internal/worker's Release) as it answers its other held requests.
const headerWaitThere = "X-Taskworker-Wait-There"

// Route is one route of the API.
type Route struct {
	Pattern string // as http.ServeMux reads it: "METHOD /path/{var}"
	// Write: the route changes the cluster's state, so it runs on the leader (Options.Forward).
	Write bool
}

// localWrites are the writes that act on the node that received them, not on the cluster.
var localWrites = map[string]bool{"POST /v1/agent/leave": true}

// routeMux registers the API's routes and remembers which are writes.
type routeMux struct {
	*http.ServeMux
	routes []Route
	writes map[string]bool // by pattern
}

func newRouteMux() *routeMux {
	return &routeMux{ServeMux: http.NewServeMux(), writes: map[string]bool{}}
}

func (m *routeMux) Handle(pattern string, h http.Handler) {
	method, _, _ := strings.Cut(pattern, " ")
	write := (method == http.MethodPost || method == http.MethodPut || method == http.MethodDelete) && !localWrites[pattern]
	m.routes = append(m.routes, Route{Pattern: pattern, Write: write})
	m.writes[pattern] = write
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}

// forwardWrites sends every request for a write route through fwd before anything else reads
// it: the leader runs the whole chain (credential, access checks, the handler) on it. A forwarded
// submit's ?wait is held here, on this node's replica (headerWaitThere).
func (s *server) forwardWrites(mux *routeMux, fwd Forwarder, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if !mux.writes[pattern] {
			if on, err := Consistent(r.URL.Query()); consistentRoutes[pattern] && on && err == nil && !fwd.Forwarded(r) {
				fwd.ServeRead(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		wait, err := waitParam(r)
		if pattern != "POST /v1/tasks" || wait == 0 || err != nil || fwd.Forwarded(r) {
			fwd.ServeWrite(w, r, next)
			return
		}
		rec := &heldReply{header: http.Header{}}
		fwd.ServeWrite(rec, r, next)
		// Only the task's ID is needed of the leader's answer: the task itself is read here.
		var created struct {
			ID string `json:"id"`
		}
		if rec.header.Get(headerWaitThere) == "" || rec.status >= 300 || json.Unmarshal(rec.body, &created) != nil || created.ID == "" {
			rec.writeTo(w)
			return
		}
		t, err := s.waitTask(r.Context(), created.ID, wait, func(t api.Task) bool { return api.IsTerminal(t.State) })
		if err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, rec.status, t)
	})
}

// consistentRoutes are the reads that take ?consistent: the leader answers them once a raft
// barrier has shown it still leads and holds every acknowledged write (Backend.Barrier).
var consistentRoutes = map[string]bool{"GET /v1/tasks/{id}": true, "GET /v1/tasks": true}

// Consistent reads the consistent parameter of a read: present and empty, true or 1 ask for a
// consistent read; false or 0, or no parameter, for this node's replica as it is. A consistent
// read does not block: with wait it is refused (a blocking query is answered by the replica of
// the node asked, which holds it).
func Consistent(q url.Values) (bool, error) {
	vs, ok := q["consistent"]
	if !ok {
		return false, nil
	}
	switch strings.ToLower(vs[0]) {
	case "", "true", "1":
		if q.Get("wait") != "" {
			return false, api.Errorf(api.CodeInvalidRequest, "consistent and wait do not combine: a consistent read answers at once")
		}
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, api.Errorf(api.CodeInvalidRequest, "consistent must be true or false, got %q", api.Truncate(vs[0]))
}

// consistent makes a read that asks for it (?consistent) consistent: on the leader (a follower
// has forwarded it there, forwardWrites), a raft barrier shows that this node still leads and
// that its state holds every write acknowledged before the read began. no_leader when it does
// not lead (the forwarder then retries on the leader), invalid_request for a bad parameter.
func (s *server) consistent(r *http.Request) error {
	on, err := Consistent(r.URL.Query())
	if err != nil || !on {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	return s.b.Barrier(ctx)
}

// heldReply is a reply held before it is given.
type heldReply struct {
	status int
	header http.Header
	body   []byte
}

func (h *heldReply) Header() http.Header { return h.header }

func (h *heldReply) WriteHeader(status int) {
	if h.status == 0 {
		h.status = status
	}
}

func (h *heldReply) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	h.body = append(h.body, b...)
	return len(b), nil
}

func (h *heldReply) writeTo(w http.ResponseWriter) {
	for k, v := range h.header {
		if k != headerWaitThere {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(max(h.status, http.StatusOK))
	_, _ = w.Write(h.body)
}

// Routes lists every route of the API, as New registers them (the console's and the profiler's,
// which are optional reads, aside).
func Routes() []Route {
	m := newRouteMux()
	(&server{}).register(m)
	return m.routes
}
