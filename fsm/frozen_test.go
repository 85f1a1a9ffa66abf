package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// freeze encodes t as a frozen record in the heap (the store puts records in its arena).
func freeze(buf *[]byte, t *Task, nm *names) string {
	*buf = appendFrozen((*buf)[:0], t, nm)
	return string(*buf)
}

// randomTask builds a record with every field of Task chosen at random, nil and empty apart,
// times in UTC (what msgpack decodes) or Local, some at the zero time or far from now.
func randomTask(r *rand.Rand, i int) *Task {
	str := func(choices ...string) string { return choices[r.IntN(len(choices))] }
	raw := func() json.RawMessage {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return json.RawMessage{}
		case 2:
			return json.RawMessage(`{"n":` + fmt.Sprint(r.Int64()) + `}`)
		}
		return json.RawMessage(strings.Repeat("x", r.IntN(300))) // a length of two varint bytes
	}
	tm := func() time.Time {
		var t time.Time
		switch r.IntN(5) {
		case 0: // the zero time
		case 1:
			t = time.Unix(r.Int64N(1<<40)-1<<39, r.Int64N(1e9)) // centuries either side of 1970
		default:
			t = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(1e15)))
		}
		if r.IntN(3) == 0 {
			return t.Local()
		}
		return t.UTC()
	}
	ptm := func() *time.Time {
		if r.IntN(2) == 0 {
			return nil
		}
		t := tm()
		return &t
	}
	id := fmt.Sprintf("01J%023d", i)
	t := &Task{
		ID: id, Type: str("echo", "calc-square", "", "ünïcode"), Version: str("", "1", "2.0.1"),
		Input: raw(), State: State(str("succeeded", "failed", "cancelled", "pending")),
		Node: str("", "n1", "n2"), BootID: str("", "01JBOOT1", "01JBOOT2"),
		Attempt: r.IntN(5), MaxAttempts: r.IntN(5) - 1, Failures: r.IntN(3),
		Timeout: Duration(r.Int64N(1e12) - 5e11), Result: raw(), IdempotencyKey: str("", "k-"+id),
		ExecutionID: str(id, "01JEXEC", ""), ParentID: str("", "01JPARENT"), CreatedAt: tm(),
		StartedAt: ptm(), FinishedAt: ptm(), NotBefore: ptm(), CancelRequested: r.IntN(2) == 0,
		Checkpoint: raw(), CreateIndex: r.Uint64(), ModifyIndex: r.Uint64N(1 << 20),
		SubmittedBy: str("", "alice"), Schedule: str("", "nightly"), UniqueKey: str("", "u"),
		UniqueUntil: ptm(), RunAt: ptm(), Priority: r.IntN(2001) - 1000, Queue: str("", "emails"),
	}
	if r.IntN(2) == 0 {
		t.ConcurrencyKey, t.ConcurrencyLimit, t.FairSeq = str("", "tenant-7", "ü"), r.IntN(MaxConcurrencyLimit+1), r.Uint64N(1<<40)
		t.Trace = &TraceContext{Flags: byte(r.IntN(2))}
		for i := range t.Trace.TraceID {
			t.Trace.TraceID[i] = byte(r.IntN(256))
		}
		for i := range t.Trace.SpanID {
			t.Trace.SpanID[i] = byte(r.IntN(256))
		}
	}
	switch r.IntN(4) {
	case 0: // no wait
	case 1:
		t.WaitFor = []string{}
	case 2:
		t.WaitLeft = r.IntN(3)
	default:
		t.WaitFor, t.WaitLeft = []string{"01JCHILD1", "01JCHILD2"}, r.IntN(3)
	}
	if r.IntN(3) > 0 {
		t.Error = &TaskError{Type: str("", "timeout", "handler"), Message: str("", "boom", strings.Repeat("é", 200)), Final: r.IntN(2) == 0}
	}
	switch r.IntN(3) {
	case 0: // nil history
	case 1:
		t.History = []HistoryEntry{}
	default:
		for a := range r.IntN(6) {
			t.History = append(t.History, HistoryEntry{Attempt: a, Node: str("", "n1"), Event: str(EventAssigned, EventFailed, EventRetried),
				At: tm(), Error: str("", "exit status 1"), Final: r.IntN(4) == 0, By: str("", "anonymous")})
		}
	}
	return t
}

