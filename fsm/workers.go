package fsm

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Workers: processes outside the agent that run task types for the cluster (docs/workers.md).
// A worker's record is a Node of its own in the nodes table, with Host naming the node that
// hosts it (holds its lease and runs its attempts on its behalf). Placement treats it as a node;
// membership, raft and protocol checks skip it (Node.IsWorker).
//
// A worker's BootID is its session's public ID: reports are fenced by it as by a node's boot ID,
// and a down or drain names it, so a late command from an old session leaves a new one alone.

// CmdWorker registers a worker, takes it down or sets its draining flag.
const CmdWorker CommandType = 25

// WorkerProtocol is the protocol that introduced workers (CmdWorker).
const WorkerProtocol = 6

// MaxGoneWorkers is how many records of workers that are down or left the table keeps: past it
// the one unchanged longest goes. Workers come and go under new names (the SDKs default to
// HOSTNAME-PID), so their records must not pile up.
const MaxGoneWorkers = 512

// WorkerOp is what a WorkerChange does.
type WorkerOp uint8

// Worker operations.
const (
	// WorkerUp registers Worker (a new session; it replaces a record of its name that is down,
	// or up under a session whose host is down).
	WorkerUp WorkerOp = 1
	// WorkerDown takes the worker down (Left: it left on purpose) and takes back its tasks.
	WorkerDown WorkerOp = 2
	// WorkerDrain sets the worker's draining flag to Draining.
	WorkerDrain WorkerOp = 3
)

// WorkerChange is CmdWorker's payload. Down and drain apply only while the record's BootID is
// BootID.
type WorkerChange struct {
	Op       WorkerOp `msgpack:"op"`
	Worker   *Node    `msgpack:"worker,omitempty"` // up
	Name     string   `msgpack:"name,omitempty"`   // down, drain
	BootID   string   `msgpack:"boot_id,omitempty"`
	Left     bool     `msgpack:"left,omitempty"`
	Draining bool     `msgpack:"draining,omitempty"`
	Reason   string   `msgpack:"reason,omitempty"`
}

// ErrWorkerExists: a worker up names a node, or a worker up under another session on an up host.
var ErrWorkerExists = newError("worker_exists", "a worker or node of that name exists")

func init() {
	register(Spec[WorkerChange]{Type: CmdWorker, Name: "worker", Since: WorkerProtocol, Apply: (*FSM).applyWorker})
}

func (f *FSM) applyWorker(index uint64, now time.Time, p *WorkerChange) ([]ItemResult, error) {
	switch p.Op {
	case WorkerUp:
		return nil, f.workerUp(index, now, p.Worker)
	case WorkerDown, WorkerDrain:
		n, ok := f.nodes[p.Name]
		if !ok || !n.IsWorker() {
			return nil, ErrUnknownNode
		}
		if n.BootID != p.BootID {
			return nil, ErrStale
		}
		if p.Op == WorkerDrain {
			if n.Status == NodeUp {
				n.Draining = p.Draining
				n.ModifyIndex = index
			}
			return nil, nil
		}
		if n.Status == NodeUp {
			f.workerDown(index, now, n, p.Left, p.Reason)
			f.pruneWorkers()
		}
		return nil, nil
	}
	return nil, fmt.Errorf("%w: worker op %d", ErrBadCommand, p.Op)
}

func (f *FSM) workerUp(index uint64, now time.Time, w *Node) error {
	if w == nil || w.Name == "" || w.BootID == "" || w.Host == "" || w.Capacity < 1 {
		return fmt.Errorf("%w: worker up needs a name, a session, a host and a capacity", ErrBadCommand)
	}
	host, ok := f.nodes[w.Host]
	if !ok || host.IsWorker() || host.Status != NodeUp {
		return fmt.Errorf("%w: host %s is not an up node", ErrUnknownNode, w.Host)
	}
	if old, ok := f.nodes[w.Name]; ok {
		switch {
		case !old.IsWorker():
			return fmt.Errorf("%w: %s is a node", ErrWorkerExists, w.Name)
		case old.BootID == w.BootID && old.Status == NodeUp:
			return nil // the same session again
		case old.BootID != w.BootID && old.Status == NodeUp:
			if h, ok := f.nodes[old.Host]; ok && h.Status == NodeUp {
				return fmt.Errorf("%w: worker %s holds a lease on %s", ErrWorkerExists, w.Name, old.Host)
			}
		}
		// Whatever an older session held is gone with it.
		f.takeBack(index, now, w.Name, "worker "+w.Name+" registered again")
	}
	c := w.clone()
	c.Status, c.Draining, c.Protocol = NodeUp, false, 0
	c.GossipAddr, c.RaftAddr = "", ""
	c.RegisteredAt = now
	c.ModifyIndex = index
	f.nodes[c.Name] = &c
	return nil
}

// workerDown takes an up worker down (left: it left) and takes back its tasks.
func (f *FSM) workerDown(index uint64, now time.Time, n *Node, left bool, reason string) {
	n.Status = NodeDown
	if left {
		n.Status = NodeLeft
	}
	n.Draining = false
	n.ModifyIndex = index
	if reason == "" {
		reason = "worker " + n.Name + " " + string(n.Status)
	}
	f.takeBack(index, now, n.Name, reason)
}

// hostGone takes down the up workers the named node hosts: its process, which held their
// sessions, is gone (down, left or restarted).
func (f *FSM) hostGone(index uint64, now time.Time, host string) {
	gone := false
	for _, name := range sortedKeys(f.nodes) {
		if n := f.nodes[name]; n.Host == host && n.Status == NodeUp {
			f.workerDown(index, now, n, false, "host node "+host+" is gone")
			gone = true
		}
	}
	if gone {
		f.pruneWorkers()
	}
}

// pruneWorkers drops the records of gone workers beyond MaxGoneWorkers, unchanged longest first.
func (f *FSM) pruneWorkers() {
	var gone []*Node
	for _, n := range f.nodes {
		if n.IsWorker() && n.Status != NodeUp {
			gone = append(gone, n)
		}
	}
	for _, n := range oldest(gone, MaxGoneWorkers, func(n *Node) (uint64, string) { return n.ModifyIndex, n.Name }) {
		delete(f.nodes, n.Name)
	}
}

// oldest returns the items of all beyond the keep newest, by modify index then key: the ones a
// capped table drops. It sorts all.
func oldest[T any](all []T, keep int, order func(T) (index uint64, key string)) []T {
	if len(all) <= keep {
		return nil
	}
	slices.SortFunc(all, func(a, b T) int {
		ia, ka := order(a)
		ib, kb := order(b)
		return cmp.Or(cmp.Compare(ia, ib), cmp.Compare(ka, kb))
	})
	return all[:len(all)-keep]
}
