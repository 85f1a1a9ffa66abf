package node

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// TestFollowerCallsShareOneConnection: a follower that forwards many writes at once, and runs
// tasks whose reports it forwards, reaches the leader over one HTTP/2 connection (a handshake per
// call was a third of a secure cluster's CPU per task), in both modes. It counts the connections
// the leader's gossip port accepted while 64 clients submitted 256 tasks through a follower.
func TestFollowerCallsShareOneConnection(t *testing.T) {
	for _, mode := range []string{"secure", "insecure"} {
		t.Run(mode, func(t *testing.T) {
			o := clusterOpts{capacity: 64}
			var tc *testCluster
			if mode == "secure" {
				o = secureOpts(nil)
				tweak := o.tweak
				o.tweak = func(i int, c *Config) { tweak(i, c); c.Capacity = 64 }
				tc = startSecureCluster(t, 3, o)
			} else {
				tc = startCluster(t, 3, o)
			}
			l, f := tc.leader(), tc.follower()
			// Any call opens the follower's connection; count from there.
			submit(t, f, "echo", "warm", "10s")
			key := `taskworker_listener_accepted_total{listener="gossip"}`
			before := scrape(t, l)[key]

			const clients, each = 64, 4
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						var task api.Task
						if code := httpCall(t, f, "POST", "/v1/tasks?wait=20s", map[string]any{"type": "echo", "input": fmt.Sprint(c, "/", i)}, &task); code != http.StatusCreated || task.State != api.StateSucceeded {
							errs <- fmt.Errorf("submit %d/%d: status %d, state %s", c, i, code, task.State)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			// Gossip's own TCP exchanges (push/pull every few seconds, per peer) also land on this
			// port; a connection per forward or report would be hundreds.
			if got := scrape(t, l)[key] - before; got > 8 {
				t.Fatalf("the leader's gossip port accepted %v connections during %d forwarded submits, want a handful", got, clients*each)
			}
		})
	}
}
