package raftnode

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

// opWALDir is the storage watchdog's check that the log's dir is still the one raft writes.
const opWALDir = "raft log dir check"

// WatchStorage is the storage watchdog; it runs until ctx ends. Every StorageProbeInterval (and
// whenever a write to raft's stores changes the verdict) it probes the data dir (write, sync,
// remove a small file), checks that the dir of raft's log is still the one raft opened, reads the free space,
// and then publishes the verdict: the gossip flag the leader reads (Meta.StorageFault), and
// StorageChanged; health, the executor and the submit path read StorageFault. A node that cannot
// persist is treated by the cluster like a dead one, and recovers by itself once writes succeed
// again.
func (r *Node) WatchStorage(ctx context.Context) {
	tick := time.NewTicker(r.cfg.StorageProbeInterval)
	defer tick.Stop()
	faulty := false
	for {
		changed := r.storage.Changed()
		r.CheckStorage()
		ok, reason, shortage := r.storageVerdict()
		if shortage != "" {
			r.cfg.DescriptorShortage()
			r.cfg.Noisy.Warn("out of file descriptors: the storage probe could not open a file; not a storage fault, this node keeps its role; the connection caps should prevent this, so check RLIMIT_NOFILE and what holds the descriptors",
				"reason", shortage)
		}
		switch {
		case !ok && !faulty:
			r.cfg.Log.Error("storage fault: this node stops taking work and the leader moves its tasks elsewhere until writes succeed again", "reason", reason)
		case ok && faulty:
			r.cfg.Log.Info("storage writes succeed again: this node takes work again")
		}
		if ok == faulty || !ok && r.IsLeader() {
			r.publishStorage(!ok)
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

// CheckStorage runs the watchdog's checks once (WatchStorage runs them every interval).
func (r *Node) CheckStorage() {
	dir := r.cfg.DataDir
	_ = r.storage.Probe(dir)
	if r.walDirInfo != nil {
		fi, err := os.Stat(r.walDir)
		switch {
		case err != nil:
			err = fmt.Errorf("%s is gone under the running node (its writes reach no file; restart it on a sound data dir): %w", r.walDir, err)
		case !os.SameFile(fi, r.walDirInfo):
			err = fmt.Errorf("%s was replaced under the running node (its writes reach the old files; restart it)", r.walDir)
		}
		r.storage.Record(opWALDir, err)
	}
	if dir == "" {
		return
	}
	free, err := store.DiskFree(dir)
	if err != nil {
		r.diskFree.Store(-1)
		return
	}
	r.diskFree.Store(int64(min(free, 1<<62)))
	if r.cfg.MinFreeDisk > 0 && free < r.cfg.MinFreeDisk {
		// Folded by Noisy's rate limit: one line, then a count of its repeats.
		r.cfg.Noisy.Warn("disk nearly full: free space on the data dir's file system is below --min-free-disk; raft stops persisting when it runs out",
			"dir", dir, "free", humanize.IBytes(free), "min_free_disk", humanize.IBytes(r.cfg.MinFreeDisk))
	}
}

// publishStorage sets this node's gossip flag, and a leader that cannot persist hands its
// leadership to a node that can (raft would only notice once an append fails).
func (r *Node) publishStorage(faulty bool) {
	if err := r.cfg.UpdateMeta(func(m *membership.Meta) { m.StorageFault = faulty }); err != nil && !errors.Is(err, context.Canceled) {
		r.cfg.Log.Warn("gossip storage flag", "err", err)
	}
	if faulty && r.IsLeader() {
		if err := r.raft.LeadershipTransfer().Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) {
			r.cfg.Log.Warn("hand over leadership after a storage fault", "err", err)
		}
	}
	r.cfg.StorageChanged()
}

// StorageFault reports why this node cannot persist, or "" when it can.
func (r *Node) StorageFault() string {
	if ok, reason, _ := r.storageVerdict(); !ok {
		return reason
	}
	return ""
}

// storageVerdict is the storage record's verdict (healthy, or why not), except that a failure for
// want of file descriptors is not a storage fault: it comes back as shortage instead, for
// WatchStorage to warn about and count. The probe and a snapshot open a file, so a flood of
// connections that uses up the process's descriptors (EMFILE) or the system's (ENFILE) makes them
// fail although the disk takes writes; called a fault, it would hand leadership away and send the
// node's tasks elsewhere, which is what the flood wants. Raft's log and stable store write to files
// already open, and raft steps down by itself when an append fails, so little is lost by not
// calling this one a fault. It is a warning and a metric instead, while it lasts. The record reports
// its oldest failure as text, and the probe re-records its failure every interval, so a real fault
// that comes during a shortage surfaces at the next probe.
func (r *Node) storageVerdict() (ok bool, reason, shortage string) {
	ok, reason = r.storage.Healthy()
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

// Health is the record of every write to raft's stores and of the watchdog's probe (tests inject
// faults through it); its Changed channel wakes whoever waits for a new verdict.
func (r *Node) Health() *store.Health { return r.storage }

// DiskFree is the free space on the data dir's file system at the last probe, in bytes; -1 when
// unknown.
func (r *Node) DiskFree() int64 { return r.diskFree.Load() }
