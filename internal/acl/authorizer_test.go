package acl

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// outcome names what the HTTP layer would answer for err.
func outcome(t *testing.T, err error) string {
	t.Helper()
	var d *Denied
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnauthenticated):
		return "401"
	case errors.As(err, &d) && errors.Is(err, ErrPermissionDenied):
		return "403"
	}
	t.Fatalf("unexpected error %T: %v", err, err)
	return ""
}

type matrixFixture struct {
	store   *MemStore
	secrets map[string]string // fixture name -> secret
}

func newMatrixFixture(t *testing.T, anonymous bool) matrixFixture {
	t.Helper()
	s := NewMemStore()
	policies := []string{
		`{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read", "cancel", "logs"]}]}`,
		`{"name": "no-payroll", "rules": [{"task_type": "report-payroll", "capabilities": ["deny"]}]}`,
		`{"name": "read-all", "rules": [{"task_type": "*", "capabilities": ["read"]}]}`,
		`{"name": "echo-submit", "rules": [{"task_type": "echo", "capabilities": ["submit"]}]}`,
		`{"name": "ops", "cluster": ["operator"]}`,
		`{"name": "acl-admin", "cluster": ["acl"]}`,
	}
	if anonymous {
		policies = append(policies, `{"name": "anonymous", "rules": [{"task_type": "echo", "capabilities": ["read"]}]}`)
	}
	for _, doc := range policies {
		p, err := ParsePolicy([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	f := matrixFixture{store: s, secrets: map[string]string{}}
	add := func(name string, expires time.Time, policies ...string) {
		tok, secret, err := NewToken(name, policies, false, t0.Add(-time.Hour), expires)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateToken(tok); err != nil {
			t.Fatal(err)
		}
		f.secrets[name] = secret.Reveal()
	}
	add("reports", time.Time{}, "reports")
	add("reports-no-payroll", time.Time{}, "reports", "no-payroll")
	add("read-all-no-payroll", time.Time{}, "read-all", "no-payroll")
	add("echo-only", time.Time{}, "echo-submit")
	add("ops", time.Time{}, "ops")
	add("acl-admin", time.Time{}, "acl-admin")
	add("deleted-policy", time.Time{}, "gone")
	add("expired", t0, "reports")
	add("expires-later", t0.Add(time.Second), "reports")
	_, secret, err := Bootstrap(s, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f.secrets["management"] = secret.Reveal()
	f.secrets["unknown"] = "tws_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	f.secrets["none"] = ""
	f.secrets["garbage"] = "\x00\xff not a token"
	return f
}

func TestACLMatrix(t *testing.T) {
	type check struct {
		cap   Capability   // a task check when set
		typ   string       //
		right ClusterRight // a cluster check when set
	}
	submit := func(typ string) check { return check{cap: CapSubmit, typ: typ} }
	read := func(typ string) check { return check{cap: CapRead, typ: typ} }
	tests := []struct {
		name      string
		token     string
		anonymous bool
		check     check
		want      string
	}{
		{"no token without anonymous policy is unauthenticated", "none", false, read("echo"), "401"},
		{"no token with anonymous policy gets what it grants", "none", true, read("echo"), "ok"},
		{"no token with anonymous policy gets nothing more", "none", true, submit("echo"), "403"},
		{"no token with anonymous policy has no cluster right", "none", true, check{right: RightOperator}, "403"},
		{"unknown token is unauthenticated", "unknown", false, read("echo"), "401"},
		{"unknown token stays unauthenticated with an anonymous policy", "unknown", true, read("echo"), "401"},
		{"garbage credential is unauthenticated", "garbage", false, read("echo"), "401"},
		{"expired token is unauthenticated", "expired", false, read("report-daily"), "401"},
		{"token before its expiry works", "expires-later", false, read("report-daily"), "ok"},
		{"token without the type is refused", "reports", false, submit("echo"), "403"},
		{"token with a pattern that matches", "reports", false, submit("report-daily"), "ok"},
		{"pattern prefix must match", "reports", false, submit("reports"), "403"},
		{"every granted capability", "reports", false, check{cap: CapLogs, typ: "report-x"}, "ok"},
		{"exact name", "echo-only", false, submit("echo"), "ok"},
		{"exact name grants only that capability", "echo-only", false, read("echo"), "403"},
		{"exact name is not a prefix", "echo-only", false, submit("echo2"), "403"},
		{"star pattern reads every type", "read-all-no-payroll", false, read("count"), "ok"},
		{"star pattern grants only read", "read-all-no-payroll", false, submit("count"), "403"},
		{"deny wins over a pattern allow", "reports-no-payroll", false, submit("report-payroll"), "403"},
		{"deny wins over star", "read-all-no-payroll", false, read("report-payroll"), "403"},
		{"deny leaves other types alone", "reports-no-payroll", false, submit("report-daily"), "ok"},
		{"unknown capability is refused", "reports", false, check{cap: "write", typ: "report-x"}, "403"},
		{"deleted policy grants nothing", "deleted-policy", false, read("echo"), "403"},
		{"task token has no operator right", "reports", false, check{right: RightOperator}, "403"},
		{"operator right", "ops", false, check{right: RightOperator}, "ok"},
		{"operator is not acl", "ops", false, check{right: RightACL}, "403"},
		{"acl right", "acl-admin", false, check{right: RightACL}, "ok"},
		{"acl is not operator", "acl-admin", false, check{right: RightOperator}, "403"},
		{"cluster rights grant no tasks", "ops", false, read("echo"), "403"},
		{"management token may submit anything", "management", false, submit("report-payroll"), "ok"},
		{"management token has operator", "management", false, check{right: RightOperator}, "ok"},
		{"management token has acl", "management", false, check{right: RightACL}, "ok"},
	}
	fixtures := map[bool]matrixFixture{false: newMatrixFixture(t, false), true: newMatrixFixture(t, true)}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtures[tt.anonymous]
			secret, ok := f.secrets[tt.token]
			if !ok {
				t.Fatalf("no fixture token %q", tt.token)
			}
			id, err := NewAuthorizer(f.store, nil).Resolve(secret, t0)
			if err == nil {
				if tt.check.right != "" {
					err = id.Cluster(tt.check.right)
				} else {
					err = id.Allow(tt.check.cap, tt.check.typ)
				}
			}
			if got := outcome(t, err); got != tt.want {
				t.Fatalf("got %s (%v), want %s", got, err, tt.want)
			}
			if err != nil && secret != "" && strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the credential: %v", err)
			}
		})
	}
}

