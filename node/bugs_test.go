package node

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/worker"
)

func TestRemovePathCarriesAnyNodeName(t *testing.T) {
	var got string
	mux := http.NewServeMux()
	mux.HandleFunc(internode.RemovePattern, func(w http.ResponseWriter, r *http.Request) { got = r.PathValue("name") })
	for _, name := range []string{"n1", "web/1", "node 7", "a?b=c", "50%", "x#y", "../leader"} {
		got = ""
		req, err := http.NewRequest(http.MethodPost, "http://leader"+worker.RemovePath(name), nil)
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
