package api

import "time"

// Blocking queries and the throughput series, added for the web console (ui/) but open to any
// client. A blocking query is a GET with ?index=N&wait=DURATION: the reply is held until the
// data's index differs from N or the wait elapses (then it is the current data, unchanged). The
// reply's index is in the HeaderIndex header; pass it back as ?index= on the next call. Clients
// keep one such request open per view instead of polling.
const (
	// HeaderIndex is the index of a reply to a blocking query: for GET /v1/tasks/{id} the task's
	// modify_index, for GET /v1/tasks the FSM index the list was read at (with ACLs, for a caller
	// that may not read every type, an opaque number that changes whenever its page would), and for GET /v1/cluster
	// an opaque number that changes whenever the reply would (it also covers gossip, which is not in
	// the replicated log).
	HeaderIndex = "X-Taskworker-Index"

	// PathThroughput is GET: tasks started, succeeded and failed per second and the mean queue
	// wait, for the last ThroughputSeconds seconds, as this node applied them.
	PathThroughput = "/v1/stats/throughput"
)

// ThroughputSeconds is how many one-second buckets a Throughput holds.
const ThroughputSeconds = 900

// Throughput is GET /v1/stats/throughput. Series are indexed by second: entry i is the second
// that starts at Start+i seconds; the last entry is the current, partial second. Every node
// counts the transitions its own FSM applies (every replica applies the same log, so any node
// tells the cluster's story), at the wall-clock second it applied them; a node counts from its
// own start, including the entries it replays from its log then.
type Throughput struct {
	Start     time.Time `json:"start"`
	Interval  string    `json:"interval"` // "1s"
	Started   []int     `json:"started"`
	Succeeded []int     `json:"succeeded"`
	Failed    []int     `json:"failed"` // tasks that failed for good (their last attempt failed)
	// QueueWaitMS is the mean wait, in milliseconds, of the attempts that started in that second
	// (from becoming pending to starting); null for a second in which none started.
	QueueWaitMS []*float64 `json:"queue_wait_ms"`
}
