package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// msgpackEntry is an entry as msgpack's reflection encoder writes it: the reference the
// hand-written encoders must match byte for byte.
func msgpackEntry(t testing.TB, c *Command) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(byte(specOf(c.Body).typ))
	env := struct {
		Now  time.Time `msgpack:"now"`
		Body Payload   `msgpack:"body"`
	}{c.Now, c.Body}
	if err := msgpack.NewEncoder(&buf).Encode(&env); err != nil {
		t.Fatalf("msgpack encode %T: %v", c.Body, err)
	}
	return buf.Bytes()
}

// TestFastEncodersCoverEveryField: every table matches its struct's msgpack fields (names, order,
// omitempty). A field added to Submit, Assign, Report or their batches without its row in
// fastencode.go fails here (its type would fall back to msgpack's slower encoder).
func TestFastEncodersCoverEveryField(t *testing.T) {
	check := func(typ reflect.Type, ok bool, table []fastName) {
		t.Helper()
		if ok {
			return
		}
		want, _ := msgpackFields(typ)
		t.Errorf("the hand-written encoder of %s does not match the struct: add a row per field to its table in fastencode.go, in field order\nstruct: %v\ntable:  %v",
			typ, want, table)
	}
	check(reflect.TypeFor[Submit](), fastSubmit.ok, fieldNames(fastSubmit.fields))
	check(reflect.TypeFor[SubmitBatch](), fastSubmitBatch.ok, fieldNames(fastSubmitBatch.fields))
	check(reflect.TypeFor[Assign](), fastAssign.ok, fieldNames(fastAssign.fields))
	check(reflect.TypeFor[AssignBatch](), fastAssignBatch.ok, fieldNames(fastAssignBatch.fields))
	check(reflect.TypeFor[Report](), fastReport.ok, fieldNames(fastReport.fields))
	check(reflect.TypeFor[ReportBatch](), fastReportBatch.ok, fieldNames(fastReportBatch.fields))
}

// TestFastStructRefusesAStaleTable: a table missing a field, or with one out of order or with the
// wrong omitempty, is not used.
func TestFastStructRefusesAStaleTable(t *testing.T) {
	type two struct {
		A string `msgpack:"a"`
		B string `msgpack:"b,omitempty"`
	}
	a := strField("a", false, func(v *two) string { return v.A })
	b := strField("b", true, func(v *two) string { return v.B })
	bKept := strField("b", false, func(v *two) string { return v.B })
	if !newFastStruct(a, b).ok {
		t.Fatal("a matching table was refused")
	}
	for name, s := range map[string]*fastStruct[two]{
		"missing field": newFastStruct(a),
		"out of order":  newFastStruct(b, a),
		"omitempty":     newFastStruct(a, bKept),
		"extra field":   newFastStruct(a, b, b),
	} {
		if s.ok {
			t.Errorf("%s: the stale table was accepted", name)
		}
	}
}

// filler sets every field of a value by reflection, so a field added to a payload is covered
// without touching the test. lossless leaves out what msgpack does not round-trip (an empty
// non-nil slice, a pointer to a zero time), for the decoded-equal check.
type filler struct {
	rng      *rand.Rand
	lossless bool
}

var timeType = reflect.TypeFor[time.Time]()

func (f filler) time() time.Time {
	switch f.rng.IntN(4) {
	case 0: // the 32-bit form
		return time.Unix(int64(f.rng.Uint32()), 0)
	case 1: // the 64-bit form
		return time.Unix(int64(f.rng.Uint64N(1<<34)), int64(f.rng.IntN(1e9)))
	case 2: // the 96-bit form
		return time.Unix(-int64(f.rng.Uint64N(1<<40)), int64(f.rng.IntN(1e9)))
	default:
		return time.Unix(1_700_000_000+int64(f.rng.IntN(1e6)), int64(f.rng.IntN(1e9)))
	}
}

func (f filler) int() int64 {
	switch f.rng.IntN(6) {
	case 0:
		return 0
	case 1:
		return int64(f.rng.IntN(200)) - 100
	case 2:
		return int64(f.rng.IntN(1 << 17))
	case 3:
		return -int64(f.rng.IntN(1 << 33))
	case 4:
		return math.MaxInt64 - int64(f.rng.IntN(10))
	default:
		return int64(f.rng.Uint64())
	}
}

