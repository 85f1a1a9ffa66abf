package fsm

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"time"
)

// A finished task never changes again (until a retry replaces it), and a cluster keeps many of
// them: a million finished tasks as Task structs cost ~1.1 KB each of pointer-rich heap, which the
// collector marks on every cycle and doubles as headroom. The store keeps them frozen instead: one
// string per record in a compact binary form, strings that records repeat (types, versions,
// nodes, boot IDs, events, queues) as numbers into the store's table of names. A frozen record
// holds no pointers, so the collector never scans it, and costs ~130 bytes for a small echo task.
// get thaws it back into a Task, equal field by field (nil and empty kept apart) to the one
// frozen, so reads, digests and snapshots see no difference.

// names is the store's table of repeated strings: code 0 is "", code i > 0 is list[i-1]. It only
// grows (a few entries per type, version, node and boot), and entries never change once added,
// so a snapshot reads the list it captured while Apply appends to the live one.
type names struct {
	list []string
	code map[string]uint32
}

func (n *names) put(s string) uint32 {
	if s == "" {
		return 0
	}
	if c, ok := n.code[s]; ok {
		return c
	}
	if n.code == nil {
		n.code = map[string]uint32{}
	}
	n.list = append(n.list, s)
	c := uint32(len(n.list))
	n.code[s] = c
	return c
}

// frozenVersion is the first byte of every frozen record: the layout below.
const frozenVersion = 1

// Presence flags of the optional fields of a frozen record.
const (
	fInput = 1 << iota
	fResult
	fError
	fErrorFinal
	fExecIsID
	fStartedAt
	fFinishedAt
	fNotBefore
	fCancel
	fCheckpoint
	fHistory
	fUniqueUntil
	fRunAt
	fConcurrency // a concurrency key: key, limit and place in the rotation follow the history
	fRate        // rate limit and key, after the history
	fDebounce    // debounce key and window, after those
	fTrace
	fWait
)

// Presence flags of a frozen history entry.
const (
	hFinal = 1 << iota
	hError
	hBy
)

