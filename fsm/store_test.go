package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// legacySnapshot encodes the state the way Snapshot and Persist did before the indexed store:
// every task cloned in creation order into one snapshotState, encoded in one piece. Kept here to
// prove that data dirs written by earlier releases restore.
func legacySnapshot(t *testing.T, f *FSM) []byte {
	t.Helper()
	f.mu.RLock()
	s := snapshotState{Index: f.index}
	f.tasks.each(func(tk *Task) bool { s.Tasks = append(s.Tasks, tk.clone()); return true })
	for _, name := range sortedKeys(f.nodes) {
		s.Nodes = append(s.Nodes, f.nodes[name].clone())
	}
	if st := f.acl.State(); st.Bootstrapped || len(st.Policies) > 0 || len(st.Tokens) > 0 {
		s.ACL = &st
	}
	if !f.security.zero() {
		sec := f.security.clone()
		s.Security = &sec
	}
	for _, name := range sortedKeys(f.schedules) {
		s.Schedules = append(s.Schedules, f.schedules[name].clone())
	}
	f.mu.RUnlock()
	b, err := msgpack.Marshal(&s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func scriptFSM(t *testing.T) *FSM {
	t.Helper()
	f := New()
	for i, c := range script() {
		f.Apply(raftLog(t, uint64(i+1), c))
	}
	return f
}

func TestRestoreAcceptsTheFormatOfEarlierReleases(t *testing.T) {
	src := scriptFSM(t)
	old := legacySnapshot(t, src)
	if cur := snapshotBytes(t, src); !bytes.Equal(cur, old) {
		t.Errorf("streamed snapshot differs from the earlier format (%d vs %d bytes): earlier releases could not restore it", len(cur), len(old))
	}
	dst := New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(old))); err != nil {
		t.Fatal(err)
	}
	wi, ws := src.Digest()
	if gi, gs := dst.Digest(); gi != wi || gs != ws {
		t.Errorf("digest after restoring the earlier format = %d %s, want %d %s", gi, gs, wi, ws)
	}
	if !reflect.DeepEqual(dst.List(Filter{}), src.List(Filter{})) || !reflect.DeepEqual(dst.Counts(), src.Counts()) {
		t.Error("restored tasks or counts differ")
	}
}

func TestSnapshotKeepsItsStateWhileApplyGoesOn(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 100))
	for i := range 50 {
		h.must(submitCmd(sub(fmt.Sprintf("t%03d", i), "echo")))
	}
	h.must(assignCmd("t000", "n1", "b1"))
	wantIdx, want := h.f.Digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// After the snapshot: new tasks, changes (history appended) and removals of old ones.
	h.must(reportCmd(rep("t000", 1, "n1", "b1", ReportSucceeded)))
	for i := 1; i < 20; i++ {
		h.must(assignCmd(fmt.Sprintf("t%03d", i), "n1", "b1"))
	}
	h.must(cancelCmd("t030", "t031"))
	h.must(removeCmd("t000", "t030"))
	h.must(submitCmd(sub("late", "echo")))

	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	dst := New()
	if err := dst.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if gi, got := dst.Digest(); gi != wantIdx || got != want {
		t.Errorf("persisted snapshot holds index %d %s, want the state at the snapshot %d %s", gi, got, wantIdx, want)
	}
	if _, ok := dst.Task("late"); ok {
		t.Error("a task submitted after the snapshot is in it")
	}
}

