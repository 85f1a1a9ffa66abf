package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func uniq(id, typ, key string, window time.Duration) Submit {
	s := sub(id, typ)
	s.UniqueKey, s.UniqueFor = key, Duration(window)
	return s
}

func submitAt(now time.Time, s ...Submit) *Command {
	return &Command{Now: now, Body: &SubmitBatch{Items: s}}
}

func TestUniqueKeyRefusesInsideItsWindowAndAcceptsAfter(t *testing.T) {
	h := newHarness(t)
	at := t0.Add(time.Hour)
	if it := h.item(submitAt(at, uniq("a", "echo", "k", time.Minute))); it.Err != nil || it.ID != "a" {
		t.Fatalf("first submit = %+v", it)
	}
	tk := h.task("a")
	if tk.UniqueKey != "k" || tk.UniqueUntil == nil || !tk.UniqueUntil.Equal(at.Add(time.Minute)) {
		t.Errorf("task unique fields = %q %v", tk.UniqueKey, tk.UniqueUntil)
	}
	tests := []struct {
		name    string
		at      time.Time
		s       Submit
		wantErr error
		wantID  string
	}{
		{"same key inside the window", at.Add(59 * time.Second), uniq("b", "echo", "k", time.Minute), ErrDuplicateUnique, "a"},
		{"same key, other type", at.Add(time.Second), uniq("c", "other", "k", time.Minute), nil, "c"},
		{"other key", at.Add(time.Second), uniq("d", "echo", "k2", time.Minute), nil, "d"},
		{"no key", at.Add(time.Second), sub("e", "echo"), nil, "e"},
		{"key without window", at.Add(time.Second), uniq("f", "echo", "k3", 0), ErrBadCommand, "f"},
		{"window too long", at.Add(time.Second), uniq("g", "echo", "k3", MaxUniqueFor+time.Second), ErrBadCommand, "g"},
		{"at the window's end", at.Add(time.Minute), uniq("h", "echo", "k", time.Minute), nil, "h"},
		{"inside the new task's window", at.Add(time.Minute + time.Second), uniq("i", "echo", "k", time.Minute), ErrDuplicateUnique, "h"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it := h.item(submitAt(tc.at, tc.s))
			if !errors.Is(it.Err, tc.wantErr) || tc.wantErr == nil && it.Err != nil || it.ID != tc.wantID {
				t.Errorf("submit = %+v, want err %v id %s", it, tc.wantErr, tc.wantID)
			}
		})
	}
}

func TestUniqueKeyHoldsWhateverTheFirstTaskBecomes(t *testing.T) {
	h := newHarness(t)
	h.must(submitAt(t0, uniq("a", "echo", "k", time.Hour)))
	h.must(cancelCmd("a"))
	h.must(removeCmd("a"))
	if it := h.item(submitAt(t0.Add(time.Minute), uniq("b", "echo", "k", time.Hour))); !errors.Is(it.Err, ErrDuplicateUnique) || it.ID != "a" {
		t.Errorf("submit after the holder was cancelled and removed = %+v, want duplicate of a", it)
	}
}

func TestUniqueLocksExpireOldestFirstAndOnlyThose(t *testing.T) {
	h := newHarness(t)
	h.must(submitAt(t0, uniq("a", "echo", "k1", time.Second), uniq("b", "echo", "k2", time.Hour), uniq("c", "echo", "k3", 2*time.Second)))
	h.must(submitAt(t0.Add(2*time.Second), sub("d", "echo")))
	got := h.f.UniqueLocks()
	if len(got) != 1 || got[0].Key != "k2" || got[0].TaskID != "b" {
		t.Errorf("locks after two have expired = %+v, want only k2", got)
	}
}

