package telemetry

import (
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

func TestThroughputRingCountsPerSecondAndForgetsOldLaps(t *testing.T) {
	var r throughputRing
	t0 := time.Unix(1_000_000, 0)
	r.add(t0, []fsm.Transition{
		{Kind: fsm.KindStarted, Waited: 100 * time.Millisecond},
		{Kind: fsm.KindStarted, Waited: 300 * time.Millisecond},
		{Kind: fsm.KindSucceeded}, {Kind: fsm.KindRetried}, {Kind: fsm.KindSubmitted},
	})
	r.add(t0.Add(500*time.Millisecond), []fsm.Transition{{Kind: fsm.KindFailed}})
	r.add(t0.Add(2*time.Second), []fsm.Transition{{Kind: fsm.KindSucceeded}})

	s := r.series(t0.Add(2 * time.Second))
	last := api.ThroughputSeconds - 1
	if len(s.Started) != api.ThroughputSeconds || !s.Start.Equal(t0.Add(2*time.Second-(api.ThroughputSeconds-1)*time.Second)) {
		t.Fatalf("series of %d from %v", len(s.Started), s.Start)
	}
	if s.Started[last-2] != 2 || s.Succeeded[last-2] != 1 || s.Failed[last-2] != 1 || s.Succeeded[last] != 1 {
		t.Fatalf("counts: started %d succeeded %d/%d failed %d", s.Started[last-2], s.Succeeded[last-2], s.Succeeded[last], s.Failed[last-2])
	}
	if w := s.QueueWaitMS[last-2]; w == nil || *w != 200 {
		t.Fatalf("mean queue wait %v, want 200", w)
	}
	if s.QueueWaitMS[last] != nil || s.Started[last-1] != 0 {
		t.Fatalf("a second without starts: wait %v, started %d", s.QueueWaitMS[last], s.Started[last-1])
	}

	// A lap later (t0 and t0+2 just out of the window) the same slots hold nothing from before.
	later := t0.Add((api.ThroughputSeconds + 3) * time.Second)
	s = r.series(later)
	for i, n := range s.Started {
		if n != 0 || s.Succeeded[i] != 0 || s.Failed[i] != 0 {
			t.Fatalf("second %d of a later lap shows old counts", i)
		}
	}
}
