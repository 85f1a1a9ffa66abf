package fsm

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Admission control: how many tasks may wait to run, in the cluster and per submitter. The caps
// are checked here, in Apply, against the state at the entry's index, so they are exact however
// many submits race through followers, and a batch item past a cap fails alone. The caps travel in
// the command (the Admission of SubmitBatch, ScheduleFire and Retry: every way a task starts to
// wait but a node's own take-back), chosen by the leader before it proposes (the Prepare hooks):
// Apply never reads a node's flags, which may differ between nodes, so every replica refuses the
// same items.

// AdmissionProtocol is the protocol from which a submit carries its Admission (and an ACL
// policy its quota): the leader stamps caps only once every up node decodes them.
const AdmissionProtocol = 5

// Admission is the caps a submit batch is applied under. Waiting tasks are those pending or
// scheduled (delayed): what a backlog holds in every replica's memory.
type Admission struct {
	// MaxPending caps the waiting tasks of the whole cluster: an item that would make more of
	// them fails with ErrQueueFull. 0: no cap.
	MaxPending int `msgpack:"max_pending,omitempty"`
	// Principals caps the waiting tasks of each submitter listed (ErrQuotaExceeded beyond); a
	// submitter not listed has no cap of its own. Sorted by principal, one entry each.
	Principals []PrincipalCap `msgpack:"principals,omitempty"`
}

// PrincipalCap is one submitter's cap on its waiting tasks (0: none).
type PrincipalCap struct {
	Principal  string `msgpack:"principal"`
	MaxPending int    `msgpack:"max_pending"`
}

// Errors of admission control, per submit item.
var (
	// ErrQueueFull: the cluster holds its cap of waiting tasks.
	ErrQueueFull = newError("queue_full", "queue full")
	// ErrQuotaExceeded: the submitter holds its cap of waiting tasks.
	ErrQuotaExceeded = newError("quota_exceeded", "quota exceeded")
)

// comparePrincipal orders a cap against a principal, for binary search in Principals.
func comparePrincipal(c PrincipalCap, p string) int { return strings.Compare(c.Principal, p) }

// principalCap is the cap of one principal, 0 when a has none for it.
func (a *Admission) principalCap(principal string) int {
	i, ok := slices.BinarySearchFunc(a.Principals, principal, comparePrincipal)
	if !ok {
		return 0
	}
	return a.Principals[i].MaxPending
}

// merge adds o's caps to a: the leader stamped both from the same settings, so a principal
// already listed keeps its cap, and the cluster's cap is the lower one that is set.
func (a *Admission) merge(o *Admission) {
	if o.MaxPending > 0 && (a.MaxPending == 0 || o.MaxPending < a.MaxPending) {
		a.MaxPending = o.MaxPending
	}
	for _, c := range o.Principals {
		if i, ok := slices.BinarySearchFunc(a.Principals, c.Principal, comparePrincipal); !ok {
			a.Principals = slices.Insert(a.Principals, i, c)
		}
	}
}

// admit reports why a task submitted by principal may not be added under a (nil: it may). A
// delayed task counts as a pending one: it is held in every replica's memory all the same. f.mu
// is held.
func (f *FSM) admit(a *Admission, principal string) error {
	if a == nil {
		return nil
	}
	if a.MaxPending > 0 && f.tasks.waiting >= a.MaxPending {
		return fmt.Errorf("%w: the cluster holds %d tasks waiting to run, its cap", ErrQueueFull, f.tasks.waiting)
	}
	if c := a.principalCap(principal); c > 0 && f.tasks.waitingBy[principal] >= c {
		return fmt.Errorf("%w: the submitter holds %d tasks waiting to run, its cap", ErrQuotaExceeded, f.tasks.waitingBy[principal])
	}
	return nil
}

// AdmissionEnv is what the leader lends prepareSubmit to stamp a submit's caps.
type AdmissionEnv struct {
	// MaxPending is the cluster's cap on waiting tasks (0: none).
	MaxPending int
	// PrincipalPending is a submitter's cap on its waiting tasks (0: none).
	PrincipalPending func(principal string) int
}

