package fsm

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/vmihailenco/msgpack/v5"
)

// Digest returns the applied index and a hash of the replicated state at that index: every task,
// node, idempotency key, unique lock, ACL policy and token and the security state, in a canonical order (tasks
// by ID, nodes by name, keys sorted), each in its msgpack form, the encoding the log and snapshots use. Two replicas at the same index
// must return the same sum; tests compare them across a cluster, as hashicorp/raft's fuzzy tests
// do with VerifyFSM, to catch an Apply that is not deterministic.
func (f *FSM) Digest() (index uint64, sum string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h := sha256.New()
	enc := msgpack.NewEncoder(h)
	enc.SetSortMapKeys(true) // any map inside a record encodes the same way on every replica
	// Encoding into a hash cannot fail but on a type msgpack cannot encode, which the log and
	// snapshots would have refused first; an error still changes the sum, so it cannot hide.
	put := func(v any) {
		if err := enc.Encode(v); err != nil {
			_, _ = h.Write([]byte("encode error: " + err.Error()))
		}
	}
	put(f.index)
	put("tasks")
	for _, id := range sortedKeys(f.tasks.byID) {
		put(id)
		put(f.tasks.record(f.tasks.byID[id]))
	}
	put("nodes")
	for _, name := range sortedKeys(f.nodes) {
		put(name)
		put(f.nodes[name])
	}
	put("idempotency")
	for _, key := range sortedKeys(f.tasks.idem) {
		put(key)
		put(f.tasks.idem[key])
	}
	put("acl")
	put(f.acl.State())      // policies by name, tokens by accessor ID, the bootstrap flag
	if !f.security.zero() { // absent while unused, so sums of clusters without it are unchanged
		put("security")
		put(f.security)
	}
	if len(f.schedules) > 0 { // likewise
		put("schedules")
		for _, name := range sortedKeys(f.schedules) {
			put(f.schedules[name])
		}
	}
	if f.unique.len() > 0 { // likewise: states without unique locks keep their sums
		put("unique")
		put(f.unique.locks())
	}
	if !f.queues.zero() { // absent while unused, as security
		put("queues")
		put(f.queues)
	}
	return f.index, hex.EncodeToString(h.Sum(nil))
}
