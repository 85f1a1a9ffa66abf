package endpoint

import (
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
)

// TestQuotaForTakesTheMostGenerousPolicyElseTheFlags resolves principals' quotas from the
// replicated ACL state: a token's policies' quotas fold into the most generous, a field none sets
// comes from the agent's settings, a management token has none, and a JWT subject (not a token)
// and the anonymous principal without a quota get the settings.
func TestQuotaForTakesTheMostGenerousPolicyElseTheFlags(t *testing.T) {
	f := fsm.New()
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	apply := func(p fsm.Payload) {
		t.Helper()
		if r := f.ApplyCommand(f.Index()+1, &fsm.Command{Now: now, Body: p}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	token := func(mgmt bool, policies ...string) acl.Token {
		tok, _, err := acl.NewToken("", policies, mgmt, now, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	boot := token(true)
	apply(&fsm.ACLBootstrap{Token: boot})
	apply(&fsm.ACLPolicySet{Policy: acl.Policy{Name: "small", Quota: &acl.Quota{Pending: 10, ScheduleMinInterval: "1m"}}})
	apply(&fsm.ACLPolicySet{Policy: acl.Policy{Name: "big", Quota: &acl.Quota{Pending: 500, Schedules: 3, ScheduleMinInterval: "10s"}}})
	apply(&fsm.ACLPolicySet{Policy: acl.Policy{Name: "plain"}})
	both, small, plain := token(false, "small", "big"), token(false, "small"), token(false, "plain")
	for _, tok := range []acl.Token{both, small, plain} {
		apply(&fsm.ACLTokenCreate{Token: tok})
	}
	flags := QuotaConfig{MaxPending: 1000, Pending: 100, Schedules: 7, ScheduleMinInterval: 5 * time.Second, ScheduleInputBytes: 2048, Retained: -1}
	a := New(Config{ACL: true, Quota: flags, FSM: f})
	def := Quota{Pending: 100, Schedules: 7, ScheduleMinInterval: 5 * time.Second, ScheduleInputBytes: 2048, Retained: 0}
	for _, tc := range []struct {
		name, principal string
		want            Quota
	}{
		{"two policies: the most generous of each field", both.AccessorID, Quota{Pending: 500, Schedules: 3, ScheduleMinInterval: 10 * time.Second, ScheduleInputBytes: 2048}},
		{"one policy: its fields, the flags for the rest", small.AccessorID, Quota{Pending: 10, Schedules: 7, ScheduleMinInterval: time.Minute, ScheduleInputBytes: 2048}},
		{"a policy without a quota: the flags", plain.AccessorID, def},
		{"a management token: no caps of its own", boot.AccessorID, Quota{}},
		{"a JWT subject: the flags", "alice@example.com", def},
		{"anonymous without an anonymous policy: the flags", acl.AnonymousPolicy, def},
	} {
		if got := a.srv.quotaFor(tc.principal); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	a.srv.cfg.ACL = false
	if got := a.srv.quotaFor(""); got != def {
		t.Errorf("without ACLs: %+v, want the flags %+v", got, def)
	}
	if env := a.AdmissionEnv(); env.MaxPending != 1000 || env.PrincipalPending(small.AccessorID) != 100 {
		t.Errorf("admission env: cap %d, principal %d; want 1000 and the flags' 100 (ACLs off)", env.MaxPending, env.PrincipalPending(small.AccessorID))
	}
}

// TestQuotaSettingsFromTheCommandLine: a zero or a negative other than -1 is refused by name,
// -1 means no cap, and a Go caller's zeros take the defaults.
func TestQuotaSettingsFromTheCommandLine(t *testing.T) {
	ok := QuotaConfig{MaxPending: 5, Pending: -1, Schedules: 1, ScheduleMinInterval: time.Second, ScheduleInputBytes: -1, Retained: 3}
	if p := ok.Problems(); len(p) != 0 {
		t.Errorf("valid settings refused: %v", p)
	}
	bad := ok
	bad.MaxPending, bad.Retained, bad.ScheduleMinInterval = 0, -2, -time.Second
	if p := bad.Problems(); len(p) != 3 {
		t.Errorf("problems %v, want --max-pending, --quota-retained and --quota-schedule-interval", p)
	}
	var zero QuotaConfig
	zero.SetDefaults()
	if zero.MaxPending != DefaultMaxPending || zero.Pending != DefaultQuotaPending || zero.ScheduleMinInterval != DefaultQuotaScheduleEvery {
		t.Errorf("defaults %+v", zero)
	}
	if a := New(Config{Quota: ok}); a.srv.quotaFor("").Pending != 0 || a.AdmissionEnv().MaxPending != 5 {
		t.Errorf("-1 is no cap: %+v, cluster cap %d", a.srv.quotaFor(""), a.AdmissionEnv().MaxPending)
	}
}
