package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// cmdFuture is a command type only this test binary knows, introduced by the next protocol.
const cmdFuture CommandType = 100

type futurePayload struct {
	Note string `msgpack:"note"`
}

func init() {
	register(Spec[futurePayload]{Type: cmdFuture, Name: "future", Since: Protocol + 1,
		Apply: func(*FSM, uint64, time.Time, *futurePayload) ([]ItemResult, error) { return nil, nil }})
}

// state is everything observable about an FSM, for before/after comparisons.
type state struct {
	Tasks []Task
	Nodes []Node
	Index uint64
}

func stateOf(f *FSM) state { return state{f.List(Filter{}), f.Nodes(), f.Index()} }

// scripted returns an FSM with the script applied through raft.
func scripted(t *testing.T) *FSM {
	f := New()
	for i, c := range script() {
		f.Apply(raftLog(t, uint64(i+1), c))
	}
	return f
}

func TestTableDescribesEveryCommandType(t *testing.T) {
	tests := []struct {
		typ       CommandType
		body      Payload
		name      string
		batchable bool
	}{
		{CmdSubmit, &SubmitBatch{}, "submit", true},
		{CmdAssign, &AssignBatch{}, "assign", false},
		{CmdReport, &ReportBatch{}, "report", true},
		{CmdRegister, &Register{}, "register", false},
		{CmdNodeDown, &Down{}, "node_down", false},
		{CmdDrain, &Drain{}, "drain", false},
		{CmdCancel, &Cancel{}, "cancel", false},
		{CmdRemove, &Remove{}, "remove", false},
	}
	for _, tc := range tests {
		c := &Command{Body: tc.body}
		if c.Type() != tc.typ || tc.typ.String() != tc.name || c.Batchable() != tc.batchable {
			t.Errorf("%T: type %d %q batch %v; want %d %q %v", tc.body, c.Type(), c.Type(),
				c.Batchable(), tc.typ, tc.name, tc.batchable)
		}
		if tc.typ.Since() != 0 {
			t.Errorf("%s: Since %d, want 0 (the previous release applies it)", tc.typ, tc.typ.Since())
		}
	}
}

func TestEncodeDecodeRoundTripsEveryScriptCommand(t *testing.T) {
	for _, c := range append(script(), &Command{Now: t0, Body: &futurePayload{Note: "x"}}) {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != byte(c.Type()) {
			t.Errorf("%s: first byte %#x", c.Type(), b[0])
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", c.Type(), err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s: decoded %+v, want %+v", c.Type(), got.Body, c.Body)
		}
	}
}

// An entry as the previous release wrote it: a msgpack map of the union command, built here with
// the old struct itself.
func TestDecodeReadsLegacyEntries(t *testing.T) {
	old := legacyCommand{Type: CmdReport, Now: t0, Reports: []Report{{TaskID: "a", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportStarted}}}
	b, err := msgpack.Marshal(&old)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] < 0x80 {
		t.Fatalf("legacy entry starts with %#x, below every map marker", b[0])
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &Command{Now: t0, Body: &ReportBatch{Items: old.Reports}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded %+v, want %+v", got.Body, want.Body)
	}

	// A whole history in the legacy encoding builds the same state as in the current one.
	legacy, current := New(), New()
	for i, c := range script() {
		lb, err := EncodeLegacy(c)
		if err != nil {
			t.Fatal(err)
		}
		if r := legacy.Apply(&raft.Log{Type: raft.LogCommand, Index: uint64(i + 1), Data: lb}).(*Result); errors.Is(r.Err, ErrHalted) {
			t.Fatalf("%s: %v", c.Type(), r.Err)
		}
		current.Apply(raftLog(t, uint64(i+1), c))
	}
	if !reflect.DeepEqual(stateOf(legacy), stateOf(current)) {
		t.Errorf("legacy and current encodings built different states")
	}
	if _, err := EncodeLegacy(&Command{Body: &futurePayload{}}); !errors.Is(err, ErrBadCommand) {
		t.Errorf("legacy encoding of a new type: err = %v, want ErrBadCommand", err)
	}
}

