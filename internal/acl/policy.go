package acl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Capability is something a caller may do with tasks of a type. CapDeny is not a capability but
// a verdict: a rule with it forbids every capability on the types it matches.
type Capability string

// The task capabilities a rule can grant, and the deny verdict.
const (
	CapSubmit Capability = "submit" // submit tasks of the type
	CapRead   Capability = "read"   // get them, see them in lists
	CapCancel Capability = "cancel" // cancel them
	CapLogs   Capability = "logs"   // read and follow their logs
	CapWork   Capability = "work"   // run them: register a worker that offers the type (docs/workers.md)
	CapDeny   Capability = "deny"   // none of the above, whatever other rules grant
)

// ClusterRight is a right over the cluster itself rather than over tasks.
type ClusterRight string

// The cluster rights a policy can grant.
const (
	// RightOperator allows leave, keyring operations and showing or rotating the join token.
	RightOperator ClusterRight = "operator"
	// RightACL allows managing tokens and policies.
	RightACL ClusterRight = "acl"
	// RightMetrics allows scraping /metrics (Consul's agent:read): its per-type counts are
	// not for every token. RightOperator implies it.
	RightMetrics ClusterRight = "metrics"
)

// capBits gives each allowing capability one bit so a rule's grant is a small mask.
var capBits = map[Capability]uint8{CapSubmit: 1, CapRead: 2, CapCancel: 4, CapLogs: 8, CapWork: 16}

var rightBits = map[ClusterRight]uint8{RightOperator: 1, RightACL: 2, RightMetrics: 4}

// Limits on a policy document. They keep one policy small enough to live in the replicated FSM
// and to check on every request without thought.
const (
	MaxPolicyBytes       = 64 << 10
	MaxRules             = 256
	MaxNameLen           = 64
	MaxPatternLen        = 128
	MaxDescriptionLength = 1024
)

// AnonymousPolicy is the name of the policy that, when it exists, applies to requests without a
// credential. Without it such requests are unauthenticated.
const AnonymousPolicy = "anonymous"

// Policy is a named set of rules. It is plain data: the FSM stores and replicates it as msgpack,
// the API carries it as JSON.
type Policy struct {
	Name        string         `json:"name" msgpack:"name"`
	Description string         `json:"description,omitempty" msgpack:"description,omitempty"`
	Rules       []Rule         `json:"rules,omitempty" msgpack:"rules,omitempty"`
	Cluster     []ClusterRight `json:"cluster,omitempty" msgpack:"cluster,omitempty"`
	// Quota caps what the principals holding the policy may make the cluster hold; nil leaves
	// the agent's defaults (--quota-*).
	Quota *Quota `json:"quota,omitempty" msgpack:"quota,omitempty"`
}

// Quota caps what one principal may make the cluster hold. A zero field is unset: the agent's
// default for it applies. When several policies apply, each field takes the most generous value
// any of them sets (MostGenerous), as a token's capabilities are the union of its policies'.
type Quota struct {
	// Pending caps the principal's tasks waiting to run (pending or delayed).
	Pending int `json:"pending,omitempty" msgpack:"pending,omitempty"`
	// Schedules caps the principal's schedules.
	Schedules int `json:"schedules,omitempty" msgpack:"schedules,omitempty"`
	// ScheduleMinInterval is the shortest time between two ticks of a schedule of the
	// principal's, a duration such as "10s".
	ScheduleMinInterval string `json:"schedule_min_interval,omitempty" msgpack:"schedule_min_interval,omitempty"`
	// ScheduleInputBytes caps the input of a schedule of the principal's.
	ScheduleInputBytes int `json:"schedule_input_bytes,omitempty" msgpack:"schedule_input_bytes,omitempty"`
	// Retained caps the principal's finished tasks kept; past it the oldest finished go first.
	Retained int `json:"retained,omitempty" msgpack:"retained,omitempty"`
}

// MinInterval is ScheduleMinInterval parsed; 0 when unset (Validate refuses a bad one).
func (q Quota) MinInterval() time.Duration {
	d, _ := time.ParseDuration(q.ScheduleMinInterval)
	return d
}

// MostGenerous folds quotas into one: per field, the largest count or size set and the shortest
// interval set; a field none sets stays zero.
func MostGenerous(qs ...Quota) Quota {
	var out Quota
	for _, q := range qs {
		out.Pending = max(out.Pending, q.Pending)
		out.Schedules = max(out.Schedules, q.Schedules)
		out.ScheduleInputBytes = max(out.ScheduleInputBytes, q.ScheduleInputBytes)
		out.Retained = max(out.Retained, q.Retained)
		if d := q.MinInterval(); d > 0 && (out.ScheduleMinInterval == "" || d < out.MinInterval()) {
			out.ScheduleMinInterval = d.String()
		}
	}
	return out
}

func (q Quota) validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"pending", q.Pending}, {"schedules", q.Schedules}, {"schedule_input_bytes", q.ScheduleInputBytes}, {"retained", q.Retained}} {
		if f.v < 0 {
			return &ParseError{Field: "quota." + f.name, Reason: "must not be negative"}
		}
	}
	if q.ScheduleMinInterval != "" {
		if d, err := time.ParseDuration(q.ScheduleMinInterval); err != nil || d < 0 {
			return &ParseError{Field: "quota.schedule_min_interval", Reason: fmt.Sprintf("%q: want a duration such as 10s", short(q.ScheduleMinInterval))}
		}
	}
	return nil
}

// Rule gives capabilities (or deny) on the task types its pattern matches; see MatchPattern.
type Rule struct {
	TaskType     string       `json:"task_type" msgpack:"task_type"`
	Capabilities []Capability `json:"capabilities" msgpack:"capabilities"`
}

