package fsm

import (
	"bufio"
	"fmt"
	"io"
	"sync"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/acl"
)

// A snapshot is a msgpack map: "index", "tasks" (every record, oldest first), then one section
// per registered table that is in use, in the tables' order (table.go). Restore reads it key by
// key and skips keys it does not know, so a release reads the snapshots of later ones as long as
// their new tables are unused, and earlier releases read this one's.

// snapshotState is the msgpack form of a snapshot with the sections of the first tables, as
// earlier releases wrote it in one piece: Persist streams the same bytes for the same state.
// Tests build snapshots with it.
type snapshotState struct {
	Index uint64 `msgpack:"index"`
	Tasks []Task `msgpack:"tasks"`
	Nodes []Node `msgpack:"nodes"`
	// ACL is absent in snapshots of builds before ACLs and of clusters that never used them.
	ACL *acl.State `msgpack:"acl,omitempty"`
	// Security is absent in snapshots of clusters that never had any (and of older releases).
	Security *Security `msgpack:"security,omitempty"`
	// Schedules is absent in snapshots of clusters without schedules (and of older releases).
	Schedules []Schedule `msgpack:"schedules,omitempty"`
	// Unique is absent while no unique lock is held (and in snapshots of older releases).
	Unique []UniqueLock `msgpack:"unique,omitempty"`
}

// Snapshot implements raft.FSM. It clones the task index (O(1): the tree is copy-on-write and
// records never change once stored) and has every table copy itself (they are small); Persist
// encodes from that view while Apply goes on. A halted FSM refuses: raft would record its state
// as that of a later index, which it is not.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock() // Clone writes the tree's copy-on-write context: no reader may walk it meanwhile
	defer f.mu.Unlock()
	if f.halt != nil {
		return nil, fmt.Errorf("snapshot: %w", f.halt)
	}
	s := &snapshot{index: f.index, tasks: f.tasks.all.Clone(), names: f.tasks.names.list, arena: f.tasks.arena}
	s.arena.pin() // until Release: the frozen records it walks stay where they are
	for _, t := range tables {
		if v, ok := t.capture(f); ok {
			s.sections = append(s.sections, section{t.name(), v})
		}
	}
	return s, nil
}

// snapshot is an immutable view of the state at one index.
type snapshot struct {
	index    uint64
	tasks    *btree.BTreeG[*entry]
	names    []string // the names frozen records refer to, as they were (the list only grows)
	arena    *arena   // holds the frozen records; pinned until Release
	released sync.Once
	sections []section // the tables in use, in order
}

// section is one table's copy in a snapshot.
type section struct {
	key string
	v   any
}

// Persist streams the snapshot one record at a time, in exactly the bytes msgpack writes for
// snapshotState (the format of earlier releases, which they can restore): a map of index, tasks
// (oldest first), and the sections of the tables in use.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 256<<10)
	if err := s.encode(w); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := w.Flush(); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) encode(w io.Writer) error {
	enc := msgpack.NewEncoder(w)
	if err := enc.EncodeMapLen(2 + len(s.sections)); err != nil {
		return err
	}
	if err := encodeAll(enc, "index", s.index); err != nil {
		return err
	}
	if err := enc.EncodeString("tasks"); err != nil {
		return err
	}
	if err := enc.EncodeArrayLen(s.tasks.Len()); err != nil {
		return err
	}
	var err error
	var thawed Task // every frozen record is thawed into this one, encoded, and forgotten
	s.tasks.Ascend(func(e *entry) bool {
		t := e.t
		if t == nil {
			if err = thawInto(&thawed, e.cold, s.names); err != nil {
				return false
			}
			t = &thawed
		}
		err = enc.Encode(t)
		return err == nil
	})
	if err != nil {
		return err
	}
	for _, sec := range s.sections {
		if err := encodeAll(enc, sec.key, sec.v); err != nil {
			return err
		}
	}
	return nil
}

func encodeAll(enc *msgpack.Encoder, key string, v any) error {
	if err := enc.EncodeString(key); err != nil {
		return err
	}
	return enc.Encode(v)
}

// Release implements raft.FSMSnapshot.
func (s *snapshot) Release() { s.released.Do(s.arena.unpin) }

// Restore implements raft.FSM: it replaces the whole state with the snapshot's. It decodes one
// record at a time into a new store, built outside the lock; the swap is all Apply waits for.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := decodeSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halt != nil { // the entries after the snapshot would halt it again; restart on a newer build
		return fmt.Errorf("restore snapshot: %w", f.halt)
	}
	// Every section is checked before anything changes: a bad one (an ACL state that does not
	// validate, say) leaves the whole FSM as it was.
	for i, t := range tables {
		if err := t.check(s.sections[i]); err != nil {
			return fmt.Errorf("restore snapshot: %w", err)
		}
	}
	f.tasks = s.store
	for i, t := range tables {
		t.install(f, s.sections[i])
	}
	f.index = s.index
	f.watches.touchAll()
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

// restored is a decoded snapshot.
type restored struct {
	index    uint64
	store    *store
	sections []any // by table, as tables; nil where the snapshot has no section
}

// decodeSnapshot reads the snapshot map key by key, the tasks one by one, so a million records
// never sit in memory twice; keys it does not know are skipped, as msgpack.Unmarshal did.
func decodeSnapshot(r io.Reader) (s *restored, err error) {
	defer func() {
		if p := recover(); p != nil { // msgpack v5 panics on some malformed input
			s, err = nil, fmt.Errorf("malformed msgpack: %v", p)
		}
	}()
	br := bufio.NewReaderSize(r, restoreBuffer)
	dec := msgpack.NewDecoder(br) // a *bufio.Reader is read directly, without a buffer of its own
	s = &restored{store: newStore(), sections: make([]any, len(tables))}
	n, err := dec.DecodeMapLen()
	if err != nil {
		return nil, err
	}
	for range max(n, 0) {
		key, err := dec.DecodeString()
		if err != nil {
			return nil, err
		}
		switch key {
		case "index":
			err = dec.Decode(&s.index)
		case "tasks":
			err = decodeTasks(dec, br, s.store)
		default:
			err = decodeSection(dec, key, s.sections)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	return s, nil
}

// decodeSection reads the section of the table named key into sections, or skips it when no
// table has that name (a table of a later release).
func decodeSection(dec *msgpack.Decoder, key string, sections []any) error {
	for i, t := range tables {
		if t.name() == key && t.hasSection() {
			v, err := t.decode(dec)
			sections[i] = v // a later section of the same key wins, as with msgpack.Unmarshal
			return err
		}
	}
	return dec.Skip()
}
