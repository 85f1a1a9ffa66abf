package node

import (
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/dustin/go-humanize"
)

// The Go runtime keeps the heap memory a collection frees and gives it back to the operating
// system slowly (its background scavenger spends ~1 % of a core: ~70 MB a minute measured
// here). After a burst (a snapshot restore, which runs the collector at GOGC 300, or a backlog
// of a hundred thousand pending tasks that then finished and froze) a node would hold its peak
// for many minutes. checkMemory gives back what the heap holds beyond its normal headroom.

// minExcess is the excess below which nothing is given back: returning it would cost more (a
// forced collection, page faults when the heap grows again) than it saves.
const minExcess = 64 << 20

// heapState is what the runtime holds for the heap: retained = objects (live or garbage not yet
// collected) + free pages not yet returned; live as of the last collection; GOGC.
type heapState struct {
	retained, live uint64
	gogc           int
}

// excess is how much more the heap retains than it would in a steady state at its live size:
// under load it grows to live × (1 + GOGC/100) between collections (the scavenger keeps a tenth
// more). Anything beyond one and a half times that, and at least minExcess, is what a burst left
// (a heap that was much larger than it is now); 0 otherwise, and always with the collector off.
func (h heapState) excess() uint64 {
	if h.gogc < 0 {
		return 0
	}
	steady := h.live * uint64(100+h.gogc) / 100 * 3 / 2
	if h.retained < steady+minExcess {
		return 0
	}
	return h.retained - steady
}

var memorySamples = []metrics.Sample{
	{Name: "/memory/classes/heap/free:bytes"},
	{Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/gc/heap/live:bytes"},
	{Name: "/gc/gogc:percent"},
}

func readHeap() heapState {
	s := make([]metrics.Sample, len(memorySamples))
	copy(s, memorySamples)
	metrics.Read(s)
	return heapState{retained: s[0].Value.Uint64() + s[1].Value.Uint64(), live: s[2].Value.Uint64(), gogc: int(s[3].Value.Uint64())}
}

// returnMemory gives the heap's excess back to the operating system, reporting whether there was
// one and how many bytes the heap retains less.
func returnMemory() (bool, uint64) {
	before := readHeap()
	if before.excess() == 0 {
		return false, 0
	}
	debug.FreeOSMemory() // a collection, then every free page back
	after := readHeap()
	if after.retained > before.retained {
		return true, 0
	}
	return true, before.retained - after.retained
}

// checkMemory gives back the heap's excess, if any (every memoryCheckInterval).
func (n *Node) checkMemory() {
	if did, freed := returnMemory(); did {
		n.log.Debug("gave free heap memory back to the operating system", "bytes", humanize.IBytes(freed))
	}
}

// memoryCheckInterval is how often checkMemory runs: a burst's memory is back within it.
const memoryCheckInterval = 15 * time.Second
