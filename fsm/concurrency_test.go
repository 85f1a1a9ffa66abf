package fsm

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func keyed(id, key string, limit int) Submit {
	return Submit{ID: id, Type: "echo", Version: "v1", MaxAttempts: 1, ConcurrencyKey: key, ConcurrencyLimit: limit}
}

// keyHarness registers n1, offering echo v1 with capacity slots, and counts the active tasks of
// every key after every applied entry.
func keyHarness(t *testing.T, capacity int) (*harness, map[string]int) {
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: capacity, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	peak := map[string]int{}
	h.f.SetKeyObserver(func(_ uint64, active map[string]int) {
		for k, n := range active {
			peak[k] = max(peak[k], n)
		}
	})
	return h, peak
}

var alive1 = map[string]bool{"n1": true}

// place assigns every candidate of the placement view at now to n1, uncapped (what the scheduler
// loop proposes), and returns the candidates' IDs.
func (h *harness) place(now time.Time) []string {
	h.t.Helper()
	v := h.f.PlacementView(alive1, now)
	var as []Assign
	for _, c := range v.Pending {
		as = append(as, Assign{TaskID: c.ID, Node: "n1", BootID: "b1"})
	}
	if len(as) > 0 {
		h.must(&Command{Now: now, Body: &AssignBatch{Items: as}})
	}
	return ids(v.Pending)
}

// finish reports every active task of n1 started and succeeded.
func (h *harness) finishAll(now time.Time) {
	h.t.Helper()
	var rs []Report
	for _, tk := range h.f.Active("n1") {
		rs = append(rs, rep(tk.ID, tk.Attempt, "n1", "b1", ReportStarted), rep(tk.ID, tk.Attempt, "n1", "b1", ReportSucceeded))
	}
	if len(rs) > 0 {
		h.must(&Command{Now: now, Body: &ReportBatch{Items: rs}})
	}
}

// TestApplyRefusesAnAssignmentPastAKeysLimit: an assignment batch that would run more tasks of a
// key than its limit (a stale or wrong placement) has the excess refused by Apply, and a finished
// task makes room again.
func TestApplyRefusesAnAssignmentPastAKeysLimit(t *testing.T) {
	h, peak := keyHarness(t, 10)
	var subs []Submit
	var as []Assign
	for i := range 5 {
		id := fmt.Sprintf("t%d", i)
		subs = append(subs, keyed(id, "tenant-a", 2))
		as = append(as, Assign{TaskID: id, Node: "n1", BootID: "b1"})
	}
	h.must(submitCmd(subs...))
	r := h.apply(&Command{Body: &AssignBatch{Items: as}})
	var placed []string
	for _, it := range r.Items {
		switch {
		case it.Err == nil:
			placed = append(placed, it.ID)
		case !errors.Is(it.Err, ErrNotPlaceable):
			t.Fatalf("item %s: %v, want placed or not placeable", it.ID, it.Err)
		}
	}
	if !reflect.DeepEqual(placed, []string{"t0", "t1"}) || peak["tenant-a"] != 2 || h.f.ConcurrencyActive("tenant-a") != 2 {
		t.Fatalf("placed %v, peak %d, want [t0 t1] and 2", placed, peak["tenant-a"])
	}
	h.must(reportCmd(rep("t0", 1, "n1", "b1", ReportStarted), rep("t0", 1, "n1", "b1", ReportSucceeded)))
	if got := h.item(assignCmd("t2", "n1", "b1")); got.Err != nil {
		t.Fatalf("after one finished: %v", got.Err)
	}
	if got := h.item(assignCmd("t3", "n1", "b1")); !errors.Is(got.Err, ErrNotPlaceable) {
		t.Fatalf("third at once: %v, want not placeable", got.Err)
	}
	if peak["tenant-a"] != 2 {
		t.Errorf("peak %d, want 2", peak["tenant-a"])
	}
}

