package node

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/pki"
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
	n := &Node{cfg: Config{Name: "me"}, fsm: fsmWith(t, task), log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	n.internode = internode.New(internode.Config{Name: "me", FSM: n.fsm, Trust: insecureTrust{}, Logger: n.log})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Counted, not matched by function name: a renamed or restructured follower must not make
	// this check pass by finding nothing. No test in this package runs in parallel, so nothing
	// else starts goroutines meanwhile; ones an earlier test left may only end.
	before := runtime.NumGoroutine()
	n.followLogs(ctx, "many", func(tasks.LogLine) {})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines more than before the follow, 10 s after it was dropped:\n%s", runtime.NumGoroutine()-before, allStacks())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// insecureTrust is the trust of an --insecure node: none.
type insecureTrust struct{}

func (insecureTrust) Insecure() bool      { return true }
func (insecureTrust) Holder() *pki.Holder { return nil }
func (insecureTrust) ServerName() string  { return "" }
func (insecureTrust) Cluster() string     { return "" }

func TestRemovePathCarriesAnyNodeName(t *testing.T) {
	var got string
	mux := http.NewServeMux()
	mux.HandleFunc(internode.RemovePattern, func(w http.ResponseWriter, r *http.Request) { got = r.PathValue("name") })
	for _, name := range []string{"n1", "web/1", "node 7", "a?b=c", "50%", "x#y", "../leader"} {
		got = ""
		req, err := http.NewRequest(http.MethodPost, "http://leader"+removePath(name), nil)
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if got != name {
			t.Errorf("node %q reaches the remove route as %q (status %d)", name, got, rec.Code)
		}
	}
}

// logRecorder is a slog handler that keeps the messages of warnings and errors.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func TestSavePeersReportsWriteErrorsAndLeavesNoTempFile(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, file string) // makes the write fail
	}{
		{"temp file cannot be written", func(t *testing.T, file string) {
			if err := os.Mkdir(file+".tmp", 0o755); err != nil { // a directory where the temp file goes
				t.Fatal(err)
			}
		}},
		{"rename over the file fails", func(t *testing.T, file string) {
			if err := os.MkdirAll(filepath.Join(file, "x"), 0o755); err != nil { // a non-empty directory in the file's place
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &logRecorder{}
			n := &Node{cfg: Config{DataDir: t.TempDir()}, log: slog.New(rec)}
			c.setup(t, n.peersFile())
			n.storePeers([]string{"10.0.0.1:7946"})
			if rec.count() == 0 {
				t.Fatal("a failed write of the peers file was not logged")
			}
			if fi, err := os.Stat(n.peersFile() + ".tmp"); err == nil && !fi.IsDir() {
				t.Fatal("the temp file was left behind")
			}
		})
	}
	// And a good write lands whole, with nothing left over.
	n := &Node{cfg: Config{DataDir: t.TempDir()}, log: slog.New(&logRecorder{})}
	n.storePeers([]string{"10.0.0.1:7946", "10.0.0.2:7946"})
	if got := n.loadPeers(); len(got) != 2 || got[1] != "10.0.0.2:7946" {
		t.Fatalf("peers read back: %v", got)
	}
	if _, err := os.Stat(n.peersFile() + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temp file after a good write: %v", err)
	}
}
