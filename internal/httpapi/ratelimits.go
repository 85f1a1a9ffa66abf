package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// RateLimitBackend is what the rate limit routes need from a node (part of Backend).
type RateLimitBackend interface {
	// RateLimits lists every rate limit by name.
	RateLimits(ctx context.Context) (api.RateLimitList, error)
	// RateLimit returns one, with the tokens of key's bucket ("" the limit's own); not_found
	// when unknown.
	RateLimit(ctx context.Context, name, key string) (api.RateLimit, error)
	// SetRateLimit creates or changes a rate limit (invalid_rate_limit for a bad name, rate or
	// burst) and returns it once this node has applied the change.
	SetRateLimit(ctx context.Context, caller Caller, name string, u api.RateLimitUpdate) (api.RateLimit, error)
	// DeleteRateLimit removes a rate limit (not_found when unknown).
	DeleteRateLimit(ctx context.Context, caller Caller, name string) error
}

func (s *server) rateLimitRoutes(mux *routeMux) {
	mux.HandleFunc("GET "+api.PathRateLimits, s.rateLimits)
	mux.HandleFunc("GET "+api.PathRateLimits+"/{name}", s.rateLimit)
	mux.HandleFunc("POST "+api.PathRateLimits+"/{name}", s.setRateLimit)
	mux.HandleFunc("DELETE "+api.PathRateLimits+"/{name}", s.deleteRateLimit)
}

// rateLimitRight is the cluster right a rate limit route needs: reading them needs only a working
// credential; creating, changing or removing one (which slows or frees everyone's tasks) is the
// operator's, as a queue's settings are.
func rateLimitRight(method, path string) acl.ClusterRight {
	if method != http.MethodGet && method != http.MethodHead && strings.HasPrefix(path, api.PathRateLimits+"/") {
		return acl.RightOperator
	}
	return ""
}

func (s *server) rateLimits(w http.ResponseWriter, r *http.Request) {
	l, err := s.b.RateLimits(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, l)
}

func (s *server) rateLimit(w http.ResponseWriter, r *http.Request) {
	l, err := s.b.RateLimit(r.Context(), r.PathValue("name"), r.URL.Query().Get("key"))
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, l)
}

func (s *server) setRateLimit(w http.ResponseWriter, r *http.Request) {
	var u api.RateLimitUpdate
	if err := s.decodeBody(r, w, &u); err != nil {
		WriteError(w, err)
		return
	}
	name := r.PathValue("name")
	if err := api.CheckRateLimitName(name); err != nil {
		WriteError(w, err)
		return
	}
	if _, _, err := api.ParseRate(u.Rate); err != nil {
		WriteError(w, err)
		return
	}
	if u.Burst != nil {
		if err := api.CheckRateBurst(*u.Burst); err != nil {
			WriteError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	l, err := s.b.SetRateLimit(ctx, callerOf(r), name, u)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, l)
}

func (s *server) deleteRateLimit(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if err := s.b.DeleteRateLimit(ctx, callerOf(r), r.PathValue("name")); err != nil {
		WriteError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