func TestUniqueLocksSurviveSnapshotAndDigest(t *testing.T) {
	src := newHarness(t)
	src.must(submitAt(t0, sub("plain", "echo")))
	_, plainSum := src.f.Digest()
	plain := snapshotBytes(t, src.f)
	src.must(submitAt(t0.Add(time.Second), uniq("a", "echo", "k", time.Hour)))
	_, sum := src.f.Digest()
	if sum == plainSum {
		t.Error("digest did not change with a unique lock")
	}

	dst := New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, src.f)))); err != nil {
		t.Fatal(err)
	}
	if _, got := dst.Digest(); got != sum {
		t.Errorf("digest after restore = %s, want %s", got, sum)
	}
	if !reflect.DeepEqual(dst.UniqueLocks(), src.f.UniqueLocks()) {
		t.Errorf("locks after restore = %+v, want %+v", dst.UniqueLocks(), src.f.UniqueLocks())
	}
	r := dst.ApplyCommand(10, submitAt(t0.Add(time.Minute), uniq("b", "echo", "k", time.Hour)))
	if it := r.Items[0]; !errors.Is(it.Err, ErrDuplicateUnique) || it.ID != "a" {
		t.Errorf("submit after restore = %+v, want duplicate of a", it)
	}

	// A snapshot without the section (no locks, or an older release) restores with none, and a
	// state without locks hashes as it did before unique keys existed (no "unique" section).
	if bytes.Contains(plain, []byte("unique")) {
		t.Error("snapshot without locks has a unique section")
	}
	old := New()
	if err := old.Restore(io.NopCloser(bytes.NewReader(plain))); err != nil {
		t.Fatal(err)
	}
	if _, got := old.Digest(); got != plainSum || len(old.UniqueLocks()) != 0 {
		t.Errorf("restored plain state: digest %s (want %s), locks %v", got, plainSum, old.UniqueLocks())
	}
}

func TestFinalErrorFailsAtOnce(t *testing.T) {
	h := running(t)
	r := rep("a", 1, "n1", "b1", ReportFailed)
	r.Error = &TaskError{Type: "task_error", Message: "bad input", Final: true}
	h.must(reportCmd(r))
	tk := h.task("a")
	if tk.State != Failed || tk.Failures != 1 || tk.Error == nil || !tk.Error.Final || tk.FinishedAt == nil {
		t.Fatalf("task after a final error = %+v", tk)
	}
	last := tk.History[len(tk.History)-1]
	if last.Event != EventFailed || !last.Final || last.Error != "bad input" {
		t.Errorf("last event = %+v, want a final failed event", last)
	}
	if got := (&ReportBatch{Items: []Report{r}}).NeedsProtocol(); got != 2 {
		t.Errorf("NeedsProtocol of a final report = %d, want 2", got)
	}
	if got := (&ReportBatch{Items: []Report{rep("a", 1, "n1", "b1", ReportFailed)}}).NeedsProtocol(); got != 0 {
		t.Errorf("NeedsProtocol of a plain report = %d, want 0", got)
	}
}

func retryCmd(by string, ids ...string) *Command { return &Command{Body: &Retry{IDs: ids, By: by}} }

func TestRetryRequeuesFailedAndCancelledTasksOnly(t *testing.T) {
	h := running(t)
	r := rep("a", 1, "n1", "b1", ReportFailed)
	r.Error = &TaskError{Type: "task_error", Message: "boom", Final: true}
	h.must(reportCmd(r))
	h.must(submitCmd(sub("p", "echo"), sub("c", "echo")))
	h.must(cancelCmd("c"))

	if it := h.item(retryCmd("alice", "a")); it.Err != nil {
		t.Fatalf("retry failed task: %v", it.Err)
	}
	tk := h.task("a")
	if tk.State != Pending || tk.Failures != 0 || tk.Error != nil || tk.FinishedAt != nil || tk.Attempt != 1 || tk.Node != "" {
		t.Errorf("retried task = %+v", tk)
	}
	if got, want := events(tk), []string{EventAssigned, EventStarted, EventFailed, EventRetried}; !reflect.DeepEqual(got, want) {
		t.Errorf("history = %v, want %v", got, want)
	}
	if by := tk.History[len(tk.History)-1].By; by != "alice" {
		t.Errorf("retried by %q, want alice", by)
	}
	// It runs again as attempt 2, with its max attempts afresh.
	h.must(assignCmd("a", "n1", "b1"))
	if tk := h.task("a"); tk.Attempt != 2 || tk.State != Assigned {
		t.Errorf("after assign: attempt %d state %s", tk.Attempt, tk.State)
	}
	h.must(reportCmd(rep("a", 2, "n1", "b1", ReportFailed)))
	if tk := h.task("a"); tk.State != Pending || tk.Failures != 1 {
		t.Errorf("a plain failure after a retry: state %s failures %d, want pending 1", tk.State, tk.Failures)
	}

	if it := h.item(retryCmd("", "c")); it.Err != nil || h.task("c").State != Pending || h.task("c").CancelRequested {
		t.Errorf("retry cancelled task: %v, %+v", it.Err, h.task("c"))
	}
	tests := []struct {
		id   string
		want error
	}{{"p", ErrNotRetryable}, {"a", ErrNotRetryable}, {"missing", ErrNotFound}}
	for _, tc := range tests {
		if it := h.item(retryCmd("", tc.id)); !errors.Is(it.Err, tc.want) {
			t.Errorf("retry %s: %v, want %v", tc.id, it.Err, tc.want)
		}
	}
}

