package tasks

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables a command-backed task receives on top of the agent's
// environment and its spec's Env.
const (
	EnvTaskID         = "TASKWORKER_TASK_ID"
	EnvTaskType       = "TASKWORKER_TASK_TYPE"
	EnvAttempt        = "TASKWORKER_ATTEMPT"
	EnvExecutionID    = "TASKWORKER_EXECUTION_ID"
	EnvResultFile     = "TASKWORKER_RESULT_FILE"
	EnvCheckpointFile = "TASKWORKER_CHECKPOINT_FILE"
)

// CheckpointPrefix starts a stdout line that records a checkpoint instead of output.
const CheckpointPrefix = "::checkpoint::"

const (
	defaultGracePeriod = 5 * time.Second
	stderrTailLines    = 20
	stderrTailBytes    = 2 << 10
)

// CommandSpec declares one command-backed task type.
type CommandSpec struct {
	Name, Version, Description string

	Command string            // a path, or a name looked up in PATH when the type is created
	Args    []string          // passed as they are, no shell involved
	Env     map[string]string // added to the agent's environment
	Dir     string            // working directory; "" is the agent's

	// Timeout caps each attempt (0: no cap of its own); a submit's timeout applies as well.
	Timeout time.Duration
	// GracePeriod is how long the process group has between SIGTERM and SIGKILL; default 5s.
	GracePeriod time.Duration

	ExampleInput json.RawMessage
}

// NewCommand returns a Handler that runs spec's command once per attempt.
//
// An attempt runs like this:
//
//   - The command starts in its own process group, in Dir, with the agent's
//     environment minus the agent's own TASKWORKER_* settings, plus Env, plus
//     TASKWORKER_TASK_ID, TASKWORKER_TASK_TYPE, TASKWORKER_ATTEMPT,
//     TASKWORKER_EXECUTION_ID, TASKWORKER_RESULT_FILE and TASKWORKER_CHECKPOINT_FILE.
//   - The input JSON (null when absent) is written to its stdin, which is then closed.
//     Validate accepts any JSON: checking its shape is the program's job.
//   - stdout and stderr reach the task's log streams line by line as they are
//     written; lines over 64 KiB are split. The two streams are read
//     independently, so their order relative to each other is not kept.
//   - A stdout line "::checkpoint:: <json>" records <json> as a checkpoint and
//     is not shown as output; an invalid one is reported in the task's log.
//     TASKWORKER_CHECKPOINT_FILE names a file holding the latest checkpoint,
//     from an earlier attempt or from this one; it does not exist while there is none.
//   - Result: the content of TASKWORKER_RESULT_FILE when the program wrote a
//     non-empty one (not valid JSON fails the attempt); otherwise the last
//     non-empty stdout line when it is valid JSON; otherwise null.
//   - A non-zero exit fails the attempt with the exit status and the tail of
//     stderr (last 20 lines, at most 2 KiB) as the message.
//   - On cancel, drain or timeout the process group gets SIGTERM, then SIGKILL
//     after GracePeriod. When the command exits, whatever it left running in
//     its process group is killed.
//
// NewCommand checks the spec: name, version and command are required, the
// command must resolve now (exec.LookPath), and Dir must be a directory.
func NewCommand(spec CommandSpec) (Handler, error) {
	if err := spec.check(); err != nil {
		return nil, err
	}
	path, err := exec.LookPath(spec.Command)
	if err != nil {
		return nil, fmt.Errorf("task type %q: command: %w", spec.Name, err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("task type %q: command: %w", spec.Name, err)
	}
	if spec.GracePeriod == 0 {
		spec.GracePeriod = defaultGracePeriod
	}
	return &commandHandler{spec: spec, path: path}, nil
}

// check validates everything about spec but the command's resolution.
func (s CommandSpec) check() error {
	switch {
	case s.Name == "":
		return errors.New("task type: name is required")
	case s.Version == "":
		return fmt.Errorf("task type %q: version is required", s.Name)
	case s.Command == "":
		return fmt.Errorf("task type %q: command is required", s.Name)
	case s.Timeout < 0 || s.GracePeriod < 0:
		return fmt.Errorf("task type %q: timeout and grace period must not be negative", s.Name)
	case len(s.ExampleInput) > 0 && !json.Valid(s.ExampleInput):
		return fmt.Errorf("task type %q: example input is not valid JSON", s.Name)
	}
	for k := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("task type %q: env: invalid variable name %q", s.Name, k)
		}
		if reservedEnv(k) {
			return fmt.Errorf("task type %q: env: %s is set by the agent", s.Name, k)
		}
	}
	if s.Dir != "" {
		if fi, err := os.Stat(s.Dir); err != nil {
			return fmt.Errorf("task type %q: dir: %w", s.Name, err)
		} else if !fi.IsDir() {
			return fmt.Errorf("task type %q: dir: %s is not a directory", s.Name, s.Dir)
		}
	}
	return nil
}

