package limits

import (
	"encoding/json"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// Error codes introduced by this package; api.Status does not know them yet, so every response
// written here sets its status explicitly.
const (
	// CodeRateLimited: the client sent more requests than its rate allows (429, with Retry-After).
	CodeRateLimited api.Code = "rate_limited"
	// CodeInputTooLarge: a task's input is over the configured cap (413).
	CodeInputTooLarge api.Code = "input_too_large"
	// CodeResultTooLarge: a task's result is over the configured cap. It is recorded as the task's
	// failure rather than sent as a response, but keeps 413 for symmetry with the input cap.
	CodeResultTooLarge api.Code = "result_too_large"
)

// writeError writes the API's JSON error body with an explicit status.
func writeError(w http.ResponseWriter, status int, code api.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	// Encoding a struct of two strings cannot fail; a write error means the client left.
	_ = json.NewEncoder(w).Encode(api.Error{Message: msg, Code: code})
}
