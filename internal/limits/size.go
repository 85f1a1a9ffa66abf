package limits

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// DefaultMaxPayloadBytes caps a task's input and result. Both travel through raft and live in
// every node's FSM, so a large payload costs memory and log space on every node; large data belongs
// in object storage, with a reference in the payload (Temporal's limits make the same trade).
const DefaultMaxPayloadBytes = 256 << 10

// BodyOverheadBytes is what a request body may carry beyond its payload (type, version, keys,
// JSON punctuation), so a body cap of payload cap + overhead never refuses a valid submit.
const BodyOverheadBytes = 16 << 10

// ErrTooLarge matches every *SizeError with errors.Is.
var ErrTooLarge = errors.New("too large")

// Payload names what was measured.
type Payload string

const (
	PayloadBody   Payload = "request body"
	PayloadInput  Payload = "input"
	PayloadResult Payload = "result"
)

// SizeError says what was over its cap and by how much. Size is what was seen, which for a body cut
// off by http.MaxBytesReader is only "more than Limit" (Size is then Limit+1).
type SizeError struct {
	What  Payload
	Size  int64
	Limit int64
}

func (e *SizeError) Error() string {
	if e.What == PayloadBody && e.Size == e.Limit+1 {
		return fmt.Sprintf("%s over the limit of %d bytes", e.What, e.Limit)
	}
	return fmt.Sprintf("%s of %d bytes is over the limit of %d bytes", e.What, e.Size, e.Limit)
}

func (e *SizeError) Unwrap() error { return ErrTooLarge }

// Code is the API error code: body_too_large, input_too_large or result_too_large.
func (e *SizeError) Code() api.Code {
	switch e.What {
	case PayloadInput:
		return CodeInputTooLarge
	case PayloadResult:
		return CodeResultTooLarge
	default:
		return api.CodeBodyTooLarge
	}
}

// APIError is the error as the API reports it: 413 with the code and the sizes (never the payload).
func (e *SizeError) APIError() *api.Error {
	return &api.Error{Message: e.Error(), Code: e.Code(), StatusCode: http.StatusRequestEntityTooLarge}
}

// CheckSize returns a *SizeError when size is over limit; a limit of 0 or less means
// DefaultMaxPayloadBytes.
func CheckSize(what Payload, size, limit int) error {
	if limit <= 0 {
		limit = DefaultMaxPayloadBytes
	}
	if size > limit {
		return &SizeError{What: what, Size: int64(size), Limit: int64(limit)}
	}
	return nil
}

// LimitBody caps r's body at limit bytes (DefaultMaxPayloadBytes+BodyOverheadBytes when limit is 0
// or less) with http.MaxBytesReader, which also makes the server close the connection rather than
// read the rest of an oversized body. A decode error caused by the cap becomes a *SizeError through
// BodyError.
func LimitBody(w http.ResponseWriter, r *http.Request, limit int64) {
	if limit <= 0 {
		limit = DefaultMaxPayloadBytes + BodyOverheadBytes
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
}

// BodyError turns an error from reading a body capped by LimitBody into a *SizeError, and returns
// any other error (or nil) unchanged.
func BodyError(err error) error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return &SizeError{What: PayloadBody, Size: mb.Limit + 1, Limit: mb.Limit}
	}
	return err
}

// WriteSizeError writes e as the API's 413 error body.
func WriteSizeError(w http.ResponseWriter, e *SizeError) {
	writeError(w, http.StatusRequestEntityTooLarge, e.Code(), e.Error())
}