func reservedEnv(k string) bool {
	switch k {
	case EnvTaskID, EnvTaskType, EnvAttempt, EnvExecutionID, EnvResultFile, EnvCheckpointFile:
		return true
	}
	return false
}

type commandHandler struct {
	spec CommandSpec
	path string // the resolved command
}

func (h *commandHandler) Definition() Definition {
	return Definition{Name: h.spec.Name, Version: h.spec.Version, Description: h.spec.Description, ExampleInput: h.spec.ExampleInput}
}

func (h *commandHandler) Validate(input json.RawMessage) error {
	if len(bytes.TrimSpace(input)) > 0 && !json.Valid(input) {
		return fmt.Errorf("%s input: not valid JSON", h.spec.Name)
	}
	return nil
}

func (h *commandHandler) Run(ctx *Context, input json.RawMessage) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := h.Validate(input); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(input)) == 0 {
		input = json.RawMessage("null")
	}
	dir, err := os.MkdirTemp("", "taskworker-run-")
	if err != nil {
		return nil, fmt.Errorf("%s: run dir: %w", h.spec.Name, err)
	}
	defer os.RemoveAll(dir)
	r := &commandRun{h: h, ctx: ctx, resultFile: filepath.Join(dir, "result.json"), checkpointFile: filepath.Join(dir, "checkpoint.json")}
	var last json.RawMessage
	if ok, _ := ctx.LastCheckpoint(&last); ok {
		if err := r.writeCheckpointFile(last); err != nil {
			return nil, err
		}
	}

	runCtx := context.Context(ctx)
	if h.spec.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, h.spec.Timeout)
		defer cancel()
	}
	waitErr, err := r.run(runCtx, input)
	switch {
	case err != nil:
		return nil, err
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case runCtx.Err() != nil:
		return nil, fmt.Errorf("%s timed out after %s (the type's timeout): %w", h.spec.Name, h.spec.Timeout, context.DeadlineExceeded)
	case waitErr != nil:
		msg := waitErr.Error()
		if tail := r.stderrTail(); tail != "" {
			msg += ": " + tail
		}
		return nil, errors.New(msg)
	}
	return r.result()
}

// commandRun is one attempt's process and what it left behind.
type commandRun struct {
	h                          *commandHandler
	ctx                        *Context
	resultFile, checkpointFile string

	// Written by the output readers, read once they are done.
	lastStdout []byte
	stderr     []string // the last stderrTailLines lines
}

// run starts the process and waits for it and its output. waitErr is how
// the process ended; err means it could not be run at all.
func (r *commandRun) run(ctx context.Context, input json.RawMessage) (waitErr, err error) {
	spec := r.h.spec
	cmd := exec.Command(r.h.path, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = r.env()
	cmd.Stdin = bytes.NewReader(input)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Bounds the wait for the stdin copy should something outlive the group kill below.
	cmd.WaitDelay = spec.GracePeriod

	// Our own pipes, not cmd.StdoutPipe: the readers must see EOF before Wait returns.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	defer outR.Close()
	defer errR.Close()
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", spec.Name, r.h.path, err)
	}
	pgid := cmd.Process.Pid

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); r.readStdout(outR) }()
	go func() { defer readers.Done(); r.readStderr(errR) }()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		syscall.Kill(-pgid, syscall.SIGTERM)
		grace := time.NewTimer(spec.GracePeriod)
		select {
		case waitErr = <-exited:
		case <-grace.C:
			syscall.Kill(-pgid, syscall.SIGKILL)
			waitErr = <-exited
		}
		grace.Stop()
	}
	// Leave nothing behind: background children still hold the pipes open.
	syscall.Kill(-pgid, syscall.SIGKILL)

	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(spec.GracePeriod):
		// Something outside the group (it called setsid) keeps a pipe open; stop listening.
		outR.Close()
		errR.Close()
		<-done
	}
	return waitErr, nil
}

