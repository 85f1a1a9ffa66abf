package tasks

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing the test after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// newTestContext returns a Context whose output goes to a fresh LogStore, and
// a function that flushes the output and returns the stored lines.
func newTestContext(t *testing.T, ctx context.Context, attempt int) (*Context, func() []LogLine) {
	t.Helper()
	store, err := OpenLogStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	out := &runOutput{store: store, taskID: "t1", attempt: attempt, node: "n1"}
	tc := &Context{
		Context: ctx, TaskID: "t1", Attempt: attempt,
		Logger: slog.New(&logHandler{out: out}),
		Stdout: streamWriter{out: out, stream: "stdout"},
		Stderr: streamWriter{out: out, stream: "stderr"},
	}
	return tc, func() []LogLine {
		out.flush()
		lines, err := store.Read("t1")
		if err != nil {
			t.Fatal(err)
		}
		return lines
	}
}

type report struct {
	kind    string // started, checkpoint, finished
	ref     RunRef
	outcome Outcome
	result  string
	terr    *TaskError
	data    string
}

// fakeReporter records every call; fail, if set, decides the error of the
// n-th (0-based) call of a kind.
type fakeReporter struct {
	fail func(kind string, n int) error

	mu     sync.Mutex
	calls  []report
	counts map[string]int
}

func (f *fakeReporter) record(r report) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = make(map[string]int)
	}
	n := f.counts[r.kind]
	f.counts[r.kind]++
	f.calls = append(f.calls, r)
	if f.fail != nil {
		return f.fail(r.kind, n)
	}
	return nil
}

func (f *fakeReporter) Started(_ context.Context, run RunRef) error {
	return f.record(report{kind: "started", ref: run})
}

func (f *fakeReporter) Checkpoint(_ context.Context, run RunRef, data json.RawMessage) error {
	return f.record(report{kind: "checkpoint", ref: run, data: string(data)})
}

func (f *fakeReporter) Finished(_ context.Context, run RunRef, outcome Outcome, result json.RawMessage, terr *TaskError) error {
	return f.record(report{kind: "finished", ref: run, outcome: outcome, result: string(result), terr: terr})
}

func (f *fakeReporter) snapshot() []report {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]report(nil), f.calls...)
}

func (f *fakeReporter) kinds() []string {
	var ks []string
	for _, c := range f.snapshot() {
		ks = append(ks, c.kind)
	}
	return ks
}

// checkResult checks a handler's Run result: an error containing wantErr when that is set, else the
// result want.
func checkResult(t *testing.T, got json.RawMessage, err error, want, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("Run = %s, %v; want error containing %q", got, err, wantErr)
		}
		return
	}
	if err != nil || string(got) != want {
		t.Fatalf("Run = %s, %v; want %s", got, err, want)
	}
}
