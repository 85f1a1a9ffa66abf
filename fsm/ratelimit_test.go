package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func rateSetCmd(name string, count int64, period time.Duration, burst int64) *Command {
	return &Command{Body: &RateLimitSet{Name: name, Count: count, Period: Duration(period), Burst: burst}}
}

// rateHarness has node n1 up with room for many tasks and limit "api" at 10/s, burst 3.
func rateHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 1000))
	h.must(rateSetCmd("api", 10, time.Second, 3))
	return h
}

func TestRateLimitSetRefusesBadRatesAndBursts(t *testing.T) {
	h := newHarness(t)
	for _, c := range []*Command{
		rateSetCmd("", 1, time.Second, 1),
		rateSetCmd(string(bytes.Repeat([]byte("x"), MaxRateLimitLen+1)), 1, time.Second, 1),
		rateSetCmd("a", 0, time.Second, 1),
		rateSetCmd("a", MaxRateCount+1, time.Second, 1),
		rateSetCmd("a", 1, 2*time.Second, 1),
		rateSetCmd("a", 1, time.Second, 0),
		rateSetCmd("a", 1, time.Second, MaxRateBurst+1),
	} {
		if r := h.apply(c); !errors.Is(r.Err, ErrBadCommand) {
			t.Errorf("%+v: %v, want a bad command", c.Body, r.Err)
		}
	}
	if got := h.f.RateLimits(); len(got) != 0 {
		t.Errorf("limits after refusals: %+v", got)
	}
	if r := h.apply(&Command{Body: &RateLimitDelete{Name: "none"}}); !errors.Is(r.Err, ErrUnknownRateLimit) {
		t.Errorf("delete of an unknown limit: %v", r.Err)
	}
}

func TestRateLimitIntervalRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		count  int64
		period time.Duration
		want   time.Duration
	}{{10, time.Second, 100 * time.Millisecond}, {3, time.Second, 333_333_334}, {1, time.Hour, time.Hour}, {7, time.Minute, 8_571_428_572}} {
		l := RateLimit{Count: tc.count, Period: Duration(tc.period)}
		if got := l.Interval(); got != tc.want {
			t.Errorf("%d per %s: interval %d, want %d", tc.count, tc.period, got, tc.want)
		}
	}
}

// A submit naming an unknown limit is refused; a rate key needs a limit.
func TestSubmitWithUnknownRateLimitIsRefused(t *testing.T) {
	h := rateHarness(t)
	s := sub("a", "echo")
	s.RateLimit = "nope"
	if it := h.item(submitCmd(s)); !errors.Is(it.Err, ErrUnknownRateLimit) {
		t.Errorf("submit with an unknown limit: %v", it.Err)
	}
	s = sub("b", "echo")
	s.RateKey = "tenant"
	if it := h.item(submitCmd(s)); !errors.Is(it.Err, ErrBadCommand) {
		t.Errorf("submit with a key and no limit: %v", it.Err)
	}
	if h.exists("a") || h.exists("b") {
		t.Error("a refused submit stored a task")
	}
}

// Apply holds a bucket however the leader proposes: a burst of 3 goes at once, then one task per
// 100 ms of command time, and a keyed bucket is apart from the limit's own.
func TestAssignHoldsTheRateLimitByCommandTime(t *testing.T) {
	h := rateHarness(t)
	var subs []Submit
	for _, id := range []string{"a", "b", "c", "d", "e", "k1"} {
		s := sub(id, "echo")
		s.RateLimit = "api"
		if id == "k1" {
			s.RateKey = "tenant-1"
		}
		subs = append(subs, s)
	}
	h.must(submitCmd(subs...))
	base := t0.Add(time.Hour)
	assignAt := func(at time.Time, id string) error {
		h.t.Helper()
		c := assignCmd(id, "n1", "b1")
		c.Now = at
		return h.item(c).Err
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := assignAt(base, id); err != nil {
			t.Fatalf("assign %s within the burst: %v", id, err)
		}
	}
	if err := assignAt(base, "d"); !errors.Is(err, ErrNotPlaceable) {
		t.Fatalf("assign past the burst: %v", err)
	}
	if err := assignAt(base, "k1"); err != nil {
		t.Fatalf("assign in a keyed bucket: %v", err)
	}
	if n, next, ok := h.f.RateTokens(RateBucket{Limit: "api"}, base); !ok || n != 0 || !next.Equal(base.Add(100*time.Millisecond)) {
		t.Errorf("tokens = %d, next %v, %v; want 0, next at +100ms", n, next, ok)
	}
	if err := assignAt(base.Add(99*time.Millisecond), "d"); !errors.Is(err, ErrNotPlaceable) {
		t.Fatalf("assign 99 ms later: %v", err)
	}
	if err := assignAt(base.Add(100*time.Millisecond), "d"); err != nil {
		t.Fatalf("assign 100 ms later: %v", err)
	}
	if err := assignAt(base.Add(150*time.Millisecond), "e"); !errors.Is(err, ErrNotPlaceable) {
		t.Fatalf("assign 150 ms later: %v", err)
	}
	// The state is the same on a replica that restores a snapshot taken now.
	dst := New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	wi, ws := h.f.Digest()
	if gi, gs := dst.Digest(); gi != wi || gs != ws {
		t.Errorf("digest after restore %d %s, want %d %s", gi, gs, wi, ws)
	}
	// The restored replica has applied no entry yet: it has no time to count tokens at.
	if st, ok := dst.RateLimit("api", ""); !ok || st.Tokens != 0 || !st.AsOf.IsZero() || st.Burst != 3 {
		t.Errorf("status on a replica that applied nothing since its restore: %+v", st)
	}
	if err := assignAt(base.Add(200*time.Millisecond), "e"); err != nil {
		t.Fatalf("assign 200 ms later: %v", err)
	}
	// Once the bucket has filled, the next assignment drops it: the table holds no full bucket.
	later := base.Add(time.Minute)
	s := sub("f", "echo")
	h.must(submitCmd(s))
	if err := assignAt(later, "f"); err != nil {
		t.Fatal(err)
	}
	if len(h.f.rates.buckets) != 0 || h.f.rates.byTAT.Len() != 0 {
		t.Errorf("full buckets kept: %d, %d", len(h.f.rates.buckets), h.f.rates.byTAT.Len())
	}
	if st, ok := h.f.RateLimit("api", ""); !ok || st.Tokens != 3 || st.Burst != 3 || st.Count != 10 || !st.AsOf.Equal(later) {
		t.Errorf("status = %+v, %v", st, ok)
	}
}

