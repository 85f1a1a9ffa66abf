package fsm

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/vmihailenco/msgpack/v5"
)

// Digest returns the applied index and a hash of the replicated state at that index: the index,
// every task by ID, then what each registered table adds (table.go: nodes, idempotency keys, ACL
// policies and tokens, security, schedules, unique locks, queues), in a canonical order, each
// value in its msgpack form, the encoding the log and snapshots use. Two replicas at the same
// index must return the same sum; tests compare them across a cluster, as hashicorp/raft's fuzzy
// tests do with VerifyFSM, to catch an Apply that is not deterministic.
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
	for _, t := range tables {
		t.digest(f, put)
	}
	return f.index, hex.EncodeToString(h.Sum(nil))
}
