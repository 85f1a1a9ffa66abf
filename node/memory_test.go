package node

import (
	"runtime"
	"testing"
)

func TestExcessIsOnlyWhatASteadyHeapWouldNotRetain(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		name           string
		retained, live uint64
		gogc           int
		want           uint64
	}{
		{"a small heap", 60 * mb, 10 * mb, 100, 0},
		{"steady load: twice the live heap and the scavenger's tenth", 880 * mb, 400 * mb, 100, 0},
		{"steady load at the margin", 1200*mb + minExcess - 1, 400 * mb, 100, 0},
		{"past the margin", 1200*mb + minExcess, 400 * mb, 100, minExcess},
		{"after a restore at GOGC 300", 1000 * mb, 170 * mb, 100, 490 * mb},
		{"a higher GOGC allows more", 1000 * mb, 170 * mb, 300, 0},
		{"the collector off", 8000 * mb, 200 * mb, -1, 0},
	} {
		h := heapState{retained: c.retained, live: c.live, gogc: c.gogc}
		if got := h.excess(); got != c.want {
			t.Errorf("%s: excess of %+v = %d MB, want %d MB", c.name, h, got/mb, c.want/mb)
		}
	}
}

func TestReturnMemoryGivesBackAFreedPeak(t *testing.T) {
	peak := make([][]byte, 0, 40)
	for range 40 { // 160 MiB of live heap, then garbage (never written: no page need be resident)
		peak = append(peak, make([]byte, 4<<20))
	}
	runtime.KeepAlive(peak)
	peak = nil
	runtime.GC()
	h := readHeap()
	if h.excess() == 0 {
		t.Skipf("the runtime already returned the peak (%+v)", h)
	}
	did, freed := returnMemory()
	if !did || freed < minExcess {
		t.Errorf("returnMemory = %v, %d bytes; want the freed peak back (the heap was %+v)", did, freed, h)
	}
}
