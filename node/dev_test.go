package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/tasks"
)

// TestDevNodeKeepsItsStateInItsTemporaryDir: a --dev node keeps raft's stores in the temporary
// data dir it makes, never in the working directory, and removes that dir on shutdown. Raft's
// store once went to ./raft (the dir was made after raft had taken the empty --data-dir), so a
// second dev node started in the same directory resumed the first one's configuration and never
// elected itself.
func TestDevNodeKeepsItsStateInItsTemporaryDir(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	for round := range 2 { // the second would resume the first's state if it were left in wd
		reg := tasks.NewRegistry()
		if err := tasks.RegisterBuiltins(reg, t.TempDir()); err != nil {
			t.Fatal(err)
		}
		n, err := Start(Config{Name: "dev", Dev: true, GossipAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
			HTTPAddr: "127.0.0.1:0", Capacity: 1, Registry: reg, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		dir := n.cfg.DataDir
		waitFor(t, "the dev node leads", 20*time.Second, n.IsLeader)
		if !strings.HasPrefix(filepath.Base(dir), "taskworker-dev-") {
			t.Fatalf("round %d: data dir %q, want a temporary taskworker-dev-* dir", round, dir)
		}
		if _, err := os.Stat(filepath.Join(dir, "raft", "wal", "wal-meta.db")); err != nil {
			t.Errorf("round %d: raft's store is not in the dev dir: %v", round, err)
		}
		if left, _ := os.ReadDir(wd); len(left) != 0 {
			t.Errorf("round %d: the dev node wrote %d entries into the working directory (%s...)", round, len(left), left[0].Name())
		}
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("round %d: the dev dir %s is still there after shutdown (%v)", round, dir, err)
		}
	}
}