// appendFrozen appends t's frozen form to b. The ID comes first, so idOf reads it alone.
func appendFrozen(b []byte, t *Task, nm *names) []byte {
	b = append(b, frozenVersion)
	b = putStr(b, t.ID)
	var flags uint64
	set := func(f uint64, on bool) {
		if on {
			flags |= f
		}
	}
	set(fInput, t.Input != nil)
	set(fResult, t.Result != nil)
	set(fError, t.Error != nil)
	set(fErrorFinal, t.Error != nil && t.Error.Final)
	set(fExecIsID, t.ExecutionID == t.ID)
	set(fStartedAt, t.StartedAt != nil)
	set(fFinishedAt, t.FinishedAt != nil)
	set(fNotBefore, t.NotBefore != nil)
	set(fCancel, t.CancelRequested)
	set(fCheckpoint, t.Checkpoint != nil)
	set(fHistory, t.History != nil)
	set(fUniqueUntil, t.UniqueUntil != nil)
	set(fRunAt, t.RunAt != nil)
	set(fConcurrency, t.ConcurrencyKey != "" || t.ConcurrencyLimit != 0 || t.FairSeq != 0)
	set(fRate, t.RateLimit != "" || t.RateKey != "")
	set(fDebounce, t.DebounceKey != "" || t.Debounce != 0)
	set(fTrace, t.Trace != nil)
	set(fWait, t.WaitFor != nil || t.WaitLeft != 0)
	b = binary.AppendUvarint(b, flags)
	for _, s := range []string{t.Type, t.Version, string(t.State), t.Node, t.BootID, t.Queue, t.SubmittedBy, t.Schedule} {
		b = binary.AppendUvarint(b, uint64(nm.put(s)))
	}
	for _, v := range []int64{int64(t.Attempt), int64(t.MaxAttempts), int64(t.Failures), int64(t.Timeout), int64(t.Priority)} {
		b = binary.AppendVarint(b, v)
	}
	b = binary.AppendUvarint(b, t.CreateIndex)
	b = binary.AppendUvarint(b, t.ModifyIndex)
	b = putTime(b, t.CreatedAt)
	for _, p := range []*time.Time{t.StartedAt, t.FinishedAt, t.NotBefore, t.UniqueUntil, t.RunAt} {
		if p != nil {
			b = putTime(b, *p)
		}
	}
	for _, raw := range [][]byte{t.Input, t.Result, t.Checkpoint} {
		if raw != nil {
			b = binary.AppendUvarint(b, uint64(len(raw)))
			b = append(b, raw...)
		}
	}
	if t.Error != nil {
		b = putStr(b, t.Error.Type)
		b = putStr(b, t.Error.Message)
	}
	if t.ExecutionID != t.ID {
		b = putStr(b, t.ExecutionID)
	}
	b = putStr(b, t.IdempotencyKey)
	b = putStr(b, t.ParentID)
	b = putStr(b, t.UniqueKey)
	if t.WaitFor != nil || t.WaitLeft != 0 {
		b = binary.AppendVarint(b, int64(t.WaitLeft))
		if t.WaitFor == nil {
			b = binary.AppendUvarint(b, 0)
		} else {
			b = binary.AppendUvarint(b, uint64(len(t.WaitFor))+1)
			for _, id := range t.WaitFor {
				b = putStr(b, id)
			}
		}
	}
	if t.History != nil {
		b = binary.AppendUvarint(b, uint64(len(t.History)))
		for i := range t.History {
			h := &t.History[i]
			var hf uint64
			if h.Final {
				hf |= hFinal
			}
			if h.Error != "" {
				hf |= hError
			}
			if h.By != "" {
				hf |= hBy
			}
			b = binary.AppendUvarint(b, hf)
			b = binary.AppendVarint(b, int64(h.Attempt))
			b = binary.AppendUvarint(b, uint64(nm.put(h.Node)))
			b = binary.AppendUvarint(b, uint64(nm.put(h.Event)))
			b = putTime(b, h.At)
			if h.Error != "" {
				b = putStr(b, h.Error)
			}
			if h.By != "" {
				b = binary.AppendUvarint(b, uint64(nm.put(h.By)))
			}
		}
	}
	if flags&fConcurrency != 0 {
		b = putStr(b, t.ConcurrencyKey)
		b = binary.AppendVarint(b, int64(t.ConcurrencyLimit))
		b = binary.AppendUvarint(b, t.FairSeq)
	}
	if flags&fRate != 0 {
		b = binary.AppendUvarint(b, uint64(nm.put(t.RateLimit)))
		b = putStr(b, t.RateKey)
	}
	if flags&fDebounce != 0 {
		b = putStr(b, t.DebounceKey)
		b = binary.AppendVarint(b, int64(t.Debounce))
	}
	if t.Trace != nil {
		b = append(b, t.Trace.TraceID[:]...)
		b = append(b, t.Trace.SpanID[:]...)
		b = append(b, t.Trace.Flags)
	}
	return b
}

func putStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Time zones of a frozen time: what msgpack decodes (UTC), the process's Local (time.Unix), or
// a fixed zone by name and offset (a Location's rules are not kept; records never hold one).
const (
	zoneUTC = iota
	zoneLocal
	zoneFixed
)

func putTime(b []byte, t time.Time) []byte {
	zone := zoneFixed
	switch t.Location() {
	case time.UTC:
		zone = zoneUTC
	case time.Local:
		zone = zoneLocal
	}
	// Seconds and nanoseconds apart: UnixNano overflows outside 1678..2262, and a zero time
	// (year 1) must thaw as the zero time.
	b = binary.AppendUvarint(b, uint64(zone)|uint64(t.Nanosecond())<<2)
	b = binary.AppendVarint(b, t.Unix())
	if zone == zoneFixed {
		name, off := t.Zone()
		b = putStr(b, name)
		b = binary.AppendVarint(b, int64(off))
	}
	return b
}

// errFrozen is a frozen record the store cannot read back: a bug, never input (only appendFrozen writes
// frozen records).
var errFrozen = errors.New("fsm: damaged frozen record")

// thawer reads a frozen record.
type thawer struct {
	s   string
	err error
}

