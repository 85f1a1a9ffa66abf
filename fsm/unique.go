package fsm

import (
	"cmp"
	"time"

	"github.com/google/btree"
)

// MaxUniqueFor bounds a unique task's window, so the lock table cannot grow without end.
const MaxUniqueFor = 30 * 24 * time.Hour

// UniqueLock is one entry of the unique-task table: while Expires is after a submit's time, a
// task of Type with Key is refused (ErrDuplicateUnique) and TaskID names the task holding it.
//
// The rule is the window alone, as Asynq's Unique(ttl) without its delete hook: the lock lasts
// from the first task's creation for its unique_for, whatever that task's state, and removing the
// task (purge, retention) does not free it either. One rule, decided by the log alone, and a user
// who wants the same task again sooner asks for a retry of it, which keeps its ID.
type UniqueLock struct {
	Type    string    `msgpack:"type"`
	Key     string    `msgpack:"key"`
	TaskID  string    `msgpack:"task_id"`
	Expires time.Time `msgpack:"expires"`
}

type uniqueKey struct{ typ, key string }

// uniqueTable indexes the locks by (type, key) for submits and by expiry for the sweep, so
// expiring costs O(expired), not O(locks).
type uniqueTable struct {
	byKey    map[uniqueKey]*UniqueLock
	byExpiry *btree.BTreeG[*UniqueLock]
}

func byUniqueExpiry(a, b *UniqueLock) bool {
	return cmp.Or(a.Expires.Compare(b.Expires), cmp.Compare(a.Type, b.Type), cmp.Compare(a.Key, b.Key)) < 0
}

func newUniqueTable() *uniqueTable {
	return &uniqueTable{byKey: map[uniqueKey]*UniqueLock{}, byExpiry: btree.NewG(btreeDegree, byUniqueExpiry)}
}

// holder returns the lock on (typ, key) still in force at now.
func (u *uniqueTable) holder(typ, key string, now time.Time) (*UniqueLock, bool) {
	l, ok := u.byKey[uniqueKey{typ, key}]
	if !ok || !l.Expires.After(now) {
		return nil, false
	}
	return l, true
}

func (u *uniqueTable) put(l *UniqueLock) {
	k := uniqueKey{l.Type, l.Key}
	if old, ok := u.byKey[k]; ok {
		u.byExpiry.Delete(old)
	}
	u.byKey[k] = l
	u.byExpiry.ReplaceOrInsert(l)
}

// expire drops the locks whose window ended at or before now, oldest first: O(expired · log n).
func (u *uniqueTable) expire(now time.Time) {
	for {
		l, ok := u.byExpiry.Min()
		if !ok || l.Expires.After(now) {
			return
		}
		u.byExpiry.DeleteMin()
		delete(u.byKey, uniqueKey{l.Type, l.Key})
	}
}

func (u *uniqueTable) len() int { return len(u.byKey) }

// locks returns every lock by (expiry, type, key): the snapshot's and the digest's order.
func (u *uniqueTable) locks() []UniqueLock {
	out := make([]UniqueLock, 0, u.byExpiry.Len())
	u.byExpiry.Ascend(func(l *UniqueLock) bool {
		out = append(out, *l)
		return true
	})
	return out
}

// UniqueLocks returns the unique locks the FSM holds (expired ones included until a submit sweeps
// them), by expiry.
func (f *FSM) UniqueLocks() []UniqueLock {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.unique.locks()
}

// claimUnique refuses s when its (type, unique key) is locked at now, and otherwise records the
// lock for task id. f.mu is held.
func (f *FSM) checkUnique(s *Submit, now time.Time) (ItemResult, bool) {
	if s.UniqueKey == "" {
		return ItemResult{}, true
	}
	if l, ok := f.unique.holder(s.Type, s.UniqueKey, now); ok {
		return ItemResult{ID: l.TaskID, Err: ErrDuplicateUnique}, false
	}
	return ItemResult{}, true
}

func init() {
	registerTable(Table[[]UniqueLock]{
		Name: "unique",
		Pos:  60,
		// Absent while no lock is held: states without unique locks keep their snapshots and
		// digests.
		Capture: func(f *FSM) ([]UniqueLock, bool) {
			if f.unique.len() == 0 {
				return nil, false
			}
			return f.unique.locks(), true
		},
		Install: func(f *FSM, s *[]UniqueLock) {
			f.unique = newUniqueTable()
			if s != nil {
				for i := range *s {
					f.unique.put(&(*s)[i])
				}
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if f.unique.len() > 0 {
				put("unique")
				put(f.unique.locks())
			}
		},
	})
}
