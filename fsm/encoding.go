package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/mpcheck"
)

// A log entry is one byte of CommandType, then a msgpack map {now, body} with the type's payload.
// Entries of the previous release are a msgpack map of the old union command (legacy.go); a map's
// first byte is at least 0x80, and command types stay below it, so the first byte tells them apart.

type decoder = *msgpack.Decoder

// envelope is the msgpack part of an entry, typed per command when decoding. ID, the request ID
// of an API write (Command.RequestID, once.go), is OnceProtocol's and omitted when empty, so an
// entry without it is byte for byte what earlier releases wrote (and read).
type envelope[P any] struct {
	Now  time.Time `msgpack:"now"`
	Body *P        `msgpack:"body"`
	ID   []byte    `msgpack:"id,omitempty"`
}

func decodeEnvelope[P any](d decoder) (*Command, error) {
	e := envelope[P]{Body: new(P)}
	if err := d.Decode(&e); err != nil {
		return nil, err
	}
	if e.Body == nil { // a nil body decodes to the zero payload
		e.Body = new(P)
	}
	if e.ID != nil && len(e.ID) != RequestIDLen {
		return nil, fmt.Errorf("request ID of %d bytes, not %d", len(e.ID), RequestIDLen)
	}
	return &Command{Now: e.Now, Body: e.Body, RequestID: e.ID}, nil
}

// Encode serialises a command in the current encoding. The leader uses (*FSM).Emit, which picks
// the encoding every replica can read. The hot payloads go through their hand-written encoders
// (fastencode.go), the others through msgpack's; the bytes are the same either way.
func Encode(c *Command) ([]byte, error) {
	s := specOf(c.Body)
	if s == nil {
		return nil, fmt.Errorf("encode command: %w: payload %T is not in the command table", ErrBadCommand, c.Body)
	}
	ee := entryEncoders.Get().(*entryEncoder)
	defer ee.put()
	ee.buf.WriteByte(byte(s.typ))
	if err := ee.encode(c); err != nil {
		return nil, fmt.Errorf("encode %s command: %w", s.name, err)
	}
	return bytes.Clone(ee.buf.Bytes()), nil
}

