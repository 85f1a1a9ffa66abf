package tasks

import (
	"errors"
	"fmt"
)

// ErrFinal marks an error no retry can fix (bad input, a missing resource): an attempt that
// fails with an error wrapping it fails its task at once, whatever attempts are left. Wrap with
// Final, or with fmt.Errorf("...: %w", tasks.ErrFinal).
var ErrFinal = errors.New("final error, not retried")

// FinalExitCode is the exit status with which a command task says its failure is final.
const FinalExitCode = 3

// FinalMarker is the stderr line (alone on its line, surrounding spaces ignored) with which a
// failing command task says its failure is final, whatever its exit status.
const FinalMarker = "TASKWORKER_FINAL"

// Final marks err as final (errors.Is(Final(err), ErrFinal)) and keeps its message. Final(nil)
// is nil.
func Final(err error) error {
	if err == nil {
		return nil
	}
	return &finalError{err: err}
}

// Finalf is Final(fmt.Errorf(format, args...)).
func Finalf(format string, args ...any) error { return Final(fmt.Errorf(format, args...)) }

type finalError struct{ err error }

func (e *finalError) Error() string        { return e.err.Error() }
func (e *finalError) Unwrap() error        { return e.err }
func (e *finalError) Is(target error) bool { return target == ErrFinal }
