package internode

import (
	"errors"
	"fmt"
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