// checkHalted asserts f halted with want's state and refuses every later change and snapshot.
func checkHalted(t *testing.T, f *FSM, want state, index uint64) {
	t.Helper()
	if !errors.Is(f.Halted(), ErrHalted) {
		t.Fatalf("Halted() = %v", f.Halted())
	}
	select {
	case <-f.HaltedCh():
	default:
		t.Error("HaltedCh not closed")
	}
	r := f.Apply(raftLog(t, index+1, submitCmd(sub("later", "echo")))).(*Result)
	if r.Err != f.Halted() {
		t.Errorf("apply after halt: err = %v, want the halt error", r.Err)
	}
	if got := stateOf(f); !reflect.DeepEqual(got, want) {
		t.Errorf("state changed after halting:\n%+v\nwant %+v", got, want)
	}
	if snap, err := f.Snapshot(); !errors.Is(err, ErrHalted) || snap != nil {
		t.Errorf("Snapshot of a halted FSM: %v, %v; want ErrHalted", snap, err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, scripted(t))))); !errors.Is(err, ErrHalted) {
		t.Errorf("Restore into a halted FSM: err = %v, want ErrHalted", err)
	}
}

func TestUnknownCommandTypeHaltsTheFSM(t *testing.T) {
	f := scripted(t)
	before := stateOf(f)
	r := f.Apply(&raft.Log{Type: raft.LogCommand, Index: 812, Data: []byte{99, 0x80}}).(*Result)
	want := fmt.Sprintf("fsm: log entry 812 has command type 99 that this build does not know (protocol %d); upgrade this node", Protocol)
	if r.Err == nil || r.Err.Error() != want || !errors.Is(r.Err, ErrUnknownCommand) || r.Index != 812 {
		t.Fatalf("result err = %v, want %q", r.Err, want)
	}
	checkHalted(t, f, before, 812)
}

func TestUnknownFieldHaltsTheFSM(t *testing.T) {
	tests := []struct {
		name  string
		entry map[string]any
	}{
		{"in the payload", map[string]any{"now": t0, "body": map[string]any{"items": []any{
			map[string]any{"id": "x", "type": "echo", "flavour": 5}}}}},
		{"in the envelope", map[string]any{"now": t0, "body": map[string]any{}, "flags": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := msgpack.Marshal(tc.entry)
			if err != nil {
				t.Fatal(err)
			}
			f := scripted(t)
			before := stateOf(f)
			r := f.Apply(&raft.Log{Type: raft.LogCommand, Index: 100, Data: append([]byte{byte(CmdSubmit)}, b...)}).(*Result)
			if !errors.Is(r.Err, ErrHalted) || !strings.Contains(r.Err.Error(), "unknown field") {
				t.Fatalf("result err = %v, want a halt naming the unknown field", r.Err)
			}
			checkHalted(t, f, before, 100)
		})
	}
}

func TestEmitWaitsForEveryUpNodesProtocol(t *testing.T) {
	up := func(name string, protocol int) *Command {
		return &Command{Body: &Register{Node: Node{Name: name, BootID: "b", Protocol: protocol}}}
	}
	tests := []struct {
		name       string
		nodes      []*Command
		body       Payload
		wantErr    error
		wantLegacy bool
	}{
		{name: "a new cluster writes the current encoding", body: &Cancel{IDs: []string{"a"}}},
		{name: "every node current", nodes: []*Command{up("n1", Protocol), up("n2", Protocol)}, body: &Cancel{IDs: []string{"a"}}},
		{name: "a node before protocols gets the legacy encoding", nodes: []*Command{up("n1", Protocol), up("n2", 0)},
			body: &Cancel{IDs: []string{"a"}}, wantLegacy: true},
		{name: "a down node before protocols does not count", nodes: []*Command{up("n1", Protocol), up("n2", 0), downCmd("n2", false)},
			body: &Cancel{IDs: []string{"a"}}},
		{name: "a newer type waits for every up node", nodes: []*Command{up("n1", Protocol+1), up("n2", Protocol)},
			body: &futurePayload{}, wantErr: ErrProtocolTooOld},
		{name: "a newer type waits for nodes before protocols too", nodes: []*Command{up("n1", Protocol+1), up("n2", 0)},
			body: &futurePayload{}, wantErr: ErrProtocolTooOld},
		{name: "a newer type once every up node speaks it", nodes: []*Command{up("n1", Protocol+1), up("n2", Protocol+1), up("n3", Protocol), downCmd("n3", true)},
			body: &futurePayload{Note: "hi"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			for _, c := range tc.nodes {
				h.must(c)
			}
			c := &Command{Now: t0, Body: tc.body}
			b, err := h.f.Emit(c)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Emit err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "n2") {
					t.Errorf("error %q does not name the node to upgrade", err)
				}
				return
			}
			if legacy := b[0] >= 0x80; legacy != tc.wantLegacy {
				t.Errorf("legacy encoding %v, want %v", legacy, tc.wantLegacy)
			}
			got, err := Decode(b)
			if err != nil || !reflect.DeepEqual(got, c) {
				t.Errorf("Decode(Emit) = %+v, %v; want %+v", got, err, c)
			}
		})
	}
}

