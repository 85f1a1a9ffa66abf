package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// reqID is a request ID made of one repeated byte.
func reqID(b byte) []byte { return bytes.Repeat([]byte{b}, RequestIDLen) }

// onceDelete is a rate limit delete carrying the request ID id at now: the command that, applied
// twice without the table, answers ErrUnknownRateLimit the second time.
func onceDelete(id []byte, now time.Time) *Command {
	return &Command{Now: now, RequestID: id, Body: &RateLimitDelete{Name: "api"}}
}

func setLimit(h *harness, now time.Time) {
	h.t.Helper()
	h.must(&Command{Now: now, Body: &RateLimitSet{Name: "api", Count: 1, Period: Duration(time.Second), Burst: 1}})
}

// A command whose request ID applied before is not applied again: its second copy (a forward
// retried after its reply was lost) answers a repeat, without error and without changing state.
func TestRequestIDAppliesOnce(t *testing.T) {
	h := newHarness(t)
	setLimit(h, t0)
	if r := h.apply(onceDelete(reqID(1), t0.Add(time.Second))); r.Err != nil || r.Repeat {
		t.Fatalf("first delete: err %v, repeat %v", r.Err, r.Repeat)
	}
	if h.f.HasRateLimit("api") {
		t.Fatal("the limit is still there after its delete")
	}
	// Made again by another write: the retry of the first delete must not delete it.
	setLimit(h, t0.Add(2*time.Second))
	r := h.apply(onceDelete(reqID(1), t0.Add(3*time.Second)))
	if r.Err != nil || !r.Repeat || len(r.Items) != 0 {
		t.Fatalf("retried delete: err %v, repeat %v, %d items; want a repeat", r.Err, r.Repeat, len(r.Items))
	}
	if !h.f.HasRateLimit("api") {
		t.Fatal("the retried delete applied again: it deleted the limit made after it")
	}
	if !h.f.RequestApplied(reqID(1)) || h.f.RequestApplied(reqID(2)) {
		t.Fatal("RequestApplied does not tell the applied request from another")
	}
	// Another request with the same body applies.
	if r := h.apply(onceDelete(reqID(2), t0.Add(4*time.Second))); r.Err != nil || r.Repeat || h.f.HasRateLimit("api") {
		t.Fatalf("another request's delete: err %v, repeat %v", r.Err, r.Repeat)
	}
	// And a command without an ID is never a repeat.
	setLimit(h, t0.Add(5*time.Second))
	for range 2 {
		h.apply(&Command{Body: &RateLimitDelete{Name: "api"}})
	}
	if r := h.apply(&Command{Body: &RateLimitDelete{Name: "api"}}); !errors.Is(r.Err, ErrUnknownRateLimit) || r.Repeat {
		t.Fatalf("delete without an ID: err %v, repeat %v", r.Err, r.Repeat)
	}
}

