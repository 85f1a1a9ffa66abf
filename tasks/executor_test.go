package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// testRegistry holds the built-ins plus types that misbehave on demand.
// entered receives a value each time a "block" run starts.
func testRegistry(t *testing.T, entered chan<- struct{}) *Registry {
	t.Helper()
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []Handler{
		Func(def("boom", "", `null`), func(*Context, any) (any, error) { return nil, errors.New("boom") }),
		Func(def("panic", "", `null`), func(*Context, any) (any, error) { panic("kaboom") }),
		Func(def("final", "", `null`), func(*Context, any) (any, error) { return nil, Final(errors.New("bad input")) }),
		Func(def("finalwrapped", "", `null`), func(*Context, any) (any, error) {
			return nil, fmt.Errorf("lookup: %w", ErrFinal)
		}),
		Func(def("block", "", `null`), func(ctx *Context, _ any) (any, error) {
			entered <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}),
		Func(def("output", "", `null`), func(ctx *Context, _ any) (any, error) {
			fmt.Fprint(ctx.Stdout, "one\ntw")
			ctx.Logger.Warn("two", "k", "v w", "n", 3)
			fmt.Fprint(ctx.Stderr, "three\n")
			fmt.Fprint(ctx.Stdout, "o\nfour")
			ctx.Logger.WithGroup("g").With("a", 1).Debug("five", "b", true)
			return nil, nil
		}),
	} {
		if err := r.Register(h); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func newTestExecutor(t *testing.T, rep Reporter, entered chan<- struct{}) *Executor {
	t.Helper()
	e := NewExecutor(ExecutorConfig{Registry: testRegistry(t, entered), Reporter: rep, NodeName: "n1", ReportRetry: time.Millisecond})
	t.Cleanup(e.Close)
	return e
}

func waitIdle(t *testing.T, e *Executor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Wait(ctx); err != nil {
		t.Fatalf("executor still busy: %v", err)
	}
}

func TestExecutorReportsHowAnAttemptEnds(t *testing.T) {
	tests := []struct {
		name        string
		a           Assignment
		wantKinds   string
		wantOutcome Outcome
		wantResult  string
		wantErr     *TaskError
	}{
		{"success", Assignment{Type: "echo", Input: json.RawMessage(`{"x": 1}`)},
			"started finished", OutcomeSucceeded, `{"x":1}`, nil},
		{"task error", Assignment{Type: "boom"},
			"started finished", OutcomeFailed, "", &TaskError{Type: "task_error", Message: "boom"}},
		{"final error", Assignment{Type: "final"},
			"started finished", OutcomeFailed, "", &TaskError{Type: "task_error", Message: "bad input", Final: true}},
		{"error wrapping ErrFinal", Assignment{Type: "finalwrapped"},
			"started finished", OutcomeFailed, "", &TaskError{Type: "task_error", Message: "lookup: final error, not retried", Final: true}},
		{"panic is recovered", Assignment{Type: "panic"},
			"started finished", OutcomeFailed, "", &TaskError{Type: "panic", Message: "kaboom"}},
		{"timeout", Assignment{Type: "sleep", Input: json.RawMessage(`{"ms": 3600000}`), Timeout: 20 * time.Millisecond},
			"started finished", OutcomeFailed, "", &TaskError{Type: "timeout", Message: "attempt timed out after 20ms"}},
		{"unknown type", Assignment{Type: "nope"},
			"finished", OutcomeFailed, "", &TaskError{Type: "unknown_task_type"}},
		{"unknown version", Assignment{Type: "echo", Version: "2"},
			"finished", OutcomeFailed, "", &TaskError{Type: "unknown_task_type"}},
		{"count resumes from the assignment's checkpoint", Assignment{Type: "count", Input: json.RawMessage(`{"to": 4}`), Checkpoint: json.RawMessage(`{"n":2}`)},
			"started checkpoint checkpoint finished", OutcomeSucceeded, `{"counted":4,"resumed_from":2}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := &fakeReporter{}
			e := newTestExecutor(t, rep, nil)
			tt.a.TaskID, tt.a.Attempt = "t1", 1
			if !e.Start(tt.a) {
				t.Fatal("Start = false")
			}
			waitIdle(t, e)
			if got := strings.Join(rep.kinds(), " "); got != tt.wantKinds {
				t.Fatalf("reports = %s, want %s", got, tt.wantKinds)
			}
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			if fin.ref != (RunRef{"t1", 1}) || fin.outcome != tt.wantOutcome || fin.result != tt.wantResult {
				t.Fatalf("finished = %+v", fin)
			}
			switch {
			case tt.wantErr == nil && fin.terr != nil, tt.wantErr != nil && fin.terr == nil:
				t.Fatalf("error = %+v, want %+v", fin.terr, tt.wantErr)
			case tt.wantErr != nil && (fin.terr.Type != tt.wantErr.Type || fin.terr.Final != tt.wantErr.Final || tt.wantErr.Message != "" && fin.terr.Message != tt.wantErr.Message):
				t.Fatalf("error = %+v, want %+v", fin.terr, tt.wantErr)
			}
		})
	}
}

func TestExecutorStopReasons(t *testing.T) {
	tests := []struct {
		reason      StopReason
		wantKinds   string
		wantOutcome Outcome
		wantErrType string
	}{
		{StopCancel, "started finished", OutcomeCancelled, "cancelled"},
		{StopDrain, "started finished", OutcomeInterrupted, ""},
		{StopRevoke, "started", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.reason.String(), func(t *testing.T) {
			rep := &fakeReporter{}
			entered := make(chan struct{}, 1)
			e := newTestExecutor(t, rep, entered)
			e.Start(Assignment{TaskID: "t1", Type: "block", Attempt: 1})
			<-entered
			if got := e.Running(); !slices.Equal(got, []RunRef{{"t1", 1}}) {
				t.Fatalf("Running = %v", got)
			}
			e.Stop("t1", 1, tt.reason)
			waitIdle(t, e)
			if got := strings.Join(rep.kinds(), " "); got != tt.wantKinds {
				t.Fatalf("reports = %s, want %s", got, tt.wantKinds)
			}
			if tt.reason == StopRevoke {
				return
			}
			fin := rep.snapshot()[1]
			if fin.outcome != tt.wantOutcome || (fin.terr == nil) != (tt.wantErrType == "") || fin.terr != nil && fin.terr.Type != tt.wantErrType {
				t.Fatalf("finished = %+v, want %v %q", fin, tt.wantOutcome, tt.wantErrType)
			}
		})
	}
}

func TestExecutorStartIsIdempotent(t *testing.T) {
	rep := &fakeReporter{}
	entered := make(chan struct{}, 1)
	e := newTestExecutor(t, rep, entered)
	a := Assignment{TaskID: "t1", Type: "block", Attempt: 1}
	if !e.Start(a) {
		t.Fatal("first Start = false")
	}
	<-entered
	if e.Start(a) {
		t.Fatal("Start while running = true")
	}
	e.StopAll(StopDrain)
	waitIdle(t, e)
	if e.Start(a) {
		t.Fatal("Start after finishing = true")
	}
	a.Attempt = 2
	if !e.Start(a) {
		t.Fatal("Start of the next attempt = false")
	}
	<-entered
	e.Close()
	if e.Start(Assignment{TaskID: "t2", Type: "echo", Attempt: 1}) {
		t.Fatal("Start after Close = true")
	}
	if got := strings.Join(rep.kinds(), " "); got != "started finished started" {
		t.Fatalf("reports = %s; Close must report nothing", got)
	}
}

func TestExecutorRetriesTransientReportFailures(t *testing.T) {
	rep := &fakeReporter{fail: func(kind string, n int) error {
		if (kind == "started" || kind == "finished") && n < 2 {
			return errors.New("no leader")
		}
		return nil
	}}
	e := newTestExecutor(t, rep, nil)
	e.Start(Assignment{TaskID: "t1", Type: "echo", Attempt: 1, Input: json.RawMessage(`1`)})
	waitIdle(t, e)
	if got := strings.Join(rep.kinds(), " "); got != "started started started finished finished finished" {
		t.Fatalf("reports = %s", got)
	}
}

func TestExecutorFencingStopsSilently(t *testing.T) {
	fenced := fmt.Errorf("report: %w", ErrFenced)
	tests := []struct {
		name      string
		fence     string // which report is fenced
		a         Assignment
		wantKinds string
	}{
		{"on started the task never runs", "started",
			Assignment{Type: "count", Input: json.RawMessage(`{"to": 3}`)}, "started"},
		{"on checkpoint the run stops", "checkpoint",
			Assignment{Type: "count", Input: json.RawMessage(`{"to": 3}`)}, "started checkpoint"},
		{"on finished there is no retry", "finished",
			Assignment{Type: "echo"}, "started finished"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := &fakeReporter{fail: func(kind string, _ int) error {
				if kind == tt.fence {
					return fenced
				}
				return nil
			}}
			e := newTestExecutor(t, rep, nil)
			tt.a.TaskID, tt.a.Attempt = "t1", 1
			e.Start(tt.a)
			waitIdle(t, e)
			if got := strings.Join(rep.kinds(), " "); got != tt.wantKinds {
				t.Fatalf("reports = %s, want %s", got, tt.wantKinds)
			}
		})
	}
}

func TestExecutorCancelBeforeStartedIsStillReported(t *testing.T) {
	rep := &fakeReporter{fail: func(kind string, _ int) error {
		if kind == "started" {
			return errors.New("no leader")
		}
		return nil
	}}
	e := newTestExecutor(t, rep, nil)
	e.Start(Assignment{TaskID: "t1", Type: "block", Attempt: 1})
	waitFor(t, "a failed started report", func() bool { return len(rep.snapshot()) > 0 })
	e.Stop("t1", 1, StopCancel)
	waitIdle(t, e)
	calls := rep.snapshot()
	fin := calls[len(calls)-1]
	if fin.kind != "finished" || fin.outcome != OutcomeCancelled {
		t.Fatalf("last report = %+v, want finished cancelled", fin)
	}
}

func TestExecutorOutputKeepsOrderAcrossStreams(t *testing.T) {
	store, err := OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	e := NewExecutor(ExecutorConfig{Registry: testRegistry(t, nil), Reporter: &fakeReporter{}, Logs: store, NodeName: "n1", ReportRetry: time.Millisecond})
	defer e.Close()
	e.Start(Assignment{TaskID: "t1", Type: "output", Attempt: 2})
	waitIdle(t, e)
	lines, err := store.Read("t1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range lines {
		if l.Node != "n1" || l.Attempt != 2 || l.TS.IsZero() {
			t.Errorf("line %+v lacks node, attempt or time", l)
		}
		got = append(got, l.Stream+"/"+l.Level+"/"+l.Line)
	}
	want := []string{
		"stdout//one",
		`log/warn/two k="v w" n=3`,
		"stderr//three",
		"stdout//two",
		"log/debug/five g.a=1 g.b=true",
		"stdout//four",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("lines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// startFinisher records a combined start+outcome report as its own kind.
type startFinisher struct{ fakeReporter }

func (f *startFinisher) StartedAndFinished(_ context.Context, run RunRef, outcome Outcome, result json.RawMessage, terr *TaskError) error {
	return f.record(report{kind: "started+finished", ref: run, outcome: outcome, result: string(result), terr: terr})
}

func TestExecutorStartWindow(t *testing.T) {
	// A short attempt must end within its window, which a 20 ms one does not promise on a busy
	// machine (the run's goroutine can wait that long for a CPU): the short attempts get a window
	// they always end in, the long one a short window that must pass while it runs.
	const (
		short = 20 * time.Millisecond
		long  = time.Minute
	)
	tests := []struct {
		name      string
		rep       interface{ kinds() []string }
		a         Assignment
		window    time.Duration
		stop      bool // cancel the run once it reports started
		wantKinds string
	}{
		{"a short attempt reports start and outcome in one call", &startFinisher{},
			Assignment{Type: "echo", Input: json.RawMessage(`1`)}, long, false, "started+finished"},
		{"a reporter without StartedAndFinished gets both in order", &fakeReporter{},
			Assignment{Type: "echo", Input: json.RawMessage(`1`)}, long, false, "started finished"},
		{"a failing short attempt too", &startFinisher{},
			Assignment{Type: "boom"}, long, false, "started+finished"},
		{"a long attempt reports started while it runs", &startFinisher{},
			Assignment{Type: "block"}, short, true, "started finished"},
		{"a checkpoint is preceded by started", &startFinisher{},
			Assignment{Type: "count", Input: json.RawMessage(`{"to": 2}`)}, short, false, "started checkpoint checkpoint finished"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entered := make(chan struct{}, 1)
			e := NewExecutor(ExecutorConfig{
				Registry: testRegistry(t, entered), Reporter: tt.rep.(Reporter), NodeName: "n1",
				ReportRetry: time.Millisecond, StartWindow: tt.window,
			})
			t.Cleanup(e.Close)
			tt.a.TaskID, tt.a.Attempt = "t1", 1
			e.Start(tt.a)
			if tt.stop {
				<-entered
				// The block handler never returns by itself: started must come from the window.
				waitFor(t, "started while the attempt runs", func() bool {
					return strings.Join(tt.rep.kinds(), " ") == "started"
				})
				e.Stop("t1", 1, StopCancel)
			}
			waitIdle(t, e)
			if got := strings.Join(tt.rep.kinds(), " "); got != tt.wantKinds {
				t.Fatalf("reports = %s, want %s", got, tt.wantKinds)
			}
		})
	}
}

func TestExecutorStartWindowFencedAtStartStopsTheRun(t *testing.T) {
	rep := &startFinisher{fakeReporter{fail: func(kind string, _ int) error {
		if kind == "started" {
			return fmt.Errorf("report: %w", ErrFenced)
		}
		return nil
	}}}
	entered := make(chan struct{}, 1)
	e := NewExecutor(ExecutorConfig{
		Registry: testRegistry(t, entered), Reporter: rep, NodeName: "n1",
		ReportRetry: time.Millisecond, StartWindow: 5 * time.Millisecond,
	})
	t.Cleanup(e.Close)
	e.Start(Assignment{TaskID: "t1", Type: "block", Attempt: 1})
	waitIdle(t, e) // the block handler ends only when the fencing stops it
	if got := strings.Join(rep.kinds(), " "); got != "started" {
		t.Fatalf("reports = %s, want started only: a fenced attempt reports nothing more", got)
	}
}

// A short run is one goroutine: the start window is a timer and the checkpoint throttle starts
// with the first checkpoint, so a task that makes none wakes nothing else.
func TestExecutorShortRunIsOneGoroutine(t *testing.T) {
	reg := NewRegistry()
	inside := make(chan int, 1)
	if err := reg.Register(Func(def("count-goroutines", "", `null`), func(*Context, any) (any, error) {
		inside <- runtime.NumGoroutine()
		return 1, nil
	})); err != nil {
		t.Fatal(err)
	}
	rep := &startFinisher{}
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: rep, NodeName: "n1", ReportRetry: time.Millisecond,
		StartWindow: time.Minute})
	t.Cleanup(e.Close)
	before := runtime.NumGoroutine()
	e.Start(Assignment{TaskID: "t1", Type: "count-goroutines", Attempt: 1})
	during := <-inside
	waitIdle(t, e)
	if during-before > 1 {
		t.Fatalf("%d goroutines while the handler ran, %d before: want the run's own only", during, before)
	}
	if got := strings.Join(rep.kinds(), " "); got != "started+finished" {
		t.Fatalf("reports = %s, want started+finished", got)
	}
}

// nopFinisher accepts every report and keeps nothing.
type nopFinisher struct{ fakeReporter }

func (*nopFinisher) StartedAndFinished(context.Context, RunRef, Outcome, json.RawMessage, *TaskError) error {
	return nil
}

// The allocation budget of a short attempt through the executor, from Start to its run's end
// (its goroutine, contexts, task context and logger, the start window's timer, the report): a
// new allocation on this path shows here. A run that makes no checkpoint makes no throttle, and
// one that ends plainly allocates no error targets.
func TestExecutorShortRunAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts vary under the race detector")
	}
	const budget = 46
	reg := NewRegistry()
	if err := reg.Register(Func(def("one", "", `null`), func(*Context, any) (any, error) { return 1, nil })); err != nil {
		t.Fatal(err)
	}
	// A node's logger: text, at Info.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil)).With("component", "executor")
	e := NewExecutor(ExecutorConfig{Registry: reg, Reporter: &nopFinisher{}, NodeName: "n1", Logger: logger,
		StartWindow: time.Minute})
	t.Cleanup(e.Close)
	const runs = 200
	ids := make([]string, runs+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%d", i)
	}
	next := 0
	n := testing.AllocsPerRun(runs, func() {
		e.Start(Assignment{TaskID: ids[next], Type: "one", Attempt: 1})
		next++
		waitIdle(t, e)
	})
	if n > budget {
		t.Errorf("a short attempt: %.1f allocations, budget %d", n, budget)
	}
	t.Logf("a short attempt: %.1f allocations (budget %d)", n, budget)
}

// An attempt's log lines read as Logger.With would write them: the attempt's task, attempt and
// type first, then the record's own attributes, groups included.
func TestAttemptLogReadsAsWith(t *testing.T) {
	var got, want strings.Builder
	opts := &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}}
	base := func(w io.Writer) *slog.Logger {
		return slog.New(slog.NewTextHandler(w, opts)).With("component", "executor")
	}
	lazy := slog.New(&attemptHandler{Handler: base(&got).Handler(), task: "t1", attempt: 2, typ: "echo"})
	with := base(&want).With("task", "t1", "attempt", 2, "type", "echo")
	for _, l := range []*slog.Logger{lazy, with} {
		l.Warn("report failed, retrying", "report", "finished", "err", "boom")
		l.With("k", "v").Info("with attrs", "n", 1)
		l.WithGroup("g").Info("in a group", "n", 1)
		l.Debug("not written")
	}
	if got.String() != want.String() {
		t.Fatalf("attempt log:\n%s\nLogger.With:\n%s", got.String(), want.String())
	}
}
