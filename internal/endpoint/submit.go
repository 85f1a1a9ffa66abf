package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/scheduler"
)

// Submit limits. A zero max_attempts or timeout in a request means the default.
const (
	defaultMaxAttempts = 3
	maxMaxAttempts     = 100
	defaultTimeout     = 30 * time.Second
	maxTimeout         = 7 * 24 * time.Hour
	maxKeyLen          = maxIdempotencyOrUniqueKey
)

// submitTask validates a submit, has propose apply it, and waits until this node's FSM holds it.
// item.Existing reports an idempotency key seen before. A request the client got wrong is an
// *api.Error with its code. The API (on the leader: Config.Propose) and the executor's child tasks
// (Config.ProposeNode) both come through here; submittedBy is the principal the task records ("" without
// ACLs). The task's ID comes from the request (Config.NewID), so a retried request finds its task.
func (srv *Server) submitTask(ctx context.Context, req api.SubmitRequest, submittedBy string,
	propose func(context.Context, *fsm.Command) (*fsm.Result, error)) (fsm.ItemResult, error) {
	sub, err := srv.prepareSubmit(req, srv.cfg.NewID(ctx, 0))
	if err != nil {
		return fsm.ItemResult{}, err
	}
	sub.SubmittedBy = submittedBy
	sub.Trace = traceOf(ctx)
	if err := srv.checkLineage(&sub, identityOf(ctx)); err != nil {
		return fsm.ItemResult{}, err
	}
	res, err := propose(ctx, &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{sub}}})
	if err != nil {
		return fsm.ItemResult{}, err
	}
	item := res.Items[0]
	if errors.Is(item.Err, fsm.ErrDuplicateID) {
		item = fsm.ItemResult{ID: sub.ID} // our own retry after a lost reply: the task is ours
	} else if item.Err != nil {
		return item, srv.noteRefusal(submitItemError(sub, item))
	}
	return item, srv.waitIndex(ctx, res.Index)
}

// submitBatch is submitTask for many tasks in one raft entry: each request is validated on its
// own, the valid ones are applied together, and each gets its own result in order (201 created,
// 200 for an idempotency key seen before, in this batch or earlier, or its error). An error is
// about the whole batch (no leader, shutting down): then no task was stored.
func (srv *Server) submitBatch(ctx context.Context, reqs []api.SubmitRequest, submittedBy string) ([]api.BatchResult, error) {
	results := make([]api.BatchResult, len(reqs))
	subs := make([]fsm.Submit, 0, len(reqs))
	at := make([]int, 0, len(reqs)) // subs[j] answers reqs[at[j]]
	mv := srv.membershipNow()
	tc := traceOf(ctx) // one request, one trace: every task of the batch joins it
	for i, req := range reqs {
		sub, err := srv.prepareSubmitIn(req, srv.cfg.NewID(ctx, i), mv)
		if err != nil {
			results[i] = httpapi.ErrorResult(err)
			continue
		}
		sub.SubmittedBy = submittedBy
		sub.Trace = tc
		if err := srv.checkLineage(&sub, identityOf(ctx)); err != nil {
			results[i] = httpapi.ErrorResult(err)
			continue
		}
		subs = append(subs, sub)
		at = append(at, i)
	}
	if len(subs) == 0 {
		return results, nil
	}
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.SubmitBatch{Items: subs}})
	if err != nil {
		return nil, err
	}
	if len(res.Items) != len(subs) {
		return nil, fmt.Errorf("submit batch: %d results for %d items", len(res.Items), len(subs))
	}
	if err := srv.waitIndex(ctx, res.Index); err != nil {
		return nil, err
	}
	for j, item := range res.Items {
		i := at[j]
		switch {
		case errors.Is(item.Err, fsm.ErrDuplicateID):
			item = fsm.ItemResult{ID: subs[j].ID} // our own retry after a lost reply: the task is ours
		case item.Err != nil:
			results[i] = httpapi.ErrorResult(srv.noteRefusal(submitItemError(subs[j], item)))
			continue
		}
		t, ok := srv.cfg.FSM.Task(item.ID)
		if !ok { // removed by retention between apply and now: as a single submit would say
			results[i] = httpapi.ErrorResult(taskNotFound(item.ID))
			continue
		}
		at := toAPITask(&t)
		results[i] = api.BatchResult{Status: http.StatusCreated, Task: &at}
		if item.Existing {
			results[i].Status = http.StatusOK
		}
	}
	return results, nil
}

// prepareSubmit validates a submit and turns it into a command item with the task ID id.
func (srv *Server) prepareSubmit(req api.SubmitRequest, id string) (fsm.Submit, error) {
	return srv.prepareSubmitIn(req, id, srv.membershipNow())
}

// membershipView is what choosing a task's version reads: the FSM's nodes and gossip's alive set.
// A batch reads it once for all its items, and chooses each (type, pinned version) once: the
// choice parses every offered version (hashicorp/go-version, a regexp per parse), which was a
// third of the leader's CPU in a profile of 1,000-task batches of one type.
type membershipView struct {
	nodes  []fsm.Node
	alive  map[string]bool
	chosen map[versionKey]versionChoice
}

type versionKey struct{ typ, pinned string }

type versionChoice struct {
	version string
	known   bool
}

func (srv *Server) membershipNow() membershipView {
	return membershipView{nodes: srv.cfg.FSM.Targets(), alive: srv.cfg.Alive(), chosen: map[versionKey]versionChoice{}}
}

// chooseVersion is scheduler.ChooseVersion over the view, remembered for the view's life.
func (mv membershipView) chooseVersion(typ, pinned, local string) (string, bool) {
	k := versionKey{typ, pinned}
	if c, ok := mv.chosen[k]; ok {
		return c.version, c.known
	}
	v, known := scheduler.ChooseVersion(typ, pinned, mv.nodes, mv.alive, local)
	mv.chosen[k] = versionChoice{v, known}
	return v, known
}

func (srv *Server) prepareSubmitIn(req api.SubmitRequest, id string, mv membershipView) (fsm.Submit, error) {
	if req.Type == "" {
		return fsm.Submit{}, api.Errorf(api.CodeMissingType, "type is required")
	}
	if req.Version != "" {
		if err := scheduler.CheckVersion(req.Version); err != nil {
			return fsm.Submit{}, api.Errorf(api.CodeInvalidVersion, "invalid version %q: %v", api.Truncate(req.Version), err)
		}
	}
	var local string
	if h, err := srv.cfg.Registry.Lookup(req.Type); err == nil {
		local = h.Definition().Version
	}
	version, known := mv.chooseVersion(req.Type, req.Version, local)
	if !known {
		return fsm.Submit{}, api.Errorf(api.CodeUnknownTaskType, "unknown task type %q", api.Truncate(req.Type))
	}
	input := req.Input
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	maxAttempts := req.MaxAttempts
	if maxAttempts == 0 {
		maxAttempts = defaultMaxAttempts
	}
	timeout, err := parseTimeout(req.Timeout)
	if err != nil {
		return fsm.Submit{}, err
	}
	uniqueFor, err := parseUniqueFor(req.UniqueKey, req.UniqueFor)
	if err != nil {
		return fsm.Submit{}, err
	}
	runAt, err := parseRunAt(req, time.Now())
	if err != nil {
		return fsm.Submit{}, err
	}
	debounce, err := parseDebounce(req)
	if err != nil {
		return fsm.Submit{}, err
	}
	queue := req.Queue
	if queue == api.DefaultQueue {
		queue = "" // the one spelling of the default queue in records
	}
	exec := req.ExecutionID
	if exec == "" {
		exec = id
	}
	sub := fsm.Submit{
		ID: id, Type: req.Type, Version: version, Input: input, MaxAttempts: maxAttempts,
		Timeout: fsm.Duration(timeout), IdempotencyKey: req.IdempotencyKey, ExecutionID: exec, ParentID: req.ParentID,
		UniqueKey: req.UniqueKey, UniqueFor: fsm.Duration(uniqueFor),
		RunAt: runAt, Priority: req.Priority, Queue: queue,
		ConcurrencyKey: req.ConcurrencyKey, ConcurrencyLimit: req.ConcurrencyLimit,
		RateLimit: req.RateLimit, RateKey: req.RateLimitKey, DebounceKey: req.DebounceKey, Debounce: fsm.Duration(debounce),
	}
	return sub, srv.checkSubmit(&sub)
}

// checkSubmit validates a submit item with every field chosen: prepareSubmitIn ends with it, and
// the leader runs it on the child submits other nodes send (TaskEndpoint.CheckSubmit), so a node
// (or anything that can reach the internode channel) cannot get a task into the log that the API
// would refuse.
func (srv *Server) checkSubmit(s *fsm.Submit) error { return srv.checkSubmitInput(s, true) }

// checkSubmitInput is checkSubmit, without the type's input check when checkInput is false: a
// workflow step whose input is its parents' results (workflows.go) has none yet.
func (srv *Server) checkSubmitInput(s *fsm.Submit, checkInput bool) error {
	if s.ID == "" || s.Type == "" || s.ExecutionID == "" {
		return api.Errorf(api.CodeInvalidRequest, "a submit needs an id, a type and an execution id")
	}
	if err := scheduler.CheckVersion(s.Version); err != nil {
		return api.Errorf(api.CodeInvalidVersion, "invalid version %q: %v", api.Truncate(s.Version), err)
	}
	if !srv.typeKnown(s.Type) {
		return api.Errorf(api.CodeUnknownTaskType, "unknown task type %q", api.Truncate(s.Type))
	}
	if err := limits.CheckSize(limits.PayloadInput, len(s.Input), srv.cfg.MaxInputBytes); err != nil {
		var se *limits.SizeError
		errors.As(err, &se)
		return se.APIError()
	}
	if !json.Valid(s.Input) {
		return api.Errorf(api.CodeInvalidInput, "input is not JSON")
	}
	if h, err := srv.cfg.Registry.Lookup(s.Type); err == nil && checkInput && h.Definition().Version == s.Version {
		if err := h.Validate(s.Input); err != nil {
			return api.Errorf(api.CodeInvalidInput, "invalid input for %s: %s", api.Truncate(s.Type), api.Truncate(err.Error()))
		}
	}
	if s.MaxAttempts < 1 || s.MaxAttempts > maxMaxAttempts {
		return api.Errorf(api.CodeInvalidMaxAttempts, "max_attempts must be between 1 and %d", maxMaxAttempts)
	}
	if d := time.Duration(s.Timeout); d <= 0 || d > maxTimeout {
		return api.Errorf(api.CodeInvalidTimeout, "timeout must be positive and at most %s", maxTimeout)
	}
	if len(s.IdempotencyKey) > maxKeyLen {
		return srv.refuse(capKeyLength, api.Errorf(api.CodeInvalidIdempotency, "idempotency_key is longer than %d bytes", maxKeyLen))
	}
	if len(s.UniqueKey) > maxKeyLen {
		return srv.refuse(capKeyLength, api.Errorf(api.CodeInvalidUnique, "unique_key is longer than %d bytes", maxKeyLen))
	}
	if err := checkUnique(s.UniqueKey, time.Duration(s.UniqueFor)); err != nil {
		return err
	}
	if s.Priority < -api.MaxPriority || s.Priority > api.MaxPriority {
		return api.Errorf(api.CodeInvalidPriority, "priority must be between %d and %d", -api.MaxPriority, api.MaxPriority)
	}
	if s.Queue != "" {
		if err := api.CheckQueueName(s.Queue); err != nil {
			return err
		}
	}
	if len(s.ConcurrencyKey) > api.MaxConcurrencyKey {
		return srv.refuse(capKeyLength, api.CheckConcurrency(s.ConcurrencyKey, s.ConcurrencyLimit))
	}
	if err := api.CheckConcurrency(s.ConcurrencyKey, s.ConcurrencyLimit); err != nil {
		return err
	}
	if err := srv.checkRateLimit(s); err != nil {
		return err
	}
	return checkDebounce(s)
}

// maxDelay bounds how far ahead a task may be delayed.
const maxDelay = 366 * 24 * time.Hour

// parseRunAt reads a submit's run_at or delay (not both) into the time the task is due, nil for
// a task due at once. A delay counts from now, on the node that took the request.
func parseRunAt(req api.SubmitRequest, now time.Time) (*time.Time, error) {
	switch {
	case req.RunAt != nil && req.Delay != "":
		return nil, api.Errorf(api.CodeInvalidSchedule, "give run_at or delay, not both")
	case req.RunAt != nil:
		if req.RunAt.Sub(now) > maxDelay {
			return nil, api.Errorf(api.CodeInvalidSchedule, "run_at is more than %s ahead", maxDelay)
		}
		at := req.RunAt.UTC()
		return &at, nil
	case req.Delay != "":
		d, err := time.ParseDuration(req.Delay)
		if err != nil || d < 0 || d > maxDelay {
			return nil, api.Errorf(api.CodeInvalidSchedule, "delay must be a duration like 2s between 0 and %s, got %q", maxDelay, api.Truncate(req.Delay))
		}
		if d == 0 {
			return nil, nil
		}
		at := now.Add(d).UTC().Round(0)
		return &at, nil
	}
	return nil, nil
}

// typeKnown reports whether some node or worker ever offered the type, or this node runs it.
func (srv *Server) typeKnown(typ string) bool {
	if _, err := srv.cfg.Registry.Lookup(typ); err == nil {
		return true
	}
	for _, nd := range srv.cfg.FSM.Targets() {
		for _, ti := range nd.Types {
			if ti.Type == typ {
				return true
			}
		}
	}
	return false
}

// parseTimeout reads a submit's timeout: "" or zero means the default.
func parseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return defaultTimeout, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, api.Errorf(api.CodeInvalidTimeout, "timeout must be a duration like 30s, got %q", api.Truncate(s))
	case d == 0:
		return defaultTimeout, nil
	case d < 0 || d > maxTimeout:
		return 0, api.Errorf(api.CodeInvalidTimeout, "timeout must be positive and at most %s", maxTimeout)
	}
	return d, nil
}
