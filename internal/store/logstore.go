package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/hashicorp/raft"
)

// The checksum frame in front of a log entry's Data:
//
//	0xC1 'T' 'W' 'C' | version (1) | CRC32C (4, big endian) | the entry's Data
//
// 0xC1 is the one byte msgpack never uses, and FSM command types stay below 0x80 (fsm/encoding.go),
// so no entry written before checksums begins with it: those decode as they were, unverified, and
// a data dir of an older release keeps working. Raft's own entries (configuration, no-op,
// barrier) are framed the same way. The CRC covers the index, term, type, data and extensions,
// so an entry moved to another index or another term does not verify either.
var frameMagic = [4]byte{0xC1, 'T', 'W', 'C'}

const (
	frameVersion = 1
	frameLen     = len(frameMagic) + 1 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(l *raft.Log, data []byte) uint32 {
	var hdr [8 + 8 + 1]byte
	binary.BigEndian.PutUint64(hdr[0:], l.Index)
	binary.BigEndian.PutUint64(hdr[8:], l.Term)
	hdr[16] = byte(l.Type)
	c := crc32.Update(0, castagnoli, hdr[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(data)))
	c = crc32.Update(c, castagnoli, n[:]) // lengths keep data and extensions from trading bytes
	c = crc32.Update(c, castagnoli, data)
	binary.BigEndian.PutUint64(n[:], uint64(len(l.Extensions)))
	c = crc32.Update(c, castagnoli, n[:])
	return crc32.Update(c, castagnoli, l.Extensions)
}

// frame returns a copy of l whose Data carries the checksum frame. The copy matters: raft keeps
// the Log it passes (its log cache), and must go on seeing the Data it wrote.
func frame(l *raft.Log) *raft.Log {
	c := *l
	c.Data = make([]byte, frameLen+len(l.Data))
	copy(c.Data, frameMagic[:])
	c.Data[len(frameMagic)] = frameVersion
	binary.BigEndian.PutUint32(c.Data[len(frameMagic)+1:], checksum(l, l.Data))
	copy(c.Data[frameLen:], l.Data)
	return &c
}

// unframe verifies and strips the frame of an entry read back, in place; an entry without one
// (written before checksums) is left as it is.
func unframe(l *raft.Log) error {
	if len(l.Data) < len(frameMagic) || [4]byte(l.Data[:4]) != frameMagic {
		return nil
	}
	if len(l.Data) < frameLen {
		return errors.New("checksum frame cut short")
	}
	if v := l.Data[len(frameMagic)]; v != frameVersion {
		return fmt.Errorf("checksum frame version %d, this build reads %d", v, frameVersion)
	}
	want := binary.BigEndian.Uint32(l.Data[len(frameMagic)+1:])
	data := l.Data[frameLen:]
	if got := checksum(l, data); got != want {
		return fmt.Errorf("checksum mismatch: stored crc32c %08x, computed %08x", want, got)
	}
	if len(data) == 0 {
		data = nil // as raft wrote it: a no-op's Data is nil
	}
	l.Data = data
	return nil
}

// LogStore is a raft.LogStore that checksums every entry it stores and verifies every entry it
// reads (GetLog), records write outcomes in a Health, and fails writes while a fault is injected.
// A read that does not verify is a *CorruptError, passed to OnCorrupt before it is returned:
// raft panics on some failed reads, so the node must act first.
type LogStore struct {
	inner     raft.LogStore
	file      string
	health    *Health
	onCorrupt func(*CorruptError)
}

// NewLogStore wraps inner, which keeps its entries in file (named in errors). onCorrupt may be nil.
func NewLogStore(inner raft.LogStore, file string, h *Health, onCorrupt func(*CorruptError)) *LogStore {
	return &LogStore{inner: inner, file: file, health: h, onCorrupt: onCorrupt}
}

var _ raft.MonotonicLogStore = (*LogStore)(nil)

// IsMonotonic is the inner store's (raft.MonotonicLogStore): true when it takes no gap between
// entries, so that raft empties it after installing a snapshot instead of leaving one.
func (s *LogStore) IsMonotonic() bool {
	m, ok := s.inner.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// FirstIndex is the inner store's.
func (s *LogStore) FirstIndex() (uint64, error) { return s.inner.FirstIndex() }

// LastIndex is the inner store's.
func (s *LogStore) LastIndex() (uint64, error) { return s.inner.LastIndex() }

// GetLog reads and verifies the entry at index.
func (s *LogStore) GetLog(index uint64, l *raft.Log) error {
	if err := s.inner.GetLog(index, l); err != nil {
		if errors.Is(err, raft.ErrLogNotFound) {
			return err
		}
		// The entry is there but does not decode: its bytes were changed.
		return s.corrupt(&CorruptError{File: s.file, Index: index, What: "entry does not decode", Err: err})
	}
	if err := unframe(l); err != nil {
		return s.corrupt(&CorruptError{File: s.file, Index: index, What: err.Error()})
	}
	if l.Index != index {
		return s.corrupt(&CorruptError{File: s.file, Index: index, What: fmt.Sprintf("entry claims index %d", l.Index)})
	}
	return nil
}

func (s *LogStore) corrupt(e *CorruptError) error {
	if s.onCorrupt != nil {
		s.onCorrupt(e)
	}
	return e
}

// StoreLog stores one entry.
func (s *LogStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores entries, each with its checksum.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	err := s.health.injected()
	if err == nil {
		framed := make([]*raft.Log, len(logs))
		for i, l := range logs {
			framed[i] = frame(l)
		}
		err = s.inner.StoreLogs(framed)
	}
	s.health.Record(OpLog, err)
	if err != nil {
		return fmt.Errorf("store raft log in %s: %w", s.file, err)
	}
	return nil
}

// DeleteRange removes entries (log compaction after a snapshot, or a conflicting suffix).
func (s *LogStore) DeleteRange(lo, hi uint64) error {
	err := s.health.injected()
	if err == nil {
		err = s.inner.DeleteRange(lo, hi)
	}
	s.health.Record(OpLog, err)
	if err != nil {
		return fmt.Errorf("delete raft log %d-%d in %s: %w", lo, hi, s.file, err)
	}
	return nil
}

// Verify reads and checks every entry the store holds, first to last: at start, so a damaged
// entry stops the node before raft replays it (raft panics on a failed read while running). Its
// cost is one read of the log, which raft trims after each snapshot.
func (s *LogStore) Verify() (err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt's assertions on a damaged page
			err = &CorruptError{File: s.file, What: "bbolt cannot read it", Err: fmt.Errorf("%v", r)}
		}
	}()
	first, err := s.inner.FirstIndex()
	if err != nil {
		return &CorruptError{File: s.file, What: "cannot read the first index", Err: err}
	}
	last, err := s.inner.LastIndex()
	if err != nil {
		return &CorruptError{File: s.file, What: "cannot read the last index", Err: err}
	}
	if first == 0 {
		return nil
	}
	var l raft.Log
	for i := first; i <= last; i++ {
		if err := s.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return &CorruptError{File: s.file, Index: i, What: fmt.Sprintf("entry missing between %d and %d", first, last)}
			}
			return err
		}
	}
	return nil
}

