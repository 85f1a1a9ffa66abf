package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// Fault kinds. A -leader kind hits the node the cluster names leader at that moment; the plain
// kind a random follower; double runs two single-node faults on two nodes at once.
const (
	kKill            = "kill"
	kKillLeader      = "kill-leader"
	kStop            = "stop"
	kStopLeader      = "stop-leader"
	kTerm            = "term"
	kTermLeader      = "term-leader"
	kDisk            = "disk-full"
	kPartition       = "partition"
	kPartitionLeader = "partition-leader"
	kPartitionPair   = "partition-pair"
	kLoss            = "loss"
	kLossLeader      = "loss-leader"
	kLossPair        = "loss-pair"
	kDelay           = "delay"
	kDelayLeader     = "delay-leader"
	kDelayPair       = "delay-pair"
	kDouble          = "double"
)

var allKinds = []string{kKill, kKillLeader, kStop, kStopLeader, kTerm, kTermLeader, kDisk,
	kPartition, kPartitionLeader, kPartitionPair, kLoss, kLossLeader, kLossPair,
	kDelay, kDelayLeader, kDelayPair, kDouble}

// needs says what a kind needs beyond processes on 127.0.0.1: network namespaces, nftables in
// them, a tmpfs per data dir.
func needs(kind string) (netns, nft, tmpfs bool) {
	switch kind {
	case kPartition, kPartitionLeader, kPartitionPair:
		return true, false, false
	case kLoss, kLossLeader, kLossPair, kDelay, kDelayLeader, kDelayPair:
		return true, true, false
	case kDisk:
		return false, false, true
	}
	return false, false, false
}

// netKind is the family of a network fault kind: kPartition, kLoss or kDelay; pair says it hits
// the victim and one other node only, "" for a kind that is no network fault.
func netKind(kind string) (family string, pair bool) {
	switch kind {
	case kPartition, kPartitionLeader:
		return kPartition, false
	case kPartitionPair:
		return kPartition, true
	case kLoss, kLossLeader:
		return kLoss, false
	case kLossPair:
		return kLoss, true
	case kDelay, kDelayLeader:
		return kDelay, false
	case kDelayPair:
		return kDelay, true
	}
	return "", false
}

// Timings of the faults and of the checks made while they hold.
const (
	goneDeadline    = 45 * time.Second // a node that is gone has nothing running or assigned after this
	netHold         = 10 * time.Second
	diskHold        = 15 * time.Second
	diskStuckAfter  = 10 * time.Second // a task on a full-disk node untouched this long is stuck
	termExitTimeout = 60 * time.Second // a graceful leave with --drain-timeout 5s ends well before
	recoverDeadline = 90 * time.Second
)

// faultRun is one injected fault and what was measured.
type faultRun struct {
	Kind     string
	Victims  []string
	Recovery time.Duration // from injection until a submit was accepted again
	Recover  bool          // false: no submit accepted within recoverDeadline
	Skipped  string        // why the fault could not be injected (no victim)
	Took     bool          // every step of it was injected (not skipped, no step failed)
	Notes    []string      // what was measured of the fault itself (a delay's round trip)
}

// violations collects every broken promise seen during and after the run.
type violations struct {
	mu   sync.Mutex
	list []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	v.list = append(v.list, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.list)
}

// injector runs faults against an env.
type injector struct {
	e     *env
	v     *violations
	kinds []string
	logf  func(format string, args ...any)
}

// pickFollower returns a random member that no fault holds and that is not the leader, taken.
func (in *injector) pickFollower(ctx context.Context) *member {
	leader := in.e.leader(ctx)
	var ok []*member
	for _, m := range in.e.members {
		if m != leader && !isFaulted(m) && m.Running() {
			ok = append(ok, m)
		}
	}
	rand.Shuffle(len(ok), func(i, j int) { ok[i], ok[j] = ok[j], ok[i] })
	for _, m := range ok {
		if m.take() {
			return m
		}
	}
	return nil
}

func (in *injector) pickLeader(ctx context.Context) *member {
	if l := in.e.leader(ctx); l != nil && l.take() {
		return l
	}
	return nil
}