// Persist runs beside Apply: with Persist held in the middle of writing (its first write waits
// on a gate), every later command still applies; and the bytes it then writes are the state at
// the snapshot, none of what was applied meanwhile. The race detector checks that Persist reads
// nothing Apply writes.
func TestPersistRunsBesideApply(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 1000))
	// Enough tasks that Persist's buffer fills and it writes to the sink (and waits at the gate)
	// long before it has encoded them all.
	const tasks = 8000
	for b := range tasks / 100 {
		var batch []Submit
		for i := range 100 {
			batch = append(batch, sub(fmt.Sprintf("t%04d", b*100+i), "echo"))
		}
		h.must(submitCmd(batch...))
	}
	atIdx, atSum := h.f.Digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &gatedSink{gate: make(chan struct{}), first: make(chan struct{})}
	persisted := make(chan error, 1)
	go func() { persisted <- snap.Persist(sink) }()
	select {
	case <-sink.first:
	case err := <-persisted:
		t.Fatalf("Persist returned (%v) without writing", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Persist wrote nothing in 10 s")
	}
	// Persist is now inside its first write. Apply must not wait for it. The applies change the
	// newest tasks, which Persist has not reached yet: a snapshot that read the live records
	// would write them changed.
	applied := make(chan error, 1)
	go func() { // no t.Fatal off the test's goroutine: the first error is handed back
		for i := range 200 {
			id := fmt.Sprintf("t%04d", tasks-1-i)
			for _, c := range []*Command{assignCmd(id, "n1", "b1"), reportCmd(rep(id, 1, "n1", "b1", ReportSucceeded))} {
				if r := h.apply(c); r.Err != nil || r.Items[0].Err != nil {
					applied <- fmt.Errorf("apply %s to %s: %v %v", c.Type(), id, r.Err, r.Items)
					return
				}
			}
		}
		applied <- nil
	}()
	select {
	case err := <-applied:
		if err != nil {
			close(sink.gate)
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(sink.gate)
		t.Fatal("Apply waited for a Persist in progress")
	}
	close(sink.gate)
	if err := <-persisted; err != nil {
		t.Fatal(err)
	}
	if idx, sum := h.f.Digest(); idx == atIdx || sum == atSum {
		t.Fatalf("the applies changed nothing (index %d): the check below would prove nothing", idx)
	}
	if n := sink.buf.Len(); n < 2*256<<10 { // Persist writes through a 256 KiB buffer
		t.Fatalf("the snapshot is %d bytes: too small for its first write to come before its end", n)
	}
	checkRestoresTo(t, &sink.buf, atIdx, atSum)
}

func TestListCursorPagesStayStableAcrossInserts(t *testing.T) {
	h := newHarness(t)
	var want []string
	for i := range 25 {
		id := fmt.Sprintf("t%03d", i)
		h.must(submitCmd(sub(id, "echo")))
		want = append([]string{id}, want...)
	}
	var got []string
	q := Filter{Limit: 10}
	for page := 0; ; page++ {
		p, err := h.f.ListPage(q)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(p.Tasks)...)
		if p.Total != 25+page {
			t.Errorf("page %d: total = %d, want %d", page, p.Total, 25+page)
		}
		if p.Next == "" {
			break
		}
		if page > 5 {
			t.Fatal("paging does not end")
		}
		// Newer tasks arrive between pages: they are before the cursor and never shift it.
		h.must(submitCmd(sub(fmt.Sprintf("new%d", page), "echo")))
		q.Next = p.Next
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pages = %v\nwant %v", got, want)
	}
}