func TestResolveIdentity(t *testing.T) {
	f := newMatrixFixture(t, true)
	a := NewAuthorizer(f.store, nil)
	tok, _ := f.store.TokenBySecretHash(HashSecret(f.secrets["reports-no-payroll"]))
	id, err := a.Resolve(f.secrets["reports-no-payroll"], t0)
	if err != nil {
		t.Fatal(err)
	}
	if id.Principal != tok.AccessorID || id.Kind != KindToken || id.Management || !slices.Equal(id.Policies, []string{"reports", "no-payroll"}) {
		t.Errorf("identity %+v", id)
	}
	anon, err := a.Resolve("", t0)
	if err != nil {
		t.Fatal(err)
	}
	if anon.Principal != "anonymous" || anon.Kind != KindAnonymous {
		t.Errorf("anonymous identity %+v", anon)
	}
	// A policy change applies to the next Resolve.
	if err := f.store.SetPolicy(Policy{Name: "reports"}); err != nil {
		t.Fatal(err)
	}
	id, err = a.Resolve(f.secrets["reports-no-payroll"], t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Allow(CapSubmit, "report-daily"); err == nil {
		t.Error("an emptied policy still grants submit")
	}
	if _, err := a.Resolve(strings.Repeat("a", MaxCredentialLen+1), t0); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("oversized credential: %v", err)
	}
	if _, err := a.Resolve("a.b.c", t0); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("JWT without a JWT method: %v", err)
	}
}

func TestDeniedMessages(t *testing.T) {
	f := newMatrixFixture(t, false)
	a := NewAuthorizer(f.store, nil)
	id, err := a.Resolve(f.secrets["reports-no-payroll"], t0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		err  error
		want string
	}{
		{id.Allow(CapSubmit, "echo"), `permission denied: missing capability "submit" on task type "echo"`},
		{id.Allow(CapCancel, "report-payroll"), `permission denied: "cancel" on task type "report-payroll" is denied by policy "no-payroll"`},
		{id.Cluster(RightOperator), `permission denied: missing cluster right "operator"`},
		{id.Allow(CapRead, strings.Repeat("t", 5000)), `permission denied: missing capability "read" on task type "tttttttttttttttttttttttttttttttt…"`},
		{(*Identity)(nil).Allow(CapRead, "echo"), `permission denied: missing capability "read" on task type "echo"`},
	}
	for _, tt := range tests {
		if tt.err == nil || tt.err.Error() != tt.want {
			t.Errorf("got %v\nwant %s", tt.err, tt.want)
		}
	}
}

func TestFilterReadable(t *testing.T) {
	type task struct{ id, typ string }
	tasks := []task{{"1", "report-daily"}, {"2", "echo"}, {"3", "report-payroll"}, {"4", "report-weekly"}, {"5", "count"}}
	typeOf := func(t task) string { return t.typ }
	ids := func(ts []task) (out []string) {
		for _, t := range ts {
			out = append(out, t.id)
		}
		return out
	}
	f := newMatrixFixture(t, false)
	a := NewAuthorizer(f.store, nil)
	tests := []struct {
		token string
		want  []string
	}{
		{"reports", []string{"1", "3", "4"}},
		{"reports-no-payroll", []string{"1", "4"}},
		{"read-all-no-payroll", []string{"1", "2", "4", "5"}},
		{"echo-only", nil}, // submit without read lists nothing
		{"management", []string{"1", "2", "3", "4", "5"}},
	}
	for _, tt := range tests {
		id, err := a.Resolve(f.secrets[tt.token], t0)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(FilterReadable(id, tasks, typeOf)); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.token, got, tt.want)
		}
	}
	if got := FilterReadable(nil, tasks, typeOf); len(got) != 0 {
		t.Errorf("nil identity reads %v", ids(got))
	}
	if len(tasks) != 5 || tasks[2].id != "3" {
		t.Error("FilterReadable changed its input")
	}
}
