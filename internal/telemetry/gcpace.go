package telemetry

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The collector's work grows with how often it runs times the live heap it marks, and it runs
// each time the heap has grown by GOGC % of the live one. A node's live heap is small (~10 MB
// with a few thousand tasks in its state), so at the default GOGC=100 a loaded node collects
// every ~10 MB allocated: a tenth of its CPU went to marking under 64 clients of echo tasks
// (perf, BENCHMARKS.md "Cost per task"). GCPacer gives a busy node a fixed headroom instead: the
// heap may grow by gcHeadroom before the next collection while that is more than GOGC=100
// would allow, so the collector runs up to gcMaxPercent/100 × less often on a small heap and
// exactly as before on one larger than gcHeadroom. An idle node (allocating less than
// gcIdleAllocRate) keeps GOGC=100, so its resident memory does not grow by the headroom.
const (
	gcHeadroom      = 32 << 20
	gcMaxPercent    = 800
	gcIdleAllocRate = 1 << 20 // bytes a second
	// GCPaceInterval is how often a node runs its GCPacer: a burst that grows the live heap
	// meets the larger percentage for at most this long.
	GCPaceInterval = time.Second
)

// gcPercent is the GOGC for a live heap of live bytes while the node allocates rate bytes a
// second.
func gcPercent(live, rate uint64) int {
	if rate < gcIdleAllocRate || live == 0 {
		return 100
	}
	return int(min(max(uint64(gcHeadroom)*100/live, 100), gcMaxPercent))
}

var paceSamples = []metrics.Sample{
	{Name: "/gc/heap/live:bytes"},
	{Name: "/gc/gogc:percent"},
	{Name: "/gc/heap/allocs:bytes"},
}

// paceReading is what GCPacer reads of the runtime.
type paceReading struct {
	live, allocs uint64
	gogc         int
}

func readPace() paceReading {
	s := make([]metrics.Sample, len(paceSamples))
	copy(s, paceSamples)
	metrics.Read(s)
	return paceReading{live: s[0].Value.Uint64(), gogc: int(s[1].Value.Uint64()), allocs: s[2].Value.Uint64()}
}

// GCPacer sets GOGC from the live heap and the allocation rate (gcPercent) when Run. It leaves
// the setting alone while someone else holds it: the operator (GOGC in the environment: no pacer
// is made, see NewGCPacer), or a snapshot restore (held reports it), which raises it for its
// duration and then puts back what it found. One goroutine alone may run it.
type GCPacer struct {
	read   func() paceReading
	set    func(int) int
	now    func() time.Time
	held   func() bool
	allocs uint64
	at     time.Time
}

// NewGCPacer returns a pacer that leaves GOGC alone while held reports true; nil when the
// operator set GOGC (a nil pacer's Run does nothing).
func NewGCPacer(getenv func(string) string, held func() bool) *GCPacer {
	if getenv("GOGC") != "" {
		return nil
	}
	return &GCPacer{read: readPace, set: debug.SetGCPercent, now: time.Now, held: held}
}

// Run sets GOGC for the allocation rate since the last Run.
func (p *GCPacer) Run() {
	if p == nil {
		return
	}
	r, now := p.read(), p.now()
	first := p.at.IsZero()
	rate := uint64(0)
	if !first && now.After(p.at) && r.allocs >= p.allocs {
		rate = uint64(float64(r.allocs-p.allocs) / now.Sub(p.at).Seconds())
	}
	p.allocs, p.at = r.allocs, now
	if first || p.held() {
		return // nothing to pace from yet, or a restore holds the setting
	}
	if want := gcPercent(r.live, rate); want != r.gogc {
		p.set(want)
	}
}
