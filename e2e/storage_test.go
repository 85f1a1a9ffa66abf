package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// stoppedFollowerWithMarker runs a 3-node cluster, has it store an echo of marker on every
// replica, and kills a follower; the caller damages its raft log and restarts it.
func stoppedFollowerWithMarker(t *testing.T, marker string) (*procCluster, *proc) {
	t.Helper()
	pc := startProcCluster(t, 3, "--insecure")
	input, _ := json.Marshal(marker)
	task, _, err := pc.procs[0].client().Submit(context.Background(), client.SubmitRequest{Type: "echo", Input: input})
	if err != nil {
		t.Fatal(err)
	}
	waitTasks(t, "succeeded", 30*time.Second, []string{task.ID}, pc.procs...)
	var victim *proc
	for _, p := range pc.procs {
		if c := p.view(); c != nil && c.Leader != p.Name && victim == nil {
			victim = p
		}
	}
	if victim == nil {
		t.Fatal("no follower")
	}
	// Its FSM holds the task, so its raft log holds the entries.
	waitTasks(t, "succeeded", 30*time.Second, []string{task.ID}, victim)
	pc.kill(victim)
	return pc, victim
}

// exitsWithCorruptError restarts p and checks it exits non-zero, with the corruption and the
// damaged file named in its log and no Go panic.
func exitsWithCorruptError(t *testing.T, pc *procCluster, p *proc, file string, wants ...string) {
	t.Helper()
	before := len(p.Log())
	pc.restart(p)
	err := p.Wait(60 * time.Second)
	if err == nil || errors.Is(err, localcluster.ErrTimeout) {
		t.Fatalf("%s on a damaged raft log: %v, want it to exit non-zero", p.Name, err)
	}
	out := p.Log()[before:]
	for _, want := range append([]string{"corrupt raft data", file, "wipe its data dir"}, wants...) {
		if !strings.Contains(out, want) {
			t.Errorf("log of the failed start does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Errorf("the failed start panicked:\n%s", out)
	}
	t.Logf("%s after restart:\n%s", p.Name, out)
	if n := strings.Count(out, "corrupt raft data"); n != 1 {
		t.Errorf("the corruption is reported %d times, want once:\n%s", n, out)
	}
}

func TestProcessOnCorruptRaftLogEntryExitsNamingIt(t *testing.T) {
	const marker = "integrity-marker-5b1f"
	pc, victim := stoppedFollowerWithMarker(t, marker)
	walDir := filepath.Join(victim.DataDir, "raft", "wal")
	segments, err := filepath.Glob(filepath.Join(walDir, "*.wal"))
	if err != nil || len(segments) == 0 {
		t.Fatalf("no segment files in %s: %v", walDir, err)
	}
	// Change one byte of every copy of the marker.
	flipped := 0
	for _, seg := range segments {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		for at := 0; ; {
			i := bytes.Index(b[at:], []byte(marker))
			if i < 0 {
				break
			}
			b[at+i+len(marker)-1] ^= 0x01
			at += i + len(marker)
			flipped++
		}
		if err := os.WriteFile(seg, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if flipped == 0 {
		t.Fatalf("marker not found in %v", segments)
	}
	exitsWithCorruptError(t, pc, victim, walDir, "at index ", "checksum mismatch")
}

func TestProcessOnTruncatedOrGarbageRaftLogExitsWithoutPanic(t *testing.T) {
	pc, victim := stoppedFollowerWithMarker(t, "truncate-me")
	meta := filepath.Join(victim.DataDir, "raft", "wal", "wal-meta.db")
	if err := os.Truncate(meta, 1000); err != nil {
		t.Fatal(err)
	}
	exitsWithCorruptError(t, pc, victim, meta, "bbolt cannot open it")
	if err := os.WriteFile(meta, bytes.Repeat([]byte("not a bolt db "), 3000), 0o600); err != nil {
		t.Fatal(err)
	}
	exitsWithCorruptError(t, pc, victim, meta, "bbolt cannot open it")
}
