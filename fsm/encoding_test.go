package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/mpcheck"
)

// The plain item slices have no decoder registered: msgpack decodes them with its own slice
// decoder, the reference decodeItems must match.
type (
	plainSubmits []Submit
	plainAssigns []Assign
	plainReports []Report
)

// itemsPair is a payload as Decode reads it (its items through decodeItems) and as msgpack's
// own decoders read it. Items may appear twice in a map: the second decodes over the first.
type itemsPair struct {
	fast  any
	plain any
}

func itemsPairs() []itemsPair {
	return []itemsPair{
		{new(struct {
			Items []Submit `msgpack:"items"`
		}), new(struct {
			Items plainSubmits `msgpack:"items"`
		})},
		{new(struct {
			Items []Assign `msgpack:"items"`
		}), new(struct {
			Items plainAssigns `msgpack:"items"`
		})},
		{new(struct {
			Items []Report `msgpack:"items"`
		}), new(struct {
			Items plainReports `msgpack:"items"`
		})},
	}
}

// strictDecode decodes b into v as Decode does: checked first, unknown fields refused, a panic
// of msgpack's turned into an error.
func strictDecode(b []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	if _, err := mpcheck.Check(b); err != nil {
		return err
	}
	d := msgpack.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields(true)
	return d.Decode(v)
}

// FuzzDecodeItemsMatchesMsgpack: whatever the bytes, a batch's items decode to what msgpack's own
// slice decoder makes of them, or fail with the same error.
func FuzzDecodeItemsMatchesMsgpack(f *testing.F) {
	at := time.Unix(1_700_000_000, 0)
	for _, c := range lifeCommands(0, 3, at) {
		b, err := msgpack.Marshal(c.Body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seeds := []any{
		map[string]any{"items": nil},
		map[string]any{"items": []any{}},
		map[string]any{"items": []any{map[string]any{"task_id": "a", "kind": 1}, nil}},
		map[string]any{"items": []any{map[string]any{"bogus": 1}}},
		map[string]any{"items": []any{[]any{"a", "n1", "b1", true}}}, // an array-encoded struct
		map[string]any{"items": "not an array"},
	}
	for _, s := range seeds {
		b, err := msgpack.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// The same key twice: the second array decodes over the first, shorter and longer.
	str := func(s string) string { return string([]byte{byte(0xa0 | len(s))}) + s } // a fixstr
	twice := func(first, second string) []byte {
		return []byte("\x82" + str("items") + first + str("items") + second)
	}
	item := func(id, typ string) string { return "\x82" + str("id") + str(id) + str("type") + str(typ) }
	f.Add(twice("\x92"+item("a", "x")+item("b", "y"), "\x91\x81"+str("id")+str("c")))
	f.Add(twice("\x91"+item("a", "x"), "\x93\x81"+str("id")+str("c")+"\xc0\x80"))
	f.Add(twice("\x90", "\xc0"))

	f.Fuzz(func(t *testing.T, b []byte) {
		for _, p := range itemsPairs() {
			fastErr := strictDecode(b, p.fast)
			plainErr := strictDecode(b, p.plain)
			if fmt.Sprint(fastErr) != fmt.Sprint(plainErr) {
				t.Fatalf("%T: error %v, msgpack's %v", p.fast, fastErr, plainErr)
			}
			if fastErr != nil {
				continue
			}
			fast := reflect.ValueOf(p.fast).Elem().Field(0)
			plain := reflect.ValueOf(p.plain).Elem().Field(0)
			if !reflect.DeepEqual(fast.Interface(), plain.Convert(fast.Type()).Interface()) {
				t.Fatalf("%T: decoded %#v, msgpack %#v", p.fast, fast.Interface(), plain.Interface())
			}
		}
	})
}

// A pooled decoder keeps nothing of the entry it read: the next entry decodes the same as with a
// fresh one, also after an entry that failed.
func TestDecodeReusesDecodersCleanly(t *testing.T) {
	cmds := lifeCommands(0, 4, t0)
	cmds = append(cmds, &Command{Now: t0, Body: &SubmitBatch{Items: []Submit{{ID: "x", Type: "echo", Input: json.RawMessage(`{"big":"` + string(bytes.Repeat([]byte("a"), 300)) + `"}`)}}}})
	var entries [][]byte
	for _, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, b, []byte{byte(CmdReport), 0x81, 0xa1, 'x', 0x01}) // each followed by a bad one
	}
	for round := range 3 {
		for i, b := range entries {
			c, err := Decode(b)
			if i%2 == 1 {
				if err == nil {
					t.Fatalf("round %d: the bad entry decoded", round)
				}
				continue
			}
			if err != nil {
				t.Fatalf("round %d, entry %d: %v", round, i, err)
			}
			if !reflect.DeepEqual(c.Body, cmds[i/2].Body) || !c.Now.Equal(cmds[i/2].Now) {
				t.Fatalf("round %d, entry %d: decoded %+v, want %+v", round, i, c.Body, cmds[i/2].Body)
			}
		}
	}
}