// TestTwentyTasksWithLimitTwoNeverRunMoreThanTwo: placement offers at most the key's room, and
// driving 20 tasks to the end with free slots to spare never has more than 2 active at once.
func TestTwentyTasksWithLimitTwoNeverRunMoreThanTwo(t *testing.T) {
	h, peak := keyHarness(t, 8)
	var subs []Submit
	for i := range 20 {
		subs = append(subs, keyed(fmt.Sprintf("t%02d", i), "k", 2))
	}
	subs = append(subs, Submit{ID: "free", Type: "echo", Version: "v1", MaxAttempts: 1})
	h.must(submitCmd(subs...))
	now := t0.Add(time.Minute)
	first := h.place(now)
	if !slices.Contains(first, "free") || len(first) != 3 {
		t.Fatalf("first pass placed %v, want two keyed tasks and free", first)
	}
	for range 20 {
		if got := h.place(now); len(got) != 0 {
			t.Fatalf("a pass with the key full placed %v", got)
		}
		h.finishAll(now)
		h.place(now)
		if c := h.f.Counts(); c[Pending] == 0 && c[Assigned] == 0 {
			break
		}
	}
	if c := h.f.Counts(); c[Succeeded] != 21 {
		t.Fatalf("counts %v, want 21 succeeded", c)
	}
	if peak["k"] != 2 {
		t.Errorf("peak active of the key %d, want 2", peak["k"])
	}
}

// TestTwoKeysInOneQueueAlternate: 100 tasks of key a submitted before 10 of key b; with one slot
// the placements alternate a, b, a, b until b runs out, instead of b waiting behind all of a.
func TestTwoKeysInOneQueueAlternate(t *testing.T) {
	h, _ := keyHarness(t, 1)
	var subs []Submit
	for i := range 100 {
		subs = append(subs, keyed(fmt.Sprintf("a%03d", i), "a", 5))
	}
	h.must(submitCmd(subs...))
	subs = subs[:0]
	for i := range 10 {
		subs = append(subs, keyed(fmt.Sprintf("b%03d", i), "b", 5))
	}
	h.must(submitCmd(subs...))
	now := t0.Add(time.Minute)
	var order []string
	for range 30 {
		got := h.place(now)
		if len(got) != 1 {
			t.Fatalf("placed %v, want one task", got)
		}
		order = append(order, got[0][:1])
		h.finishAll(now)
	}
	want := strings.Repeat("ab", 10) + strings.Repeat("a", 10)
	if got := strings.Join(order, ""); got != want {
		t.Errorf("order %s, want %s", got, want)
	}
}

// TestAKeyAtItsLimitDoesNotBlockTheOthers: a key holding its limit, with a long backlog ahead of
// another key's tasks, leaves the free slots to the other key.
func TestAKeyAtItsLimitDoesNotBlockTheOthers(t *testing.T) {
	h, _ := keyHarness(t, 4)
	var subs []Submit
	for i := range 1000 {
		subs = append(subs, keyed(fmt.Sprintf("a%04d", i), "a", 1))
	}
	h.must(submitCmd(subs...))
	h.must(submitCmd(keyed("b0", "b", 3), keyed("b1", "b", 3), keyed("b2", "b", 3), keyed("b3", "b", 3)))
	now := t0.Add(time.Minute)
	if got := h.place(now); !reflect.DeepEqual(got, []string{"a0000", "b0", "b1", "b2"}) {
		t.Fatalf("first pass %v, want a0000 and three of b", got)
	}
	if got := h.place(now); len(got) != 0 {
		t.Fatalf("second pass %v, want none: both keys are full", got)
	}
}

// TestPriorityGoesBeforeTheRotation: keys take turns within a priority; a higher priority task
// goes first whatever its key's turn.
func TestPriorityGoesBeforeTheRotation(t *testing.T) {
	h, _ := keyHarness(t, 1)
	h.must(submitCmd(keyed("a0", "a", 5), keyed("a1", "a", 5), keyed("b0", "b", 5)))
	urgent := keyed("a2", "a", 5)
	urgent.Priority = 10
	h.must(submitCmd(urgent))
	now := t0.Add(time.Minute)
	var order []string
	for range 4 {
		order = append(order, h.place(now)...)
		h.finishAll(now)
	}
	if want := []string{"a2", "a0", "b0", "a1"}; !reflect.DeepEqual(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
}

// TestATaskTakenBackKeepsItsTurn: a keyed task whose node died goes back to the head of the
// rotation, not behind its key's backlog.
func TestATaskTakenBackKeepsItsTurn(t *testing.T) {
	h, _ := keyHarness(t, 1)
	h.must(submitCmd(keyed("a0", "a", 1), keyed("a1", "a", 1), keyed("a2", "a", 1)))
	now := t0.Add(time.Minute)
	if got := h.place(now); !reflect.DeepEqual(got, []string{"a0"}) {
		t.Fatalf("placed %v", got)
	}
	h.must(registerCmd("n1", "b2", 1)) // n1 restarted: a0 is taken back
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}}})
	if got := h.task("a0"); got.State != Pending || got.FairSeq != 1 {
		t.Fatalf("a0 %s with seq %d, want pending with its first turn", got.State, got.FairSeq)
	}
	if got := h.place(now); !reflect.DeepEqual(got, []string{"a0"}) {
		t.Errorf("placed %v after the take-back, want a0 again", got)
	}
}