func purgeCmd(p Purge) *Command { return &Command{Body: &p} }

func TestPurgeDropsOnlyWhatMatches(t *testing.T) {
	// Tasks finished at increasing times: s1 s2 succeeded (echo), f1 failed (echo), x1 cancelled
	// (other), o1 cancelled (echo), p1 pending.
	build := func(t *testing.T) *harness {
		h := newHarness(t)
		h.must(registerCmd("n1", "b1", 10))
		fin := func(id string, kind ReportKind) {
			h.must(assignCmd(id, "n1", "b1"))
			h.must(reportCmd(rep(id, 1, "n1", "b1", kind)))
		}
		s := sub("f1", "echo")
		s.MaxAttempts = 1
		h.must(submitCmd(sub("s1", "echo"), sub("s2", "echo"), s, sub("x1", "other"), sub("o1", "echo"), sub("p1", "echo")))
		fin("s1", ReportSucceeded) // finished at t0+4s
		fin("s2", ReportSucceeded) // t0+6s
		fin("f1", ReportFailed)    // t0+8s
		h.must(cancelCmd("x1"))    // t0+9s
		h.must(cancelCmd("o1"))    // t0+10s
		return h
	}
	before := t0.Add(7 * time.Second)
	tests := []struct {
		name string
		p    Purge
		want []string // removed, oldest finished first
	}{
		{"everything finished", Purge{}, []string{"s1", "s2", "f1", "x1", "o1"}},
		{"succeeded", Purge{States: []State{Succeeded}}, []string{"s1", "s2"}},
		{"finished before", Purge{FinishedBefore: &before}, []string{"s1", "s2"}},
		{"type", Purge{Type: "echo"}, []string{"s1", "s2", "f1", "o1"}},
		{"type and state", Purge{Type: "echo", States: []State{Cancelled, Failed}}, []string{"f1", "o1"}},
		{"type and finished before", Purge{Type: "echo", FinishedBefore: &before}, []string{"s1", "s2"}},
		{"limit", Purge{Limit: 2}, []string{"s1", "s2"}},
		{"type with limit", Purge{Type: "echo", Limit: 3}, []string{"s1", "s2", "f1"}},
		{"pending is never purged", Purge{States: []State{Pending}, Type: "echo"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := build(t)
			r := h.must(purgeCmd(tc.p))
			var got []string
			for _, it := range r.Items {
				got = append(got, it.ID)
				if _, ok := h.f.Task(it.ID); ok {
					t.Errorf("%s still stored", it.ID)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("purged %v, want %v", got, tc.want)
			}
			if _, ok := h.f.Task("p1"); !ok {
				t.Error("pending task purged")
			}
			if n := len(h.f.List(Filter{})); n != 6-len(tc.want) {
				t.Errorf("%d tasks left, want %d", n, 6-len(tc.want))
			}
		})
	}
}

func TestRetryAndPurgeAreProtocol2Types(t *testing.T) {
	for _, tc := range []struct {
		body Payload
		typ  CommandType
		name string
	}{{&Retry{}, CmdRetry, "retry"}, {&Purge{}, CmdPurge, "purge"}} {
		c := &Command{Body: tc.body}
		if c.Type() != tc.typ || tc.typ.String() != tc.name || c.Batchable() || tc.typ.Since() != 2 {
			t.Errorf("%T: type %d %q batch %v since %d", tc.body, c.Type(), c.Type(), c.Batchable(), tc.typ.Since())
		}
	}
}

func TestNewPayloadsRoundTripAndWaitForProtocol2(t *testing.T) {
	before := t0.Add(time.Hour)
	unique := uniq("u", "echo", "k", time.Hour)
	final := rep("a", 1, "n1", "b1", ReportFailed)
	final.Error = &TaskError{Type: "task_error", Message: "m", Final: true}
	cmds := []*Command{
		{Now: t0, Body: &SubmitBatch{Items: []Submit{unique}}},
		{Now: t0, Body: &ReportBatch{Items: []Report{final}}},
		{Now: t0, Body: &Retry{IDs: []string{"a", "b"}, By: "alice"}},
		{Now: t0, Body: &Purge{States: []State{Failed}, Type: "echo", FinishedBefore: &before, Limit: 10}},
	}
	for _, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Errorf("%s: decoded %+v, %v; want %+v", c.Type(), got, err, c)
		}
		// While a protocol 1 node is up, none of them may be written.
		h := newHarness(t)
		h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b", Protocol: 2}}})
		h.must(&Command{Body: &Register{Node: Node{Name: "n2", BootID: "b", Protocol: 1}}})
		if _, err := h.f.Emit(c); !errors.Is(err, ErrProtocolTooOld) {
			t.Errorf("%s with a protocol 1 node up: Emit err %v, want ErrProtocolTooOld", c.Type(), err)
		}
		h.must(downCmd("n2", true))
		if _, err := h.f.Emit(c); err != nil {
			t.Errorf("%s once every up node speaks 2: %v", c.Type(), err)
		}
	}
	// Without the new fields, submits and reports stay writable for protocol 1.
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n2", BootID: "b", Protocol: 1}}})
	for _, c := range []*Command{submitCmd(sub("p", "echo")), reportCmd(rep("a", 1, "n1", "b1", ReportFailed))} {
		if _, err := h.f.Emit(c); err != nil {
			t.Errorf("plain %s with a protocol 1 node: %v", c.Type(), err)
		}
	}
}