func (f filler) bytes() []byte {
	switch f.rng.IntN(5) {
	case 0:
		return nil
	case 1:
		if !f.lossless {
			return []byte{}
		}
		fallthrough
	default:
		n := []int{1, 30, 300, 70_000}[f.rng.IntN(4)]
		b := make([]byte, f.rng.IntN(n)+1)
		for i := range b {
			b[i] = byte(f.rng.IntN(256))
		}
		return b
	}
}

func (f filler) string() string {
	if f.rng.IntN(3) == 0 {
		return ""
	}
	n := []int{8, 40, 300}[f.rng.IntN(3)]
	b := make([]byte, f.rng.IntN(n)+1)
	for i := range b {
		b[i] = byte('a' + f.rng.IntN(26))
	}
	return string(b)
}

func (f filler) fill(t *testing.T, v reflect.Value) {
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(f.time()))
		return
	case v.Kind() == reflect.Ptr && v.Type().Elem() == timeType:
		switch f.rng.IntN(3) {
		case 0:
			v.SetZero()
		case 1:
			if !f.lossless {
				v.Set(reflect.New(timeType)) // points to the zero time: omitted
				return
			}
			fallthrough
		default:
			tm := f.time()
			v.Set(reflect.ValueOf(&tm))
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(f.string())
	case reflect.Bool:
		v.SetBool(f.rng.IntN(2) == 0)
	case reflect.Int, reflect.Int64:
		v.SetInt(f.int())
	case reflect.Int8, reflect.Int16, reflect.Int32:
		v.SetInt(f.int() % (1 << (v.Type().Bits() - 1)))
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint:
		v.SetUint(f.rng.Uint64() >> (64 - v.Type().Bits()))
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes(f.bytes())
			return
		}
		n := f.rng.IntN(4)
		if n == 0 {
			if f.lossless || f.rng.IntN(2) == 0 {
				v.SetZero()
			} else {
				v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			}
			return
		}
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := range n {
			f.fill(t, s.Index(i))
		}
		v.Set(s)
	case reflect.Ptr:
		if f.rng.IntN(2) == 0 {
			v.SetZero()
			return
		}
		p := reflect.New(v.Type().Elem())
		f.fill(t, p.Elem())
		v.Set(p)
	case reflect.Array:
		for i := range v.Len() {
			f.fill(t, v.Index(i))
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				f.fill(t, v.Field(i))
			}
		}
	default:
		t.Fatalf("the test's filler does not know %s fields: teach it", v.Type())
	}
}

// checkFastEncode encodes random payloads of every hot type (and a few others, through the
// fallback) both ways and compares the bytes; lossless ones must decode back equal.
func checkFastEncode(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed>>32|1))
	for _, typ := range []reflect.Type{
		reflect.TypeFor[SubmitBatch](), reflect.TypeFor[AssignBatch](), reflect.TypeFor[ReportBatch](),
		reflect.TypeFor[Cancel](), reflect.TypeFor[Drain](), reflect.TypeFor[Purge](),
	} {
		lossless := rng.IntN(2) == 0
		body := reflect.New(typ)
		filler{rng: rng, lossless: lossless}.fill(t, body.Elem())
		c := &Command{Now: filler{rng: rng}.time(), Body: body.Interface()}
		got, err := Encode(c)
		if err != nil {
			t.Fatalf("seed %d, %s: encode: %v", seed, typ, err)
		}
		if want := msgpackEntry(t, c); !bytes.Equal(got, want) {
			at := 0
			for at < min(len(got), len(want)) && got[at] == want[at] {
				at++
			}
			from := max(at-16, 0)
			t.Fatalf("seed %d, %s: the hand-written encoding differs from msgpack's at byte %d of %d (msgpack: %d)\ngot:  …%x\nwant: …%x\npayload: %.2000v",
				seed, typ, at, len(got), len(want), got[from:min(at+32, len(got))], want[from:min(at+32, len(want))], body.Elem().Interface())
		}
		back, err := Decode(got)
		if err != nil {
			t.Fatalf("seed %d, %s: decode: %v", seed, typ, err)
		}
		if !back.Now.Equal(c.Now) {
			t.Fatalf("seed %d, %s: now %v decoded as %v", seed, typ, c.Now, back.Now)
		}
		if lossless && !reflect.DeepEqual(back.Body, c.Body) {
			t.Fatalf("seed %d, %s: decoded differs\nwant %+v\ngot  %+v", seed, typ, body.Elem().Interface(), reflect.ValueOf(back.Body).Elem().Interface())
		}
	}
}

