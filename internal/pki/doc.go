// Package pki owns taskworker's cluster trust material: the cluster certificate authority, node
// certificates and their renewal, the join token, the CSR-based join exchange, the tls.Config
// builders for internode traffic and the HTTPS API, operator-provided certificate files, and the
// gossip encryption key.
//
// It uses only the Go standard library's crypto (crypto/ecdsa P-256, crypto/x509, crypto/tls,
// crypto/subtle) and memberlist's key validation; nothing cryptographic is written here.
//
// It knows nothing of raft, memberlist's runtime, HTTP routes or the node: callers move the JSON
// join types over whatever authenticated transport they choose, and hand the tls.Configs to
// their listeners and dialers.
//
// Names. Every certificate that may act as a cluster server carries the DNS name
// server.<cluster>.taskworker (Nomad's server.<region>.nomad pattern) and internode TLS requires
// exactly that name from both ends. A node certificate issued by the cluster CA also names its
// node in a URI SAN, taskworker://<cluster>/node/<name>, so a peer can learn which node it talks
// to (NodeName). Client-only certificates (for operators' tools) carry client.<cluster>.taskworker
// and cannot pass internode checks.
package pki
