package fsm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/acl"
)

// FuzzApply feeds arbitrary log entries to an FSM holding a node and tasks in every state: Apply
// must never panic, whatever a peer or a forwarded request put in the log, and an entry it cannot
// read must halt it without changing state.
func FuzzApply(f *testing.F) {
	now := time.Unix(1700000000, 0).UTC()
	seeds := []*Command{
		{Now: now, Body: &SubmitBatch{Items: []Submit{{ID: "x", Type: "echo"}}}},
		{Now: now, Body: &AssignBatch{Items: []Assign{{TaskID: "p", Node: "n1", BootID: "b1"}}}},
		{Now: now, Body: &ReportBatch{Items: []Report{{TaskID: "r", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportFailed}}}},
		{Now: now, Body: &Register{Node: Node{Name: "n2", BootID: "b2", Protocol: Protocol}}},
		{Now: now, Body: &Down{Name: "n1"}},
		{Now: now, Body: &Drain{Name: "n1", Draining: true}},
		{Now: now, Body: &Cancel{IDs: []string{"r", "p", "nope"}}},
		{Now: now, Body: &Remove{IDs: []string{"r"}}},
	}
	// Both encodings: the current one, and the legacy one existing data dirs and old nodes use.
	for _, encode := range []func(*Command) ([]byte, error){Encode, EncodeLegacy} {
		for _, c := range seeds {
			b, err := encode(c)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	// ACL, rate limit and debounce commands have no legacy form: current encoding only.
	tok := acl.Token{AccessorID: "00000000-0000-4000-8000-000000000000", SecretHash: strings.Repeat("ab", 32), Policies: []string{"p"}}
	for _, body := range []Payload{
		&ACLBootstrap{Token: acl.Token{AccessorID: tok.AccessorID, SecretHash: tok.SecretHash, Management: true}},
		&ACLPolicySet{Policy: acl.Policy{Name: "p", Rules: []acl.Rule{{TaskType: "echo*", Capabilities: []acl.Capability{acl.CapSubmit}}}}},
		&ACLPolicyDelete{Name: "p"},
		&ACLTokenCreate{Token: tok, TTL: Duration(time.Hour)},
		&ACLTokenDelete{AccessorID: tok.AccessorID},
		&RateLimitSet{Name: "api", Count: 10, Period: Duration(time.Second), Burst: 2},
		&RateLimitDelete{Name: "api"},
		&SubmitBatch{Items: []Submit{{ID: "rl", Type: "echo", RateLimit: "api", RateKey: "t1"},
			{ID: "db", Type: "echo", DebounceKey: "k", Debounce: Duration(time.Second)}}},
		// Placed at submit: its own task, one that exists, one on no node, one twice.
		&SubmitBatch{Items: []Submit{{ID: "x", Type: "echo"}, {ID: "p", Type: "echo"}}, Place: []Assign{
			{TaskID: "x", Node: "n1", BootID: "b1"}, {TaskID: "p", Node: "n1", BootID: "b1"},
			{TaskID: "x", Node: "nope", BootID: "b1"}, {TaskID: "x", Node: "n1", BootID: "b1", Capped: true}}},
	} {
		b, err := Encode(&Command{Now: now, Body: body})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Commands carrying a request ID (OnceProtocol): applied again, they are repeats.
	for _, body := range []Payload{&Cancel{IDs: []string{"r"}}, &RateLimitSet{Name: "api", Count: 1, Period: Duration(time.Second), Burst: 1}} {
		b, err := Encode(&Command{Now: now, RequestID: []byte("0123456789abcdef"), Body: body})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// And inputs no build decodes, which must halt the FSM without touching its state.
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		m := New()
		m.ApplyCommand(1, &Command{Now: now, Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 2}}})
		m.ApplyCommand(2, &Command{Now: now, Body: &SubmitBatch{Items: []Submit{{ID: "p", Type: "echo"}, {ID: "r", Type: "echo"}}}})
		m.ApplyCommand(3, &Command{Now: now, Body: &AssignBatch{Items: []Assign{{TaskID: "r", Node: "n1", BootID: "b1"}}}})
		before, sumBefore := m.Digest()
		r, _ := m.Apply(&raft.Log{Type: raft.LogCommand, Index: 4, Data: data}).(*Result)
		m.Counts()
		m.SchedulerView()
		// An entry either applies or halts the FSM with the state untouched; never both, never neither.
		if halted := m.Halted() != nil; halted != (m.Index() == before) || halted != errors.Is(r.Err, ErrHalted) {
			t.Fatalf("halted %v, index %d -> %d, result err %v", m.Halted(), before, m.Index(), r.Err)
		}
		// Untouched is the whole state, not only the index: the digest covers every record.
		if _, sum := m.Digest(); m.Halted() != nil && sum != sumBefore {
			t.Fatalf("halted (%v), yet the state changed: digest %s -> %s", m.Halted(), sumBefore, sum)
		}
		// An entry with a request ID that applied cleanly is a repeat the second time.
		if c, err := Decode(data); err == nil && len(c.RequestID) > 0 && appliedCleanly(r) {
			_, sum := m.Digest()
			again, _ := m.Apply(&raft.Log{Type: raft.LogCommand, Index: 5, Data: data}).(*Result)
			if !again.Repeat || again.Err != nil {
				t.Fatalf("the same entry again: repeat %v, err %v", again.Repeat, again.Err)
			}
			if _, after := m.Digest(); after == sum {
				t.Fatal("a repeat left the digest as it was: it holds the applied index")
			}
		}
	})
}