func (r *commandRun) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		// The agent's own settings (its token among them) are not the task's business.
		if !strings.HasPrefix(kv, "TASKWORKER_") {
			env = append(env, kv)
		}
	}
	for k, v := range r.h.spec.Env {
		env = append(env, k+"="+v)
	}
	return append(env,
		EnvTaskID+"="+r.ctx.TaskID,
		EnvTaskType+"="+r.h.spec.Name,
		EnvAttempt+"="+strconv.Itoa(r.ctx.Attempt),
		EnvExecutionID+"="+r.ctx.ExecutionID,
		EnvResultFile+"="+r.resultFile,
		EnvCheckpointFile+"="+r.checkpointFile,
	)
}

// eachLine calls fn with every line of rd, without its line ending. Lines
// longer than maxLineBytes come in pieces; first is false for all but the first.
func eachLine(rd io.Reader, fn func(line []byte, first bool)) {
	br := bufio.NewReaderSize(rd, maxLineBytes)
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			fn(bytes.TrimRight(line, "\r\n"), first)
		}
		first = err != bufio.ErrBufferFull
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (r *commandRun) readStdout(rd io.Reader) {
	eachLine(rd, func(line []byte, first bool) {
		if rest, ok := bytes.CutPrefix(line, []byte(CheckpointPrefix)); ok && first {
			r.checkpoint(bytes.TrimSpace(rest))
			return
		}
		writeLine(r.ctx.Stdout, line)
		if len(bytes.TrimSpace(line)) > 0 {
			r.lastStdout = append(r.lastStdout[:0], line...)
		}
	})
}

func (r *commandRun) readStderr(rd io.Reader) {
	eachLine(rd, func(line []byte, _ bool) {
		writeLine(r.ctx.Stderr, line)
		if len(r.stderr) == stderrTailLines {
			r.stderr = r.stderr[1:]
		}
		r.stderr = append(r.stderr, string(line))
	})
}

func writeLine(w io.Writer, line []byte) {
	w.Write(append(bytes.Clone(line), '\n'))
}

func (r *commandRun) checkpoint(data []byte) {
	if !json.Valid(data) {
		r.ctx.Logger.Warn("ignored checkpoint line: not valid JSON")
		return
	}
	if err := r.ctx.Checkpoint(json.RawMessage(data)); err != nil {
		r.ctx.Logger.Warn("checkpoint not recorded", "err", err)
		return
	}
	if err := r.writeCheckpointFile(data); err != nil {
		r.ctx.Logger.Warn("checkpoint file not updated", "err", err)
	}
}

// writeCheckpointFile replaces the file whole, so a reader never sees half of it.
func (r *commandRun) writeCheckpointFile(data []byte) error {
	tmp := r.checkpointFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	if err := os.Rename(tmp, r.checkpointFile); err != nil {
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	return nil
}

// stderrTail is the last lines of stderr, at most stderrTailBytes.
func (r *commandRun) stderrTail() string {
	tail := strings.TrimSpace(strings.Join(r.stderr, "\n"))
	if len(tail) > stderrTailBytes {
		tail = strings.ToValidUTF8("…"+tail[len(tail)-stderrTailBytes:], "")
	}
	return tail
}

func (r *commandRun) result() (json.RawMessage, error) {
	data, err := os.ReadFile(r.resultFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: read result file: %w", r.h.spec.Name, err)
	}
	var res bytes.Buffer
	if data = bytes.TrimSpace(data); len(data) > 0 {
		if err := json.Compact(&res, data); err != nil {
			return nil, fmt.Errorf("%s: result file is not valid JSON: %w", r.h.spec.Name, err)
		}
		return res.Bytes(), nil
	}
	if err := json.Compact(&res, r.lastStdout); err == nil {
		return res.Bytes(), nil
	}
	return json.RawMessage("null"), nil
}
