package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shCommand returns a spec that runs body with /bin/sh. The script is passed
// as an argument rather than executed, which sidesteps ETXTBSY races with
// concurrent forks; extra args follow it as $1, $2, ...
func shCommand(t *testing.T, body string, args ...string) CommandSpec {
	t.Helper()
	path := filepath.Join(t.TempDir(), "task.sh")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return CommandSpec{Name: "cmd", Version: "1", Command: "/bin/sh", Args: append([]string{path}, args...)}
}

func mustCommand(t *testing.T, spec CommandSpec) Handler {
	t.Helper()
	h, err := NewCommand(spec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// streamLines returns the lines of one stream, in order.
func streamLines(lines []LogLine, stream string) []string {
	var got []string
	for _, l := range lines {
		if l.Stream == stream {
			got = append(got, l.Line)
		}
	}
	return got
}

// executorFor runs h through an Executor that records reports and output.
func executorFor(t *testing.T, h Handler) (*Executor, *fakeReporter, *LogStore) {
	t.Helper()
	return executorWith(t, h, nil)
}

// executorWith is executorFor with changes to the executor's configuration.
func executorWith(t *testing.T, h Handler, edit func(*ExecutorConfig)) (*Executor, *fakeReporter, *LogStore) {
	t.Helper()
	reg := NewRegistry()
	if err := reg.Register(h); err != nil {
		t.Fatal(err)
	}
	store, err := OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	rep := &fakeReporter{}
	cfg := ExecutorConfig{Registry: reg, Reporter: rep, Logs: store, NodeName: "n1", ReportRetry: time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	e := NewExecutor(cfg)
	t.Cleanup(e.Close)
	return e, rep, store
}

func TestCommandResult(t *testing.T) {
	tests := []struct {
		name, script, input, want, wantErr string
	}{
		{"result file wins over stdout", `echo '{"from": "stdout"}'; echo '{"from": "file"}' > "$TASKWORKER_RESULT_FILE"`, ``, `{"from":"file"}`, ""},
		{"last non-empty stdout line", `echo progress; echo '[1, 2]'; echo; echo "  "`, ``, `[1,2]`, ""},
		{"last line not JSON is null", `echo '{"a": 1}'; echo done`, ``, `null`, ""},
		{"empty result file falls back to stdout", `: > "$TASKWORKER_RESULT_FILE"; echo 7`, ``, `7`, ""},
		{"input on stdin", `cat > "$TASKWORKER_RESULT_FILE"`, `{"x": [1, "y"]}`, `{"x":[1,"y"]}`, ""},
		{"absent input is null", `cat`, ``, `null`, ""},
		{"environment", `printf '{"id": "%s", "attempt": %s, "exec": "%s", "type": "%s", "extra": "%s", "agent": "%s"}\n' \
			"$TASKWORKER_TASK_ID" "$TASKWORKER_ATTEMPT" "$TASKWORKER_EXECUTION_ID" "$TASKWORKER_TASK_TYPE" "$EXTRA" "${TASKWORKER_TOKEN-unset}"`,
			``, `{"id":"t1","attempt":3,"exec":"e1","type":"cmd","extra":"yes","agent":"unset"}`, ""},
		{"invalid result file", `echo '{oops' > "$TASKWORKER_RESULT_FILE"`, ``, ``, "result file is not valid JSON"},
	}
	t.Setenv("TASKWORKER_TOKEN", "secret")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shCommand(t, tt.script)
			spec.Env = map[string]string{"EXTRA": "yes"}
			tc, _ := newTestContext(t, context.Background(), 3)
			tc.ExecutionID = "e1"
			got, err := mustCommand(t, spec).Run(tc, json.RawMessage(tt.input))
			checkResult(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestCommandFailureCarriesStderrTail(t *testing.T) {
	spec := shCommand(t, `for i in $(seq 1 30); do echo "err $i" >&2; done; exit 3`)
	tc, _ := newTestContext(t, context.Background(), 1)
	_, err := mustCommand(t, spec).Run(tc, nil)
	if err == nil {
		t.Fatal("Run succeeded, want exit status 3")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "exit status 3: err 11\n") || !strings.HasSuffix(msg, "\nerr 30") || strings.Contains(msg, "err 10\n") {
		t.Fatalf("message = %q, want exit status and the last 20 stderr lines", msg)
	}

	spec = shCommand(t, `head -c 10000 /dev/zero | tr '\0' x >&2; echo >&2; echo "the end" >&2; kill -9 $$`)
	_, err = mustCommand(t, spec).Run(tc, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "signal: killed: …") || !strings.HasSuffix(err.Error(), "\nthe end") || len(err.Error()) > 2200 {
		t.Fatalf("error = %.100q..., want the signal and at most 2 KiB of stderr", err)
	}
}

func TestCommandStreamsOutputWhileRunning(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := shCommand(t, `echo one; echo warning >&2; echo two; read x < "$1"; echo three`, fifo)
	tc, lines := newTestContext(t, context.Background(), 1)
	done := make(chan error, 1)
	go func() {
		_, err := mustCommand(t, spec).Run(tc, nil)
		done <- err
	}()
	waitFor(t, "output before the command exits", func() bool {
		l := lines()
		return len(streamLines(l, "stdout")) == 2 && len(streamLines(l, "stderr")) == 1
	})
	if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l := lines()
	if got := streamLines(l, "stdout"); !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Fatalf("stdout = %q", got)
	}
	if got := streamLines(l, "stderr"); !slices.Equal(got, []string{"warning"}) {
		t.Fatalf("stderr = %q", got)
	}
}

func TestCommandSplitsVeryLongLines(t *testing.T) {
	spec := shCommand(t, `head -c 100000 /dev/zero | tr '\0' a; echo; printf 'no newline at the end'`)
	tc, lines := newTestContext(t, context.Background(), 1)
	if _, err := mustCommand(t, spec).Run(tc, nil); err != nil {
		t.Fatal(err)
	}
	var lens []int
	for _, l := range streamLines(lines(), "stdout") {
		lens = append(lens, len(l))
	}
	if !slices.Equal(lens, []int{maxLineBytes, 100000 - maxLineBytes, len("no newline at the end")}) {
		t.Fatalf("line lengths = %v", lens)
	}
}

func TestCommandTimeouts(t *testing.T) {
	tests := []struct {
		name        string
		typeTimeout time.Duration
		taskTimeout time.Duration
		want        TaskError
	}{
		{"the submit's timeout", 0, 50 * time.Millisecond, TaskError{Type: ErrTypeTimeout, Message: "attempt timed out after 50ms"}},
		{"the type's timeout", 50 * time.Millisecond, 0, TaskError{Type: ErrTypeTimeout, Message: "cmd timed out after 50ms (the type's timeout): context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shCommand(t, `sleep 60`)
			spec.Timeout = tt.typeTimeout
			e, rep, _ := executorFor(t, mustCommand(t, spec))
			e.Start(Assignment{TaskID: "t1", Type: "cmd", Attempt: 1, Timeout: tt.taskTimeout})
			waitIdle(t, e)
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			if fin.outcome != OutcomeFailed || fin.terr == nil || *fin.terr != tt.want {
				t.Fatalf("finished = %+v, %+v; want failed with %+v", fin, fin.terr, tt.want)
			}
		})
	}
}

// gone reports whether pid no longer runs (a zombie waiting for init counts as gone).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(after, "Z")
}

func TestCommandCancelKillsTheProcessGroup(t *testing.T) {
	tests := []struct{ name, prelude string }{
		{"SIGTERM", ""},
		{"SIGKILL after the grace period when SIGTERM is ignored", "trap '' TERM\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "child.pid")
			spec := shCommand(t, tt.prelude+`sleep 60 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; wait`, pidFile)
			spec.GracePeriod = 100 * time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			tc, _ := newTestContext(t, ctx, 1)
			done := make(chan error, 1)
			go func() {
				_, err := mustCommand(t, spec).Run(tc, nil)
				done <- err
			}()
			var pid int
			waitFor(t, "the child's pid", func() bool {
				b, err := os.ReadFile(pidFile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				return err == nil && pid > 0
			})
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			waitFor(t, fmt.Sprintf("child %d to be gone", pid), func() bool { return gone(pid) })
		})
	}
}

func TestCommandKillsWhatItLeavesBehind(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	spec := shCommand(t, `sleep 60 & echo $! > "$1"; echo '"done"'`, pidFile)
	tc, _ := newTestContext(t, context.Background(), 1)
	got, err := mustCommand(t, spec).Run(tc, nil)
	if err != nil || string(got) != `"done"` {
		t.Fatalf("Run = %s, %v", got, err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitFor(t, "the background child to be gone", func() bool { return gone(pid) })
}

func TestCommandCheckpointsReachTheReporterAndTheNextAttempt(t *testing.T) {
	spec := shCommand(t, `
if [ -f "$TASKWORKER_CHECKPOINT_FILE" ]; then
	cp "$TASKWORKER_CHECKPOINT_FILE" "$TASKWORKER_RESULT_FILE"
	exit 0
fi
echo '::checkpoint:: {"n": 1}'
echo between
echo '::checkpoint::{"n": 2}'
echo '::checkpoint:: {not json'
exit 1
`)
	e, rep, store := executorFor(t, mustCommand(t, spec))
	e.Start(Assignment{TaskID: "t1", Type: "cmd", Attempt: 1})
	waitIdle(t, e)
	var checkpoints []string
	for _, c := range rep.snapshot() {
		if c.kind == "checkpoint" {
			checkpoints = append(checkpoints, c.data)
		}
	}
	if !slices.Equal(checkpoints, []string{`{"n":1}`, `{"n":2}`}) {
		t.Fatalf("checkpoints = %q", checkpoints)
	}
	lines, err := store.Read("t1")
	if err != nil {
		t.Fatal(err)
	}
	if got := streamLines(lines, "stdout"); !slices.Equal(got, []string{"between"}) {
		t.Fatalf("stdout = %q, want checkpoint lines kept out of it", got)
	}
	if got := streamLines(lines, "log"); len(got) != 1 || !strings.Contains(got[0], "not valid JSON") {
		t.Fatalf("log = %q, want a warning about the invalid checkpoint", got)
	}

	e.Start(Assignment{TaskID: "t1", Type: "cmd", Attempt: 2, Checkpoint: json.RawMessage(checkpoints[1])})
	waitIdle(t, e)
	calls := rep.snapshot()
	if fin := calls[len(calls)-1]; fin.outcome != OutcomeSucceeded || fin.result != `{"n":2}` {
		t.Fatalf("second attempt = %+v, want the checkpoint as its result", fin)
	}
}

func TestCommandValidateAcceptsAnyJSON(t *testing.T) {
	h := mustCommand(t, shCommand(t, `true`))
	for _, in := range []string{``, ` `, `null`, `3`, `"s"`, `{"a": [1]}`} {
		if err := h.Validate(json.RawMessage(in)); err != nil {
			t.Errorf("Validate(%q) = %v", in, err)
		}
	}
	for _, in := range []string{`nope`, `{"a":`, `1 2`} {
		if err := h.Validate(json.RawMessage(in)); err == nil {
			t.Errorf("Validate(%q) = nil, want an error", in)
		}
	}
}

func TestNewCommandRejectsBadSpecs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ok := CommandSpec{Name: "x", Version: "1", Command: "sh"}
	tests := []struct {
		name string
		edit func(*CommandSpec)
		want string
	}{
		{"no name", func(s *CommandSpec) { s.Name = "" }, "name is required"},
		{"no version", func(s *CommandSpec) { s.Version = "" }, `"x": version is required`},
		{"no command", func(s *CommandSpec) { s.Command = "" }, `"x": command is required`},
		{"command not in PATH", func(s *CommandSpec) { s.Command = "no-such-command-here" }, `"x": command: exec: "no-such-command-here": executable file not found`},
		{"command path missing", func(s *CommandSpec) { s.Command = "/no/such/file" }, `"x": command: exec: "/no/such/file"`},
		{"reserved env", func(s *CommandSpec) { s.Env = map[string]string{EnvResultFile: "x"} }, "TASKWORKER_RESULT_FILE is set by the agent"},
		{"negative timeout", func(s *CommandSpec) { s.Timeout = -time.Second }, "must not be negative"},
		{"dir not a directory", func(s *CommandSpec) { s.Dir = file }, "is not a directory"},
		{"example not JSON", func(s *CommandSpec) { s.ExampleInput = json.RawMessage(`{`) }, "example input is not valid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := ok
			tt.edit(&spec)
			if _, err := NewCommand(spec); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewCommand = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := NewCommand(ok); err != nil {
		t.Fatalf("NewCommand(valid spec) = %v", err)
	}
}

func TestCommandFinalFailures(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		wantFinal bool
	}{
		{"exit 3 is final", `echo "no such customer" >&2; exit 3`, true},
		{"marker line is final", `echo "bad input" >&2; echo "  TASKWORKER_FINAL" >&2; exit 1`, true},
		{"plain failure is not", `echo "flaky" >&2; exit 1`, false},
		{"marker inside a line is not", `echo "see TASKWORKER_FINAL docs" >&2; exit 1`, false},
		{"marker on stdout is not", `echo TASKWORKER_FINAL; exit 2`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, _ := newTestContext(t, context.Background(), 1)
			_, err := mustCommand(t, shCommand(t, tt.script)).Run(tc, nil)
			if err == nil {
				t.Fatal("Run succeeded, want a failure")
			}
			if got := errors.Is(err, ErrFinal); got != tt.wantFinal {
				t.Errorf("final = %v, want %v (error %q)", got, tt.wantFinal, err)
			}
		})
	}
	// A marker line on a successful run changes nothing.
	tc, _ := newTestContext(t, context.Background(), 1)
	if _, err := mustCommand(t, shCommand(t, `echo TASKWORKER_FINAL >&2; echo '{"ok":true}'`)).Run(tc, nil); err != nil {
		t.Errorf("successful run with a marker: %v", err)
	}
}