// TestQueueKeyTemplateMakesTheKeyFromTheInput: a queue's template makes each task's key from its
// input; a key given at submit wins; a missing member gives an empty part.
func TestQueueKeyTemplateMakesTheKeyFromTheInput(t *testing.T) {
	h, _ := keyHarness(t, 10)
	h.must(&Command{Body: &QueueSet{Name: "mail", ConcurrencyKey: ptr("tenant-{/tenant}/{/n}"), ConcurrencyLimit: ptr(3)}})
	mk := func(id, input string) Submit {
		return Submit{ID: id, Type: "echo", Version: "v1", MaxAttempts: 1, Queue: "mail", Input: []byte(input)}
	}
	own := mk("own", `{"tenant":"x"}`)
	own.ConcurrencyKey, own.ConcurrencyLimit = "mine", 1
	h.must(submitCmd(mk("str", `{"tenant":"acme","n":7}`), mk("obj", `{"tenant":{"a": [1, 2]}}`), mk("none", `[]`), own,
		Submit{ID: "other-queue", Type: "echo", Version: "v1", MaxAttempts: 1, Input: []byte(`{"tenant":"x"}`)}))
	for id, want := range map[string]string{"str": "tenant-acme/7", "obj": `tenant-{"a":[1,2]}/`, "none": "tenant-/", "own": "mine", "other-queue": ""} {
		if got := h.task(id); got.ConcurrencyKey != want {
			t.Errorf("%s: key %q, want %q", id, got.ConcurrencyKey, want)
		}
	}
	if got := h.task("str").ConcurrencyLimit; got != 3 {
		t.Errorf("limit from the queue %d, want 3", got)
	}
	if got := h.task("own").ConcurrencyLimit; got != 1 {
		t.Errorf("limit of the submit's own key %d, want 1", got)
	}
	if got := h.f.SubmitCandidates([]Submit{mk("c", `{"tenant":"acme","n":7}`)}, t0); got[0].ConcurrencyKey != "tenant-acme/7" {
		t.Errorf("submit candidate key %q, want the template's", got[0].ConcurrencyKey)
	}
	h.must(&Command{Body: &QueueSet{Name: "mail", ConcurrencyKey: ptr(""), ConcurrencyLimit: ptr(0)}})
	if got := h.f.Queue("mail").QueueConfig; got != (QueueConfig{}) {
		t.Errorf("after removing the template: %+v", got)
	}
}