func (r *thawer) uvarint() uint64 {
	var x uint64
	var shift uint
	for i := 0; i < len(r.s) && i < binary.MaxVarintLen64; i++ {
		c := r.s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break // overflows 64 bits
			}
			r.s = r.s[i+1:]
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
	r.fail()
	return 0
}

// varint reads what binary.AppendVarint wrote (zig-zag).
func (r *thawer) varint() int64 {
	u := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (r *thawer) fail() {
	if r.err == nil {
		r.err = errFrozen
	}
	r.s = ""
}

// str returns the next string, sharing the frozen record's memory (strings are immutable).
func (r *thawer) str() string {
	n := r.uvarint()
	if n > uint64(len(r.s)) {
		r.fail()
		return ""
	}
	s := r.s[:n]
	r.s = r.s[n:]
	return s
}

func (r *thawer) name(list []string) string {
	c := r.uvarint()
	if c == 0 {
		return ""
	}
	if c > uint64(len(list)) {
		r.fail()
		return ""
	}
	return list[c-1]
}

func (r *thawer) time() time.Time {
	zn := r.uvarint()
	sec := r.varint()
	nsec := int64(zn >> 2)
	if nsec >= 1e9 {
		r.fail()
		return time.Time{}
	}
	t := time.Unix(sec, nsec)
	switch zn & 3 {
	case zoneUTC:
		return t.UTC()
	case zoneLocal:
		return t
	default:
		name := r.str()
		off := r.varint()
		if off < math.MinInt32 || off > math.MaxInt32 {
			r.fail()
			return time.Time{}
		}
		return t.In(time.FixedZone(name, int(off)))
	}
}

// idOf is the ID of a frozen record, without decoding the rest.
func idOf(s string) string {
	if n := int(s[1]); n < 0x80 && 2+n <= len(s) { // an ID shorter than 128 bytes: every one
		return s[2 : 2+n]
	}
	r := thawer{s: s[1:]}
	return r.str()
}

// peek reads a frozen record's type, state and node, what most list filters match on, without
// thawing the rest or allocating.
func peek(s string, list []string) (typ string, state State, node string, ok bool) {
	if len(s) == 0 || s[0] != frozenVersion {
		return "", "", "", false
	}
	r := thawer{s: s[1:]}
	r.str()     // ID
	r.uvarint() // flags
	typ = r.name(list)
	r.name(list) // version
	state, node = State(r.name(list)), r.name(list)
	return typ, state, node, r.err == nil
}

// thaw decodes a frozen record with the names table it was frozen with (or a later state of it)
// into a Task of the caller's own: its strings are a copy, not the arena's memory.
func thaw(s string, list []string) (*Task, error) {
	t := new(Task)
	if err := thawInto(t, strings.Clone(s), list); err != nil {
		return nil, err
	}
	return t, nil
}

// thawInto decodes a frozen record into t, reusing the memory t's history, times, raw JSON and
// error hold from an earlier thaw (Persist thaws every record of a snapshot into one Task), so t
// must be the caller's alone. t's strings share s's memory: valid as long as s is.
func thawInto(t *Task, s string, list []string) error {
	if len(s) == 0 || s[0] != frozenVersion {
		return errFrozen
	}
	old := *t
	*t = Task{}
	r := &thawer{s: s[1:]}
	t.ID = r.str()
	flags := r.uvarint()
	has := func(f uint64) bool { return flags&f != 0 }
	t.Type, t.Version, t.State = r.name(list), r.name(list), State(r.name(list))
	t.Node, t.BootID, t.Queue = r.name(list), r.name(list), r.name(list)
	t.SubmittedBy, t.Schedule = r.name(list), r.name(list)
	t.Attempt, t.MaxAttempts, t.Failures = int(r.varint()), int(r.varint()), int(r.varint())
	t.Timeout, t.Priority = Duration(r.varint()), int(r.varint())
	t.CreateIndex, t.ModifyIndex = r.uvarint(), r.uvarint()
	t.CreatedAt = r.time()
	for _, f := range []struct {
		flag  uint64
		reuse *time.Time
		dst   **time.Time
	}{
		{fStartedAt, old.StartedAt, &t.StartedAt}, {fFinishedAt, old.FinishedAt, &t.FinishedAt},
		{fNotBefore, old.NotBefore, &t.NotBefore}, {fUniqueUntil, old.UniqueUntil, &t.UniqueUntil},
		{fRunAt, old.RunAt, &t.RunAt},
	} {
		if has(f.flag) {
			p := f.reuse
			if p == nil {
				p = new(time.Time)
			}
			*p = r.time()
			*f.dst = p
		}
	}
	// Raw JSON is a []byte: copied, so no caller can write into the frozen record.
	if has(fInput) {
		t.Input = copyInto(old.Input, r.str())
	}
	if has(fResult) {
		t.Result = copyInto(old.Result, r.str())
	}
	if has(fCheckpoint) {
		t.Checkpoint = copyInto(old.Checkpoint, r.str())
	}
	if has(fError) {
		t.Error = old.Error
		if t.Error == nil {
			t.Error = new(TaskError)
		}
		*t.Error = TaskError{Type: r.str(), Message: r.str(), Final: has(fErrorFinal)}
	}
	t.ExecutionID = t.ID
	if !has(fExecIsID) {
		t.ExecutionID = r.str()
	}
	t.IdempotencyKey, t.ParentID, t.UniqueKey = r.str(), r.str(), r.str()
	t.CancelRequested = has(fCancel)
	if has(fWait) {
		t.WaitLeft = int(r.varint())
		if n := r.uvarint(); n > 0 {
			if n-1 > uint64(len(r.s)) { // every ID takes a byte
				return errFrozen
			}
			t.WaitFor = make([]string, n-1)
			for i := range t.WaitFor {
				t.WaitFor[i] = r.str()
			}
		}
	}
	if has(fHistory) {
		n := r.uvarint()
		if n > uint64(len(r.s)) { // every entry takes bytes
			return errFrozen
		}
		if old.History != nil && uint64(cap(old.History)) >= n { // nil[:0] would lose "empty, not nil"
			t.History = old.History[:n]
			clear(t.History)
		} else {
			t.History = make([]HistoryEntry, n)
		}
		for i := range t.History {
			h := &t.History[i]
			hf := r.uvarint()
			h.Attempt = int(r.varint())
			h.Node, h.Event = r.name(list), r.name(list)
			h.At = r.time()
			h.Final = hf&hFinal != 0
			if hf&hError != 0 {
				h.Error = r.str()
			}
			if hf&hBy != 0 {
				h.By = r.name(list)
			}
		}
	}
	if has(fConcurrency) {
		t.ConcurrencyKey, t.ConcurrencyLimit, t.FairSeq = r.str(), int(r.varint()), r.uvarint()
	}
	if has(fRate) {
		t.RateLimit, t.RateKey = r.name(list), r.str()
	}
	if has(fDebounce) {
		t.DebounceKey, t.Debounce = r.str(), Duration(r.varint())
	}
	if has(fTrace) {
		if len(r.s) < traceLen {
			return errFrozen
		}
		tc := old.Trace
		if tc == nil {
			tc = new(TraceContext)
		}
		copy(tc.TraceID[:], r.s)
		copy(tc.SpanID[:], r.s[16:])
		tc.Flags = r.s[24]
		r.s = r.s[traceLen:]
		t.Trace = tc
	}
	if r.err != nil || r.s != "" {
		return errFrozen
	}
	return nil
}

// copyInto is s as a non-nil []byte, in buf's memory when it is large enough.
func copyInto(buf []byte, s string) []byte {
	if buf == nil {
		return []byte(s)
	}
	return append(buf[:0], s...)
}

// peekSubmitter reads a frozen record's submitted_by without thawing the rest.
func peekSubmitter(s string, list []string) (string, bool) {
	if len(s) == 0 || s[0] != frozenVersion {
		return "", false
	}
	r := thawer{s: s[1:]}
	r.str()       // ID
	r.uvarint()   // flags
	for range 6 { // type, version, state, node, boot ID, queue
		r.name(list)
	}
	by := r.name(list)
	return by, r.err == nil
}
