package main

// The upgrade run (-upgrade-from OLD_BIN): the cluster starts on the previous release's binary,
// snapshotting often, with the load running; once every node has a snapshot in its raft dir, the
// nodes are replaced one at a time by the binary under test (-bin), followers first and the
// leader last: SIGTERM (a graceful leave), then a restart on the same data dir, addresses and
// flags, and a wait until the cluster is healthy with one leader. Each restarted node must log
// that raft restored the snapshot the old binary wrote. Then the run's usual checks follow:
// nothing acknowledged lost, results, replicas, and the linearizability of the whole history.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// Timings of an upgrade run.
const (
	upgradeWarmup  = 15 * time.Second // load on the old cluster before the first replacement
	upgradeBetween = 5 * time.Second  // load on the mixed cluster after each replacement
	snapshotWait   = 2 * time.Minute  // for every old node to hold a snapshot
	restoreWait    = time.Minute      // for a new node to log its restore
)

// upgradeArgs make every node snapshot often, so that an old node has written a snapshot (and
// compacted its log) before it is replaced.
var upgradeArgs = []string{"--raft-snapshot-threshold", "64", "--raft-snapshot-interval", "2s"}

// snapshotIDs lists the snapshots in m's raft dir (hashicorp/raft's file store: one directory
// per snapshot, named term-index-time, with a meta.json once it is complete), oldest first.
func snapshotIDs(m *member) []string {
	ents, err := os.ReadDir(filepath.Join(m.DataDir, "raft", "snapshots"))
	if err != nil {
		return nil
	}
	var ids []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(m.DataDir, "raft", "snapshots", e.Name(), "meta.json")); e.IsDir() && err == nil {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids
}

// restoredRE is hashicorp/raft's line for a snapshot restored at start.
var restoredRE = regexp.MustCompile(`restored from snapshot[^\n]*?id=("?)([0-9]+-[0-9]+-[0-9]+)`)

// restoredSnapshot returns the ID of the snapshot m's log says raft restored after byte offset
// from, "" when it says none.
func restoredSnapshot(m *member, from int64) string {
	b, err := os.ReadFile(m.LogPath)
	if err != nil || int64(len(b)) < from {
		return ""
	}
	for _, line := range bytes.Split(b[from:], []byte("\n")) {
		if sm := restoredRE.FindSubmatch(line); sm != nil {
			return string(sm[2])
		}
	}
	return ""
}

func logSize(m *member) int64 {
	fi, err := os.Stat(m.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// upgradeStep is one node's replacement, as measured.
type upgradeStep struct {
	Node      string
	Leader    bool          // it was the leader when it was stopped
	Snapshot  string        // the old binary's latest snapshot in its raft dir before the stop
	Restored  string        // the snapshot the new binary's log says it restored
	Healthy   time.Duration // from the SIGTERM until the cluster was healthy again
	Violation string
}

// upgrade replaces every node running the old binary by the new one, followers first, under the
// load, and returns each replacement; a broken promise goes to v.
func (e *env) upgrade(ctx context.Context, v *violations, logf func(string, ...any)) []upgradeStep {
	sleep(ctx, upgradeWarmup)
	// Every old node must have written a snapshot: the new binary must restore it.
	var last string
	if err := localcluster.Until(snapshotWait, time.Second, func() bool {
		for _, m := range e.members {
			if len(snapshotIDs(m)) == 0 {
				last = m.Name
				return ctx.Err() != nil
			}
		}
		return true
	}); err != nil {
		v.add("upgrade: %s wrote no raft snapshot within %s (-raft-snapshot-threshold 64)", last, snapshotWait)
	}
	var steps []upgradeStep
	for ctx.Err() == nil {
		m, isLeader := e.nextToUpgrade(ctx)
		if m == nil {
			break
		}
		st := upgradeStep{Node: m.Name, Leader: isLeader}
		fail := func(format string, args ...any) {
			st.Violation = fmt.Sprintf("upgrade of %s: ", m.Name) + fmt.Sprintf(format, args...)
			v.add("%s", st.Violation)
		}
		logf("upgrade: %s (leader: %v): SIGTERM, then the new binary on its data dir", m.Name, isLeader)
		t0 := time.Now()
		if err := m.Signal(syscall.SIGTERM); err != nil {
			fail("SIGTERM: %v", err)
		} else if err := m.Wait(termExitTimeout); errors.Is(err, localcluster.ErrTimeout) {
			fail("still running %s after SIGTERM", termExitTimeout)
			m.Kill()
		}
		// Read once the old process is gone: it may have snapshotted while it drained.
		if ids := snapshotIDs(m); len(ids) > 0 {
			st.Snapshot = ids[len(ids)-1]
		}
		from := logSize(m)
		m.old.Store(false)
		if err := e.restart(m); err != nil {
			fail("restart on the new binary: %v", err)
			steps = append(steps, st)
			break
		}
		if err := e.waitHealthy(ctx, 3*time.Minute); err != nil {
			fail("%v", err)
		}
		st.Healthy = time.Since(t0)
		_ = localcluster.Until(restoreWait, 500*time.Millisecond, func() bool {
			st.Restored = restoredSnapshot(m, from)
			return st.Restored != "" || ctx.Err() != nil
		})
		switch {
		case st.Snapshot == "":
			fail("the old binary left no snapshot in its raft dir")
		case st.Restored == "":
			fail("its log does not say that raft restored a snapshot at start (the old binary wrote %s)", st.Snapshot)
		case st.Restored != st.Snapshot:
			fail("raft restored snapshot %s, not the old binary's latest, %s", st.Restored, st.Snapshot)
		}
		logf("upgrade: %s on the new binary, restored snapshot %q, cluster healthy after %s", m.Name, st.Restored, st.Healthy.Round(time.Millisecond))
		steps = append(steps, st)
		sleep(ctx, upgradeBetween)
	}
	return steps
}

// nextToUpgrade picks the next node still on the old binary: a follower while there is one,
// then the leader.
func (e *env) nextToUpgrade(ctx context.Context) (*member, bool) {
	leader := e.leader(ctx)
	var rest *member
	for _, m := range e.members {
		if !m.old.Load() {
			continue
		}
		if m != leader {
			return m, false
		}
		rest = m
	}
	return rest, rest != nil
}