func TestFrozenRecordsThawAsTheyWereFrozen(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var nm names
	var buf []byte
	var reused Task // Persist thaws every record into one Task
	for i := range 3000 {
		want := randomTask(r, i)
		cold := freeze(&buf, want, &nm)
		if got := idOf(cold); got != want.ID {
			t.Fatalf("idOf = %q, want %q", got, want.ID)
		}
		got, err := thaw(cold, nm.list)
		if err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("task %d thawed differs:\n got %+v\nwant %+v", i, got, want)
		}
		if err := thawInto(&reused, cold, nm.list); err != nil || !reflect.DeepEqual(&reused, want) {
			t.Fatalf("task %d thawed into the record before it differs (%v):\n got %+v\nwant %+v", i, err, &reused, want)
		}
		// The digest and snapshots encode records with msgpack: the same bytes.
		gb, _ := msgpack.Marshal(got)
		wb, _ := msgpack.Marshal(want)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("task %d: thawed record encodes differently", i)
		}
	}
	if len(nm.list) > 40 {
		t.Errorf("names holds %d strings for a handful of repeated values", len(nm.list))
	}
}

func TestFrozenTimesKeepAFixedZone(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 30, 0, 123, time.FixedZone("CET", 3600))
	var nm names
	var buf []byte
	got, err := thaw(freeze(&buf, &Task{ID: "a", CreatedAt: at, FinishedAt: &at}, &nm), nm.list)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []time.Time{got.CreatedAt, *got.FinishedAt} {
		name, off := g.Zone()
		if !g.Equal(at) || name != "CET" || off != 3600 || g.Format(time.RFC3339Nano) != at.Format(time.RFC3339Nano) {
			t.Errorf("thawed %v, want %v", g, at)
		}
	}
}

func TestDamagedFrozenRecordsFailCleanly(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var nm names
	var buf []byte
	for i := range 50 {
		cold := freeze(&buf, randomTask(r, i), &nm)
		for n := range len(cold) { // every cut
			if _, err := thaw(cold[:n], nm.list); err == nil {
				t.Fatalf("task %d cut at %d of %d bytes thawed", i, n, len(cold))
			}
		}
		if tk, _ := thaw(cold, nm.list); tk.Type != "" {
			if _, err := thaw(cold, nil); err == nil {
				t.Fatalf("task %d thawed without the names it refers to", i)
			}
		}
		for range 200 { // any byte changed: an error or a record, never a panic
			b := []byte(cold)
			b[r.IntN(len(b))] = byte(r.IntN(256))
			_, _ = thaw(string(b), nm.list)
		}
	}
}

func TestAFinishedTaskIsStoredFrozenAndReadAsACopy(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 10))
	s := sub("t1", "echo")
	s.Input = json.RawMessage(`{"a":1}`)
	h.must(submitCmd(s))
	h.must(assignCmd("t1", "n1", "b1"))
	if e := h.f.tasks.byID["t1"]; e.t == nil || e.cold != "" {
		t.Fatal("a running task is stored frozen")
	}
	h.must(reportCmd(rep("t1", 1, "n1", "b1", ReportSucceeded)))
	e := h.f.tasks.byID["t1"]
	if e.t != nil || e.cold == "" {
		t.Fatal("a finished task is stored live, not frozen")
	}
	got, _ := h.f.Task("t1")
	got.Input[2] = 'X' // the caller's copy
	got.History[0].Event = "changed"
	again, _ := h.f.Task("t1")
	if string(again.Input) != `{"a":1}` || again.History[0].Event != EventAssigned || again.State != Succeeded {
		t.Errorf("a change to a read copy reached the store: %s %+v", again.Input, again.History)
	}
	// A retry thaws it back into a live record.
	h.must(submitCmd(sub("t2", "echo")))
	h.must(cancelCmd("t2"))
	h.must(retryCmd("alice", "t2"))
	if e := h.f.tasks.byID["t2"]; e.t == nil {
		t.Error("a retried task stays frozen")
	}
	if tk, _ := h.f.Task("t2"); tk.State != Pending || h.f.Counts()[Cancelled] != 0 || h.f.Counts()[Pending] != 1 {
		t.Errorf("after the retry: %s, counts %v", tk.State, h.f.Counts())
	}
}