// An ID is kept for OnceTTL after its command's time, by command times only; the IDs that
// expired are dropped from the front of the apply order by the next entry that carries an ID.
func TestRequestIDsExpireByCommandTime(t *testing.T) {
	h := newHarness(t)
	setLimit(h, t0)
	h.must(onceDelete(reqID(1), t0))
	setLimit(h, t0.Add(time.Second))
	if r := h.apply(onceDelete(reqID(1), t0.Add(OnceTTL-time.Nanosecond))); !r.Repeat {
		t.Fatalf("just before its expiry: not a repeat (err %v)", r.Err)
	}
	h.must(onceDelete(reqID(2), t0.Add(time.Minute))) // deletes the limit set above
	if h.f.once.len() != 2 {
		t.Fatalf("table holds %d IDs, want 2", h.f.once.len())
	}
	setLimit(h, t0.Add(2*time.Minute))
	// At its expiry the first ID is gone: the same request applies again (a request is retried
	// for seconds, never minutes).
	if r := h.apply(onceDelete(reqID(1), t0.Add(OnceTTL))); r.Repeat || r.Err != nil {
		t.Fatalf("at its expiry: repeat %v, err %v; want it applied", r.Repeat, r.Err)
	}
	if got := h.f.once.entries(); len(got) != 2 || !bytes.Equal(got[0].ID, reqID(2)) || !bytes.Equal(got[1].ID, reqID(1)) {
		t.Fatalf("table after the expiry: %v; want request 2, then request 1 again", got)
	}
	// A command without an ID prunes nothing; one with an ID prunes both once they expired.
	h.must(&Command{Now: t0.Add(time.Hour), Body: &RateLimitSet{Name: "other", Count: 1, Period: Duration(time.Second), Burst: 1}})
	if h.f.once.len() != 2 {
		t.Fatalf("a command without an ID pruned the table: %d left", h.f.once.len())
	}
	// Held but expired as of the newest command: applying it again would not be a repeat, and
	// RequestApplied says the same.
	if h.f.RequestApplied(reqID(2)) {
		t.Fatal("RequestApplied holds an ID expired as of the newest command")
	}
	h.must(&Command{Now: t0.Add(time.Hour), RequestID: reqID(3), Body: &RateLimitDelete{Name: "other"}})
	if got := h.f.once.entries(); len(got) != 1 || !bytes.Equal(got[0].ID, reqID(3)) {
		t.Fatalf("table an hour later: %v; want only request 3", got)
	}
	if h.f.RequestApplied(reqID(1)) || h.f.RequestApplied(reqID(2)) {
		t.Fatal("RequestApplied holds pruned IDs")
	}
}

// A command that failed is not recorded: its retry applies, and fails again or, when the state
// changed meanwhile, succeeds.
func TestFailedApplyIsNotRecorded(t *testing.T) {
	h := newHarness(t)
	if r := h.apply(onceDelete(reqID(1), t0)); !errors.Is(r.Err, ErrUnknownRateLimit) {
		t.Fatalf("delete of no limit: %v", r.Err)
	}
	if r := h.apply(onceDelete(reqID(1), t0.Add(time.Second))); !errors.Is(r.Err, ErrUnknownRateLimit) || r.Repeat {
		t.Fatalf("its retry: err %v, repeat %v; want the same failure", r.Err, r.Repeat)
	}
	setLimit(h, t0.Add(2*time.Second))
	if r := h.apply(onceDelete(reqID(1), t0.Add(3*time.Second))); r.Err != nil || r.Repeat || h.f.HasRateLimit("api") {
		t.Fatalf("its retry once the limit exists: err %v, repeat %v", r.Err, r.Repeat)
	}
	// Nor is a command whose item failed (a cancel of a task that does not exist).
	if r := h.apply(&Command{RequestID: reqID(4), Body: &Cancel{IDs: []string{"nope"}}}); r.Items[0].Err == nil {
		t.Fatal("cancel of no task succeeded")
	}
	if h.f.RequestApplied(reqID(4)) {
		t.Fatal("a command whose item failed was recorded")
	}
}

// The table is in snapshots and the digest: a restored replica answers a repeat as the original
// does, and replicas whose tables differ have different digests.
func TestRequestIDsSurviveSnapshotAndAreInTheDigest(t *testing.T) {
	withID, without := newHarness(t), newHarness(t)
	for _, h := range []*harness{withID, without} {
		setLimit(h, t0)
	}
	withID.must(onceDelete(reqID(1), t0.Add(time.Second)))
	without.must(onceDelete(nil, t0.Add(time.Second)))
	if _, a := withID.f.Digest(); a == func() string { _, s := without.f.Digest(); return s }() {
		t.Fatal("the digest does not see the table of applied request IDs")
	}

	g := restoredCopy(t, withID.f)
	if !slices.EqualFunc(g.once.entries(), withID.f.once.entries(), func(a, b OnceEntry) bool {
		return bytes.Equal(a.ID, b.ID) && a.Expires == b.Expires
	}) {
		t.Fatalf("restored table %v, original %v", g.once.entries(), withID.f.once.entries())
	}
	fi, fs := withID.f.Digest()
	gi, gs := g.Digest()
	if fi != gi || fs != gs {
		t.Fatalf("restored digest %d %s, original %d %s", gi, gs, fi, fs)
	}
	rh := &harness{t: t, f: g, idx: withID.idx}
	setLimit(rh, t0.Add(2*time.Second))
	if r := rh.apply(onceDelete(reqID(1), t0.Add(3*time.Second))); !r.Repeat || !g.HasRateLimit("api") {
		t.Fatalf("restored replica: repeat %v, err %v", r.Repeat, r.Err)
	}

	// A state that never carried an ID has no section (releases before it read the snapshot as
	// they wrote it), and restores an empty table.
	if bytes.Contains(goldenSnapshot(t, without.f), []byte("once")) {
		t.Fatal("a snapshot without request IDs has a once section")
	}
	if !bytes.Contains(goldenSnapshot(t, withID.f), []byte("once")) {
		t.Fatal("a snapshot with request IDs has no once section")
	}
}

