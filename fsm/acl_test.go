package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/acl"
)

func TestACLCommandsAreInTheTable(t *testing.T) {
	tests := []struct {
		typ  CommandType
		body Payload
		name string
	}{
		{CmdACLBootstrap, &ACLBootstrap{}, "acl_bootstrap"},
		{CmdACLPolicySet, &ACLPolicySet{}, "acl_policy_set"},
		{CmdACLPolicyDelete, &ACLPolicyDelete{}, "acl_policy_delete"},
		{CmdACLTokenCreate, &ACLTokenCreate{}, "acl_token_create"},
		{CmdACLTokenDelete, &ACLTokenDelete{}, "acl_token_delete"},
	}
	for _, tc := range tests {
		c := &Command{Body: tc.body}
		if c.Type() != tc.typ || tc.typ.String() != tc.name || c.Batchable() || tc.typ.Since() != 1 {
			t.Errorf("%T: type %d %q batch %v since %d", tc.body, c.Type(), c.Type(), c.Batchable(), tc.typ.Since())
		}
	}
}

// aclToken makes a token the way the node does before proposing it: the secret stays with the
// caller, only its hash goes into the command.
func aclToken(t *testing.T, management bool, policies ...string) (acl.Token, string) {
	t.Helper()
	tok, secret, err := acl.NewToken("test", policies, management, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return tok, secret.Reveal()
}

func mustPolicy(t *testing.T, doc string) acl.Policy {
	t.Helper()
	p, err := acl.ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// aclScript bootstraps, writes policies and tokens, and deletes some of them.
func aclScript(t *testing.T) (cmds []*Command, secrets map[string]string) {
	t.Helper()
	boot, bootSecret := aclToken(t, true)
	team, teamSecret := aclToken(t, false, "reports")
	short, shortSecret := aclToken(t, false, "reports")
	gone, _ := aclToken(t, false, "reports")
	cmds = []*Command{
		{Body: &ACLBootstrap{Token: boot}},
		{Body: &ACLPolicySet{Policy: mustPolicy(t, `{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read"]}]}`)}},
		{Body: &ACLPolicySet{Policy: mustPolicy(t, `{"name": "old", "cluster": ["operator"]}`)}},
		{Body: &ACLTokenCreate{Token: team}},
		{Body: &ACLTokenCreate{Token: short, TTL: Duration(time.Hour)}},
		{Body: &ACLTokenCreate{Token: gone}},
		{Body: &ACLPolicyDelete{Name: "old"}},
		{Body: &ACLTokenDelete{AccessorID: gone.AccessorID}},
	}
	for i, c := range cmds {
		c.Now = t0.Add(time.Duration(i) * time.Minute)
	}
	return cmds, map[string]string{"boot": bootSecret, "team": teamSecret, "short": shortSecret}
}

func TestACLCommandsApplyThroughRaft(t *testing.T) {
	cmds, secrets := aclScript(t)
	f := New()
	for i, c := range cmds {
		if r := f.Apply(raftLog(t, uint64(i+1), c)).(*Result); r.Err != nil {
			t.Fatalf("%s: %v", c.Type(), r.Err)
		}
	}
	v := f.ACL()
	if !v.Bootstrapped() || len(v.Policies()) != 1 || len(v.Tokens()) != 3 {
		t.Fatalf("bootstrapped %v, policies %v, %d tokens", v.Bootstrapped(), v.Policies(), len(v.Tokens()))
	}
	a := acl.NewAuthorizer(v, nil)
	id, err := a.Resolve(secrets["team"], t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Allow(acl.CapSubmit, "report-daily"); err != nil {
		t.Errorf("team token: %v", err)
	}
	if id, err := a.Resolve(secrets["boot"], t0); err != nil || !id.Management {
		t.Errorf("bootstrap token: %+v, %v", id, err)
	}
	// The TTL counts from the command's Now (the 5th command, at t0+4m), never a replica's clock.
	shortTok, _ := v.TokenBySecretHash(acl.HashSecret(secrets["short"]))
	if want := t0.Add(4*time.Minute + time.Hour); !shortTok.ExpirationTime.Equal(want) || !shortTok.CreateTime.Equal(t0.Add(4*time.Minute)) {
		t.Errorf("token expires %v (created %v), want %v", shortTok.ExpirationTime, shortTok.CreateTime, want)
	}
	if _, err := a.Resolve(secrets["short"], t0.Add(4*time.Minute+time.Hour)); !errors.Is(err, acl.ErrUnauthenticated) {
		t.Errorf("expired token: %v", err)
	}
}

func TestACLCommandsRefuseWhatIsWrong(t *testing.T) {
	cmds, _ := aclScript(t)
	boot2, _ := aclToken(t, true)
	mgmt, _ := aclToken(t, false)
	mgmt.Management = true
	bad := acl.Policy{Name: "bad name!"}
	dup, _ := aclToken(t, false)
	tests := []struct {
		name string
		body Payload
		want error
	}{
		{"second bootstrap", &ACLBootstrap{Token: boot2}, ErrACLBootstrapped},
		{"invalid policy", &ACLPolicySet{Policy: bad}, ErrACLInvalid},
		{"unknown policy delete", &ACLPolicyDelete{Name: "nope"}, ErrACLNotFound},
		{"unknown token delete", &ACLTokenDelete{AccessorID: "nope"}, ErrACLNotFound},
		{"management token by create", &ACLTokenCreate{Token: mgmt}, ErrACLInvalid},
		{"negative ttl", &ACLTokenCreate{Token: dup, TTL: -1}, ErrACLInvalid},
		{"token without a hash", &ACLTokenCreate{Token: acl.Token{AccessorID: dup.AccessorID}}, ErrACLInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			for _, c := range cmds {
				h.must(c)
			}
			_, before := h.f.Digest()
			r := h.apply(&Command{Body: tc.body})
			if !errors.Is(r.Err, tc.want) {
				t.Fatalf("err = %v, want %v", r.Err, tc.want)
			}
			// The wire code lets a follower rebuild the sentinel from the leader's reply.
			if got := FromWire(ErrorCode(r.Err), r.Err.Error()); !errors.Is(got, tc.want) {
				t.Errorf("FromWire(%q) = %v", ErrorCode(r.Err), got)
			}
			h.idx-- // compare state at the same index: only the refused command's bump differs
			h.f.mu.Lock()
			h.f.index = h.idx
			h.f.mu.Unlock()
			if _, after := h.f.Digest(); after != before {
				t.Error("a refused ACL command changed the state")
			}
		})
	}
	// Deleting the bootstrap token does not reopen bootstrap.
	h := newHarness(t)
	for _, c := range cmds {
		h.must(c)
	}
	h.must(&Command{Body: &ACLTokenDelete{AccessorID: cmds[0].Body.(*ACLBootstrap).Token.AccessorID}})
	if r := h.apply(&Command{Body: &ACLBootstrap{Token: boot2}}); !errors.Is(r.Err, ErrACLBootstrapped) {
		t.Errorf("bootstrap after deleting the bootstrap token: %v", r.Err)
	}
}

func TestACLStateIsInSnapshotsAndDigest(t *testing.T) {
	cmds, secrets := aclScript(t)
	f := New()
	for i, c := range cmds {
		f.ApplyCommand(uint64(i+1), c)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink digestSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sink.Bytes(), []byte(secrets["team"])) {
		t.Fatal("a snapshot holds a token secret")
	}
	g := New()
	if err := g.Restore(&sink); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.ACL().Policies(), f.ACL().Policies()) || !g.ACL().Bootstrapped() || len(g.ACL().Tokens()) != 3 {
		t.Fatalf("restored ACL state %+v", g.ACL().Tokens())
	}
	if _, err := acl.NewAuthorizer(g.ACL(), nil).Resolve(secrets["team"], t0); err != nil {
		t.Errorf("team token after restore: %v", err)
	}
	_, a := f.Digest()
	_, b := g.Digest()
	if a != b {
		t.Error("a replica restored from a snapshot has another digest")
	}
	// A restored snapshot without ACL state empties it, and the digest sees ACL changes.
	h := New()
	for i, c := range cmds[:len(cmds)-1] {
		h.ApplyCommand(uint64(i+1), c)
	}
	h.ApplyCommand(uint64(len(cmds)), &Command{Now: t0, Body: &ACLPolicyDelete{Name: "reports"}})
	if _, c := h.Digest(); c == a {
		t.Error("the digest does not see a different ACL state")
	}
	empty := New()
	sink.Reset()
	es, _ := empty.Snapshot()
	if err := es.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if err := g.Restore(&sink); err != nil {
		t.Fatal(err)
	}
	if g.ACL().Bootstrapped() || len(g.ACL().Tokens()) != 0 {
		t.Error("restoring a snapshot without ACL state kept the old one")
	}
}

func TestSubmittedByIsRecordedAndGated(t *testing.T) {
	h := newHarness(t)
	s := sub("a", "echo")
	s.SubmittedBy = "alice"
	h.must(submitCmd(s, sub("b", "echo")))
	if got := h.task("a").SubmittedBy; got != "alice" {
		t.Errorf("submitted_by %q", got)
	}
	if got := h.task("b").SubmittedBy; got != "" {
		t.Errorf("submitted_by %q for a task without a submitter", got)
	}
	// A node of the release before protocols cannot read the field: Emit waits for it.
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: 0}}})
	if _, err := h.f.Emit(submitCmd(s)); !errors.Is(err, ErrProtocolTooOld) {
		t.Errorf("emit submitted_by to an old node: %v", err)
	}
	if _, err := h.f.Emit(submitCmd(sub("c", "echo"))); err != nil {
		t.Errorf("emit a submit without submitted_by to an old node: %v", err)
	}
	boot, _ := aclToken(t, true)
	if _, err := h.f.Emit(&Command{Body: &ACLBootstrap{Token: boot}}); !errors.Is(err, ErrProtocolTooOld) {
		t.Errorf("emit an ACL command to an old node: %v", err)
	}
}
