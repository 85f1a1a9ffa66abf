package fsm

import (
	"fmt"
	"math"
	"time"
)

// The table of applied request IDs: an API write runs once even when it is tried twice.
//
// A follower forwards an API write to the leader and retries the whole request when the reply is
// lost (a connection cut, a leader change), with the same request ID (internal/forward). When the
// first try had committed, the second ran the handler again, and a write that acts on an existing
// object answered for the state the first try left: a delete found nothing to delete (404), a
// workflow cancel found its workflow finished (409), although the write took effect. A command
// proposed by an API write carries the request's ID (Command.RequestID); the FSM keeps the IDs
// of the commands that applied without error, and a command whose ID it holds is not applied
// again but answers Result.Repeat, which the API answers as the write that took effect.
//
// An ID is kept for OnceTTL after its command's time, longer than a forward is retried (the API's
// write timeout). The IDs are kept in apply order; every entry that carries an ID first drops
// those at the front whose expiry has passed by its command time, so every replica holds the
// same table (no replica's clock is read).

// OnceProtocol is the protocol that introduced the envelope's request ID and the table.
const OnceProtocol = 13

// RequestIDLen is the length of a request ID: a ULID's 16 bytes.
const RequestIDLen = 16

// OnceTTL is how long after its command's time a request ID is kept: far longer than a forward is
// retried (httpapi.DefaultWriteTimeout, 15 seconds).
const OnceTTL = 10 * time.Minute

// OnceMax is the most request IDs the table keeps: past it, the oldest are dropped as the newest
// come in, in apply order, alike on every replica. Only writes that act on one object carry an
// ID (a cancel, a delete, a retry; never a submit), each in an entry of its own, and bare raft
// applies ~6,000 separate entries a second on this project's 2-core bench machine
// (BENCHMARKS.md's baseline): the newest OnceMax cover ~30 s of them at that rate, twice the
// 15 s a forward is retried. An ID costs 103 bytes of heap (20.6 MB for OnceMax, measured by
// adding OnceMax IDs to a table between two collections), so a client that cancels a million
// tasks one by one costs the table ~21 MB, not the ~100 MB that ten minutes of them would.
// Every replica must drop the same IDs: a change to it needs a protocol of its own.
const OnceMax = 200_000

// OnceEntry is one applied request ID and when it expires (UnixNano of its command's time plus
// OnceTTL).
type OnceEntry struct {
	ID      []byte `msgpack:"id"`
	Expires int64  `msgpack:"expires"`
}

// onceTable is the applied request IDs: by ID, and in apply order (queue[head:]).
type onceTable struct {
	ids   map[string]int64 // expiry by ID
	queue []OnceEntry
	head  int
}

func newOnceTable() onceTable { return onceTable{ids: map[string]int64{}} }

func (o *onceTable) len() int { return len(o.queue) - o.head }

// entries are the table's IDs in apply order.
func (o *onceTable) entries() []OnceEntry {
	out := make([]OnceEntry, o.len())
	copy(out, o.queue[o.head:])
	return out
}

// nanos is t in nanoseconds since the Unix epoch, clamped to int64's range (a command time
// outside it is a damaged entry's, which every replica clamps alike).
func nanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// expire drops the IDs at the front of the apply order whose expiry is at or before now.
func (o *onceTable) expire(now time.Time) {
	ns := nanos(now)
	for o.head < len(o.queue) && o.queue[o.head].Expires <= ns {
		o.dropFront()
	}
	o.compact()
}

// dropFront drops the oldest ID in apply order.
func (o *onceTable) dropFront() {
	e := &o.queue[o.head]
	if o.ids[string(e.ID)] == e.Expires {
		delete(o.ids, string(e.ID))
	}
	*e = OnceEntry{}
	o.head++
}

// compact releases the queue's dropped front.
func (o *onceTable) compact() {
	if o.head == len(o.queue) {
		o.queue, o.head = o.queue[:0], 0
	} else if o.head > 1024 && o.head > len(o.queue)/2 {
		o.queue = append(o.queue[:0:0], o.queue[o.head:]...)
		o.head = 0
	}
}

// applied reports whether id applied and has not expired at now.
func (o *onceTable) applied(id []byte, now time.Time) bool {
	exp, ok := o.ids[string(id)]
	return ok && exp > nanos(now)
}

// add records id, applied at now.
func (o *onceTable) add(id []byte, now time.Time) {
	exp := nanos(now)
	if exp <= math.MaxInt64-int64(OnceTTL) {
		exp += int64(OnceTTL)
	} else {
		exp = math.MaxInt64
	}
	o.ids[string(id)] = exp
	o.queue = append(o.queue, OnceEntry{ID: append([]byte(nil), id...), Expires: exp})
	if o.len() > OnceMax {
		o.dropFront()
		o.compact()
	}
}

func init() {
	registerTable(Table[[]OnceEntry]{
		Name: "once",
		Pos:  120,
		// Absent while empty: snapshots and digests of clusters that never carried a request ID
		// are those of releases before it; a snapshot without it (an older build's) restores
		// an empty table. Earlier releases skip the key.
		Capture: func(f *FSM) ([]OnceEntry, bool) {
			if f.once.len() == 0 {
				return nil, false
			}
			return f.once.entries(), true
		},
		Check: func(s *[]OnceEntry) error {
			for _, e := range *s {
				if len(e.ID) != RequestIDLen {
					return fmt.Errorf("%w: request ID of %d bytes in the once table", ErrBadCommand, len(e.ID))
				}
			}
			return nil
		},
		Install: func(f *FSM, s *[]OnceEntry) {
			f.once = newOnceTable()
			if s == nil {
				return
			}
			f.once.queue = append(f.once.queue, *s...)
			for _, e := range *s {
				f.once.ids[string(e.ID)] = e.Expires
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if f.once.len() > 0 {
				put("once")
				put(f.once.entries())
			}
		},
	})
}

// RequestApplied reports whether a command with the request ID id has applied and, as of the
// newest command applied, not expired: what applying the command again would answer (a repeat).
// An API handler on the leader asks before it refuses a write that its own first try may have
// made moot (a delete of what is gone).
func (f *FSM) RequestApplied(id []byte) bool {
	if len(id) != RequestIDLen {
		return false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.once.applied(id, f.lastNow)
}