// A snapshot reads frozen records with the names table it captured, while Apply freezes records
// with names that table never had (new types and nodes: the live list grows and moves).
func TestSnapshotReadsFrozenRecordsWhileApplyAddsNames(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 1000))
	for i := range 100 {
		id := fmt.Sprintf("t%03d", i)
		h.must(submitCmd(sub(id, "echo")))
		h.must(assignCmd(id, "n1", "b1"))
		h.must(reportCmd(rep(id, 1, "n1", "b1", ReportSucceeded)))
	}
	wantIdx, want := h.f.Digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the race detector checks that Persist reads nothing Apply writes
		defer wg.Done()
		if err := snap.Persist(&sink); err != nil {
			t.Error(err)
		}
	}()
	for i := range 300 {
		node, boot, id := fmt.Sprintf("node-%d", i), fmt.Sprintf("boot-%d", i), fmt.Sprintf("u%03d", i)
		h.must(registerCmd(node, boot, 10))
		h.must(submitCmd(sub(id, fmt.Sprintf("type-%d", i))))
		h.must(cancelCmd(id))
	}
	h.must(removeCmd("t000", "t001"))
	wg.Wait()
	checkRestoresTo(t, &sink.Buffer, wantIdx, want)
}

// Lists and totals over live and frozen records agree with a filter applied to every task, for
// every combination of the filters a frozen record is peeked for.
func TestListsOverFrozenRecordsMatchAFullScan(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 100))
	h.must(registerCmd("n2", "b2", 100))
	for i := range 60 {
		id, typ, node := fmt.Sprintf("t%02d", i), []string{"echo", "other"}[i%2], []string{"n1", "n2"}[i/2%2]
		s := sub(id, typ)
		if i%5 == 0 {
			s.ParentID, s.ExecutionID = "t00", "t00"
		}
		h.must(submitCmd(s))
		switch i % 3 {
		case 0: // pending
		case 1:
			h.must(assignCmd(id, node, "b"+node[1:]))
		default:
			h.must(assignCmd(id, node, "b"+node[1:]))
			h.must(reportCmd(rep(id, 1, node, "b"+node[1:], ReportSucceeded)))
		}
	}
	all := h.f.List(Filter{})
	onlyEcho := func(typ string) bool { return typ == "echo" }
	for _, state := range []State{"", Pending, Assigned, Succeeded} {
		for _, typ := range []string{"", "echo", "other"} {
			for _, node := range []string{"", "n1", "n2"} {
				for _, exec := range []string{"", "t00"} {
					for _, vis := range []func(string) bool{nil, onlyEcho} {
						q := Filter{State: state, Type: typ, Node: node, ExecutionID: exec, Visible: vis}
						var want []string
						for i := range all {
							if q.match(&all[i]) {
								want = append(want, all[i].ID)
							}
						}
						p, err := h.f.ListPage(q)
						if err != nil {
							t.Fatal(err)
						}
						var got []string
						for _, tk := range p.Tasks {
							got = append(got, tk.ID)
						}
						if fmt.Sprint(got) != fmt.Sprint(want) || p.Total != len(want) {
							t.Errorf("%+v: listed %v (total %d), want %v", q, got, p.Total, want)
						}
					}
				}
			}
		}
	}
}
