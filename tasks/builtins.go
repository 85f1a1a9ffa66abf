package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// maxSquareOperand is the largest |N| whose square fits in an int64.
const maxSquareOperand = 3037000499

// NewBuiltinRegistry returns a registry holding the built-in types.
func NewBuiltinRegistry(filesDir string) (*Registry, error) {
	r := NewRegistry()
	if err := RegisterBuiltins(r, filesDir); err != nil {
		return nil, err
	}
	return r, nil
}

// RegisterBuiltins registers every built-in type, version "1". list-directory
// reads only inside filesDir ("" means the working directory).
func RegisterBuiltins(r *Registry, filesDir string) error {
	if filesDir == "" {
		filesDir = "."
	}
	for _, h := range []Handler{
		Func(def("echo", "Returns its input unchanged.", `{"hello": "world"}`), echo),
		Func(def("calc-square", "Squares an integer.", `7`), calcSquare),
		Func(def("sleep", "Sleeps for ms milliseconds; honours cancellation.", `{"ms": 500}`), sleep),
		Func(def("fail", `Fails with the input as message, unless it contains "ignore".`, `"something went wrong"`), fail),
		Func(def("flaky", "Fails its first fail_attempts attempts, then succeeds.", `{"fail_attempts": 2}`), flaky),
		Func(def("print", "Writes the input string to the task's stdout.", `"hello from taskworker"`), printLine),
		Func(def("list-directory", "Lists a directory relative to the node's files dir.", `"."`), listDirectory(filesDir)),
		Func(def("count", "Counts to N, one step every step_ms, checkpointing each step; resumes after a restart.", `{"to": 10, "step_ms": 200}`), count),
	} {
		if err := r.Register(h); err != nil {
			return fmt.Errorf("register built-ins: %w", err)
		}
	}
	return nil
}

func def(name, description, example string) Definition {
	return Definition{Name: name, Version: "1", Description: description, ExampleInput: json.RawMessage(example)}
}

func echo(_ *Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }

type squareInput int64

func (n squareInput) Validate() error {
	if n > maxSquareOperand || n < -maxSquareOperand {
		return fmt.Errorf("%d is too large to square without overflow (max magnitude %d)", n, maxSquareOperand)
	}
	return nil
}

func calcSquare(ctx *Context, n squareInput) (int64, error) {
	ctx.Logger.Info(fmt.Sprintf("Calculating square of %d", n))
	return int64(n) * int64(n), nil
}

type sleepInput struct {
	MS *int64 `json:"ms"`
}

func (in sleepInput) Validate() error {
	switch {
	case in.MS == nil:
		return errors.New(`"ms" is required`)
	case *in.MS < 0:
		return errors.New(`"ms" must not be negative`)
	}
	return nil
}

func sleep(ctx *Context, in sleepInput) (map[string]int64, error) {
	if err := wait(ctx, time.Duration(*in.MS)*time.Millisecond); err != nil {
		return nil, err
	}
	return map[string]int64{"slept_ms": *in.MS}, nil
}

// wait pauses for d, or returns the context's error as soon as it is done.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func fail(_ *Context, msg string) (string, error) {
	if strings.Contains(msg, "ignore") {
		return msg, nil
	}
	return "", errors.New(msg)
}

type flakyInput struct {
	FailAttempts int `json:"fail_attempts"`
}

func (in flakyInput) Validate() error {
	if in.FailAttempts < 0 {
		return errors.New(`"fail_attempts" must not be negative`)
	}
	return nil
}

func flaky(ctx *Context, in flakyInput) (map[string]int, error) {
	if ctx.Attempt <= in.FailAttempts {
		return nil, fmt.Errorf("attempt %d fails on purpose (fail_attempts is %d)", ctx.Attempt, in.FailAttempts)
	}
	return map[string]int{"attempt": ctx.Attempt}, nil
}

func printLine(ctx *Context, s string) (json.RawMessage, error) {
	if _, err := fmt.Fprintln(ctx.Stdout, s); err != nil {
		return nil, fmt.Errorf("write stdout: %w", err)
	}
	return nil, nil
}

// dirPath is a path relative to the files dir; "" means the files dir itself.
type dirPath string

func (p dirPath) Validate() error {
	if p != "" && !filepath.IsLocal(string(p)) {
		return fmt.Errorf("path %q must be relative and stay inside the files directory", string(p))
	}
	return nil
}

func listDirectory(filesDir string) func(*Context, dirPath) ([]string, error) {
	return func(_ *Context, p dirPath) ([]string, error) {
		if p == "" {
			p = "."
		}
		// os.Root refuses any path, symlinks included, that resolves outside filesDir.
		root, err := os.OpenRoot(filesDir)
		if err != nil {
			return nil, fmt.Errorf("open files directory: %w", err)
		}
		defer root.Close()
		dir, err := root.Open(string(p))
		if err != nil {
			return nil, fmt.Errorf("open directory: %w", err)
		}
		defer dir.Close()
		names, err := dir.Readdirnames(-1)
		if err != nil {
			return nil, fmt.Errorf("list directory %q: %w", string(p), err)
		}
		slices.Sort(names)
		return names, nil
	}
}

type countInput struct {
	To     *int `json:"to"`
	StepMS int  `json:"step_ms"`
}

func (in countInput) Validate() error {
	switch {
	case in.To == nil:
		return errors.New(`"to" is required`)
	case *in.To < 0:
		return errors.New(`"to" must not be negative`)
	case in.StepMS < 0:
		return errors.New(`"step_ms" must not be negative`)
	}
	return nil
}

type countCheckpoint struct {
	N int `json:"n"`
}

type countResult struct {
	Counted     int `json:"counted"`
	ResumedFrom int `json:"resumed_from"`
}

func count(ctx *Context, in countInput) (countResult, error) {
	var cp countCheckpoint
	if _, err := ctx.LastCheckpoint(&cp); err != nil {
		return countResult{}, err
	}
	from := min(max(cp.N, 0), *in.To)
	if from > 0 {
		ctx.Logger.Info(fmt.Sprintf("Resuming count from %d", from))
	}
	for i := from + 1; i <= *in.To; i++ {
		if err := wait(ctx, time.Duration(in.StepMS)*time.Millisecond); err != nil {
			return countResult{}, err
		}
		if err := ctx.Checkpoint(countCheckpoint{N: i}); err != nil {
			return countResult{}, err
		}
	}
	return countResult{Counted: *in.To, ResumedFrom: from}, nil
}
