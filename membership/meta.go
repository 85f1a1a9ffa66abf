package membership

import (
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/mpcheck"
)

// ErrMetaTooLarge is returned when encoded Meta would not fit memberlist's limit (memberlist itself
// would panic).
var ErrMetaTooLarge = errors.New("node meta too large")

// Meta is what a node gossips about itself. Short msgpack keys keep it far below the 512-byte limit;
// unknown keys are ignored so nodes of different versions understand each other.
type Meta struct {
	RaftAddr string `msgpack:"r,omitempty"`
	// RaftID is the node's raft server ID (made on its first start, kept in its data dir); a
	// node of a release before raft IDs gossips none, and its ID is its name.
	RaftID   string `msgpack:"ri,omitempty"`
	HTTPAddr string `msgpack:"h,omitempty"`
	BootID   string `msgpack:"b,omitempty"`
	Capacity int    `msgpack:"c,omitempty"`
	Draining bool   `msgpack:"d,omitempty"`
	Version  string `msgpack:"v,omitempty"` // taskworker build version
	// Insecure: this node runs without encryption and authentication between nodes (--insecure).
	Insecure bool `msgpack:"i,omitempty"`
	// Internode is where this node takes internode calls when that is not its gossip address
	// (test twins on an in-memory gossip network); empty means the gossip address.
	Internode string `msgpack:"n,omitempty"`
	// Keys are short IDs of the gossip keys this node's keyring holds, comma separated, so the
	// keyring listing can say how many nodes hold each key before it is used or removed. (A
	// string keeps Meta comparable.)
	Keys string `msgpack:"k,omitempty"`
	// StartedAt is when this node's process started (Unix seconds), for uptime in status.
	StartedAt int64 `msgpack:"s,omitempty"`
	// CommitIndex and AppliedIndex are this node's raft indexes as it last gossiped them (every
	// second or so while they move), so any node can show every node's lag behind the leader.
	CommitIndex  uint64 `msgpack:"ci,omitempty"`
	AppliedIndex uint64 `msgpack:"ai,omitempty"`
	// StorageFault: this node cannot persist (a full or failed disk, its data dir gone). The
	// leader treats it like a dead node, taking its tasks back, until it clears the flag.
	StorageFault bool `msgpack:"sf,omitempty"`
	// DrainDeadline is when a draining node hands back what still runs (Unix milliseconds), so
	// every node can show the countdown; 0 when not draining.
	DrainDeadline int64 `msgpack:"dd,omitempty"`
}

// Encode returns the wire form of m, or ErrMetaTooLarge past memberlist.MetaMaxSize bytes.
func (m Meta) Encode() ([]byte, error) {
	b, err := msgpack.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("encode meta: %d bytes, limit %d: %w", len(b), memberlist.MetaMaxSize, ErrMetaTooLarge)
	}
	return b, nil
}

// DecodeMeta parses what a peer gossiped. On error it returns the zero Meta: a peer's garbage must
// not stop this node from tracking that peer's liveness.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) > memberlist.MetaMaxSize {
		return Meta{}, fmt.Errorf("decode meta: %d bytes, limit %d: %w", len(b), memberlist.MetaMaxSize, ErrMetaTooLarge)
	}
	var m Meta
	if _, err := mpcheck.Check(b); err != nil { // declared lengths within the 512 bytes
		return Meta{}, fmt.Errorf("decode meta: %w", err)
	}
	if err := msgpack.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("decode meta: %w", err)
	}
	return m, nil
}
