package raftnode

import (
	"io"
	"runtime/debug"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
)

// restoreGCPercent is the garbage collector's target while raft restores a snapshot. Restoring
// builds a heap of ~1 KB per task that is all live: at the default GOGC=100 the collector runs
// again and again over a heap that only grows, and half the restore of 1,000,000 tasks (12 s) is
// marking and sweeping. At 300 the same restore takes about half the time (BENCHMARKS.md); the
// price is a heap up to ~4× the live one for the seconds it lasts, then the setting goes back.
const restoreGCPercent = 300

// gcDuringRestore is the FSM as raft sees it: the same FSM, with the collector relaxed while a
// snapshot is restored (at start, and when the leader installs one). The setting is
// process-wide, so it belongs to the agent, not to fsm. It keeps the FSM's ApplyBatch (embedded),
// so raft hands it the committed entries in batches (raft.BatchingFSM).
type gcDuringRestore struct{ *fsm.FSM }

var _ raft.BatchingFSM = gcDuringRestore{}

func (g gcDuringRestore) Restore(rc io.ReadCloser) error {
	relaxGC()
	defer restoreGC()
	return g.FSM.Restore(rc)
}

// Several nodes in one process (tests) may restore at once: the first raises the percentage and
// remembers the setting it found, the last puts that back.
var gcRelax struct {
	sync.Mutex
	depth int
	saved int
}

func relaxGC() {
	gcRelax.Lock()
	defer gcRelax.Unlock()
	gcRelax.depth++
	if gcRelax.depth > 1 {
		return
	}
	gcRelax.saved = debug.SetGCPercent(restoreGCPercent)
	if gcRelax.saved < 0 || gcRelax.saved >= restoreGCPercent {
		debug.SetGCPercent(gcRelax.saved) // the operator's GOGC is off or already higher: keep it
	}
}

func restoreGC() {
	gcRelax.Lock()
	defer gcRelax.Unlock()
	gcRelax.depth--
	if gcRelax.depth == 0 {
		debug.SetGCPercent(gcRelax.saved)
	}
}

// GCHeld reports whether a restore holds the collector's setting now: the node's GC pacer leaves
// it alone meanwhile (telemetry.GCPacer).
func GCHeld() bool {
	gcRelax.Lock()
	defer gcRelax.Unlock()
	return gcRelax.depth > 0
}
