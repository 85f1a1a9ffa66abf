// Package limits keeps one client, or one task run, from using up what a node shares with everyone:
// file descriptors (Listener, on the API and on the node-to-node ports: PeerListenerConfig,
// GossipListenerConfig), server goroutines and memory held by slow or idle connections
// (ServerTimeouts), request throughput (RateLimiter), memory and raft log space (CheckSize) and the
// raft write rate taken by checkpoints (Coalescer, Throttle).
//
// It knows HTTP and the API's error body (api.Error) and nothing about raft, the FSM or routes: the
// node decides which paths are exempt, which limits apply where, and how a refusal is logged.
//
// Error codes this package adds (CodeRateLimited, CodeInputTooLarge, CodeResultTooLarge) are
// declared here as api.Code values until they are merged into package api.
package limits