// TestFastEncodeMatchesMsgpack: random payloads, every field set by reflection, encode to
// msgpack's bytes and decode back.
func TestFastEncodeMatchesMsgpack(t *testing.T) {
	runs := 2000
	if testing.Short() {
		runs = 300
	}
	for seed := range uint64(runs) {
		checkFastEncode(t, seed)
	}
}

func FuzzFastEncodeMatchesMsgpack(f *testing.F) {
	for seed := range uint64(16) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], seed*0x9e3779b97f4a7c15)
		f.Add(b[:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var seed [8]byte
		copy(seed[:], b)
		checkFastEncode(t, binary.LittleEndian.Uint64(seed[:]))
	})
}

// The allocation budget of encoding one task's entries: its submit (with its assignment, or
// without and the assignment on its own) and its report each encode with one allocation, the
// entry itself.
func TestEncodeAllocationsPerTask(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts vary under the race detector")
	}
	const budget = 1
	now := time.Unix(1_700_000_000, 123)
	for _, c := range []*Command{
		{Now: now, Body: &SubmitBatch{Items: []Submit{{
			ID: "01JTASK0000000000000000001", Type: "echo", Input: []byte(`{"n":1}`), MaxAttempts: 3,
			Timeout: Duration(time.Minute), ExecutionID: "01JEXEC0000000000000000001", SubmittedBy: "anonymous",
		}}}},
		{Now: now, Body: &AssignBatch{Items: []Assign{{TaskID: "01JTASK0000000000000000001", Node: "node-1", BootID: "01JBOOT0000000000000000001", Capped: true}}}},
		// A submit placed at submit: its assignment rides in its entry.
		{Now: now, Body: &SubmitBatch{
			Items: []Submit{{
				ID: "01JTASK0000000000000000001", Type: "echo", Input: []byte(`{"n":1}`), MaxAttempts: 3,
				Timeout: Duration(time.Minute), ExecutionID: "01JEXEC0000000000000000001", SubmittedBy: "anonymous",
			}},
			Place: []Assign{{TaskID: "01JTASK0000000000000000001", Node: "node-1", BootID: "01JBOOT0000000000000000001"}},
		}},
		{Now: now, Body: &ReportBatch{Items: []Report{{
			TaskID: "01JTASK0000000000000000001", Attempt: 1, Node: "node-1", BootID: "01JBOOT0000000000000000001",
			Kind: ReportSucceeded, Result: []byte(`{"n":1}`),
		}}}},
	} {
		if _, err := Encode(c); err != nil {
			t.Fatal(err)
		}
		n := testing.AllocsPerRun(200, func() { _, _ = Encode(c) })
		if n > budget {
			t.Errorf("encoding a %s of one task: %.1f allocations, budget %d", c.Type(), n, budget)
		}
		t.Logf("%s: %.1f allocations", c.Type(), n)
	}
}

func BenchmarkEncodeSubmit(b *testing.B) {
	item := Submit{
		ID: "01JTASK0000000000000000001", Type: "echo", Input: []byte(`{"n":1}`), MaxAttempts: 3,
		Timeout: Duration(time.Minute), ExecutionID: "01JEXEC0000000000000000001",
	}
	for _, n := range []int{1, 1000} {
		c := &Command{Now: time.Unix(1_700_000_000, 123), Body: &SubmitBatch{Items: slices.Repeat([]Submit{item}, n)}}
		b.Run(fmt.Sprintf("items=%d/fast", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Encode(c)
			}
		})
		b.Run(fmt.Sprintf("items=%d/msgpack", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = msgpackEntry(b, c)
			}
		})
	}
}
