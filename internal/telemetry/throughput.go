package telemetry

import (
	"sync"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// throughputRing keeps per-second counts of task transitions for the last api.ThroughputSeconds
// seconds (GET /v1/stats/throughput, the console's charts), fed by the FSM observer like the
// Prometheus counters. A bucket is keyed by its Unix second, so a slot left from a lap ago reads
// as empty; memory is fixed whatever the load.
type throughputRing struct {
	mu      sync.Mutex
	buckets [api.ThroughputSeconds]throughputBucket
}

type throughputBucket struct {
	sec                        int64
	started, succeeded, failed int
	waitSum                    time.Duration
}

// add counts ts in the bucket of now.
func (r *throughputRing) add(now time.Time, ts []fsm.Transition) {
	sec := now.Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := &r.buckets[sec%api.ThroughputSeconds]
	if b.sec != sec {
		*b = throughputBucket{sec: sec}
	}
	for _, tr := range ts {
		switch tr.Kind {
		case fsm.KindStarted:
			b.started++
			b.waitSum += max(tr.Waited, 0)
		case fsm.KindSucceeded:
			b.succeeded++
		case fsm.KindFailed:
			b.failed++
		}
	}
}

// series returns the last api.ThroughputSeconds seconds up to now, oldest first.
func (r *throughputRing) series(now time.Time) api.Throughput {
	const n = api.ThroughputSeconds
	end := now.Unix()
	out := api.Throughput{
		Start: time.Unix(end-n+1, 0).UTC(), Interval: "1s",
		Started: make([]int, n), Succeeded: make([]int, n), Failed: make([]int, n), QueueWaitMS: make([]*float64, n),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range n {
		sec := end - n + 1 + int64(i)
		b := r.buckets[((sec%n)+n)%n]
		if b.sec != sec {
			continue
		}
		out.Started[i], out.Succeeded[i], out.Failed[i] = b.started, b.succeeded, b.failed
		if b.started > 0 {
			ms := float64(b.waitSum) / float64(time.Millisecond) / float64(b.started)
			out.QueueWaitMS[i] = &ms
		}
	}
	return out
}
