package telemetry

import (
	"runtime"
	"testing"
)

func TestExcessIsOnlyWhatTheHeapDoesNotNeed(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		name           string
		retained, live uint64
		gogc           int
		idle           bool
		want           uint64
	}{
		{"a small heap", 60 * mb, 10 * mb, 100, false, 0},
		{"steady load: twice the live heap and the scavenger's tenth", 880 * mb, 400 * mb, 100, false, 0},
		{"steady load at the margin", 1200*mb + minExcess - 1, 400 * mb, 100, false, 0},
		{"past the margin", 1200*mb + minExcess, 400 * mb, 100, false, minExcess},
		{"after a restore at GOGC 300", 1000 * mb, 170 * mb, 100, false, 490 * mb},
		{"a higher GOGC allows more", 1000 * mb, 170 * mb, 300, false, 0},
		{"the collector off", 8000 * mb, 200 * mb, -1, false, 0},
		{"idle with its headroom", 440 * mb, 200 * mb, 100, true, 190 * mb},
		{"idle, already given back", 260 * mb, 200 * mb, 100, true, 0},
		{"idle, a small heap", 60 * mb, 10 * mb, 100, true, 0},
		{"idle, the collector off", 8000 * mb, 200 * mb, -1, true, 0},
	} {
		h := heapState{retained: c.retained, live: c.live, gogc: c.gogc}
		if got := h.excess(c.idle); got != c.want {
			t.Errorf("%s: excess of %+v (idle %v) = %d MB, want %d MB", c.name, h, c.idle, got/mb, c.want/mb)
		}
	}
}

func TestMemoryCheckGivesBackAFreedPeak(t *testing.T) {
	peak := make([][]byte, 0, 40)
	for range 40 { // 160 MiB of live heap, then garbage (never written: no page need be resident)
		peak = append(peak, make([]byte, 4<<20))
	}
	runtime.KeepAlive(peak)
	peak = nil
	runtime.GC()
	h := readHeap()
	if h.excess(false) == 0 {
		t.Skipf("the runtime already returned the peak (%+v)", h)
	}
	var m MemoryCheck
	did, freed := m.run()
	if !did || freed < minExcess {
		t.Errorf("run = %v, %d bytes; want the freed peak back (the heap was %+v)", did, freed, h)
	}
	if !m.seen || m.cycles != readHeap().cycles {
		t.Errorf("the check did not count its own collection: %+v", m)
	}
}

func TestMemoryCheckCallsANodeIdleOnlyWithoutACollectionBetween(t *testing.T) {
	var m MemoryCheck
	m.run()
	first := m.cycles
	runtime.GC() // activity: a collection since the last check
	before := readHeap()
	m.run()
	if m.cycles < before.cycles || m.cycles == first {
		t.Errorf("the check did not see the collection in between: %d then %d (runtime at %d)", first, m.cycles, before.cycles)
	}
}
