// Package tasks owns what a task is and how one runs on a node: the Handler
// interface and its Registry, the Context a running task sees (logger,
// stdout/stderr, attempt, checkpoints, cancellation), the Executor that runs
// assigned attempts in goroutines and reports their progress, the node-local
// LogStore of task output, and the built-in task types.
//
// It must know nothing of raft, gossip or HTTP: progress leaves through the
// Reporter interface, which the node package implements.
package tasks