func TestListLastPageHasNoCursor(t *testing.T) {
	h := queryFSM(t)
	tests := []struct {
		limit    int
		wantNext bool
	}{{limit: 4, wantNext: true}, {limit: 5, wantNext: false}, {limit: 6, wantNext: false}, {limit: 0, wantNext: false}}
	for _, tc := range tests {
		p, err := h.f.ListPage(Filter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if (p.Next != "") != tc.wantNext {
			t.Errorf("limit %d: next = %q, want one: %v", tc.limit, p.Next, tc.wantNext)
		}
	}
}

func TestListTotalsCountEveryMatchingTask(t *testing.T) {
	h := queryFSM(t)
	onlyEcho := func(typ string) bool { return typ == "echo" }
	tests := []struct {
		name   string
		filter Filter
		want   int
	}{
		{name: "everything", want: 5},
		{name: "by state", filter: Filter{State: Pending}, want: 2},
		{name: "by type", filter: Filter{Type: "echo"}, want: 4},
		{name: "state and type", filter: Filter{State: Pending, Type: "other"}, want: 1},
		{name: "by node", filter: Filter{Node: "n1"}, want: 2},
		{name: "node and state", filter: Filter{Node: "n1", State: Running}, want: 1},
		{name: "by execution", filter: Filter{ExecutionID: "e"}, want: 2},
		{name: "visible types only", filter: Filter{Visible: onlyEcho}, want: 4},
		{name: "limit and after do not change it", filter: Filter{Limit: 1, After: "q3"}, want: 5},
		{name: "no match", filter: Filter{Type: "nope"}, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := h.f.ListPage(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if p.Total != tc.want {
				t.Errorf("total = %d, want %d", p.Total, tc.want)
			}
			all := tc.filter
			all.Limit, all.After = 0, ""
			if n := len(h.f.List(all)); n != tc.want {
				t.Errorf("total %d disagrees with the %d tasks listed", tc.want, n)
			}
		})
	}
}

func TestListRefusesACursorItDidNotMake(t *testing.T) {
	h := queryFSM(t)
	for _, c := range []string{"!!", "bm9zbGFzaA", "eC95"} { // not base64, "noslash", "x/y"
		if _, err := h.f.ListPage(Filter{Next: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: err = %v, want ErrBadCursor", c, err)
		}
	}
}

func TestExpiredFollowsFinishTimeNotCreation(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(sub("old", "echo"), sub("young", "echo"), sub("kept", "echo")))
	h.must(&Command{Body: &Cancel{IDs: []string{"young"}}, Now: t0.Add(10 * time.Second)})
	h.must(&Command{Body: &Cancel{IDs: []string{"old"}}, Now: t0.Add(time.Hour)})
	if got := h.f.Expired(t0.Add(time.Minute), 0); !reflect.DeepEqual(got, []string{"young"}) {
		t.Errorf("expired = %v, want [young]: old finished after the cutoff, kept never finished", got)
	}
	h.must(removeCmd("young"))
	if got := h.f.Expired(t0.Add(2*time.Hour), 0); !reflect.DeepEqual(got, []string{"old"}) {
		t.Errorf("expired after the removal = %v, want [old]", got)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTaskWatchWakesForItsTaskOnly(t *testing.T) {
	h := assigned(t)
	h.must(submitCmd(sub("b", "echo")))
	_, _, ch := h.f.TaskWatch("a")
	h.must(cancelCmd("b"))
	if closed(ch) {
		t.Error("a change of b woke the watch of a")
	}
	h.must(reportCmd(rep("a", 1, "n1", "b1", ReportStarted)))
	if !closed(ch) {
		t.Error("a change of a did not wake its watch")
	}
	_, ok, missing := h.f.TaskWatch("later")
	h.must(submitCmd(sub("later", "echo")))
	if ok || !closed(missing) {
		t.Error("the creation of a watched ID did not wake its watch")
	}
	h.f.TaskWatch("never")
	if n := len(h.f.watches.ch); n != 0 {
		t.Errorf("%d watches left behind after watching an unknown ID", n)
	}
}

func TestListWatchWakesForItsIndex(t *testing.T) {
	h := queryFSM(t)
	p, _ := h.f.ListPage(Filter{Type: "other", Watch: true})
	h.must(submitCmd(sub("e1", "echo")))
	if closed(p.Watch) {
		t.Error("an echo task woke a list of type other")
	}
	h.must(submitCmd(sub("o1", "other")))
	if !closed(p.Watch) {
		t.Error("a new task of type other did not wake the list")
	}
	all, _ := h.f.ListPage(Filter{Watch: true})
	h.must(cancelCmd("o1"))
	if !closed(all.Watch) {
		t.Error("a change did not wake the unfiltered list")
	}
}

// placement nodes: n1 offers echo (2 slots, 1 used), n2 offers sleep (1 slot).
func placementFSM(t *testing.T) *harness {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 2, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	h.must(&Command{Body: &Register{Node: Node{Name: "n2", BootID: "b2", Capacity: 1, Types: []TypeInfo{{Type: "sleep", Version: "v1"}}}}})
	h.must(submitCmd(sub("busy", "echo")))
	h.must(assignCmd("busy", "n1", "b1"))
	return h
}

func TestPlacementViewReadsOnlyWhatFreeSlotsCanTake(t *testing.T) {
	h := placementFSM(t)
	alive := map[string]bool{"n1": true, "n2": true}
	// Unplaceable tasks at the head of the line, then many of each placeable type.
	for i := range 5 {
		h.must(submitCmd(sub(fmt.Sprintf("x%d", i), "nobody-runs-this")))
	}
	for i := range 100 {
		h.must(submitCmd(sub(fmt.Sprintf("e%03d", i), "echo"), sub(fmt.Sprintf("s%03d", i), "sleep")))
	}
	v := h.f.PlacementView(alive, t0)
	if got := ids(v.Pending); !reflect.DeepEqual(got, []string{"e000", "s000"}) {
		t.Errorf("candidates = %v, want the head of each queue a free slot serves [e000 s000]", got)
	}
	if got := ids(h.f.PlacementView(map[string]bool{"n1": true}, t0).Pending); !reflect.DeepEqual(got, []string{"e000"}) {
		t.Errorf("candidates with n2 not alive = %v, want [e000]", got)
	}
	if v := h.f.PlacementView(map[string]bool{}, t0); len(v.Pending) != 0 || len(v.Nodes) != 2 {
		t.Errorf("no alive node: view = %+v", v)
	}
}

func TestPlacementViewTakesDueRetriesAndReportsTheNextOne(t *testing.T) {
	h := placementFSM(t)
	alive := map[string]bool{"n1": true, "n2": true}
	h.must(submitCmd(sub("r1", "echo"), sub("r2", "echo")))
	h.must(submitCmd(sub("fresh", "echo")))
	for _, id := range []string{"r1", "r2"} { // one at a time: n1 has one free slot
		h.must(assignCmd(id, "n1", "b1"))
		r := rep(id, 1, "n1", "b1", ReportFailed)
		nb := t0.Add(time.Minute)
		if id == "r2" {
			nb = t0.Add(time.Hour)
		}
		r.NotBefore = &nb
		h.must(reportCmd(r))
	}
	v := h.f.PlacementView(alive, t0)
	if got := ids(v.Pending); !reflect.DeepEqual(got, []string{"fresh"}) {
		t.Errorf("candidates before any retry is due = %v, want [fresh]", got)
	}
	if !v.NextRetry.Equal(t0.Add(time.Minute)) {
		t.Errorf("next retry = %v, want +1m", v.NextRetry)
	}
	v = h.f.PlacementView(alive, t0.Add(2*time.Minute))
	// The best of the queue's heads and the due retries, as many as the free slots: the one
	// free echo slot goes to r1, the older.
	if got := ids(v.Pending); !reflect.DeepEqual(got, []string{"r1"}) {
		t.Errorf("candidates with r1 due = %v, want [r1]", got)
	}
	if !v.NextRetry.Equal(t0.Add(time.Hour)) {
		t.Errorf("next retry = %v, want +1h", v.NextRetry)
	}
}

// State alone and execution read merged sources (a tree per type; the root beside its children):
// paging through them with the cursor must give exactly the unpaged list.
func TestMergedListsPageLikeTheWholeList(t *testing.T) {
	h := newHarness(t)
	for i := range 12 {
		typ := []string{"echo", "sleep", "other"}[i%3]
		h.must(submitCmd(sub(fmt.Sprintf("t%02d", i), typ)))
		if i%4 == 0 {
			h.must(submitCmd(Submit{ID: fmt.Sprintf("c%02d", i), Type: typ, ExecutionID: "t00"}))
		}
	}
	h.must(cancelCmd("t05", "c04"))
	for _, q := range []Filter{{State: Pending}, {State: Cancelled}, {ExecutionID: "t00"}, {ExecutionID: "t00", State: Pending}} {
		want := ids(h.f.List(q))
		for _, limit := range []int{1, 2, 5} {
			var got []string
			pq := q
			pq.Limit = limit
			for range 30 {
				p, err := h.f.ListPage(pq)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, ids(p.Tasks)...)
				if p.Next == "" {
					break
				}
				pq.Next = p.Next
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%+v by %d: pages %v, want %v", q, limit, got, want)
			}
		}
	}
	if got := ids(h.f.List(Filter{ExecutionID: "t00"})); !reflect.DeepEqual(got, []string{"c08", "c04", "c00", "t00"}) {
		t.Errorf("execution t00 = %v, want its children and itself newest first [c08 c04 c00 t00]", got)
	}
}

func TestListBySubmitterAndCreationTime(t *testing.T) {
	h := newHarness(t)
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	// t000..t009 one minute apart, submitted by alice (even) and bob (odd).
	for i := range 10 {
		s := sub(fmt.Sprintf("t%03d", i), "echo")
		s.SubmittedBy = []string{"alice", "bob"}[i%2]
		c := submitCmd(s)
		c.Now = t0.Add(time.Duration(i) * time.Minute)
		h.must(c)
	}
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	tests := []struct {
		name   string
		filter Filter
		want   []string
	}{
		{name: "submitter", filter: Filter{SubmittedBy: "bob"}, want: []string{"t009", "t007", "t005", "t003", "t001"}},
		{name: "since is inclusive", filter: Filter{Since: at(7)}, want: []string{"t009", "t008", "t007"}},
		{name: "until is exclusive", filter: Filter{Until: at(2)}, want: []string{"t001", "t000"}},
		{name: "a window", filter: Filter{Since: at(3), Until: at(6)}, want: []string{"t005", "t004", "t003"}},
		{name: "all together, with a state", filter: Filter{SubmittedBy: "alice", Since: at(3), Until: at(9), State: Pending}, want: []string{"t008", "t006", "t004"}},
		{name: "paged", filter: Filter{Since: at(5), Limit: 2}, want: []string{"t009", "t008"}},
		{name: "nobody", filter: Filter{SubmittedBy: "carol"}, want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := h.f.ListPage(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(p.Tasks); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if p.Total != -1 {
				t.Errorf("total = %d: no index counts these filters, it must say unknown (-1)", p.Total)
			}
		})
	}
	// The next page of "paged" goes on within the window.
	p, _ := h.f.ListPage(Filter{Since: at(5), Limit: 2})
	p2, err := h.f.ListPage(Filter{Since: at(5), Limit: 2, Next: p.Next})
	if err != nil || !reflect.DeepEqual(ids(p2.Tasks), []string{"t007", "t006"}) {
		t.Errorf("second page %v (%v)", ids(p2.Tasks), err)
	}
}