// inject runs one fault of kind to its end (injected, held, healed, restarted) and measures the
// recovery meanwhile.
func (in *injector) inject(ctx context.Context, kind string) faultRun {
	fr := faultRun{Kind: kind}
	var victims []*member
	pick := func(leader bool) *member {
		var m *member
		if leader {
			m = in.pickLeader(ctx)
		} else {
			m = in.pickFollower(ctx)
		}
		if m != nil {
			victims = append(victims, m)
		}
		return m
	}
	type step struct {
		kind string
		m    *member
	}
	var steps []step
	switch kind {
	case kDouble:
		singles := []string{kKill, kStop, kTerm, kPartition}
		if in.e.tmpfs {
			singles = append(singles, kDisk)
		}
		if !in.e.netns {
			singles = slices.DeleteFunc(singles, func(k string) bool { return k == kPartition })
		}
		if in.e.nft {
			singles = append(singles, kLoss, kDelay)
		}
		for i := 0; i < 2; i++ {
			k := singles[rand.IntN(len(singles))]
			if m := pick(i == 0 && rand.IntN(2) == 0); m != nil {
				steps = append(steps, step{k, m})
			}
		}
	case kKillLeader, kStopLeader, kTermLeader, kPartitionLeader, kLossLeader, kDelayLeader:
		if m := pick(true); m != nil {
			steps = append(steps, step{kind, m})
		}
	default:
		if m := pick(false); m != nil {
			steps = append(steps, step{kind, m})
		}
	}
	defer func() {
		for _, m := range victims {
			m.release()
		}
	}()
	if len(steps) == 0 || (kind == kDouble && len(steps) < 2) {
		fr.Skipped = "no victim free"
		return fr
	}
	for _, s := range steps {
		fr.Victims = append(fr.Victims, s.m.Name)
	}
	in.logf("fault %s on %v", kind, fr.Victims)

	injected := make(chan struct{}, len(steps))
	var took atomic.Int32 // steps that took effect
	var notesMu sync.Mutex
	note := func(format string, args ...any) {
		s := fmt.Sprintf(format, args...)
		in.logf("%s", s)
		notesMu.Lock()
		fr.Notes = append(fr.Notes, s)
		notesMu.Unlock()
	}
	var wg sync.WaitGroup
	// Two nodes out of 3 voters is no quorum: nothing can take a gone node's tasks back until
	// one returns, so a double fault there restarts its killed nodes after a hold instead of
	// waiting for that, and does not expect a full-disk node's tasks to move (the checks at the
	// end still judge every task). Loss and delay leave a node in the quorum.
	noQuorum := len(steps) == 2 && len(in.e.members)-2 <= len(in.e.members)/2
	for _, s := range steps {
		if f, _ := netKind(s.kind); f == kLoss || f == kDelay {
			noQuorum = false
		}
	}
	for _, s := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if in.one(ctx, s.kind, s.m, injected, noQuorum, note) {
				took.Add(1)
			}
		}()
	}
	for range steps {
		select {
		case <-injected:
		case <-ctx.Done():
		}
	}
	t0 := time.Now()
	pctx, cancel := context.WithTimeout(ctx, recoverDeadline)
	fr.Recovery, fr.Recover = probe(pctx, in.e, t0)
	cancel()
	if !fr.Recover && ctx.Err() == nil {
		in.v.add("%s on %v: no submit accepted within %s of the injection", kind, fr.Victims, recoverDeadline)
	}
	wg.Wait()
	fr.Took = int(took.Load()) == len(steps)
	notesMu.Lock()
	defer notesMu.Unlock()
	return fr
}