// prepareSubmit stamps the batch's caps from the leader's settings, replacing whatever a
// follower sent: the caps are the leader's to choose. It drops the items' trace contexts while a
// node older than TraceProtocol is up.
func prepareSubmit(f *FSM, _ time.Time, p *SubmitBatch, env PrepareEnv) {
	f.dropTraces(p.Items)
	by := make([]string, len(p.Items))
	for i := range p.Items {
		by[i] = p.Items[i].SubmittedBy
	}
	p.Admission = f.admissionFor(env, by)
}

// prepareRetry stamps the caps of the retried tasks' submitters.
func prepareRetry(f *FSM, _ time.Time, p *Retry, env PrepareEnv) {
	by := make([]string, 0, len(p.IDs))
	f.mu.RLock()
	for _, id := range p.IDs {
		if e, ok := f.tasks.byID[id]; ok {
			if b, ok := f.tasks.submitter(e); ok {
				by = append(by, b)
			}
		}
	}
	f.mu.RUnlock()
	p.Admission = f.admissionFor(env, by)
}

// submitter is the SubmittedBy of e's task, read without thawing a frozen record; false when
// the frozen record does not read.
func (s *store) submitter(e *entry) (string, bool) {
	if e.t != nil {
		return e.t.SubmittedBy, true
	}
	return peekSubmitter(e.cold, s.names.list)
}

// admissionFor is the caps of a command whose tasks the principals submit (a slice it sorts), nil
// for none. While a node older than AdmissionProtocol is up it stamps none (that node could not
// decode them), and tasks are admitted as before.
func (f *FSM) admissionFor(env PrepareEnv, principals []string) *Admission {
	if env.Admission == nil {
		return nil
	}
	a := &Admission{MaxPending: env.Admission.MaxPending}
	if env.Admission.PrincipalPending != nil {
		slices.Sort(principals) // the callers' own slices: sorted once, each principal once
		for _, by := range slices.Compact(principals) {
			if c := env.Admission.PrincipalPending(by); c > 0 {
				a.Principals = append(a.Principals, PrincipalCap{Principal: by, MaxPending: c})
			}
		}
	}
	if a.MaxPending == 0 && len(a.Principals) == 0 {
		return nil
	}
	// Last: it locks and sorts the nodes, which a submit without caps need not.
	if lowest, _ := f.lowestProtocol(); lowest < AdmissionProtocol {
		return nil
	}
	return a
}

// maxRetainedScan bounds how many finished tasks one OverRetained call reads.
const maxRetainedScan = 1 << 20

// OverRetained returns the IDs of the finished tasks past their submitter's retained cap, oldest
// finished first per submitter, at most limit of them: what the leader removes (as retention
// does) so that one submitter's finished tasks cannot fill every node. capOf gives a submitter's
// cap, 0 for none; it is called without the FSM's lock held.
func (f *FSM) OverRetained(capOf func(principal string) int, limit int) []string {
	f.mu.RLock()
	counts := make(map[string]int, len(f.tasks.finishedBy))
	for p, c := range f.tasks.finishedBy {
		counts[p] = c
	}
	f.mu.RUnlock()
	excess, total := map[string]int{}, 0
	for p, c := range counts {
		if cp := capOf(p); cp > 0 && c > cp {
			excess[p] = c - cp
			total += c - cp
		}
	}
	if total == 0 {
		return nil
	}
	total = min(total, limit)
	f.mu.RLock() // held while entries are read: a deleted record's memory is reused
	defer f.mu.RUnlock()
	var out []string
	scanned := 0
	f.tasks.finished.Ascend(func(e *entry) bool {
		scanned++
		by, ok := f.tasks.submitter(e)
		if !ok {
			return scanned < maxRetainedScan
		}
		if excess[by] > 0 {
			excess[by]--
			out = append(out, e.id())
		}
		return len(out) < total && scanned < maxRetainedScan
	})
	return out
}