func TestErrorCodesRoundTripEverySentinel(t *testing.T) {
	codes := map[string]bool{}
	for _, s := range sentinels {
		if s.Code == "" || codes[s.Code] {
			t.Errorf("%q: code %q empty or used twice", s, s.Code)
		}
		codes[s.Code] = true
		for _, err := range []error{s, fmt.Errorf("%w: detail", s), fmt.Errorf("apply: %w", s)} {
			code := ErrorCode(err)
			if code != s.Code {
				t.Errorf("ErrorCode(%q) = %q, want %q", err, code, s.Code)
			}
			got := FromWire(code, err.Error())
			if !errors.Is(got, s) || got.Error() != err.Error() {
				t.Errorf("FromWire(%q, %q) = %v, does not match %q", code, err, got, s)
			}
		}
		// A peer of the previous release sent only the message, the sentinel's text first.
		for _, msg := range []string{s.Error(), s.Error() + ": detail"} {
			if got := FromWire("", msg); !errors.Is(got, s) || got.Error() != msg {
				t.Errorf("FromWire(\"\", %q) = %v, want %q", msg, got, s)
			}
		}
	}
	if FromWire("", "") != nil {
		t.Error("FromWire of nothing is not nil")
	}
	if got := FromWire("from_a_newer_build", "something new"); got == nil || got.Error() != "something new" || ErrorCode(got) != "" {
		t.Errorf("unknown code: %v", got)
	}
	if got := FromWire("", "some other failure"); ErrorCode(got) != "" || got.Error() != "some other failure" {
		t.Errorf("unmatched message: %v (code %q)", got, ErrorCode(got))
	}
}

func TestMergeKeepsItemsInOrderAndLeavesInputs(t *testing.T) {
	a, b := submitCmd(sub("a", "echo")), submitCmd(sub("b", "echo"), sub("c", "echo"))
	m, err := Merge(t0, []*Command{a, b})
	if err != nil {
		t.Fatal(err)
	}
	want := &Command{Now: t0, Body: &SubmitBatch{Items: []Submit{sub("a", "echo"), sub("b", "echo"), sub("c", "echo")}}}
	if !reflect.DeepEqual(m, want) || m.Len() != 3 {
		t.Errorf("merged %+v", m.Body)
	}
	if a.Len() != 1 || b.Len() != 2 {
		t.Errorf("inputs changed: %d, %d items", a.Len(), b.Len())
	}
	for _, cs := range [][]*Command{nil, {cancelCmd("a")}, {a, reportCmd(rep("a", 1, "n1", "b1", ReportStarted))}} {
		if _, err := Merge(t0, cs); err == nil {
			t.Errorf("Merge(%d commands) of unmergeable commands succeeded", len(cs))
		}
	}
}

func TestPrepareStampsFailedReportsWithBackoff(t *testing.T) {
	h := running(t)
	h.must(reportCmd(rep("a", 1, "n1", "b1", ReportFailed)))
	h.must(assignCmd("a", "n1", "b1"))
	c := reportCmd(rep("a", 2, "n1", "b1", ReportFailed), rep("a", 2, "n1", "b1", ReportCheckpoint), rep("zz", 1, "n1", "b1", ReportFailed))
	env := PrepareEnv{Backoff: func(failures int) time.Duration { return time.Duration(failures) * time.Minute }}
	h.f.Prepare(c, t0, env)
	items := c.Body.(*ReportBatch).Items
	if c.Now != t0 {
		t.Errorf("Now = %v", c.Now)
	}
	for i, want := range []*time.Time{ptr(t0.Add(2 * time.Minute)), nil, ptr(t0.Add(time.Minute))} {
		if got := items[i].NotBefore; (got == nil) != (want == nil) || got != nil && !got.Equal(*want) {
			t.Errorf("item %d: NotBefore %v, want %v", i, got, want)
		}
	}
}

func ptr[T any](v T) *T { return &v }