// A snapshot written without the table (an older build's) restores an empty one, over a replica
// that held IDs.
func TestSnapshotWithoutTheTableRestoresAnEmptyOne(t *testing.T) {
	h := newHarness(t)
	setLimit(h, t0)
	h.must(onceDelete(reqID(1), t0.Add(time.Second)))
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(restoreSnapshotBytes(t, restoreTasks())))); err != nil {
		t.Fatal(err)
	}
	if h.f.once.len() != 0 || h.f.RequestApplied(reqID(1)) {
		t.Fatalf("restored from a snapshot without the table: %d IDs", h.f.once.len())
	}
	// And an entry carrying an ID applies on it.
	h.idx = 100
	h.must(&Command{Now: t0.Add(time.Minute), RequestID: reqID(2), Body: &RateLimitSet{Name: "x", Count: 1, Period: Duration(time.Second), Burst: 1}})
	if !h.f.RequestApplied(reqID(2)) {
		t.Fatal("the restored replica records no request ID")
	}
	// A damaged section is refused.
	bad, err := msgpack.Marshal(map[string]any{"index": uint64(9), "tasks": []Task{}, "nodes": []Node{},
		"once": []OnceEntry{{ID: []byte{1, 2}, Expires: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := New().Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
		t.Fatal("a once section with a 2-byte ID restored")
	}
}

// oldEnvelope is the envelope as releases before OnceProtocol declare it.
type oldEnvelope struct {
	Now  time.Time `msgpack:"now"`
	Body any       `msgpack:"body"`
}

// An entry without a request ID is byte for byte what earlier releases write; one with it is
// what msgpack writes for the envelope with its id; both decode to what was encoded.
func TestEncodeRequestIDRoundTrip(t *testing.T) {
	bodies := []Payload{
		&RateLimitDelete{Name: "api"},
		&WorkflowCancel{ID: "w", By: "alice"},
		&SubmitBatch{Items: []Submit{{ID: "x", Type: "echo"}}}, // a hand-written encoder's
		&Cancel{IDs: []string{"a", "b"}},
	}
	for _, body := range bodies {
		c := &Command{Now: t0, Body: body}
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		old, err := msgpack.Marshal(&oldEnvelope{Now: t0, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if want := append([]byte{byte(c.Type())}, old...); !bytes.Equal(b, want) {
			t.Errorf("%s without an ID: % x, earlier releases write % x", c.Type(), b, want)
		}
		d, err := Decode(b)
		if err != nil || d.RequestID != nil {
			t.Fatalf("%s without an ID decodes to ID %x, err %v", c.Type(), d.RequestID, err)
		}

		c.RequestID = reqID(7)
		b, err = Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		withID, err := msgpack.Marshal(&struct {
			Now  time.Time `msgpack:"now"`
			Body any       `msgpack:"body"`
			ID   []byte    `msgpack:"id,omitempty"`
		}{t0, body, c.RequestID})
		if err != nil {
			t.Fatal(err)
		}
		if want := append([]byte{byte(c.Type())}, withID...); !bytes.Equal(b, want) {
			t.Errorf("%s with an ID: % x, msgpack writes % x", c.Type(), b, want)
		}
		d, err = Decode(b)
		if err != nil || !bytes.Equal(d.RequestID, c.RequestID) || !d.Now.Equal(t0) || d.Type() != c.Type() {
			t.Fatalf("%s with an ID decodes to %+v, err %v", c.Type(), d, err)
		}
	}
	// A request ID of another length is refused both ways.
	if _, err := Encode(&Command{Now: t0, RequestID: []byte{1}, Body: &RateLimitDelete{Name: "api"}}); !errors.Is(err, ErrBadCommand) {
		t.Errorf("encode a 1-byte request ID: %v", err)
	}
	bad, err := msgpack.Marshal(map[string]any{"now": t0, "body": map[string]any{"name": "api"}, "id": []byte{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(append([]byte{byte(CmdRateLimitDelete)}, bad...)); !errors.Is(err, ErrBadCommand) {
		t.Errorf("decode a 3-byte request ID: %v", err)
	}
}

// While a node older than OnceProtocol is up, Emit writes a command without its request ID (that
// node would halt on it): the write goes through, without the guard against a retry. Once every
// up node speaks OnceProtocol the ID is written.
func TestEmitLeavesTheRequestIDOutForAnOlderNode(t *testing.T) {
	if Protocol != OnceProtocol || OnceProtocol != PlaceProtocol+1 {
		t.Fatalf("Protocol %d, OnceProtocol %d", Protocol, OnceProtocol)
	}
	h := newHarness(t)
	h.must(&Command{Body: &Register{Node: Node{Name: "old", BootID: "b0", Capacity: 1, Protocol: OnceProtocol - 1}}})
	h.must(&Command{Body: &Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1, Protocol: Protocol}}})
	c := onceDelete(reqID(1), t0)
	if err := h.f.CheckContentProtocol(c); err != nil {
		t.Fatalf("CheckContentProtocol: %v", err)
	}
	b, err := h.f.Emit(c)
	if err != nil {
		t.Fatalf("Emit with a protocol %d node up: %v; want the command without its ID", OnceProtocol-1, err)
	}
	d, err := Decode(b)
	if err != nil || d.RequestID != nil {
		t.Fatalf("emitted for a protocol %d node: ID %x, err %v", OnceProtocol-1, d.RequestID, err)
	}
	if !bytes.Equal(c.RequestID, reqID(1)) {
		t.Fatal("Emit took the ID off the caller's command")
	}
	h.must(&Command{Body: &Down{Name: "old"}})
	if b, err = h.f.Emit(c); err != nil {
		t.Fatal(err)
	}
	if d, err = Decode(b); err != nil || !bytes.Equal(d.RequestID, reqID(1)) {
		t.Fatalf("emitted with every node at protocol %d: ID %x, err %v", Protocol, d.RequestID, err)
	}
}

// Past OnceMax IDs the oldest in apply order are dropped, whatever their expiry, so the table's
// memory is bounded however fast writes come; the newest stay repeats.
func TestRequestIDTableKeepsTheNewestOnceMax(t *testing.T) {
	o := newOnceTable()
	id := func(i int) []byte {
		b := make([]byte, RequestIDLen)
		binary.BigEndian.PutUint64(b[8:], uint64(i))
		return b
	}
	for i := range OnceMax + 10 {
		o.expire(t0)
		o.add(id(i), t0)
	}
	if o.len() != OnceMax || len(o.ids) != OnceMax {
		t.Fatalf("table holds %d IDs (%d in the map), want %d", o.len(), len(o.ids), OnceMax)
	}
	for i := range 10 {
		if o.applied(id(i), t0) {
			t.Fatalf("ID %d, among the 10 oldest, is still held", i)
		}
	}
	for _, i := range []int{10, OnceMax / 2, OnceMax + 9} {
		if !o.applied(id(i), t0) {
			t.Fatalf("ID %d, among the newest %d, is not held", i, OnceMax)
		}
	}
	if got := o.entries(); !bytes.Equal(got[0].ID, id(10)) || !bytes.Equal(got[len(got)-1].ID, id(OnceMax+9)) {
		t.Fatalf("entries run %x..%x, want IDs 10..%d in apply order", got[0].ID, got[len(got)-1].ID, OnceMax+9)
	}
}
