package tasks

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// checkpointsOf returns the data of every checkpoint report, in order.
func checkpointsOf(calls []report) []string {
	var cps []string
	for _, c := range calls {
		if c.kind == "checkpoint" {
			cps = append(cps, c.data)
		}
	}
	return cps
}

// A count with step_ms 0 checkpoints as fast as it can; the executor reports a bounded number of
// those, in order, and the last one reported, before the outcome, is the final value.
func TestExecutorThrottlesACheckpointFlood(t *testing.T) {
	const perSecond, burst, steps = 10, 20, 5000
	rep := &fakeReporter{}
	reg, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: rep, NodeName: "n1", ReportRetry: time.Millisecond,
		CheckpointsPerSecond: perSecond, CheckpointBurst: burst})
	defer e.Close()

	start := time.Now()
	e.Start(Assignment{TaskID: "t1", Type: "count", Attempt: 1, Input: json.RawMessage(fmt.Sprintf(`{"to": %d, "step_ms": 0}`, steps))})
	waitIdle(t, e)
	elapsed := time.Since(start)

	calls := rep.snapshot()
	if fin := calls[len(calls)-1]; fin.kind != "finished" || fin.outcome != OutcomeSucceeded || fin.result != `{"counted":5000,"resumed_from":0}` {
		t.Fatalf("last report = %+v, want the count's success", fin)
	}
	cps := checkpointsOf(calls)
	// The budget, plus the one Flush sends whatever the budget.
	limit := burst + int(perSecond*elapsed.Seconds()) + 1
	if len(cps) > limit || len(cps) < 2 {
		t.Fatalf("%d checkpoints reported in %v, want 2 to %d (burst %d + %d/s)", len(cps), elapsed, limit, burst, perSecond)
	}
	if last := cps[len(cps)-1]; last != `{"n":5000}` {
		t.Fatalf("last checkpoint = %s, want the final value", last)
	}
	prev := 0
	for _, cp := range cps {
		var c countCheckpoint
		if err := json.Unmarshal([]byte(cp), &c); err != nil || c.N <= prev {
			t.Fatalf("checkpoints out of order: %q", cps)
		}
		prev = c.N
	}
	t.Logf("%d steps, %d checkpoints reported in %v", steps, len(cps), elapsed)
}

// A run that is handed back (drain) mid-flood still reports its newest checkpoint, which the next
// attempt resumes from, though the budget held it back.
func TestExecutorReportsTheNewestCheckpointOnHandback(t *testing.T) {
	const n = 1000
	entered := make(chan struct{}, 1)
	reg := NewRegistry()
	if err := reg.Register(Func(def("flood", "", `null`), func(ctx *Context, _ any) (any, error) {
		for i := 1; i <= n; i++ {
			if err := ctx.Checkpoint(i); err != nil {
				return nil, err
			}
		}
		entered <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})); err != nil {
		t.Fatal(err)
	}
	rep := &fakeReporter{}
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: rep, NodeName: "n1", ReportRetry: time.Millisecond,
		CheckpointsPerSecond: 0.001, CheckpointBurst: 1}) // in effect: one, then only what Flush sends
	defer e.Close()
	e.Start(Assignment{TaskID: "t1", Type: "flood", Attempt: 1})
	<-entered
	e.Stop("t1", 1, StopDrain)
	waitIdle(t, e)
	if got := strings.Join(rep.kinds(), " "); got != "started checkpoint checkpoint finished" {
		t.Fatalf("reports = %s", got)
	}
	calls := rep.snapshot()
	if cps := checkpointsOf(calls); !slices.Equal(cps, []string{"1", strconv.Itoa(n)}) {
		t.Fatalf("checkpoints = %q, want the first (burst) and the newest", cps)
	}
	if fin := calls[len(calls)-1]; fin.outcome != OutcomeInterrupted {
		t.Fatalf("finished = %+v, want interrupted", fin)
	}
}

