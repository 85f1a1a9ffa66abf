package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/membership"
)

// opRaftDB is the storage watchdog's check that raft.db is still the file raft writes.
const opRaftDB = "raft.db check"

// storageLoop is the storage watchdog. Every StorageProbeInterval (and whenever a write to
// raft's stores changes the verdict) it probes the data dir (write, sync, remove a small file),
// checks that raft.db is still the file raft opened, reads the free space, and then publishes
// the verdict: health, the gossip flag the leader reads (Meta.StorageFault), the executor and
// the submit path. A node that cannot persist is treated by the cluster like a dead one, and
// recovers by itself once writes succeed again.
func (n *Node) storageLoop(ctx context.Context) {
	tick := time.NewTicker(n.cfg.StorageProbeInterval)
	defer tick.Stop()
	faulty := false
	for {
		changed := n.storage.Changed()
		n.checkStorage()
		ok, reason, shortage := n.storageVerdict()
		if shortage != "" {
			n.metrics.DescriptorShortage()
			n.noisy.Warn("out of file descriptors: the storage probe could not open a file; not a storage fault, this node keeps its role; the connection caps should prevent this, so check RLIMIT_NOFILE and what holds the descriptors",
				"reason", shortage)
		}
		switch {
		case !ok && !faulty:
			n.log.Error("storage fault: this node stops taking work and the leader moves its tasks elsewhere until writes succeed again", "reason", reason)
		case ok && faulty:
			n.log.Info("storage writes succeed again: this node takes work again")
		}
		if ok == faulty || !ok && n.IsLeader() {
			n.publishStorage(!ok)
		}
		faulty = !ok
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-changed:
		}
	}
}

// checkStorage runs the watchdog's checks once.
func (n *Node) checkStorage() {
	dir := n.cfg.DataDir
	_ = n.storage.Probe(dir)
	if n.raftDBFile != nil {
		fi, err := os.Stat(n.raftDB)
		switch {
		case err != nil:
			err = fmt.Errorf("%s is gone under the running node (its writes reach no file; restart it on a sound data dir): %w", n.raftDB, err)
		case !os.SameFile(fi, n.raftDBFile):
			err = fmt.Errorf("%s was replaced under the running node (its writes reach the old file; restart it)", n.raftDB)
		}
		n.storage.Record(opRaftDB, err)
	}
	if dir == "" {
		return
	}
	free, err := store.DiskFree(dir)
	if err != nil {
		n.diskFree.Store(-1)
		return
	}
	n.diskFree.Store(int64(min(free, 1<<62)))
	if n.minFree > 0 && free < n.minFree {
		// Folded by the rate limit: one line, then a count every telemetry.LogRepeatWindow.
		n.noisy.Warn("disk nearly full: free space on the data dir's file system is below --min-free-disk; raft stops persisting when it runs out",
			"dir", dir, "free", humanize.IBytes(free), "min_free_disk", humanize.IBytes(n.minFree))
	}
}

// publishStorage sets this node's gossip flag, and a leader that cannot persist hands its
// leadership to a node that can (raft would only notice once an append fails).
func (n *Node) publishStorage(faulty bool) {
	if err := n.members.UpdateMeta(func(m *membership.Meta) { m.StorageFault = faulty }); err != nil && !errors.Is(err, context.Canceled) {
		n.log.Warn("gossip storage flag", "err", err)
	}
	if faulty && n.IsLeader() {
		if err := n.raft.LeadershipTransfer().Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) {
			n.log.Warn("hand over leadership after a storage fault", "err", err)
		}
	}
	n.membershipChanged()
}

// storageFault reports why this node cannot persist, or "" when it can.
func (n *Node) storageFault() string {
	if ok, reason, _ := n.storageVerdict(); !ok {
		return reason
	}
	return ""
}

// storageVerdict is the storage record's verdict (healthy, or why not), except that a failure for
// want of file descriptors is not a storage fault: it comes back as shortage instead, for
// storageLoop to warn about and count. The probe and a snapshot open a file, so a flood of
// connections that uses up the process's descriptors (EMFILE) or the system's (ENFILE) makes them
// fail although the disk takes writes; called a fault, it would hand leadership away and send the
// node's tasks elsewhere, which is what the flood wants. Raft's log and stable store write to files
// already open, and raft steps down by itself when an append fails, so little is lost by not
// calling this one a fault. It is a warning and a metric instead, while it lasts. The record reports
// its oldest failure as text, and the probe re-records its failure every interval, so a real fault
// that comes during a shortage surfaces at the next probe.
func (n *Node) storageVerdict() (ok bool, reason, shortage string) {
	ok, reason = n.storage.Healthy()
	if !ok && outOfDescriptors(reason) {
		return true, "", reason
	}
	return ok, reason, ""
}

// outOfDescriptors says whether a storage failure's text is EMFILE's or ENFILE's (whose text
// begins with EMFILE's).
func outOfDescriptors(reason string) bool {
	return strings.Contains(reason, syscall.EMFILE.Error())
}