// encode writes c's envelope, {now, body} and id when c has a request ID, as msgpack writes the
// struct that declares them (envelope).
func (ee *entryEncoder) encode(c *Command) error {
	e := ee.e
	if c.RequestID != nil && len(c.RequestID) != RequestIDLen {
		return fmt.Errorf("%w: request ID of %d bytes, not %d", ErrBadCommand, len(c.RequestID), RequestIDLen)
	}
	n := 2
	if len(c.RequestID) > 0 {
		n = 3
	}
	if err := e.EncodeMapLen(n); err != nil {
		return err
	}
	if err := e.EncodeString("now"); err != nil {
		return err
	}
	if err := e.EncodeTime(c.Now); err != nil {
		return err
	}
	if err := e.EncodeString("body"); err != nil {
		return err
	}
	if ok, err := encodeFast(e, c.Body); !ok {
		err = e.Encode(c.Body)
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if n == 3 {
		if err := e.EncodeString("id"); err != nil {
			return err
		}
		return e.EncodeBytes(c.RequestID)
	}
	return nil
}

// entryEncoder is a msgpack encoder on a buffer, reused across entries; Encode hands out a copy
// of the buffer, so an entry costs one allocation of its own size.
type entryEncoder struct {
	buf bytes.Buffer
	e   *msgpack.Encoder
}

var entryEncoders = sync.Pool{New: func() any {
	ee := new(entryEncoder)
	ee.e = msgpack.NewEncoder(&ee.buf)
	return ee
}}

// put returns ee to the pool, empty; one that grew past maxPooledEntry is dropped.
func (ee *entryEncoder) put() {
	if ee.buf.Cap() > maxPooledEntry {
		return
	}
	ee.buf.Reset()
	entryEncoders.Put(ee)
}

// unknownTypeError is ErrUnknownCommand with the type that was met.
type unknownTypeError struct{ typ int }

func (e *unknownTypeError) Error() string        { return fmt.Sprintf("unknown command type %d", e.typ) }
func (e *unknownTypeError) Is(target error) bool { return target == ErrUnknownCommand }

// Decode parses a command from a raft log entry or a forwarded request, in either encoding. A
// current-encoding entry with a field this build does not know is an error (ErrBadCommand): a
// newer build meant something by it, and dropping it would let this replica diverge.
func Decode(b []byte) (c *Command, err error) {
	defer func() {
		// msgpack v5 panics on some malformed input (a nil where a struct such as time.Time is
		// expected), and what we decode comes from peers.
		if p := recover(); p != nil {
			c, err = nil, fmt.Errorf("decode command: %w: malformed msgpack: %v", ErrBadCommand, p)
		}
	}()
	if len(b) == 0 {
		return nil, fmt.Errorf("decode command: %w: empty entry", ErrBadCommand)
	}
	mp := b[1:]
	if b[0] >= 0x80 {
		mp = b
	}
	if _, err := mpcheck.Check(mp); err != nil {
		return nil, fmt.Errorf("decode command: %w: %v", ErrBadCommand, err)
	}
	if b[0] >= 0x80 {
		return decodeLegacy(b)
	}
	s := commands[CommandType(b[0])]
	if s == nil {
		return nil, fmt.Errorf("decode command: %w", &unknownTypeError{typ: int(b[0])})
	}
	ed := decoders.Get().(*entryDecoder)
	ed.r.Reset(b[1:])
	ed.d.Reset(&ed.r)
	ed.d.DisallowUnknownFields(true)
	c, err = s.decode(&ed.d)
	trailing := ed.r.Len()
	ed.put(len(b)) // not after a panic (recovered above): the decoder's state is then unknown
	if err != nil {
		return nil, fmt.Errorf("decode %s command: %w: %v", s.name, ErrBadCommand, err)
	}
	if trailing > 0 {
		return nil, fmt.Errorf("decode %s command: %w: %d trailing bytes", s.name, ErrBadCommand, trailing)
	}
	return c, nil
}

// entryDecoder is a msgpack decoder on a reader of one entry, reused across entries: a decoder
// and its reader cost three allocations to make, as much as a small entry's items.
type entryDecoder struct {
	r bytes.Reader
	d msgpack.Decoder
}

// maxPooledEntry is the largest entry whose decoder goes back to the pool: a decoder keeps a
// scratch buffer as large as the longest string it read, and one that read a large input is
// dropped rather than kept for the small entries after it.
const maxPooledEntry = 1 << 20

var decoders = sync.Pool{New: func() any { return new(entryDecoder) }}

// put returns ed, which read an entry of n bytes, to the pool, holding nothing of that entry.
func (ed *entryDecoder) put(n int) {
	ed.r.Reset(nil)
	ed.d.Reset(&ed.r)
	if n <= maxPooledEntry {
		decoders.Put(ed)
	}
}

// firstTypedProtocol is the first protocol that reads the current encoding.
const firstTypedProtocol = 1

// Emit encodes c for the log so that every up node can apply it (voters and non-voters both apply
// the log), as Nomad's ServersMeetMinimumVersion gates new message types: a type newer than some
// up node's protocol is refused with ErrProtocolTooOld, and while a node of the release before
// protocol numbers is up, commands are written in the legacy encoding, the only one it reads.
func (f *FSM) Emit(c *Command) ([]byte, error) {
	s := specOf(c.Body)
	if s == nil {
		return nil, fmt.Errorf("emit command: %w: payload %T is not in the command table", ErrBadCommand, c.Body)
	}
	lowest, who := f.lowestProtocol()
	if err := checkProtocol(s, c, lowest, who); err != nil {
		return nil, err
	}
	if c.RequestID != nil && lowest < OnceProtocol {
		// A node older than OnceProtocol halts on the envelope's id: the write goes without it,
		// so it works as it did before, without the table's guard against a retry (once.go).
		c2 := *c
		c2.RequestID = nil
		c = &c2
	}
	if lowest < firstTypedProtocol {
		if b, ok := c.Body.(*SubmitBatch); ok && slices.ContainsFunc(b.Items, func(s Submit) bool { return s.SubmittedBy != "" }) {
			// The release before protocols halts on a field it does not know.
			return nil, fmt.Errorf("emit submit with submitted_by: %w: node %s speaks %d; upgrade it first",
				ErrProtocolTooOld, who, lowest)
		}
		return EncodeLegacy(c)
	}
	return Encode(c)
}

func checkProtocol(s *spec, c *Command, lowest int, who string) error {
	need := s.since
	if n, ok := c.Body.(NeedsProtocol); ok {
		need = max(need, n.NeedsProtocol())
	}
	if need > lowest {
		return fmt.Errorf("emit %s: %w: it needs protocol %d and node %s speaks %d; upgrade that node first",
			s.name, ErrProtocolTooOld, need, who, lowest)
	}
	return nil
}

// CheckContentProtocol returns Emit's ErrProtocolTooOld for a payload whose content (not its
// type) needs a newer protocol than some up node speaks. The leader calls it before merging a
// batchable command with others: one item with a protocol 2 field must not make the merged entry,
// and so the other callers' plain items, fail. It costs nothing for payloads that need no more
// than protocol 0 by content.
func (f *FSM) CheckContentProtocol(c *Command) error {
	n, ok := c.Body.(NeedsProtocol)
	if !ok || n.NeedsProtocol() == 0 {
		return nil
	}
	s := specOf(c.Body)
	if s == nil {
		return fmt.Errorf("emit command: %w: payload %T is not in the command table", ErrBadCommand, c.Body)
	}
	lowest, who := f.lowestProtocol()
	return checkProtocol(s, c, lowest, who)
}

// lowestProtocol is the lowest protocol of the up nodes, and a node that speaks it; with no node
// up yet (a new cluster before the first registration) it is this build's.
func (f *FSM) lowestProtocol() (int, string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	lowest, who := Protocol, ""
	for _, name := range sortedKeys(f.nodes) {
		// Workers speak no command protocol: their hosts apply the log for them.
		if n := f.nodes[name]; n.Status == NodeUp && !n.IsWorker() && (who == "" || n.Protocol < lowest) {
			lowest, who = n.Protocol, name
		}
	}
	return lowest, who
}

// Unmarshal is msgpack.Unmarshal that returns an error instead of panicking (msgpack v5 panics on
// some malformed input) or allocating what a header claims beyond the input (mpcheck): what we
// decode comes from peers and clients.
func Unmarshal(b []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("malformed msgpack: %v", p)
		}
	}()
	if _, err := mpcheck.Check(b); err != nil {
		return err
	}
	return msgpack.Unmarshal(b, v)
}