// one injects a single-node fault on m, signals injected, holds it, and undoes it; it reports
// whether the fault took effect (a signal delivered, the disk filled, the network fault set). With
// noQuorum (the other fault of a double leaves no majority) a gone node is restarted after a hold
// rather than once the cluster has taken its tasks back, which it cannot do without a quorum.
func (in *injector) one(ctx context.Context, kind string, m *member, injected chan<- struct{}, noQuorum bool, note func(string, ...any)) bool {
	e := in.e
	done := func() { injected <- struct{}{} }
	checkGone := func() {
		if noQuorum {
			sleep(ctx, time.Duration(3000+rand.IntN(7000))*time.Millisecond)
			return
		}
		in.checkGone(ctx, kind, m)
	}
	switch kind {
	case kKill, kKillLeader:
		m.Kill()
		done()
		checkGone()
		in.restart(kind, m)
		return true
	case kTerm, kTermLeader:
		err := m.Signal(syscall.SIGTERM)
		done()
		if err != nil {
			in.v.add("%s on %s: %v", kind, m.Name, err)
			return false
		}
		if err := m.Wait(termExitTimeout); errors.Is(err, localcluster.ErrTimeout) {
			in.v.add("%s on %s: still running %s after SIGTERM (drain timeout 5s)", kind, m.Name, termExitTimeout)
			m.Kill()
		}
		checkGone()
		in.restart(kind, m)
		return true
	case kStop, kStopLeader:
		err := m.Signal(syscall.SIGSTOP)
		m.setStopped(err == nil)
		done()
		if err != nil {
			in.v.add("%s on %s: %v", kind, m.Name, err)
			return false
		}
		sleep(ctx, time.Duration(3000+rand.IntN(7000))*time.Millisecond)
		_ = m.Signal(syscall.SIGCONT)
		m.setStopped(false)
		return true
	case kDisk:
		if !quorumWithout(ctx, in.e, m.Name) {
			// An earlier fault still holds a voter out (a node that left is re-added as a
			// non-voter first): with this one's log unwritable too, no entry commits, so nothing
			// can take its tasks back until one of them returns.
			noQuorum = true
			note("%s on %s: the other voters are no quorum yet; its tasks cannot move until one returns", kind, m.Name)
		}
		free, err := m.fillDisk()
		done()
		if err != nil {
			in.v.add("%s on %s: %v", kind, m.Name, err)
			return false
		}
		in.checkFullDisk(ctx, m, noQuorum)
		free()
		// A node recovers by itself once writes succeed again.
		if err := localcluster.Until(recoverDeadline, 200*time.Millisecond, func() bool {
			return ctx.Err() != nil || healthOK(m) == nil
		}); err != nil {
			in.v.add("%s on %s: not healthy %s after the disk was freed: %v (its goroutines are in its log: SIGQUIT)", kind, m.Name, recoverDeadline, healthOK(m))
			// A node that does not recover is stuck somewhere: Go's SIGQUIT handler writes every
			// goroutine's stack to its log before it exits, which is what a post-mortem needs.
			_ = m.Signal(syscall.SIGQUIT)
		}
		return true
	case kPartition, kPartitionLeader, kPartitionPair, kLoss, kLossLeader, kLossPair, kDelay, kDelayLeader, kDelayPair:
		family, pair := netKind(kind)
		var peers []*member
		for _, o := range e.members {
			if o != m {
				peers = append(peers, o)
			}
		}
		if pair { // m and one other: both still reach the rest unharmed
			peers = []*member{peers[rand.IntN(len(peers))]}
		}
		heal, err := in.netFault(family, m, peers, note)
		done()
		if err != nil {
			in.v.add("%s on %s: %v", kind, m.Name, err)
			if heal != nil { // a partition that cut some pairs only: undo those
				_ = heal()
			}
			return false
		}
		sleep(ctx, netHold)
		if err := heal(); err != nil {
			in.v.add("%s on %s: heal: %v", kind, m.Name, err)
		}
		return true
	default:
		done()
		in.v.add("unknown fault kind %q", kind)
		return false
	}
}

// netFault starts a network fault of family (kPartition, kLoss, kDelay) between m and each of
// peers, both ways, and returns how to undo it. A delay's round trip is measured from m's
// namespace to the first peer before and after, and noted.
func (in *injector) netFault(family string, m *member, peers []*member, note func(string, ...any)) (heal func() error, err error) {
	e := in.e
	names := make([]string, len(peers))
	for i, p := range peers {
		names[i] = p.Name
	}
	switch family {
	case kPartition:
		var errs []error
		for _, p := range peers {
			errs = append(errs, e.cut(m, p))
		}
		return func() error {
			var errs []error
			for _, p := range peers {
				errs = append(errs, e.uncut(m, p))
			}
			return errors.Join(errs...)
		}, errors.Join(errs...)
	case kLoss:
		heal, err := e.addLoss(m, peers, e.cfg.LossPct)
		if err == nil {
			note("loss %s<->%v: %d%% of packets dropped each way", m.Name, names, e.cfg.LossPct)
		}
		return heal, err
	case kDelay:
		before, errBefore := tcpRTT(m, peers[0])
		df, err := e.addDelay(m, peers, e.cfg.Delay)
		if err != nil {
			return nil, err
		}
		during, errDuring := tcpRTT(m, peers[0])
		if errBefore != nil || errDuring != nil {
			note("delay %s<->%v: +%s each way on TCP; round trip %s->%s not measured: %v", m.Name, names, e.cfg.Delay, m.Name, peers[0].Name, errors.Join(errBefore, errDuring))
		} else {
			note("delay %s<->%v: +%s each way on TCP; round trip %s->%s raft port %s before, %s during", m.Name, names, e.cfg.Delay,
				m.Name, peers[0].Name, roundMs(before), roundMs(during))
		}
		return df.heal, nil
	}
	return nil, fmt.Errorf("no network fault %q", family)
}