// StableStore is a raft.StableStore that records write outcomes in a Health. raft panics when it
// cannot save its term or vote, so a failed write is passed to OnFatal before it is returned.
type StableStore struct {
	inner   raft.StableStore
	file    string
	health  *Health
	onFatal func(error)
}

// NewStableStore wraps inner, which keeps its keys in file. onFatal may be nil.
func NewStableStore(inner raft.StableStore, file string, h *Health, onFatal func(error)) *StableStore {
	return &StableStore{inner: inner, file: file, health: h, onFatal: onFatal}
}

var _ raft.StableStore = (*StableStore)(nil)

func (s *StableStore) recordSet(err error) error {
	s.health.Record(OpStable, err)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("cannot save raft term or vote in %s (raft cannot go on without them; free space or fix the disk, then restart the node): %w", s.file, err)
	if s.onFatal != nil {
		s.onFatal(err)
	}
	return err
}

// Set stores a key.
func (s *StableStore) Set(k, v []byte) error { return s.recordSet(s.inner.Set(k, v)) }

// SetUint64 stores a number.
func (s *StableStore) SetUint64(k []byte, v uint64) error {
	return s.recordSet(s.inner.SetUint64(k, v))
}

// Get reads a key.
func (s *StableStore) Get(k []byte) ([]byte, error) { return s.inner.Get(k) }

// GetUint64 reads a number.
func (s *StableStore) GetUint64(k []byte) (uint64, error) { return s.inner.GetUint64(k) }
