package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestArenaReusesTheSlotsOfReleasedRecords(t *testing.T) {
	a := newArena()
	r := rand.New(rand.NewPCG(5, 6))
	record := func(i int) []byte {
		return bytes.Repeat([]byte{byte('a' + i%26)}, 1+r.IntN(maxArenaRecord))
	}
	live := map[int]string{}
	want := map[int][]byte{}
	for i := range 5000 {
		b := record(i)
		live[i], want[i] = a.put(b), b
	}
	check := func() {
		t.Helper()
		for i, s := range live {
			if s != string(want[i]) {
				t.Fatalf("record %d changed in the arena", i)
			}
		}
	}
	check()
	mapped, used := a.usage()
	for i := range 5000 {
		if i%2 == 0 {
			a.release(live[i])
			delete(live, i)
		}
	}
	for i := range 5000 {
		if i%2 == 0 { // the same sizes again: they fit the freed slots
			live[i] = a.put(want[i])
		}
	}
	check()
	if m, u := a.usage(); m != mapped || u != used {
		t.Errorf("after releasing and putting the same records: %d mapped, %d used; before %d, %d", m, u, mapped, used)
	}
	if big := a.put(make([]byte, maxArenaRecord+1)); len(big) != maxArenaRecord+1 {
		t.Error("a record above the arena's largest slot was not kept")
	} else if _, in := a.locate(big); in {
		t.Error("a record above the arena's largest slot went into the arena")
	}
}

func TestArenaKeepsReleasedSlotsWhileSnapshotsArePinned(t *testing.T) {
	a := newArena()
	old := a.put([]byte("the first record"))
	a.pin()
	a.pin()
	a.release(old)
	other := a.put([]byte("the other record")) // same size class
	if old != "the first record" || other != "the other record" {
		t.Fatalf("a pinned arena reused a released slot: %q %q", old, other)
	}
	a.unpin()
	if again := a.put([]byte("one more records")); old != "the first record" {
		t.Fatalf("a slot was reused with a snapshot still pinned: %q %q", old, again)
	}
	a.unpin()
	reused := a.put([]byte("after the unpins"))
	if _, used := a.usage(); used != 3*arenaAlign || reused != "after the unpins" {
		t.Errorf("after the last unpin the released slot is not reused: %d bytes used", used)
	}
}

// A snapshot stopped half-way through its records while Apply deletes the rest and freezes as
// many new ones (which would take their slots) still writes the state it was taken at.
func TestSnapshotPausedWhileApplyReplacesItsFrozenRecords(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 5000))
	const n = 2000 // ~1 MB encoded: Persist's 256 KiB buffer writes several times
	for i := range n {
		id := fmt.Sprintf("t%04d", i)
		s := sub(id, "echo")
		if i%100 == 0 {
			s.Input = json.RawMessage(`"` + strings.Repeat("x", maxArenaRecord) + `"`) // kept in the heap
		}
		h.must(submitCmd(s))
		h.must(cancelCmd(id))
	}
	wantIdx, want := h.f.Digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &gatedSink{gate: make(chan struct{}), first: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- snap.Persist(sink) }()
	<-sink.first // Persist has encoded the first quarter or so and waits
	for i := range n {
		h.must(removeCmd(fmt.Sprintf("t%04d", i)))
		id := fmt.Sprintf("z%04d", i)
		h.must(submitCmd(sub(id, "echo")))
		h.must(cancelCmd(id))
	}
	close(sink.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snap.Release()
	checkRestoresTo(t, &sink.buf, wantIdx, want)
	// Released: the slots of the removed records serve new ones.
	_, usedBefore := h.f.tasks.arena.usage()
	h.must(removeCmd(fmt.Sprintf("z%04d", 0)))
	h.must(submitCmd(sub("z0000", "echo")))
	h.must(cancelCmd("z0000"))
	if _, used := h.f.tasks.arena.usage(); used != usedBefore {
		t.Errorf("after the release a replaced record took new memory: %d → %d bytes", usedBefore, used)
	}
}

// gatedSink holds Persist's first write until gate closes.
type gatedSink struct {
	buf         bytes.Buffer
	gate, first chan struct{}
	waited      bool
}

func (s *gatedSink) Write(p []byte) (int, error) {
	if !s.waited {
		s.waited = true
		close(s.first)
		<-s.gate
	}
	return s.buf.Write(p)
}
func (s *gatedSink) ID() string    { return "gated" }
func (s *gatedSink) Cancel() error { return nil }
func (s *gatedSink) Close() error  { return nil }

// checkRestoresTo restores a persisted snapshot into a fresh FSM and compares its digest.
func checkRestoresTo(t *testing.T, snapshot io.Reader, wantIdx uint64, want string) {
	t.Helper()
	dst := New()
	if err := dst.Restore(io.NopCloser(snapshot)); err != nil {
		t.Fatal(err)
	}
	if gi, got := dst.Digest(); gi != wantIdx || got != want {
		t.Errorf("the persisted snapshot holds index %d %s, want the state it was taken at %d %s", gi, got, wantIdx, want)
	}
}

// usage reports the bytes the arena has mapped and the bytes of its slots in use (tests and the memory benchmark).
func (a *arena) usage() (mapped, used int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	mapped = len(a.chunks.list) * chunkSize
	if n := len(a.chunks.list); n > 0 {
		used = (n-1)*chunkSize + a.tail
	}
	for class, l := range a.free {
		used -= class * arenaAlign * len(l)
	}
	for _, r := range a.limbo {
		used -= int(r.class) * arenaAlign
	}
	return mapped, used
}

// each calls fn with every task in creation order until fn returns false.
func (s *store) each(fn func(*Task) bool) {
	s.all.Ascend(func(e *entry) bool { return fn(s.record(e)) })
}
