package fsm

import (
	"errors"
	"strings"
)

// Error is one of fsm's sentinel errors. Its Code is stable: it crosses the wire when a follower
// forwards a command and the leader replies, and the follower rebuilds the sentinel from it.
type Error struct {
	Code string
	msg  string
}

func (e *Error) Error() string { return e.msg }

// sentinels holds every Error in declaration order: the one table ErrorCode, FromWire and the
// message fallback read.
var sentinels []*Error

func newError(code, msg string) *Error {
	e := &Error{Code: code, msg: msg}
	sentinels = append(sentinels, e)
	return e
}

// Errors callers branch on: per item of a batch, per command, or for the whole log.
var (
	ErrNotFound      = newError("not_found", "task not found")
	ErrStale         = newError("stale", "stale attempt")
	ErrFinished      = newError("finished", "task already finished")
	ErrDuplicateID   = newError("duplicate_id", "duplicate task id")
	ErrUnknownNode   = newError("unknown_node", "unknown node")
	ErrNotPlaceable  = newError("not_placeable", "task or node not placeable")
	ErrBadCommand    = newError("bad_command", "bad command")
	ErrInvalidReport = newError("invalid_report", "invalid report")
	// ErrUnknownCommand: a command type this build does not know.
	ErrUnknownCommand = newError("unknown_command", "unknown command type")
	// ErrHalted: the FSM met a log entry it cannot apply and stopped applying (see Halted).
	ErrHalted = newError("halted", "fsm halted")
	// ErrProtocolTooOld: a command type cannot be written yet because an up node is too old for it.
	ErrProtocolTooOld = newError("protocol_too_old", "protocol too old")
	// ErrKeyNotInstalled: a keyring operation names a key the keyring does not hold.
	ErrKeyNotInstalled = newError("key_not_installed", "gossip key not installed")
	// ErrKeyring: a keyring operation that would break gossip (removing the primary, too many keys).
	ErrKeyring = newError("keyring_refused", "keyring change refused")
	// ErrDuplicateUnique: a submit's (type, unique key) is locked by another task; the item's ID
	// is that task's.
	ErrDuplicateUnique = newError("duplicate_unique_key", "duplicate unique key")
	// ErrNotRetryable: a retry names a task that is neither failed nor cancelled.
	ErrNotRetryable = newError("not_retryable", "task is not failed or cancelled")
)

// ErrorCode is the code of the sentinel err wraps, "" when it wraps none.
func ErrorCode(err error) string {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s.Code
		}
	}
	return ""
}

// FromWire rebuilds an error sent as code and message: it reads msg and errors.Is the sentinel
// of that code. A reply without a code (a peer of the previous release) is matched by message, as
// those peers sent it: the sentinel's text, alone or followed by ": detail".
func FromWire(code, msg string) error {
	if code == "" && msg == "" {
		return nil
	}
	for _, s := range sentinels {
		if code != "" && s.Code == code || code == "" && (msg == s.msg || strings.HasPrefix(msg, s.msg+":")) {
			return &wireError{msg: msg, sentinel: s}
		}
	}
	if msg == "" {
		msg = code
	}
	return errors.New(msg)
}

type wireError struct {
	msg      string
	sentinel *Error
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.sentinel }

// Sentinels lists every sentinel error, each with its code, for layers that map codes further.
func Sentinels() []*Error { return append([]*Error(nil), sentinels...) }
