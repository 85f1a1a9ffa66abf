package endpoint

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// fsmWith returns an FSM restored from a snapshot holding tasks.
func fsmWith(t *testing.T, ts ...fsm.Task) *fsm.FSM {
	t.Helper()
	b, err := msgpack.Marshal(struct {
		Index uint64     `msgpack:"index"`
		Tasks []fsm.Task `msgpack:"tasks"`
		Nodes []fsm.Node `msgpack:"nodes"`
	}{Index: 1, Tasks: ts})
	if err != nil {
		t.Fatal(err)
	}
	f := fsm.New()
	if err := f.Restore(readCloser{bytes.NewReader(b)}); err != nil {
		t.Fatal(err)
	}
	return f
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// allStacks is every goroutine's stack, for a failure message.
func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestDroppedFollowOfManyAttemptsLeaksNoGoroutine(t *testing.T) {
	// 40 attempts, each assigned to a node that has gone from the FSM: every per-attempt follower
	// ends at once, and the follow is dropped before the loop reads their ends.
	task := fsm.Task{ID: "many", Type: "echo", State: fsm.Running, Attempt: 40}
	for i := 1; i <= 40; i++ {
		task.History = append(task.History, fsm.HistoryEntry{Attempt: i, Node: "gone", Event: fsm.EventAssigned})
	}
	srv := &Server{cfg: Config{Name: "me", FSM: fsmWith(t, task),
		GetFrom: func(_ context.Context, name, _ string, _ bool) (*http.Response, error) {
			return nil, fmt.Errorf("node %s unknown", name)
		}}, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Counted, not matched by function name: a renamed or restructured follower must not make
	// this check pass by finding nothing. No test in this package runs in parallel, so nothing
	// else starts goroutines meanwhile; ones an earlier test left may only end.
	before := runtime.NumGoroutine()
	srv.followLogs(ctx, "many", func(tasks.LogLine) {})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines more than before the follow, 10 s after it was dropped:\n%s", runtime.NumGoroutine()-before, allStacks())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