func TestKeyTemplatesAndKeysAreValidated(t *testing.T) {
	for _, tmpl := range []string{"a}", "{", "{tenant}", "{}", "x{/a{/b}}", strings.Repeat("x", MaxKeyTemplate+1),
		strings.Repeat("{/a}", MaxKeyPlaceholders+1)} {
		if err := ParseKeyTemplate(tmpl); err == nil {
			t.Errorf("template %q accepted", tmpl)
		}
	}
	for _, tmpl := range []string{"", "fixed", "{/a}", "t-{/a/0}-{/b~1c}", strings.Repeat("{/a}", MaxKeyPlaceholders)} {
		if err := ParseKeyTemplate(tmpl); err != nil {
			t.Errorf("template %q: %v", tmpl, err)
		}
	}
	if got, _ := ExpandKeyTemplate("{/s}", []byte(`{"s":"`+strings.Repeat("x", 300)+`"}`)); len(got) != MaxConcurrencyKey {
		t.Errorf("a long key is %d bytes, want cut at %d", len(got), MaxConcurrencyKey)
	}
	h := newHarness(t)
	for name, qs := range map[string]*QueueSet{
		"template without limit": {Name: "q", ConcurrencyKey: ptr("{/a}")},
		"limit without template": {Name: "q", ConcurrencyLimit: ptr(2)},
		"bad template":           {Name: "q", ConcurrencyKey: ptr("{a}"), ConcurrencyLimit: ptr(2)},
		"zero limit":             {Name: "q", ConcurrencyKey: ptr("{/a}"), ConcurrencyLimit: ptr(0)},
		"limit too high":         {Name: "q", ConcurrencyKey: ptr("{/a}"), ConcurrencyLimit: ptr(MaxConcurrencyLimit + 1)},
	} {
		if r := h.apply(&Command{Body: qs}); !errors.Is(r.Err, ErrBadCommand) {
			t.Errorf("%s: err %v, want a bad command", name, r.Err)
		}
	}
	for name, s := range map[string]Submit{
		"no limit":   keyed("x1", "k", 0),
		"over limit": keyed("x2", "k", MaxConcurrencyLimit+1),
		"long key":   keyed("x3", strings.Repeat("k", MaxConcurrencyKey+1), 1),
	} {
		if it := h.item(submitCmd(s)); !errors.Is(it.Err, ErrBadCommand) {
			t.Errorf("%s: err %v, want a bad command", name, it.Err)
		}
	}
	if c := h.f.Counts(); c[Pending] != 0 || !h.f.queues.zero() {
		t.Errorf("refused commands changed the state: %v", c)
	}
}

func TestConcurrencyFieldsNeedProtocol8(t *testing.T) {
	if got := (&SubmitBatch{Items: []Submit{sub("a", "echo"), keyed("b", "k", 1)}}).NeedsProtocol(); got != ConcurrencyProtocol {
		t.Errorf("submit with a key: NeedsProtocol %d, want %d", got, ConcurrencyProtocol)
	}
	if got := (&QueueSet{Name: "q", ConcurrencyKey: ptr("{/a}"), ConcurrencyLimit: ptr(1)}).NeedsProtocol(); got != ConcurrencyProtocol {
		t.Errorf("queue template: NeedsProtocol %d, want %d", got, ConcurrencyProtocol)
	}
	if got := (&QueueSet{Name: "q", Limit: ptr(1)}).NeedsProtocol(); got != 0 {
		t.Errorf("queue limit: NeedsProtocol %d, want 0", got)
	}
	if Protocol < ConcurrencyProtocol {
		t.Errorf("Protocol %d, want at least %d", Protocol, ConcurrencyProtocol)
	}
}

// TestKeyedStateSurvivesASnapshot: keys, limits, turns and the queue template come back from a
// snapshot, the digest agrees, and the restored replica places as the original does.
func TestKeyedStateSurvivesASnapshot(t *testing.T) {
	h, _ := keyHarness(t, 2)
	h.must(&Command{Body: &QueueSet{Name: "mail", ConcurrencyKey: ptr("{/t}"), ConcurrencyLimit: ptr(1)}})
	var subs []Submit
	for i := range 6 {
		subs = append(subs, Submit{ID: fmt.Sprintf("m%d", i), Type: "echo", Version: "v1", MaxAttempts: 1, Queue: "mail",
			Input: []byte(fmt.Sprintf(`{"t":"%c"}`, 'a'+i%3))})
	}
	h.must(submitCmd(subs...))
	now := t0.Add(time.Minute)
	h.place(now)
	g := restoredCopy(t, h.f)
	fi, fs := h.f.Digest()
	gi, gs := g.Digest()
	if fi != gi || fs != gs {
		t.Fatalf("digests differ after restore")
	}
	if !reflect.DeepEqual(g.Queue("mail").QueueConfig, h.f.Queue("mail").QueueConfig) || g.ConcurrencyActive("a") != 1 {
		t.Errorf("restored queue %+v, active a %d", g.Queue("mail").QueueConfig, g.ConcurrencyActive("a"))
	}
	h.finishAll(now)
	gh := &harness{t: t, f: g, idx: h.idx}
	gh.finishAll(now)
	if a, b := h.f.PlacementView(alive1, now).Pending, g.PlacementView(alive1, now).Pending; !reflect.DeepEqual(ids(a), ids(b)) {
		t.Errorf("candidates differ after restore: %v vs %v", ids(a), ids(b))
	}
}