// Placement reads no task of an empty bucket, never offers more than a bucket's tokens, and says
// when the first empty bucket has a token again.
func TestPlacementViewTakesNoMoreThanABucketHolds(t *testing.T) {
	h := rateHarness(t)
	var subs []Submit
	for i := range 10 {
		s := sub(string(rune('a'+i)), "echo")
		s.RateLimit = "api"
		subs = append(subs, s)
	}
	plain := sub("plain", "echo")
	subs = append(subs, plain)
	h.must(submitCmd(subs...))
	alive := map[string]bool{"n1": true}
	now := t0.Add(time.Hour)
	v := h.f.PlacementView(alive, now)
	if len(v.Pending) != 4 || v.RateTokens[RateBucket{Limit: "api"}] != 3 {
		t.Fatalf("view: %d candidates, tokens %v; want the burst of 3 and the plain task", len(v.Pending), v.RateTokens)
	}
	for _, id := range []string{"a", "b", "c"} {
		c := assignCmd(id, "n1", "b1")
		c.Now = now
		h.must(c)
	}
	v = h.f.PlacementView(alive, now)
	if len(v.Pending) != 1 || v.Pending[0].ID != "plain" || !v.NextRate.Equal(now.Add(100*time.Millisecond)) {
		t.Fatalf("view after the burst: %d candidates, next rate %v", len(v.Pending), v.NextRate)
	}
}

// The gate: rate limit commands and a submit with a rate limit or a debounce are written only
// once every up node speaks RateLimitProtocol.
func TestRateLimitAndDebounceNeedProtocol9(t *testing.T) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b", Protocol: RateLimitProtocol - 1}}})
	rl, db := sub("a", "echo"), sub("b", "echo")
	rl.RateLimit = "api"
	db.DebounceKey, db.Debounce = "k", Duration(time.Second)
	for _, c := range []*Command{rateSetCmd("api", 1, time.Second, 1), {Body: &RateLimitDelete{Name: "api"}}, submitCmd(rl), submitCmd(db)} {
		if _, err := h.f.Emit(c); !errors.Is(err, ErrProtocolTooOld) {
			t.Errorf("emit %s with a protocol %d node up: %v", c.Type(), RateLimitProtocol-1, err)
		}
	}
	if _, err := h.f.Emit(submitCmd(sub("c", "echo"))); err != nil {
		t.Errorf("a plain submit with the old node up: %v", err)
	}
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b2", Protocol: Protocol}}})
	for _, c := range []*Command{rateSetCmd("api", 1, time.Second, 1), submitCmd(rl), submitCmd(db)} {
		if _, err := h.f.Emit(c); err != nil {
			t.Errorf("emit %s with every node at protocol %d: %v", c.Type(), Protocol, err)
		}
	}
}

func debounced(id, key, input string, window time.Duration) Submit {
	s := sub(id, "echo")
	s.DebounceKey, s.Debounce, s.Input = key, Duration(window), json.RawMessage(input)
	return s
}

