package fsm

import (
	"fmt"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// The table registry. Every piece of replicated state other than the task store (nodes, ACLs,
// security, schedules, unique locks, queues) registers a Table once, from an init function in
// the file that owns the state; Snapshot, Restore and Digest (snapshot.go, digest.go) walk the
// registered tables and name none of them. The task store is written first by snapshot.go and
// digest.go themselves: its records stream one at a time, and its indexes are built from them.

// Table describes one table of replicated state to the snapshot, the restore and the digest.
// S is the table's section in a snapshot: what Capture copies, msgpack encodes under Name, and
// a restore decodes.
type Table[S any] struct {
	// Name is the section's key in the snapshot map (and its label in the digest).
	Name string
	// Pos places the table in the snapshot and in the digest, lowest first. Both orders are
	// fixed (replicas of other releases read the snapshot, and compare digests): a new table
	// takes a Pos after every other, and no Pos ever changes.
	Pos int
	// Capture copies the table, under f.mu held for writing, for a snapshot that is encoded
	// after the lock is released; false leaves the section out (a table never used is absent,
	// so that releases before it read the snapshot). Nil: the table has no section of its own.
	Capture func(f *FSM) (S, bool)
	// Check validates a decoded section before a restore changes anything; nil accepts all.
	Check func(s *S) error
	// Install replaces the table with s, nil when the snapshot has no section (then the table
	// is empty); New installs nil too. f.mu is held; Check has passed.
	Install func(f *FSM, s *S)
	// Digest adds the table to the digest through put, in a canonical order, labelled with its
	// name; a table not in use may add nothing, so that sums of states without it are unchanged.
	Digest func(f *FSM, put func(any))
}

// table is a registered Table with its section type erased.
type table interface {
	name() string
	pos() int
	hasSection() bool // false: the table is in the digest only
	capture(f *FSM) (any, bool)
	decode(dec *msgpack.Decoder) (any, error)
	check(v any) error
	install(f *FSM, v any)
	digest(f *FSM, put func(any))
}

// tables are the registered tables by Pos.
var tables []table

// registerTable adds t to the registry; it panics on a table named or placed twice.
func registerTable[S any](t Table[S]) {
	if t.Name == "" || t.Digest == nil || (t.Capture == nil) != (t.Install == nil) {
		panic(fmt.Sprintf("fsm: table %q needs a name, a digest, and both or neither of capture and install", t.Name))
	}
	for _, o := range tables {
		if o.name() == t.Name || o.pos() == t.Pos {
			panic(fmt.Sprintf("fsm: table %q (pos %d) registered twice", t.Name, t.Pos))
		}
	}
	tables = append(tables, t)
	slices.SortFunc(tables, func(a, b table) int { return a.pos() - b.pos() })
}

func (t Table[S]) name() string { return t.Name }
func (t Table[S]) pos() int     { return t.Pos }

func (t Table[S]) capture(f *FSM) (any, bool) {
	if t.Capture == nil {
		return nil, false
	}
	return t.Capture(f)
}

func (t Table[S]) decode(dec *msgpack.Decoder) (any, error) {
	s := new(S)
	if err := dec.Decode(s); err != nil {
		return nil, err
	}
	return s, nil
}

func (t Table[S]) check(v any) error {
	if t.Check == nil || v == nil {
		return nil
	}
	return t.Check(v.(*S))
}

func (t Table[S]) install(f *FSM, v any) {
	if t.Install == nil {
		return
	}
	s, _ := v.(*S) // nil: no section
	t.Install(f, s)
}

func (t Table[S]) digest(f *FSM, put func(any)) { t.Digest(f, put) }

func (t Table[S]) hasSection() bool { return t.Capture != nil }

// byName indexes a decoded section's records by their name, for an Install: the map points into
// the section, and is empty when there is none.
func byName[T any](s *[]T, name func(*T) string) map[string]*T {
	var xs []T
	if s != nil {
		xs = *s
	}
	m := make(map[string]*T, len(xs))
	for i := range xs {
		m[name(&xs[i])] = &xs[i]
	}
	return m
}