func TestExecutorCapsResultsAndCheckpoints(t *testing.T) {
	str := func(n int) string { return `"` + strings.Repeat("a", n-2) + `"` } // a JSON string of n bytes
	tests := []struct {
		name       string
		handler    Handler
		input      string
		edit       func(*ExecutorConfig)
		wantResult string
		wantErr    *TaskError
		wantCPs    []string
	}{
		{"result at the default cap", Func(def("echo", "", `null`), echo), str(256 << 10), nil,
			str(256 << 10), nil, nil},
		{"result over the default cap", Func(def("echo", "", `null`), echo), str(256<<10 + 1), nil,
			"", &TaskError{Type: ErrTypeResultTooLarge, Message: "result of 262145 bytes is over the limit of 262144 bytes"}, nil},
		{"result over a configured cap", Func(def("echo", "", `null`), echo), str(101), func(c *ExecutorConfig) { c.MaxResultBytes = 100 },
			"", &TaskError{Type: ErrTypeResultTooLarge, Message: "result of 101 bytes is over the limit of 100 bytes"}, nil},
		{"checkpoint over the cap fails the attempt even if the task ignores the error", Func(def("cp", "", `null`), func(ctx *Context, in json.RawMessage) (int, error) {
			_ = ctx.Checkpoint(in)
			return 1, nil
		}), str(64<<10 + 1), nil,
			"", &TaskError{Type: ErrTypeCheckpointTooLarge, Message: "checkpoint of 65537 bytes is over the limit of 65536 bytes"}, nil},
		{"checkpoint within a configured cap", Func(def("cp", "", `null`), func(ctx *Context, in json.RawMessage) (int, error) {
			return 1, ctx.Checkpoint(in)
		}), str(64<<10 + 1), func(c *ExecutorConfig) { c.MaxCheckpointBytes = 128 << 10 },
			"1", nil, []string{str(64<<10 + 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, rep, _ := executorWith(t, tt.handler, tt.edit)
			e.Start(Assignment{TaskID: "t1", Type: tt.handler.Definition().Name, Attempt: 1, Input: json.RawMessage(tt.input)})
			waitIdle(t, e)
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			if cps := checkpointsOf(calls); !slices.Equal(cps, tt.wantCPs) {
				t.Fatalf("%d checkpoints reported, want %d", len(cps), len(tt.wantCPs))
			}
			if tt.wantErr == nil {
				if fin.outcome != OutcomeSucceeded || fin.result != tt.wantResult {
					t.Fatalf("finished = %v %+v, result of %d bytes; want success", fin.outcome, fin.terr, len(fin.result))
				}
				return
			}
			if fin.outcome != OutcomeFailed || fin.result != "" || fin.terr == nil || *fin.terr != *tt.wantErr {
				t.Fatalf("finished = %v %+v, result of %d bytes; want failed with %+v", fin.outcome, fin.terr, len(fin.result), tt.wantErr)
			}
		})
	}
}

// A command's result file is measured before it is read; a checkpoint line longer than the output
// line limit is put together again, and measured.
func TestCommandCapsResultsAndCheckpoints(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		edit    func(*ExecutorConfig)
		wantErr *TaskError
		wantCP  int // length of the one checkpoint expected, 0 = none
	}{
		{"result file over the cap", `printf '"%s"' "$(head -c 300000 /dev/zero | tr '\0' a)" > "$TASKWORKER_RESULT_FILE"`, nil,
			&TaskError{Type: ErrTypeResultTooLarge, Message: "result of 300002 bytes is over the limit of 262144 bytes"}, 0},
		{"long checkpoint line within the cap", `printf '::checkpoint:: "%s"\n' "$(head -c 100000 /dev/zero | tr '\0' a)"`,
			func(c *ExecutorConfig) { c.MaxCheckpointBytes = 200 << 10 }, nil, 100002},
		{"long checkpoint line over the cap", `printf '::checkpoint:: "%s"\n' "$(head -c 100000 /dev/zero | tr '\0' a)"`, nil,
			&TaskError{Type: ErrTypeCheckpointTooLarge, Message: "checkpoint of 100002 bytes is over the limit of 65536 bytes"}, 0},
		{"checkpoint line over the cap and the line limit", `printf '::checkpoint:: "%s"\n' "$(head -c 300000 /dev/zero | tr '\0' a)"`,
			func(c *ExecutorConfig) { c.MaxCheckpointBytes = 100 }, &TaskError{Type: ErrTypeCheckpointTooLarge, Message: "checkpoint of 300002 bytes is over the limit of 100 bytes"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, rep, _ := executorWith(t, mustCommand(t, shCommand(t, tt.script)), tt.edit)
			e.Start(Assignment{TaskID: "t1", Type: "cmd", Attempt: 1})
			waitIdle(t, e)
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			cps := checkpointsOf(calls)
			if tt.wantCP == 0 && len(cps) != 0 || tt.wantCP != 0 && (len(cps) != 1 || len(cps[0]) != tt.wantCP) {
				t.Fatalf("%d checkpoints reported, want one of %d bytes", len(cps), tt.wantCP)
			}
			if tt.wantErr == nil {
				if fin.outcome != OutcomeSucceeded {
					t.Fatalf("finished = %v %+v, want success", fin.outcome, fin.terr)
				}
				return
			}
			if fin.outcome != OutcomeFailed || fin.terr == nil || *fin.terr != *tt.wantErr {
				t.Fatalf("finished = %v %+v, want failed with %+v", fin.outcome, fin.terr, tt.wantErr)
			}
		})
	}
}
