package internode

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/fsm"
)

func TestForwardReplyRebuildsEverySentinel(t *testing.T) {
	for _, s := range fsm.Sentinels() {
		res := &fsm.Result{Index: 9, Err: fmt.Errorf("%w: whole", s), Items: []fsm.ItemResult{{ID: "a", Err: s}, {ID: "b"}}}
		b, err := msgpack.Marshal(toWire(res))
		if err != nil {
			t.Fatal(err)
		}
		var w wireResult
		if err := fsm.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		got := fromWire(&w)
		if !errors.Is(got.Err, s) || got.Err.Error() != res.Err.Error() || !errors.Is(got.Items[0].Err, s) || got.Items[1].Err != nil {
			t.Errorf("%s: round trip gave %v / %v", s.Code, got.Err, got.Items)
		}
		// A leader of the previous release replies with the message alone.
		old := fromWire(&wireResult{Err: s.Error() + ": detail", Items: []wireItem{{ID: "a", Err: s.Error()}}})
		if !errors.Is(old.Err, s) || !errors.Is(old.Items[0].Err, s) {
			t.Errorf("%s: old-format reply gave %v / %v", s.Code, old.Err, old.Items[0].Err)
		}
	}
}

// A result's items encode by hand (wireItem.EncodeMsgpack) to the bytes msgpack's struct encoder
// writes for the same fields, and decode back; a field added to wireItem fails here until
// EncodeMsgpack writes it.
func TestWireItemEncodesAsMsgpack(t *testing.T) {
	type plainItem struct {
		ID       string `msgpack:"id"`
		Existing bool   `msgpack:"existing"`
		Err      string `msgpack:"err"`
		Code     string `msgpack:"code,omitempty"`
	}
	type plainResult struct {
		Index uint64      `msgpack:"index"`
		Items []plainItem `msgpack:"items"`
		Err   string      `msgpack:"err"`
		Code  string      `msgpack:"code,omitempty"`
	}
	wi, pi := reflect.TypeFor[wireItem](), reflect.TypeFor[plainItem]()
	if wi.NumField() != pi.NumField() {
		t.Fatalf("wireItem has %d fields, the hand-written encoder writes %d: update EncodeMsgpack and this test", wi.NumField(), pi.NumField())
	}
	for i := range wi.NumField() {
		if wi.Field(i).Tag != pi.Field(i).Tag || wi.Field(i).Type != pi.Field(i).Type {
			t.Fatalf("wireItem field %s %s differs from what EncodeMsgpack writes (%s %s)", wi.Field(i).Name, wi.Field(i).Tag, pi.Field(i).Name, pi.Field(i).Tag)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		if rng.IntN(2) == 0 {
			return ""
		}
		return strings.Repeat("x", rng.IntN(300))
	}
	for run := range 500 {
		w := &wireResult{Index: rng.Uint64(), Err: str(), Code: str()}
		var p plainResult
		p.Index, p.Err, p.Code = w.Index, w.Err, w.Code
		if n := rng.IntN(4); n > 0 || rng.IntN(2) == 0 {
			w.Items, p.Items = []wireItem{}, []plainItem{}
			for range n {
				it := wireItem{ID: str(), Existing: rng.IntN(2) == 0, Err: str(), Code: str()}
				w.Items = append(w.Items, it)
				p.Items = append(p.Items, plainItem(it))
			}
		}
		got, err := msgpack.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		want, err := msgpack.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("run %d: %+v encodes to %x, msgpack writes %x", run, w, got, want)
		}
		var back wireResult
		if err := msgpack.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if len(w.Items) == 0 {
			back.Items, w.Items = nil, nil
		}
		if !reflect.DeepEqual(&back, w) {
			t.Fatalf("run %d: decoded %+v, want %+v", run, back, *w)
		}
	}
	one := toWire(&fsm.Result{Index: 7, Items: []fsm.ItemResult{{ID: "01JTASK"}}})
	if n := testing.AllocsPerRun(100, func() { _, _ = msgpack.Marshal(one) }); n > 4 {
		t.Errorf("encoding a one-item result: %.0f allocations, want at most 4", n)
	}
}