// ParseError says which field of a policy document is wrong and why, in a short sentence that
// never quotes more than a short prefix of what was sent.
type ParseError struct {
	Field  string // JSON path such as "rules[2].capabilities[0]"; empty for the document itself
	Reason string
}

func (e *ParseError) Error() string { return "policy: " + e.detail() }

func (e *ParseError) detail() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// ParsePolicy reads one policy from its JSON document (see the package doc for the format) and
// validates it. Unknown fields and trailing data are errors, so a typo such as "capabilites" does
// not silently grant nothing; the error is always a *ParseError.
func ParsePolicy(data []byte) (Policy, error) {
	var p Policy
	if len(data) > MaxPolicyBytes {
		return p, &ParseError{Reason: fmt.Sprintf("document larger than %d bytes", MaxPolicyBytes)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Policy{}, &ParseError{Reason: "trailing data after the JSON object"}
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// jsonError turns encoding/json's errors, which can quote input at length, into a short
// *ParseError that names the field when json knows it.
func jsonError(err error) *ParseError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return &ParseError{Reason: fmt.Sprintf("invalid JSON at byte %d", syn.Offset)}
	case errors.As(err, &typ):
		field := short(typ.Field)
		want := "a " + typ.Type.Kind().String()
		if typ.Field == "" {
			want = "an object"
		}
		return &ParseError{Field: field, Reason: "must be " + want + ", not " + short(typ.Value)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &ParseError{Reason: "empty or truncated document"}
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return &ParseError{Field: short(strings.Trim(name, `"`)), Reason: "unknown field"}
	}
	return &ParseError{Reason: "invalid JSON"}
}

// Validate checks a policy, whether it came from ParsePolicy or from a replicated command.
func (p Policy) Validate() error {
	if err := validName(p.Name); err != nil {
		return &ParseError{Field: "name", Reason: err.Error()}
	}
	if len(p.Description) > MaxDescriptionLength {
		return &ParseError{Field: "description", Reason: fmt.Sprintf("longer than %d bytes", MaxDescriptionLength)}
	}
	if len(p.Rules) > MaxRules {
		return &ParseError{Field: "rules", Reason: fmt.Sprintf("more than %d rules", MaxRules)}
	}
	for i, r := range p.Rules {
		if err := validPattern(r.TaskType); err != nil {
			return &ParseError{Field: fmt.Sprintf("rules[%d].task_type", i), Reason: err.Error()}
		}
		if len(r.Capabilities) == 0 {
			return &ParseError{Field: fmt.Sprintf("rules[%d].capabilities", i), Reason: "required"}
		}
		deny := false
		for j, c := range r.Capabilities {
			if c == CapDeny {
				deny = true
				continue
			}
			if _, ok := capBits[c]; !ok {
				return &ParseError{Field: fmt.Sprintf("rules[%d].capabilities[%d]", i, j),
					Reason: fmt.Sprintf("unknown capability %q (want submit, read, cancel, logs, work or deny)", short(string(c)))}
			}
		}
		if deny && len(r.Capabilities) > 1 {
			// "deny" next to "read" reads as "deny everything but read" to some and as "deny" to
			// others; refusing the mix keeps a policy meaning one thing.
			return &ParseError{Field: fmt.Sprintf("rules[%d].capabilities", i), Reason: `"deny" cannot be combined with other capabilities`}
		}
	}
	for i, r := range p.Cluster {
		if _, ok := rightBits[r]; !ok {
			return &ParseError{Field: fmt.Sprintf("cluster[%d]", i),
				Reason: fmt.Sprintf("unknown cluster right %q (want operator, acl or metrics)", short(string(r)))}
		}
	}
	if p.Quota != nil {
		return p.Quota.validate()
	}
	return nil
}

// validName accepts the names of policies: a letter or digit, then letters, digits, '_', '-', '.'.
func validName(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("longer than %d bytes", MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-' && c != '.') {
			return fmt.Errorf("%q: use letters, digits, '_', '-' and '.', starting with a letter or digit", short(s))
		}
	}
	return nil
}

// validPattern accepts task-type patterns: printable ASCII without spaces, '*' as the wildcard.
func validPattern(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > MaxPatternLen {
		return fmt.Errorf("longer than %d bytes", MaxPatternLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("%q: use printable ASCII without spaces", short(s))
		}
	}
	return nil
}

// MatchPattern reports whether a task type matches a rule's pattern. The only special character
// is '*', which matches any run of characters, including none and including '/'; everything else
// matches itself, case-sensitively. So "*" matches every type, "report-*" every type starting
// with "report-", "*-v2" every type ending in "-v2", and "report" only "report".
//
// path.Match is not used on purpose: its '?', '[...]' and '\' would be surprising in type names
// and its '*' stops at '/'.
func MatchPattern(pattern, taskType string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == taskType
	}
	first, last := parts[0], parts[len(parts)-1]
	if len(taskType) < len(first)+len(last) || !strings.HasPrefix(taskType, first) || !strings.HasSuffix(taskType, last) {
		return false
	}
	// Leftmost matching of the middle parts is enough: with '*' as the only wildcard, taking an
	// earlier occurrence never leaves less room for what follows.
	rest := taskType[len(first) : len(taskType)-len(last)]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, mid)
		if i < 0 {
			return false
		}
		rest = rest[i+len(mid):]
	}
	return true
}

// short cuts what a caller sent to a prefix fit for an error message.
func short(s string) string {
	const max = 32
	if len(s) <= max {
		return s
	}
	// Back off to a rune boundary so the message stays valid UTF-8.
	n := max
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
