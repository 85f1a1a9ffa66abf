package e2e

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// One application host with 64 clients, all on one node, as a worker pool behind one address
// sends: by default the node refuses none of them for their rate (Consul and Nomad have no default
// request-rate limit either). The per-client connection cap stays. A default rate of 1,000
// requests/s with bursts of 2,000 per address refused thousands of these.
func TestSixtyFourClientsOnOneHostAreNotRateLimitedByDefault(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real process")
	}
	pc := startProcCluster(t, 1)
	p := pc.procs[0]
	const clients, each = 64, 200
	var refused, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				r := p.call(context.Background(), t, "", "GET", "/v1/cluster", nil, nil)
				switch {
				case r.err != nil || r.status >= 500:
					failed.Add(1)
				case r.status == http.StatusTooManyRequests:
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d requests from one address in %s (%.0f/s)", clients*each, elapsed.Round(time.Millisecond), float64(clients*each)/elapsed.Seconds())
	if n := refused.Load(); n != 0 {
		t.Fatalf("%d of %d requests from one host refused with 429 by default", n, clients*each)
	}
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed", n, clients*each)
	}
}
