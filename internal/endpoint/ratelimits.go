package endpoint

import (
	"context"
	"errors"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// RateLimitEndpoint serves rate limits (httpapi.RateLimitBackend): reads from this node's FSM,
// changes through the leader (commands rate_limit_set and rate_limit_delete).
type RateLimitEndpoint struct{ srv *Server }

func toAPIRateLimit(st fsm.RateLimitStatus) api.RateLimit {
	return api.RateLimit{Name: st.Name, Rate: api.FormatRate(st.Count, time.Duration(st.Period)), Burst: st.Burst,
		Tokens: st.Tokens, Keys: st.Keys, AsOf: st.AsOf, CreateIndex: st.CreateIndex, ModifyIndex: st.ModifyIndex}
}

func (e *RateLimitEndpoint) RateLimits(context.Context) (api.RateLimitList, error) {
	ls := e.srv.cfg.FSM.RateLimits()
	out := api.RateLimitList{RateLimits: make([]api.RateLimit, 0, len(ls))}
	for _, l := range ls {
		out.RateLimits = append(out.RateLimits, toAPIRateLimit(l))
	}
	return out, nil
}

func (e *RateLimitEndpoint) RateLimit(_ context.Context, name, key string) (api.RateLimit, error) {
	st, ok := e.srv.cfg.FSM.RateLimit(name, key)
	if !ok {
		return api.RateLimit{}, rateLimitNotFound(name)
	}
	return toAPIRateLimit(st), nil
}

func (e *RateLimitEndpoint) SetRateLimit(ctx context.Context, _ httpapi.Caller, name string, u api.RateLimitUpdate) (api.RateLimit, error) {
	if err := api.CheckRateLimitName(name); err != nil {
		return api.RateLimit{}, err
	}
	count, period, err := api.ParseRate(u.Rate)
	if err != nil {
		return api.RateLimit{}, err
	}
	burst := int64(1)
	if u.Burst != nil {
		burst = *u.Burst
	}
	if err := api.CheckRateBurst(burst); err != nil {
		return api.RateLimit{}, err
	}
	c := &fsm.Command{Body: &fsm.RateLimitSet{Name: name, Count: count, Period: fsm.Duration(period), Burst: burst}}
	if err := e.srv.applyAndWait(ctx, c); err != nil {
		return api.RateLimit{}, err
	}
	return e.RateLimit(ctx, name, "")
}

func (e *RateLimitEndpoint) DeleteRateLimit(ctx context.Context, _ httpapi.Caller, name string) error {
	if err := api.CheckRateLimitName(name); err != nil {
		return err
	}
	if !e.srv.cfg.FSM.HasRateLimit(name) { // this runs on the leader: nothing to propose
		return e.srv.goneUnlessRepeated(ctx, rateLimitNotFound(name))
	}
	res, err := e.srv.propose(ctx, &fsm.Command{Body: &fsm.RateLimitDelete{Name: name}})
	if errors.Is(err, fsm.ErrUnknownRateLimit) || res != nil && errors.Is(res.Err, fsm.ErrUnknownRateLimit) {
		return rateLimitNotFound(name) // deleted by another request meanwhile
	}
	if err != nil {
		return e.srv.apiError(err)
	}
	if res.Err != nil {
		return api.Errorf(api.CodeInvalidRateLimit, "%v", res.Err)
	}
	return e.srv.apiError(e.srv.waitIndex(ctx, res.Index))
}

func rateLimitNotFound(name string) error {
	return api.Errorf(api.CodeNotFound, "rate limit %q not found", api.Truncate(name))
}

// checkRateLimit validates a submit's rate limit and key: the limit must exist (the FSM checks
// again when it applies the submit).
func (srv *Server) checkRateLimit(s *fsm.Submit) error {
	switch {
	case s.RateLimit == "" && s.RateKey != "":
		return api.Errorf(api.CodeInvalidRateLimit, "rate_limit_key needs a rate_limit")
	case s.RateLimit == "":
		return nil
	case len(s.RateKey) > maxKeyLen:
		return srv.refuse(capKeyLength, api.Errorf(api.CodeInvalidRateLimit, "rate_limit_key is longer than %d bytes", maxKeyLen))
	}
	if err := api.CheckRateLimitName(s.RateLimit); err != nil {
		return err
	}
	if !srv.cfg.FSM.HasRateLimit(s.RateLimit) {
		return api.Errorf(api.CodeUnknownRateLimit, "rate limit %q does not exist (POST %s/{name} makes one)", api.Truncate(s.RateLimit), api.PathRateLimits)
	}
	return nil
}

// parseDebounce reads a submit's debounce window: 0 without a debounce key.
func parseDebounce(req api.SubmitRequest) (time.Duration, error) {
	if req.DebounceKey == "" && req.Debounce == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(req.Debounce)
	if err != nil {
		return 0, api.Errorf(api.CodeInvalidDebounce, "debounce must be a duration like 5s, got %q", api.Truncate(req.Debounce))
	}
	if req.RunAt != nil || req.Delay != "" {
		return 0, api.Errorf(api.CodeInvalidDebounce, "a debounced submit waits for its window: give no run_at or delay")
	}
	return d, nil
}

// checkDebounce validates a submit's debounce key and window (checkSubmit runs it on every item).
func checkDebounce(s *fsm.Submit) error {
	switch d := time.Duration(s.Debounce); {
	case s.DebounceKey == "" && d == 0:
		return nil
	case s.DebounceKey == "":
		return api.Errorf(api.CodeInvalidDebounce, "debounce needs a debounce_key")
	case len(s.DebounceKey) > maxKeyLen:
		return api.Errorf(api.CodeInvalidDebounce, "debounce_key is longer than %d bytes", maxKeyLen)
	case d <= 0 || d > api.MaxDebounce:
		return api.Errorf(api.CodeInvalidDebounce, "debounce must be positive and at most %s", api.MaxDebounce)
	case s.RunAt != nil:
		return api.Errorf(api.CodeInvalidDebounce, "a debounced submit waits for its window: give no run_at or delay")
	case s.UniqueKey != "":
		return api.Errorf(api.CodeInvalidDebounce, "a debounced submit has no unique_key: its key already makes it one task")
	}
	return nil
}