func roundMs(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

func (in *injector) restart(kind string, m *member) {
	if err := in.e.restart(m); err != nil {
		in.v.add("%s on %s: restart: %v", kind, m.Name, err)
	}
}

// checkGone waits until no task is running or assigned on m, a node whose process is gone, as
// the leader sees it; after goneDeadline that is a violation.
func (in *injector) checkGone(ctx context.Context, kind string, m *member) {
	var last []string
	asked, lastOK := false, false
	err := localcluster.Until(goneDeadline, 250*time.Millisecond, func() bool {
		if ctx.Err() != nil {
			return true
		}
		on, ok := tasksOn(ctx, in.e, m.Name)
		asked = asked || ok
		lastOK = ok
		if ok {
			last = on
		}
		return ok && len(on) == 0
	})
	if err != nil && !asked {
		in.v.add("%s on %s: no leader to ask for %s while the node was gone (disks: %s)", kind, m.Name, goneDeadline, in.e.diskReport())
	} else if err != nil && !lastOK && len(last) == 0 {
		in.v.add("%s on %s: no leader to ask at the end of %s while the node was gone (last asked: nothing left on it)", kind, m.Name, goneDeadline)
	} else if err != nil {
		in.v.add("%s on %s: %d tasks still running or assigned on the gone node after %s (e.g. %v)", kind, m.Name, len(last), goneDeadline, head(last, 3))
	}
}

// checkFullDisk holds the disk full for diskHold and checks, meanwhile, that m says it is
// unhealthy, and at the end, unless the other fault of a double left no quorum to move them,
// that no task sits on it untouched for diskStuckAfter.
func (in *injector) checkFullDisk(ctx context.Context, m *member, noQuorum bool) {
	end := time.Now().Add(diskHold)
	unhealthy := false
	for time.Now().Before(end) && ctx.Err() == nil {
		if healthOK(m) != nil {
			unhealthy = true
		}
		sleep(ctx, 250*time.Millisecond)
	}
	if !unhealthy {
		in.v.add("%s on %s: /v1/health stayed 200 for %s with its data dir full", kDisk, m.Name, diskHold)
	}
	if noQuorum {
		return
	}
	ts, ok := listOn(ctx, in.e, m.Name)
	if !ok {
		return
	}
	var stuck []string
	for _, t := range ts {
		if (t.State == client.StateAssigned || t.State == client.StateRunning) && len(t.History) > 0 &&
			time.Since(t.History[len(t.History)-1].At) > diskStuckAfter {
			stuck = append(stuck, t.ID+" "+t.State)
		}
	}
	if len(stuck) > 0 {
		in.v.add("%s on %s: %d tasks stuck on the full-disk node for over %s (e.g. %v)", kDisk, m.Name, len(stuck), diskStuckAfter, head(stuck, 3))
	}
}

// healthOK is nil when the node's /v1/health answers 200.
func healthOK(m *member) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.HTTP+"/v1/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health %d", resp.StatusCode)
	}
	return nil
}

// quorumWithout reports whether the raft voters other than node, as the leader sees them, are a
// majority of all voters: whether entries can commit without node. Without a leader to ask it
// says true (the caller then expects what it would with a quorum).
func quorumWithout(ctx context.Context, e *env, node string) bool {
	l := e.leader(ctx)
	if l == nil || !l.usable() {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	cl, err := l.API.Cluster(rctx)
	cancel()
	if err != nil {
		return true
	}
	voters, others := 0, 0
	for _, n := range cl.Nodes {
		if n.RaftRole == "leader" || n.RaftRole == "voter" {
			voters++
			if n.Name != node {
				others++
			}
		}
	}
	return others > voters/2
}

// tasksOn returns the IDs of tasks running or assigned on node, in the leader's view; ok is
// false when there is no leader to ask.
func tasksOn(ctx context.Context, e *env, node string) ([]string, bool) {
	ts, ok := listOn(ctx, e, node)
	var out []string
	for _, t := range ts {
		if t.State == client.StateRunning || t.State == client.StateAssigned {
			out = append(out, t.ID+" "+t.State)
		}
	}
	return out, ok
}

// listOn lists the tasks of node that are assigned or running, as the leader sees them.
func listOn(ctx context.Context, e *env, node string) ([]client.Task, bool) {
	l := e.leader(ctx)
	if l == nil || !l.usable() {
		return nil, false
	}
	var out []client.Task
	for _, st := range []string{client.StateAssigned, client.StateRunning} {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ts, err := l.API.List(rctx, client.ListOptions{State: st, Node: node, Limit: 1000})
		cancel()
		if err != nil {
			return nil, false
		}
		out = append(out, ts...)
	}
	return out, true
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }
