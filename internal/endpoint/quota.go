package endpoint

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/scheduler"
)

// Admission control and quotas: what the cluster, and each principal (the submitted_by of its
// tasks: an ACL token's accessor ID, a JWT subject, "anonymous", or "" without ACLs), may make
// every node hold. The caps on waiting tasks are checked in the FSM (fsm/admission.go) with the
// leader's values (API.AdmissionEnv) stamped into each submit; schedule caps are checked where a
// schedule is put (checkScheduleQuota); the retained cap (API.RetainedCap) is trimmed by the
// leader's scheduler loop, as retention is.

// QuotaConfig is the agent's admission settings: the cluster's cap, and each principal's caps
// where its ACL policies set none (without ACLs, every caller is the one principal ""). A zero
// field takes its default; a negative one means no cap.
type QuotaConfig struct {
	MaxPending          int           // --max-pending: tasks waiting to run in the cluster
	Pending             int           // --quota-pending: a principal's tasks waiting to run
	Schedules           int           // --quota-schedules: a principal's schedules
	ScheduleMinInterval time.Duration // --quota-schedule-interval: shortest time between two ticks
	ScheduleInputBytes  int           // --quota-schedule-input-bytes: a schedule's input
	Retained            int           // --quota-retained: a principal's finished tasks kept
}

// Defaults of the admission settings, shared by the flags and SetDefaults. They suit one team:
// the bench's 100,000-task backlogs and million finished tasks fit, a flood does not.
const (
	DefaultMaxPending         = 1_000_000
	DefaultQuotaPending       = 250_000
	DefaultQuotaSchedules     = 100
	DefaultQuotaScheduleEvery = time.Second
	DefaultQuotaScheduleInput = 16 << 10
	DefaultQuotaRetained      = 2_000_000
	retryAfterQueueFull       = 5 // seconds a refused submit is told to wait (Retry-After)
	quotaNoCap                = -1
	maxIdempotencyOrUniqueKey = 128
)

// SetDefaults fills the fields left zero with their defaults.
func (q *QuotaConfig) SetDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&q.MaxPending, DefaultMaxPending)
	def(&q.Pending, DefaultQuotaPending)
	def(&q.Schedules, DefaultQuotaSchedules)
	def(&q.ScheduleInputBytes, DefaultQuotaScheduleInput)
	def(&q.Retained, DefaultQuotaRetained)
	if q.ScheduleMinInterval == 0 {
		q.ScheduleMinInterval = DefaultQuotaScheduleEvery
	}
}

// Quota is one principal's caps as they apply; 0 in a field means no cap.
type Quota struct {
	Pending             int
	Schedules           int
	ScheduleMinInterval time.Duration
	ScheduleInputBytes  int
	Retained            int
}

// capOf turns a setting (negative: no cap) into a cap (0: none).
func capOf(v int) int { return max(v, 0) }

// quotaFor is principal's quota: per field, the most generous value its ACL policies set, else
// the agent's setting. A management token has no caps of its own (the cluster's still apply); a
// JWT subject's policies are known only while its request is served, so it gets the settings.
func (srv *Server) quotaFor(principal string) Quota {
	c := srv.cfg.Quota
	q := Quota{Pending: capOf(c.Pending), Schedules: capOf(c.Schedules), ScheduleMinInterval: max(c.ScheduleMinInterval, 0),
		ScheduleInputBytes: capOf(c.ScheduleInputBytes), Retained: capOf(c.Retained)}
	if !srv.cfg.ACL {
		return q
	}
	view := srv.cfg.FSM.ACL()
	var names []string
	if principal == acl.AnonymousPolicy {
		names = []string{acl.AnonymousPolicy}
	} else if tok, ok := view.Token(principal); ok {
		if tok.Management {
			return Quota{}
		}
		names = tok.Policies
	}
	var qs []acl.Quota
	for _, name := range names {
		if p, ok := view.Policy(name); ok && p.Quota != nil {
			qs = append(qs, *p.Quota)
		}
	}
	if len(qs) == 0 {
		return q
	}
	m := acl.MostGenerous(qs...)
	if m.Pending > 0 {
		q.Pending = m.Pending
	}
	if m.Schedules > 0 {
		q.Schedules = m.Schedules
	}
	if d := m.MinInterval(); d > 0 {
		q.ScheduleMinInterval = d
	}
	if m.ScheduleInputBytes > 0 {
		q.ScheduleInputBytes = m.ScheduleInputBytes
	}
	if m.Retained > 0 {
		q.Retained = m.Retained
	}
	return q
}

// AdmissionEnv is what the leader stamps into every submit it proposes (fsm.PrepareEnv); the
// same for every call, not to be changed.
func (a *API) AdmissionEnv() *fsm.AdmissionEnv { return a.srv.admission }

// RetainedCap is the scheduler loop's view of the retained caps: how many finished tasks of
// principal are kept (0: no cap).
func (a *API) RetainedCap(principal string) int { return a.srv.quotaFor(principal).Retained }

// Problems lists the settings a node's config validation refuses: a zero from the command line
// (SetDefaults has turned every zero of a Go caller into its default before they are judged).
func (q QuotaConfig) Problems() []string {
	var out []string
	for _, f := range []struct {
		flag string
		v    int
	}{{"--max-pending", q.MaxPending}, {"--quota-pending", q.Pending}, {"--quota-schedules", q.Schedules},
		{"--quota-schedule-input-bytes", q.ScheduleInputBytes}, {"--quota-retained", q.Retained}} {
		if f.v == 0 || f.v < quotaNoCap {
			out = append(out, fmt.Sprintf("%s must be positive, or -1 for no cap, got %d", f.flag, f.v))
		}
	}
	if q.ScheduleMinInterval < 0 {
		out = append(out, fmt.Sprintf("--quota-schedule-interval must not be negative, got %s", q.ScheduleMinInterval))
	}
	return out
}

// The caps a refusal names in taskworker_admission_refused_total{cap}.
const (
	capMaxPending       = "max_pending"
	capPending          = "pending"
	capSchedules        = "schedules"
	capScheduleInterval = "schedule_interval"
	capScheduleInput    = "schedule_input"
	capKeyLength        = "key_length"
)

// AdmissionCaps are the caps above, each with its series from the start.
var AdmissionCaps = []string{capMaxPending, capPending, capSchedules, capScheduleInterval, capScheduleInput, capKeyLength}

// refuse counts a refusal for cap and returns err.
func (srv *Server) refuse(cap string, err error) error {
	srv.cfg.Metrics.Refused(cap)
	return err
}

// noteRefusal counts err when it is a submit refused for a cap, and returns it.
func (srv *Server) noteRefusal(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeQueueFull:
			srv.cfg.Metrics.Refused(capMaxPending)
		case api.CodeQuotaExceeded:
			srv.cfg.Metrics.Refused(capPending)
		}
	}
	return err
}

// scheduleTicksChecked is how many ticks ahead checkScheduleQuota looks for the busiest gap.
const scheduleTicksChecked = 120

// checkScheduleQuota holds a schedule put to its principal's quota: its input size, how often it
// fires, and how many schedules the principal has (a replacement counts once). A put is checked
// where it runs, on the leader (checkSchedule); two new schedules put at once can each see room
// for one more, so the count may overshoot by the puts in flight.
func (srv *Server) checkScheduleQuota(s *fsm.Schedule) error {
	old, exists := srv.cfg.FSM.Schedule(s.Name)
	if exists && old.Spec == s.Spec && old.TimeZone == s.TimeZone && bytes.Equal(old.Input, s.Input) {
		return nil // a pause, a resume, or another change of what was admitted before
	}
	q := srv.quotaFor(s.SubmittedBy)
	if q.ScheduleInputBytes > 0 && len(s.Input) > q.ScheduleInputBytes {
		return srv.refuse(capScheduleInput, api.Errorf(api.CodeInputTooLarge,
			"a schedule's input may be at most %d bytes (quota.schedule_input_bytes, else --quota-schedule-input-bytes), got %d", q.ScheduleInputBytes, len(s.Input)))
	}
	if q.ScheduleMinInterval > 0 {
		every, err := scheduler.MinInterval(s.Spec, s.TimeZone, time.Now(), scheduleTicksChecked)
		if err != nil {
			return api.Errorf(api.CodeInvalidSchedule, "%v", err)
		}
		if every > 0 && every < q.ScheduleMinInterval {
			return srv.refuse(capScheduleInterval, api.Errorf(api.CodeScheduleTooFrequent,
				"a schedule may fire at most once every %s (quota.schedule_min_interval, else --quota-schedule-interval); %q fires every %s", q.ScheduleMinInterval, api.Truncate(s.Spec), every))
		}
	}
	if q.Schedules > 0 && !exists { // a replacement adds no schedule
		have := 0
		for _, o := range srv.cfg.FSM.Schedules() {
			if o.SubmittedBy == s.SubmittedBy {
				have++
			}
		}
		if have >= q.Schedules {
			return srv.refuse(capSchedules, api.Errorf(api.CodeQuotaExceeded,
				"the principal has %d schedules, its quota (quota.schedules, else --quota-schedules); delete one first", have))
		}
	}
	return nil
}
