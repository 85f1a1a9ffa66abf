package internode

import (
	"encoding/json"
	"net/http"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// wireResult is fsm.Result on the wire between a follower and the leader. Errors travel as fsm's
// stable code plus the message; a leader of the previous release sends the message alone, and
// fsm.FromWire matches it by text then.
type wireResult struct {
	Index uint64     `msgpack:"index"`
	Items []wireItem `msgpack:"items"`
	Err   string     `msgpack:"err"`
	Code  string     `msgpack:"code,omitempty"`
}

type wireItem struct {
	ID       string `msgpack:"id"`
	Existing bool   `msgpack:"existing"`
	Err      string `msgpack:"err"`
	Code     string `msgpack:"code,omitempty"`
}

// EncodeMsgpack writes the item as msgpack's struct encoder does (a map of the fields, code left
// out when empty), without the allocation per item its omitempty check costs; the leader
// answers every reported run with one (TestWireItemEncodesAsMsgpack).
func (it *wireItem) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 3
	if it.Code != "" {
		n = 4
	}
	for _, err := range []error{
		e.EncodeMapLen(n),
		e.EncodeString("id"), e.EncodeString(it.ID),
		e.EncodeString("existing"), e.EncodeBool(it.Existing),
		e.EncodeString("err"), e.EncodeString(it.Err),
	} {
		if err != nil {
			return err
		}
	}
	if it.Code == "" {
		return nil
	}
	if err := e.EncodeString("code"); err != nil {
		return err
	}
	return e.EncodeString(it.Code)
}

func encodeErr(err error) (msg, code string) {
	if err == nil {
		return "", ""
	}
	return err.Error(), fsm.ErrorCode(err)
}

func toWire(r *fsm.Result) *wireResult {
	w := &wireResult{Index: r.Index}
	if len(r.Items) > 0 {
		w.Items = make([]wireItem, 0, len(r.Items))
	}
	w.Err, w.Code = encodeErr(r.Err)
	for _, it := range r.Items {
		wi := wireItem{ID: it.ID, Existing: it.Existing}
		wi.Err, wi.Code = encodeErr(it.Err)
		w.Items = append(w.Items, wi)
	}
	return w
}

func fromWire(w *wireResult) *fsm.Result {
	r := &fsm.Result{Index: w.Index, Err: fsm.FromWire(w.Code, w.Err)}
	for _, it := range w.Items {
		r.Items = append(r.Items, fsm.ItemResult{ID: it.ID, Existing: it.Existing, Err: fsm.FromWire(it.Code, it.Err)})
	}
	return r
}

// forwardRefusal turns the leader's refusal of a node's command (a 4xx with the API's error body:
// 403, or a child submit that failed the leader's own validation) into the API error it was.
func forwardRefusal(status int, body []byte) error {
	if status < 400 || status >= 500 || status == http.StatusNotFound {
		return nil
	}
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code == "" {
		e = api.Error{Code: api.CodeForbidden, Message: "the leader refused the forwarded request"}
	}
	// The prefix tells a refusal of the caller apart from one of this node (a --token mismatch
	// between nodes answers with the same codes).
	return api.Errorf(e.Code, "the leader refused the forwarded request: %s", e.Message)
}
