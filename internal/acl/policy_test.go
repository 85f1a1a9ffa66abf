package acl

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParsePolicyAcceptsTheDocumentedFormat(t *testing.T) {
	doc := `{
	  "name": "reports",
	  "description": "The reports team runs and follows its own tasks",
	  "rules": [
	    {"task_type": "report-*",       "capabilities": ["submit", "read", "cancel", "logs"]},
	    {"task_type": "report-payroll", "capabilities": ["deny"]},
	    {"task_type": "*",              "capabilities": ["read"]}
	  ],
	  "cluster": ["operator"]
	}`
	got, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := Policy{
		Name:        "reports",
		Description: "The reports team runs and follows its own tasks",
		Rules: []Rule{
			{TaskType: "report-*", Capabilities: []Capability{CapSubmit, CapRead, CapCancel, CapLogs}},
			{TaskType: "report-payroll", Capabilities: []Capability{CapDeny}},
			{TaskType: "*", Capabilities: []Capability{CapRead}},
		},
		Cluster: []ClusterRight{RightOperator},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestParsePolicyErrorsNameTheField(t *testing.T) {
	long := strings.Repeat("x", 10000)
	tests := []struct {
		name, doc, field, reason string
	}{
		{"empty document", ``, "", "empty or truncated"},
		{"not an object", `[1,2]`, "", "must be an object"},
		{"syntax error", `{"name": "a",}`, "", "invalid JSON at byte"},
		{"trailing data", `{"name": "a"} {"name": "b"}`, "", "trailing data"},
		{"null", `null`, "name", "required"},
		{"missing name", `{"rules": []}`, "name", "required"},
		{"bad name", `{"name": "-a"}`, "name", "use letters"},
		{"long name", `{"name": "` + long + `"}`, "name", "longer than 64"},
		{"name of wrong type", `{"name": 5}`, "name", "must be a string, not number"},
		{"unknown field", `{"name": "a", "capabilites": []}`, "capabilites", "unknown field"},
		{"long unknown field", `{"name": "a", "` + long + `": 1}`, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…", "unknown field"},
		{"long description", `{"name": "a", "description": "` + long + `"}`, "description", "longer than 1024"},
		{"empty pattern", `{"name": "a", "rules": [{"task_type": "", "capabilities": ["read"]}]}`, "rules[0].task_type", "required"},
		{"pattern with space", `{"name": "a", "rules": [{"task_type": "a b", "capabilities": ["read"]}]}`, "rules[0].task_type", "printable ASCII"},
		{"long pattern", `{"name": "a", "rules": [{"task_type": "` + long + `", "capabilities": ["read"]}]}`, "rules[0].task_type", "longer than 128"},
		{"no capabilities", `{"name": "a", "rules": [{"task_type": "a"}]}`, "rules[0].capabilities", "required"},
		{"unknown capability", `{"name": "a", "rules": [{"task_type": "a", "capabilities": ["read"]}, {"task_type": "b", "capabilities": ["read", "write"]}]}`, "rules[1].capabilities[1]", `unknown capability "write"`},
		{"long unknown capability", `{"name": "a", "rules": [{"task_type": "a", "capabilities": ["` + long + `"]}]}`, "rules[0].capabilities[0]", "unknown capability"},
		{"deny mixed", `{"name": "a", "rules": [{"task_type": "a", "capabilities": ["deny", "read"]}]}`, "rules[0].capabilities", `"deny" cannot be combined`},
		{"capability of wrong type", `{"name": "a", "rules": [{"task_type": "a", "capabilities": "read"}]}`, "rules.capabilities", "must be a slice"},
		{"unknown right", `{"name": "a", "cluster": ["root"]}`, "cluster[0]", `unknown cluster right "root"`},
		{"too large", `{"name": "a", "description": "` + strings.Repeat("x", MaxPolicyBytes) + `"}`, "", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.doc))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *ParseError", err)
			}
			if pe.Field != tt.field || !strings.Contains(pe.Reason, tt.reason) {
				t.Errorf("got field %q reason %q, want field %q reason containing %q", pe.Field, pe.Reason, tt.field, tt.reason)
			}
			if len(err.Error()) > 200 {
				t.Errorf("error of %d bytes echoes the input: %.80s", len(err.Error()), err)
			}
		})
	}
}

