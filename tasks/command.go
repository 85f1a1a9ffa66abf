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
	"time"
)

// Environment variables a command-backed task receives on top of its clean
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
	Env     map[string]string // set in the task's environment, over anything else but TASKWORKER_*
	Dir     string            // working directory; "" is the agent's, or the run's temp dir with User

	// InheritEnv names variables passed from the agent's environment when set there. Nothing
	// else of the agent's environment reaches the task; TASKWORKER_* names are refused.
	InheritEnv []string
	// User, if set, is the unprivileged user (name or uid) the command runs as; Group (name or
	// gid) overrides its primary group. Only a root agent can switch users; uid 0 is refused.
	User, Group string

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
//   - The command starts in its own process group, in Dir, with a clean
//     environment: PATH (the agent's, else a standard one), HOME and TMPDIR
//     (a temp dir of this run), LANG, LC_ALL and TZ when the agent has them,
//     the agent's variables named in InheritEnv, then Env (which may override
//     any of those), then TASKWORKER_TASK_ID, TASKWORKER_TASK_TYPE,
//     TASKWORKER_ATTEMPT, TASKWORKER_EXECUTION_ID, TASKWORKER_RESULT_FILE and
//     TASKWORKER_CHECKPOINT_FILE. Nothing else of the agent's environment, its
//     tokens least of all, reaches the task.
//   - With User set it runs as that user (and Group), with that user's
//     supplementary groups; without a Dir its working directory is the run's
//     temp dir. It then cannot read the agent's /proc/PID/environ or files
//     private to the agent's user, such as the data dir.
//   - The run's directory (result file, checkpoint file, temp dir) has mode
//     0700 and belongs to the task's user.
//   - The input JSON (null when absent) is written to its stdin, which is then closed.
//     Validate accepts any JSON: checking its shape is the program's job.
//   - stdout and stderr reach the task's log streams line by line as they are
//     written; lines over 64 KiB are split. The two streams are read
//     independently, so their order relative to each other is not kept.
//   - A stdout line "::checkpoint:: <json>" records <json> as a checkpoint and
//     is not shown as output; an invalid one is reported in the task's log.
//     Checkpoints are rate-limited as the executor's are (only the newest is
//     kept when they come too fast), and one over the cap fails the attempt.
//     TASKWORKER_CHECKPOINT_FILE names a file holding the latest checkpoint,
//     from an earlier attempt or from this one; it does not exist while there is none.
//   - Result: the content of TASKWORKER_RESULT_FILE when the program wrote a
//     non-empty one (not valid JSON, or more than the executor's result cap,
//     fails the attempt); otherwise the last non-empty stdout line when it is
//     valid JSON; otherwise null.
//   - A non-zero exit fails the attempt with the exit status and the tail of
//     stderr (last 20 lines, at most 2 KiB) as the message. The failure is
//     final (ErrFinal: no retry) when the exit status is 3 (FinalExitCode) or
//     stderr had a line TASKWORKER_FINAL (FinalMarker) of its own.
//   - On cancel, drain or timeout the process group gets SIGTERM, then SIGKILL
//     after GracePeriod. When the command exits, whatever it left running in
//     its process group is killed.
//
// NewCommand checks the spec: name, version and command are required, the
// command must resolve now (exec.LookPath), Dir must be a directory, and a
// User must exist, not be root, be one this agent can switch to, and be
// able to reach the command and Dir.
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
	ra, err := lookupRunAs(spec.User, spec.Group)
	if err != nil {
		return nil, fmt.Errorf("task type %q: %w", spec.Name, err)
	}
	if ra != nil {
		if err := ra.checkAccess(path, 1); err != nil {
			return nil, fmt.Errorf("task type %q: command: %w: %w", spec.Name, ErrRunAs, err)
		}
		if spec.Dir != "" {
			if err := ra.checkAccess(spec.Dir, 1); err != nil {
				return nil, fmt.Errorf("task type %q: dir: %w: %w", spec.Name, ErrRunAs, err)
			}
		}
	}
	if spec.GracePeriod == 0 {
		spec.GracePeriod = defaultGracePeriod
	}
	return &commandHandler{spec: spec, path: path, runAs: ra}, nil
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
		if !validEnvName(k) {
			return fmt.Errorf("task type %q: env: invalid variable name %q", s.Name, k)
		}
		if reservedEnv(k) {
			return fmt.Errorf("task type %q: env: %s is set by the agent", s.Name, k)
		}
	}
	if err := checkInheritEnv(s.InheritEnv); err != nil {
		return fmt.Errorf("task type %q: inherit_env: %w", s.Name, err)
	}
	for _, k := range s.InheritEnv {
		if _, ok := s.Env[k]; ok {
			return fmt.Errorf("task type %q: %s is both in env and in inherit_env", s.Name, k)
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

// checkInheritEnv refuses names that cannot be variables and any of the agent's own settings.
func checkInheritEnv(names []string) error {
	for _, k := range names {
		switch {
		case !validEnvName(k):
			return fmt.Errorf("invalid variable name %q", k)
		case strings.HasPrefix(strings.ToUpper(k), agentEnvPrefix):
			return fmt.Errorf("%s is the agent's own setting and never passed to a task (its tokens are %s* variables)", k, agentEnvPrefix)
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
	spec  CommandSpec
	path  string // the resolved command
	runAs *runAs // nil: run as the agent's user
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
	dir, err := newRunDir(h.runAs)
	if err != nil {
		return nil, fmt.Errorf("%s: run dir: %w", h.spec.Name, err)
	}
	defer dir.remove()
	r := &commandRun{h: h, ctx: ctx, dir: dir}
	var last json.RawMessage
	if ok, _ := ctx.LastCheckpoint(&last); ok {
		if err := dir.writeFile(checkpointFileName, last); err != nil {
			return nil, fmt.Errorf("%s: write checkpoint file: %w", h.spec.Name, err)
		}
	}
	if err := dir.handOver(); err != nil {
		return nil, fmt.Errorf("%s: run dir: %w", h.spec.Name, err)
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
		var exit *exec.ExitError
		if r.finalMarker || errors.As(waitErr, &exit) && exit.ExitCode() == FinalExitCode {
			return nil, Final(errors.New(msg))
		}
		return nil, errors.New(msg)
	}
	return r.result()
}

// commandRun is one attempt's process and what it left behind.
type commandRun struct {
	h   *commandHandler
	ctx *Context
	dir *runDir

	// Written by the output readers, read once they are done.
	lastStdout  []byte
	stderr      []string // the last stderrTailLines lines
	finalMarker bool     // a stderr line was FinalMarker
}

// run starts the process and waits for it and its output. waitErr is how
// the process ended; err means it could not be run at all.
func (r *commandRun) run(ctx context.Context, input json.RawMessage) (waitErr, err error) {
	spec := r.h.spec
	cmd := exec.Command(r.h.path, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = r.env()
	cmd.Stdin = bytes.NewReader(input)
	// Its own process group, so cancel and timeout reach everything it started.
	setProcAttr(cmd, r.h.runAs)
	if ra := r.h.runAs; ra != nil {
		if cmd.Dir == "" {
			cmd.Dir = r.dir.file(tmpDirName) // the agent's working directory may not be theirs to enter
		}
	}
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
	proc := cmd.Process

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); r.readStdout(outR) }()
	go func() { defer readers.Done(); r.readStderr(errR) }()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		stopGroup(proc, false)
		grace := time.NewTimer(spec.GracePeriod)
		select {
		case waitErr = <-exited:
		case <-grace.C:
			stopGroup(proc, true)
			waitErr = <-exited
		}
		grace.Stop()
	}
	// Leave nothing behind: background children still hold the pipes open.
	stopGroup(proc, true)

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
	return taskEnv(os.LookupEnv, r.dir.file(tmpDirName), r.h.spec.InheritEnv, r.h.spec.Env, map[string]string{
		EnvTaskID:         r.ctx.TaskID,
		EnvTaskType:       r.h.spec.Name,
		EnvAttempt:        strconv.Itoa(r.ctx.Attempt),
		EnvExecutionID:    r.ctx.ExecutionID,
		EnvResultFile:     r.dir.file(resultFileName),
		EnvCheckpointFile: r.dir.file(checkpointFileName),
	})
}

// eachLine calls fn with every line of rd, without its line ending. Lines
// longer than maxLineBytes come in pieces: first is false for all but the
// first piece of a line, more is true for all but its last.
func eachLine(rd io.Reader, fn func(piece []byte, first, more bool)) {
	br := bufio.NewReaderSize(rd, maxLineBytes)
	first := true
	for {
		line, err := br.ReadSlice('\n')
		more := err == bufio.ErrBufferFull
		if len(line) > 0 {
			fn(bytes.TrimRight(line, "\r\n"), first, more)
		}
		first = !more
		if err != nil && !more {
			return
		}
	}
}

func (r *commandRun) readStdout(rd io.Reader) {
	// A checkpoint line may come in pieces when the checkpoint cap is over maxLineBytes: it is put
	// together again, keeping no more than the cap (plus room for spaces) of it in memory.
	limit := r.ctx.maxCheckpoint
	if limit <= 0 {
		limit = MaxCheckpointBytes
	}
	var (
		inCheckpoint bool
		cp           []byte
		cpSize       int
	)
	eachLine(rd, func(piece []byte, first, more bool) {
		if first {
			var rest []byte
			rest, inCheckpoint = bytes.CutPrefix(piece, []byte(CheckpointPrefix))
			if inCheckpoint {
				piece, cp, cpSize = bytes.TrimLeft(rest, " \t"), cp[:0], 0
			}
		}
		if inCheckpoint {
			cpSize += len(piece)
			if keep := limit + maxLineBytes - len(cp); keep > 0 {
				cp = append(cp, piece[:min(len(piece), keep)]...)
			}
			if more {
				return
			}
			inCheckpoint = false
			if cpSize > len(cp) {
				// Too large to keep, so too large to record: this fails the attempt.
				r.ctx.Logger.Warn("checkpoint not recorded", "err", r.ctx.checkCheckpointSize(cpSize))
				return
			}
			r.checkpoint(bytes.TrimSpace(cp))
			return
		}
		writeLine(r.ctx.Stdout, piece)
		if len(bytes.TrimSpace(piece)) > 0 {
			r.lastStdout = append(r.lastStdout[:0], piece...)
		}
	})
}

func (r *commandRun) readStderr(rd io.Reader) {
	eachLine(rd, func(line []byte, _, _ bool) {
		writeLine(r.ctx.Stderr, line)
		if string(bytes.TrimSpace(line)) == FinalMarker {
			r.finalMarker = true
		}
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
	if err := r.dir.writeFile(checkpointFileName, data); err != nil {
		r.ctx.Logger.Warn("checkpoint file not updated", "err", err)
	}
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
	data, err := r.dir.readResult(r.ctx.maxResult)
	if err != nil {
		return nil, fmt.Errorf("%s: result file: %w", r.h.spec.Name, err)
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