// Ten submits with one key make one task, with the last input, due a window after the last.
func TestDebounceReplacesInputAndRestartsTheWindow(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 10))
	start := t0.Add(time.Hour)
	for i := range 10 {
		c := submitCmd(debounced(string(rune('a'+i)), "k", string(rune('0'+i)), time.Second))
		c.Now = start.Add(time.Duration(i) * 100 * time.Millisecond)
		it := h.item(c)
		if it.Err != nil || it.ID != "a" || it.Existing != (i > 0) {
			t.Fatalf("submit %d: %+v, want task a (existing after the first)", i, it)
		}
	}
	last := start.Add(900 * time.Millisecond)
	tk := h.task("a")
	if tk.State != Scheduled || string(tk.Input) != "9" || !tk.RunAt.Equal(last.Add(time.Second)) {
		t.Fatalf("task a: %s input %s run_at %v", tk.State, tk.Input, tk.RunAt)
	}
	if h.exists("b") || h.exists("j") {
		t.Error("a debounced submit added a task")
	}
	// The same submit again (a forward retried): its own task, not a replacement.
	c := submitCmd(debounced("a", "k", `"x"`, time.Second))
	if it := h.item(c); !errors.Is(it.Err, ErrDuplicateID) {
		t.Errorf("second copy of the first submit: %+v", it)
	}
	// Another submitter's key is apart.
	theirs := debounced("p", "k", "1", time.Second)
	theirs.SubmittedBy = "someone-else"
	if it := h.item(submitCmd(theirs)); it.Err != nil || it.Existing || it.ID != "p" {
		t.Errorf("another submitter with the key: %+v", it)
	}
	if string(h.task("a").Input) != "9" {
		t.Errorf("another submitter replaced the input: %s", h.task("a").Input)
	}
	// A key of another type is apart.
	other := debounced("o", "k", "1", time.Second)
	other.Type = "other"
	if it := h.item(submitCmd(other)); it.Err != nil || it.Existing {
		t.Errorf("another type with the key: %+v", it)
	}
	// Due, promoted and assigned: the next submit with the key makes a new task.
	due := last.Add(time.Second)
	h.must(&Command{Now: due, Body: &AssignBatch{Due: []string{"a"}}})
	a := assignCmd("a", "n1", "b1")
	a.Now = due
	h.must(a)
	c = submitCmd(debounced("n", "k", "10", time.Second))
	c.Now = due
	if it := h.item(c); it.Err != nil || it.ID != "n" || it.Existing {
		t.Errorf("submit after the task was assigned: %+v", it)
	}
	// A cancelled debounced task takes no more input either.
	h.must(cancelCmd("n"))
	if it := h.item(submitCmd(debounced("m", "k", "11", time.Second))); it.Err != nil || it.ID != "m" {
		t.Errorf("submit after the waiting task was cancelled: %+v", it)
	}
}

func TestDebounceRefusesBadWindows(t *testing.T) {
	h := newHarness(t)
	at := t0.Add(time.Hour)
	for _, s := range []Submit{
		debounced("a", "k", "1", 0),
		debounced("b", "k", "1", -time.Second),
		debounced("c", "k", "1", MaxDebounce+time.Second),
		debounced("d", "", "1", time.Second),
		func() Submit { s := debounced("e", "k", "1", time.Second); s.RunAt = &at; return s }(),
		func() Submit {
			s := debounced("f", "k", "1", time.Second)
			s.UniqueKey, s.UniqueFor = "u", Duration(time.Minute)
			return s
		}(),
	} {
		if it := h.item(submitCmd(s)); !errors.Is(it.Err, ErrBadCommand) || h.exists(s.ID) {
			t.Errorf("submit %s: %v", s.ID, it.Err)
		}
	}
}

// The waiting debounced task is found again after a restore: the index is rebuilt from the tasks.
func TestDebounceSurvivesSnapshot(t *testing.T) {
	h := newHarness(t)
	h.must(submitCmd(debounced("a", "k", "1", time.Minute)))
	dst := New()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	r := dst.ApplyCommand(10, &Command{Now: t0.Add(time.Hour), Body: &SubmitBatch{Items: []Submit{debounced("b", "k", "2", time.Minute)}}})
	if it := r.Items[0]; it.ID != "a" || !it.Existing {
		t.Fatalf("submit after restore: %+v", it)
	}
	got, _ := dst.Task("a")
	if string(got.Input) != "2" || got.DebounceKey != "k" || got.Debounce != Duration(time.Minute) {
		t.Errorf("task after restore and replace: %+v", got)
	}
	// A finished debounced, rate-limited task keeps its fields when frozen.
	h.must(rateSetCmd("api", 1, time.Second, 1))
	s := debounced("z", "kz", "1", time.Second)
	s.RateLimit, s.RateKey = "api", "t1"
	h.must(submitCmd(s))
	h.must(cancelCmd("z"))
	if z := h.task("z"); z.State != Cancelled || z.RateLimit != "api" || z.RateKey != "t1" || z.DebounceKey != "kz" || z.Debounce != Duration(time.Second) {
		t.Errorf("frozen task: %+v", z)
	}
	if !reflect.DeepEqual(h.task("z").Input, json.RawMessage("1")) {
		t.Errorf("frozen input: %s", h.task("z").Input)
	}
}
