package api

// Operator routes: the cluster's join token and gossip keyring. With ACLs on they need the
// `operator` cluster right; with a shared --token, that token.
const (
	PathJoinToken       = "/v1/operator/join-token"        // GET: the current join token
	PathJoinTokenRotate = "/v1/operator/join-token/rotate" // POST: replace it; the old one stops working
	PathKeyring         = "/v1/operator/keyring"           // GET: list; POST KeyringRequest: install, use, remove
	PathDigest          = "/v1/operator/digest"            // GET: this node's FSM digest at its applied index
)

// Digest is GET /v1/operator/digest: a hash of the node's replicated state (every task, node,
// idempotency key, ACL and security record, in canonical order) at the raft index it has
// applied. Two replicas at the same index must answer the same digest; comparing them across
// the cluster (a chaos run's end, an operator's check) finds a replica that diverged.
type Digest struct {
	Node   string `json:"node"`
	Index  uint64 `json:"index"`
	Digest string `json:"digest"` // hex SHA-256
}

// JoinToken is the body of the join-token routes.
type JoinToken struct {
	Token string `json:"token"`
}

// Keyring operations in KeyringRequest.Op.
const (
	KeyringInstall = "install" // every node accepts the key besides the others
	KeyringUse     = "use"     // every node encrypts with the key; it must be installed first
	KeyringRemove  = "remove"  // every node forgets the key; the primary cannot be removed
)

// KeyringRequest is the body of POST /v1/operator/keyring.
type KeyringRequest struct {
	Op  string `json:"op"`
	Key string `json:"key"` // base64 of 16, 24 or 32 bytes
}

// Keyring is the cluster's gossip keyring as the FSM holds it; every node follows it.
type Keyring struct {
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"` // primary included
	// Nodes counts, per key, the nodes whose local keyring holds it (as gossip reports).
	Nodes map[string]int `json:"nodes,omitempty"`
}