func TestMatchPattern(t *testing.T) {
	tests := []struct {
		pattern, typ string
		want         bool
	}{
		{"*", "echo", true},
		{"*", "", true},
		{"echo", "echo", true},
		{"echo", "echo2", false},
		{"echo", "Echo", false},
		{"report-*", "report-daily", true},
		{"report-*", "report-", true},
		{"report-*", "report", false},
		{"report-*", "xreport-daily", false},
		{"*-v2", "count-v2", true},
		{"*-v2", "count-v3", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "acb", false},
		{"a*b*c", "abcb", false},
		{"a*bc*bc", "abcbc", true},
		{"ab*ba", "aba", false}, // prefix and suffix may not overlap
		{"**", "x", true},
		{"team/*", "team/a/b", true}, // '*' crosses '/', unlike path.Match
		{"a?c", "abc", false},        // '?' is literal
		{"a?c", "a?c", true},
		{"[ab]", "a", false}, // so are brackets
	}
	for _, tt := range tests {
		if got := MatchPattern(tt.pattern, tt.typ); got != tt.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", tt.pattern, tt.typ, got, tt.want)
		}
	}
}

// FuzzParsePolicy: no input panics, errors stay short, and an accepted policy survives a round
// trip through its own JSON unchanged.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read"]}], "cluster": ["operator"]}`))
	f.Add([]byte(`{"name": "a", "rules": [{"task_type": "*", "capabilities": ["deny"]}]}`))
	f.Add([]byte(`{"name": 5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError", err)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParsePolicy(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(normalise(p), normalise(again)) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v", p, again)
		}
	})
}

// normalise treats nil and empty slices alike: omitempty drops an empty list.
func normalise(p Policy) Policy {
	if len(p.Rules) == 0 {
		p.Rules = nil
	}
	if len(p.Cluster) == 0 {
		p.Cluster = nil
	}
	return p
}

// TestPolicyQuota parses a policy's quota, refuses a bad one by field, and folds several
// policies' quotas into the most generous.
func TestPolicyQuota(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"name": "team", "quota": {"pending": 500, "schedules": 3, "schedule_min_interval": "30s", "schedule_input_bytes": 4096, "retained": 10000}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Quota{Pending: 500, Schedules: 3, ScheduleMinInterval: "30s", ScheduleInputBytes: 4096, Retained: 10000}
	if p.Quota == nil || *p.Quota != want {
		t.Fatalf("quota %+v, want %+v", p.Quota, want)
	}
	for doc, field := range map[string]string{
		`{"name": "x", "quota": {"pending": -1}}`:                    "quota.pending",
		`{"name": "x", "quota": {"schedule_min_interval": "often"}}`: "quota.schedule_min_interval",
		`{"name": "x", "quota": {"schedule_min_interval": "-1s"}}`:   "quota.schedule_min_interval",
		`{"name": "x", "quota": {"pendnig": 5}}`:                     "pendnig",
	} {
		_, err := ParsePolicy([]byte(doc))
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Field != field {
			t.Errorf("%s: error %v, want one about %s", doc, err, field)
		}
	}
	got := MostGenerous(Quota{Pending: 5, ScheduleMinInterval: "1m"}, Quota{Schedules: 2, ScheduleMinInterval: "10s"}, Quota{Pending: 3, Retained: 9})
	if want := (Quota{Pending: 5, Schedules: 2, ScheduleMinInterval: "10s", Retained: 9}); got != want {
		t.Errorf("most generous %+v, want %+v", got, want)
	}
}
