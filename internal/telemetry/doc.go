// Package telemetry owns what a node tells its operator about itself: the Prometheus series it
// serves on /metrics (counters and histograms fed by the FSM's observer and by the node's code,
// and gauges read from the node at scrape time through Source), the per-second throughput series
// of the console, the process logs' plumbing (the format chosen at start, raft's hclog routed
// into slog, repeated warnings folded into a count, gossip probe failures counted from
// memberlist's log, refusal warnings limited per remote address), and giving a burst's freed heap
// back to the operating system.
//
// It only counts, reads and logs: it never proposes a command, never changes the FSM, raft,
// gossip or the executor, and knows nothing of how a node is put together. It imports no other
// part of the node (nor node itself); what it reads of a node comes in as Source's values and
// functions.
package telemetry
