package internode

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// FuzzInternodeEnvelope feeds arbitrary bytes to both ends of a forwarded write: the leader's
// decoding of the request and the follower's decoding of the reply. Neither may panic; a decoded
// request is always a command of its route's type, and a reply is a result, an *api.Error refusal, or an
// error, never two of them.
func FuzzInternodeEnvelope(f *testing.F) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []*fsm.Command{
		{Now: now, Body: &fsm.SubmitBatch{Items: []fsm.Submit{{ID: "a", Type: "echo", Version: "1", Input: json.RawMessage(`{"x":1}`), MaxAttempts: 3, ExecutionID: "a"}}}},
		{Now: now, Body: &fsm.Cancel{IDs: []string{"a"}}},
		{Now: now, Body: &fsm.AssignBatch{Items: []fsm.Assign{{TaskID: "a", Node: "n1", BootID: "b"}}}}, // no node route's type
	} {
		b, err := fsm.Encode(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, 200)
	}
	ok, _ := msgpack.Marshal(toWire(&fsm.Result{Index: 7, Items: []fsm.ItemResult{{ID: "a"}, {ID: "b", Err: fsm.ErrNotFound}}}))
	f.Add(ok, 200)
	refusal, _ := json.Marshal(api.Error{Message: "no", Code: api.CodeForbidden})
	f.Add(refusal, 403)
	f.Add([]byte(`{"error": "bad", "code": "invalid_input"}`), 400)
	f.Add([]byte{0xc1}, 503)
	f.Fuzz(func(t *testing.T, body []byte, status int) {
		for typ := range nodePaths {
			if c, err := decodeNodeCommand(typ, body); err == nil && (c == nil || c.Type() != typ) {
				t.Fatalf("the %s route decoded another command: %#v", typ, c)
			}
		}
		r, err := decodeForwardReply(status, body)
		switch {
		case err == nil && r == nil:
			t.Fatal("no result and no error")
		case err != nil && r != nil:
			t.Fatal("both a result and an error")
		case err != nil && status >= 400 && status < 500 && status != http.StatusNotFound:
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("a %d refusal is not an *api.Error: %v", status, err)
			}
		}
	})
}