func TestDigestSeesTheNewTaskFields(t *testing.T) {
	_, ref := digestState(t, 10, digestTasks(), digestNodes()).Digest()
	until := t0.Add(time.Hour)
	for name, change := range map[string]func(ts []Task){
		"unique key":      func(ts []Task) { ts[1].UniqueKey, ts[1].UniqueUntil = "k", &until },
		"final error":     func(ts []Task) { ts[0].Error = &TaskError{Type: "task_error", Message: "m", Final: true} },
		"final event":     func(ts []Task) { ts[0].History[1].Final = true },
		"retried by":      func(ts []Task) { ts[0].History[1].By = "alice" },
		"unchanged check": func([]Task) {},
	} {
		ts := digestTasks()
		change(ts)
		_, sum := digestState(t, 10, ts, digestNodes()).Digest()
		if changed := sum != ref; changed != (name != "unchanged check") {
			t.Errorf("%s: digest changed %v", name, changed)
		}
	}
}

func TestCheckContentProtocolRefusesOnlyNewFields(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b", Protocol: 1}}})
	if err := h.f.CheckContentProtocol(submitCmd(sub("p", "echo"))); err != nil {
		t.Errorf("plain submit: %v", err)
	}
	if err := h.f.CheckContentProtocol(submitCmd(uniq("u", "echo", "k", time.Hour))); !errors.Is(err, ErrProtocolTooOld) {
		t.Errorf("unique submit with a protocol 1 node: %v, want ErrProtocolTooOld", err)
	}
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b2", Protocol: 2}}})
	if err := h.f.CheckContentProtocol(submitCmd(uniq("u", "echo", "k", time.Hour))); err != nil {
		t.Errorf("unique submit once every node speaks 2: %v", err)
	}
}
