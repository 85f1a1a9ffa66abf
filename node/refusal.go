package node

import (
	"encoding/json"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

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
