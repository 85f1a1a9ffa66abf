package telemetry

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/dustin/go-humanize"
)

// The Go runtime keeps the heap memory a collection frees and gives it back to the operating
// system slowly (its background scavenger spends ~1 % of a core: ~70 MB a minute measured
// here). After a burst (a snapshot restore, which runs the collector at GOGC 300, or a backlog
// of a hundred thousand pending tasks that then finished and froze) a node would hold its peak
// for many minutes, and an idle one its last headroom. MemoryCheck gives back what the heap
// holds beyond its normal headroom, and on an idle node the headroom too.

// minExcess is the excess below which nothing is given back: returning it would cost more (a
// forced collection, page faults when the heap grows again) than it saves.
const minExcess = 64 << 20

// heapState is what the runtime holds for the heap: retained = objects (live or garbage not yet
// collected) + free pages not yet returned; live as of the last collection; GOGC; collections
// completed so far.
type heapState struct {
	retained, live uint64
	gogc           int
	cycles         uint64
}

// excess is how much more the heap retains than it needs, given whether the node was idle (no
// collection since the last check). Under load the heap grows to live × (1 + GOGC/100) between
// collections (the scavenger keeps a tenth more): anything beyond one and a half times that is
// what a burst left (a heap that was much larger than it is now). An idle heap needs no room to
// grow: beyond a quarter more than live (fragmentation) it holds garbage and headroom nothing
// uses. Below minExcess, and always with the collector off, it is 0.
func (h heapState) excess(idle bool) uint64 {
	if h.gogc < 0 {
		return 0
	}
	keep := h.live * uint64(100+h.gogc) / 100 * 3 / 2
	if idle {
		keep = h.live * 5 / 4
	}
	if h.retained < keep+minExcess {
		return 0
	}
	return h.retained - keep
}

var memorySamples = []metrics.Sample{
	{Name: "/memory/classes/heap/free:bytes"},
	{Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/gc/heap/live:bytes"},
	{Name: "/gc/gogc:percent"},
	{Name: "/gc/cycles/total:gc-cycles"},
}

func readHeap() heapState {
	s := make([]metrics.Sample, len(memorySamples))
	copy(s, memorySamples)
	metrics.Read(s)
	return heapState{retained: s[0].Value.Uint64() + s[1].Value.Uint64(), live: s[2].Value.Uint64(),
		gogc: int(s[3].Value.Uint64()), cycles: s[4].Value.Uint64()}
}

// MemoryCheck gives the heap's excess back to the operating system when Run. It remembers the
// collections counted at the last check (none since means idle), so one goroutine alone may run
// it.
type MemoryCheck struct {
	log    *slog.Logger
	cycles uint64
	seen   bool
}

// NewMemoryCheck returns a check that logs what it gives back to log, at debug level.
func NewMemoryCheck(log *slog.Logger) *MemoryCheck { return &MemoryCheck{log: log} }

// Run gives back the heap's excess, if any (every MemoryCheckInterval).
func (m *MemoryCheck) Run() {
	if did, freed := m.run(); did {
		m.log.Debug("gave free heap memory back to the operating system", "bytes", humanize.IBytes(freed))
	}
}

// run gives the heap's excess back to the operating system, reporting whether there was one and
// how many bytes the heap retains less.
func (m *MemoryCheck) run() (bool, uint64) {
	before := readHeap()
	idle := m.seen && before.cycles == m.cycles
	m.cycles, m.seen = before.cycles, true
	if before.excess(idle) == 0 {
		return false, 0
	}
	debug.FreeOSMemory() // a collection, then every free page back
	after := readHeap()
	m.cycles = after.cycles // its own collection is not activity
	if after.retained > before.retained {
		return true, 0
	}
	return true, before.retained - after.retained
}

// MemoryCheckInterval is how often a node runs its MemoryCheck: a burst's excess is back within
// one, an idle node's headroom within two (the first sees the load's last collections).
const MemoryCheckInterval = 10 * time.Second