// haltError is why the FSM stopped applying the log: it reads as a sentence for the operator,
// errors.Is ErrHalted, and wraps the decode error that caused it.
type haltError struct {
	msg   string
	cause error
}

func (e *haltError) Error() string        { return e.msg }
func (e *haltError) Is(target error) bool { return target == ErrHalted }
func (e *haltError) Unwrap() error        { return e.cause }

func newHaltError(index uint64, cause error) error {
	var unknown *unknownTypeError
	if errors.As(cause, &unknown) {
		return &haltError{cause: cause, msg: fmt.Sprintf(
			"fsm: log entry %d has command type %d that this build does not know (protocol %d); upgrade this node",
			index, unknown.typ, Protocol)}
	}
	return &haltError{cause: cause, msg: fmt.Sprintf(
		"fsm: log entry %d cannot be applied by this build (protocol %d): %v; upgrade this node",
		index, Protocol, cause)}
}

// A task's history decodes through decodeHistory instead of msgpack's slice decoder, which builds
// every slice twice (reflect.AppendSlice of a MakeSlice onto the empty field: two allocations
// and a copy per record); at a million records in a snapshot that was a fifth of the restore.
// Encoding is msgpack's own, so the bytes are unchanged.
func init() {
	msgpack.Register([]HistoryEntry(nil), nil, decodeHistory)
	msgpack.Register([]Submit(nil), nil, decodeItems[Submit])
	msgpack.Register([]Assign(nil), nil, decodeItems[Assign])
	msgpack.Register([]Report(nil), nil, decodeItems[Report])
}

// decodeItems decodes a batch's items as msgpack's slice decoder does (nil stays nil, an empty
// array makes an empty slice, an array decodes over the slice already there), but builds the
// slice once instead of twice: a batch of 512 reports was 130 KB made, copied and dropped. Its
// length is believed: Decode checked the entry's every length against its bytes (mpcheck), and
// msgpack's own decoder believes it too.
func decodeItems[T any](d *msgpack.Decoder, v reflect.Value) error {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n == -1 {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	old := v.Interface().([]T)
	if n == 0 && old == nil {
		v.Set(reflect.ValueOf([]T{}))
		return nil
	}
	items := old[:min(n, cap(old))]
	if n > cap(old) {
		items = make([]T, n)
		copy(items, old[:cap(old)])
	}
	v.Set(reflect.ValueOf(items))
	for i := range items {
		if err := d.DecodeValue(reflect.ValueOf(&items[i]).Elem()); err != nil {
			return err
		}
	}
	return nil
}

// historyPrealloc bounds what a history's declared length may allocate up front: a length is
// only believed as far as entries actually decode.
const historyPrealloc = 64

func decodeHistory(d *msgpack.Decoder, v reflect.Value) error {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n == -1 {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	h := make([]HistoryEntry, 0, min(n, historyPrealloc))
	for range n {
		h = append(h, HistoryEntry{})
		if err := d.Decode(&h[len(h)-1]); err != nil {
			return err
		}
	}
	v.Set(reflect.ValueOf(h))
	return nil
}
