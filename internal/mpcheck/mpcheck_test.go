package mpcheck

import (
	"errors"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Everything the encoder writes passes, and Check reports exactly its length.
func TestCheckAcceptsWhatTheEncoderWrites(t *testing.T) {
	type inner struct {
		A []int
		B map[string]any
	}
	values := []any{
		nil, true, false, 0, 1, -1, 127, 128, -33, 1 << 20, int64(-1 << 40), uint64(1 << 63), 1.5, float32(2.5),
		"", "short", string(make([]byte, 40)), string(make([]byte, 300)), string(make([]byte, 70000)),
		[]byte{}, make([]byte, 300), make([]byte, 70000),
		[]int{}, make([]int, 20), make([]int, 70000),
		map[string]int{"a": 1}, time.Unix(1700000000, 5).UTC(), time.Unix(1<<40, 0).UTC(),
		inner{A: []int{1, 2, 3}, B: map[string]any{"x": []any{nil, "y", map[string]any{}}}},
	}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		n, err := Check(append(b, 0xc0, 0xc0)) // trailing bytes are the caller's business
		if err != nil || n != len(b) {
			t.Errorf("%T: Check = %d, %v; want %d, nil", v, n, err, len(b))
		}
	}
}

func TestCheckRefusesLengthsBeyondTheInput(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":                            {},
		"unused type":                      {0xc1},
		"array32 of 2.8 billion":           {0xdd, 0xa8, 0x64, 0x72, 0x61, 0x80},
		"map32 beyond":                     {0xdf, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x01},
		"fixarray short":                   {0x93, 0x01, 0x02},
		"str32 beyond":                     {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},
		"bin8 beyond":                      {0xc4, 0x05, 1, 2},
		"ext32 beyond":                     {0xc9, 0x00, 0x00, 0x00, 0x09, 0x01, 1},
		"fixext16 short":                   {0xd8, 0x01, 1, 2, 3},
		"cut length":                       {0xdc, 0x00},
		"float64 short":                    {0xcb, 0, 0, 0},
		"fuzz: 14 bytes, 200 GB of decode": []byte("\x8b\xc6\x9ed\xfa-\xdb\xce\xf6\xd5f\xf3"),
	} {
		if _, err := Check(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Check(%x) = %v, want ErrMalformed", name, b, err)
		}
	}
}

// FuzzCheck: Check never panics, and what it accepts msgpack decodes without reading past the
// length Check reported.
func FuzzCheck(f *testing.F) {
	for _, v := range []any{nil, 1, "s", []any{1, "a", map[string]any{"k": []byte{1}}}, time.Unix(5, 6)} {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := Check(b)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("Check = %d for %d bytes", n, len(b))
		}
	})
}
