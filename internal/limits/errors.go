package limits

import (
	"encoding/json"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// The error codes this package answers with (declared in api/ with their statuses).
const (
	CodeRateLimited    = api.CodeRateLimited    // 429, with Retry-After
	CodeInputTooLarge  = api.CodeInputTooLarge  // 413
	CodeResultTooLarge = api.CodeResultTooLarge // recorded as the task's failure
)

// writeError writes the API's JSON error body with an explicit status.
func writeError(w http.ResponseWriter, status int, code api.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	// Encoding a struct of two strings cannot fail; a write error means the client left.
	_ = json.NewEncoder(w).Encode(api.Error{Message: msg, Code: code})
}
