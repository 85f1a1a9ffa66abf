package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// idleLeaderCPU is the leader's CPU use, in percent of one core, over d of an idle cluster.
func (b *bench) idleLeaderCPU(d time.Duration) (float64, error) {
	pid := b.c.Nodes[b.leader].PID()
	before, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(d) // a reading over a fixed span, not a wait for a condition
	after, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	return 100 * float64(after-before) / float64(time.Since(t0)), nil
}

// clusterA runs the figures of a capacity-64 cluster whose state only grows: idle readings,
// latency, the cost curve and the memory figures.
func clusterA(bin, dir string, args []string, s scale, want map[string]bool, r *results) error {
	progress("cluster A: 3 nodes at --capacity 64 ...")
	b, err := startBench(bin, dir, 3, 64, args)
	if err != nil {
		return err
	}
	defer b.stop()
	time.Sleep(s.settle) // let start-up work (registration, first snapshots of gossip) pass
	idleRSS, err := b.rss()
	if err != nil {
		return err
	}
	if want["idle"] {
		pctCPU, err := b.idleLeaderCPU(s.idleFor)
		if err != nil {
			return err
		}
		r.idle = append(r.idle, idlePoint{3, pctCPU})
		r.set("idlerss", "", fmt.Sprintf("%s (mean of 3 nodes; max %s)", mb(mean(idleRSS)), mb(maxOf(idleRSS))))
	}

	if want["latency"] {
		progress("latency: %d serial echo tasks from a follower, then from the leader ...", s.latencyCount)
		for _, t := range []struct {
			key  string
			node int
		}{{"latfollower", b.follower()}, {"latleader", b.leader}} {
			for i := 0; i < 3; i++ { // warm-up: connections, first placements
				if _, _, err := echoWait(b.apis[t.node], -1-i); err != nil {
					return fmt.Errorf("latency warm-up: %w", err)
				}
			}
			var ds []time.Duration
			for i := 0; i < s.latencyCount; i++ {
				d, _, err := echoWait(b.apis[t.node], i)
				if err != nil {
					return fmt.Errorf("latency on %s: %w", b.c.Nodes[t.node].Name, err)
				}
				ds = append(ds, d)
			}
			r.set(t.key, fmt.Sprintf(" (%s)", b.c.Nodes[t.node].Name), fmt.Sprintf("p50 %s, p99 %s (%d tasks, `POST /v1/tasks?wait`)",
				ms(pct(ds, 50)), ms(pct(ds, 99)), len(ds)))
		}
	}

	curve := want["curve"] || want["memory"]
	probeN := max(s.window/2, 50)
	if curve {
		if err := b.curvePoint(probeN, r); err != nil {
			return err
		}
	}

	if curve {
		for _, target := range s.curve[1:] {
			c, err := b.counts()
			if err != nil {
				return err
			}
			if more := target - c.total(); more > 0 {
				progress("cost curve: filling the state to %d tasks ...", target)
				if err := b.fill(more); err != nil {
					return err
				}
				if _, err := b.waitDone(target, drainTimeout(more)); err != nil {
					return err
				}
			}
			if err := b.curvePoint(probeN, r); err != nil {
				return err
			}
		}
	}

	if want["memory"] {
		if err := b.memory(idleRSS, s.memorySettle, r); err != nil {
			return err
		}
	}
	return nil
}

// clusterC runs the rate figures on a fresh capacity-64 cluster, so that the tasks they submit
// do not shift the cost curve's points: single submits, batch submits, completion rate.
func clusterC(bin, dir string, args []string, s scale, want map[string]bool, r *results) error {
	progress("cluster C: 3 nodes at --capacity 64 ...")
	b, err := startBench(bin, dir, 3, 64, args)
	if err != nil {
		return err
	}
	defer b.stop()
	time.Sleep(s.settle)
	if want["submit"] {
		progress("single submits: %d echo tasks from 64 clients to the leader ...", s.submits)
		wall, err := b.submitSingles(s.submits, 64, b.leader)
		if err != nil {
			return err
		}
		rate := float64(s.submits) / wall.Seconds()
		ratio := "no baseline"
		if r.baseline > 0 {
			ratio = fmt.Sprintf("**%.2f ×** the baseline", rate/r.baseline)
		}
		r.set("submit", "", fmt.Sprintf("%s/s = %s (%d echo tasks, 64 clients, `POST /v1/tasks` to the leader)", num(rate), ratio, s.submits))
	}
	if want["batch"] {
		progress("batch submits: %d echo tasks in batches of %d from 8 clients ...", s.batchTasks, batchSize)
		wall, ok, err := b.submitBatches(s.batchTasks, 8)
		switch {
		case errors.Is(err, errNoBatch):
			r.set("batch", "", "n/a (no batch endpoint)")
		case err != nil:
			return err
		default:
			r.set("batch", "", fmt.Sprintf("%s/s (%d tasks, batches of %d, 8 clients to the leader)", num(float64(ok)/wall.Seconds()), ok, batchSize))
		}
	}
	// Whatever was submitted finishes before the next figure.
	if c, err := b.counts(); err != nil {
		return err
	} else if _, err := b.waitDone(c.total(), drainTimeout(c.total()-c.done())); err != nil {
		return err
	}

	if want["complete"] {
		rate, how, err := b.completionRate(s.complete)
		if err != nil {
			return err
		}
		r.set("complete64", "", fmt.Sprintf("%s/s (%d echo tasks %s)", num(rate), s.complete, how))
	}

	return nil
}

// completionRate submits n echo tasks as fast as the cluster takes them and returns tasks done
// per second, from the first submit to the last task done.
func (b *bench) completionRate(n int) (float64, string, error) {
	c0, err := b.counts()
	if err != nil {
		return 0, "", err
	}
	progress("completion rate: %d echo tasks ...", n)
	start := time.Now()
	if err := b.fill(n); err != nil {
		return 0, "", err
	}
	if _, err := b.waitDone(c0.done()+n, drainTimeout(n)); err != nil {
		return 0, "", err
	}
	how := "submitted by 64 clients, single submits"
	if b.batch.Load() > 0 {
		how = "submitted in batches"
	}
	return float64(n) / time.Since(start).Seconds(), how, nil
}

// curvePoint probes the cluster at its present size: n echo tasks from 64 clients with ?wait.
func (b *bench) curvePoint(n int, r *results) error {
	c, err := b.counts()
	if err != nil {
		return err
	}
	progress("cost curve: probing at %d tasks in the state ...", c.total())
	before, err := b.cpu()
	if err != nil {
		return err
	}
	recs, _, err := b.closedLoop(n, 64)
	if err != nil {
		return err
	}
	_, sum, err := b.cpuSince(before)
	if err != nil {
		return err
	}
	rss, err := b.rss()
	if err != nil {
		return err
	}
	var place, lat []time.Duration
	for _, t := range recs {
		if d, ok := placement(t); ok {
			place = append(place, d)
		}
		if t.FinishedAt != nil {
			lat = append(lat, t.FinishedAt.Sub(t.CreatedAt))
		}
	}
	r.curve = append(r.curve, curvePoint{tasks: c.total(), cpuPerTask: sum / time.Duration(n), rss: mean(rss),
		place50: pct(place, 50), place99: pct(place, 99), probeTasks: n, probeLatency: pct(lat, 50)})
	return nil
}

// memory records the memory figures of the state the cost curve left: RSS per node at the end of
// the fill and once the cluster rested for settle (the burst's free heap given back), bytes per
// finished task, the leader's newest snapshot, and how long a follower takes from a restart to
// healthy with that state.
func (b *bench) memory(idleRSS []int64, settle time.Duration, r *results) error {
	c, err := b.counts()
	if err != nil {
		return err
	}
	atFill, err := b.rss()
	if err != nil {
		return err
	}
	progress("memory: RSS at the end of the fill; resting %s ...", settle)
	time.Sleep(settle) // the nodes give free heap back within 10-20 s of the load ending (internal/telemetry/memory.go)
	rss, err := b.rss()
	if err != nil {
		return err
	}
	file, err := b.memStatus("RssFile") // mapped file pages: raft.db's, which the kernel may reclaim
	if err != nil {
		return err
	}
	n := c.total()
	r.set("rss", fmt.Sprintf(" (%s tasks)", num(float64(n))), fmt.Sprintf("%s → %s %s later (mean of 3 nodes; max %s; of it file-backed %s); %s at the end of the fill (max %s)",
		mb(mean(idleRSS)), mb(mean(rss)), settle, mb(maxOf(rss)), mb(mean(file)), mb(mean(atFill)), mb(maxOf(atFill))))
	if n > 0 {
		perTask := func(v []int64) string { return num(float64(mean(v)-mean(idleRSS)) / float64(n)) }
		r.set("bytes", "", fmt.Sprintf("%s bytes per task ((RSS %s after the fill − idle) ÷ %s tasks, mean of the nodes); %s at the end of the fill",
			perTask(rss), settle, num(float64(n)), perTask(atFill)))
	}
	leader := b.c.Nodes[b.leader]
	if sz := snapshotSize(leader.DataDir); sz >= 0 {
		r.set("snapshot", "", fmt.Sprintf("%s (the leader's newest, %s tasks in the state)", mb(sz), num(float64(n))))
	} else {
		r.set("snapshot", "", fmt.Sprintf("none yet (raft had not snapshotted %s tasks)", num(float64(n))))
	}

	f := b.c.Nodes[b.follower()]
	progress("restart: SIGKILL %s, start it again, time until /v1/health answers 200 ...", f.Name)
	f.Kill()
	start := time.Now()
	if err := f.Restart(); err != nil {
		return err
	}
	api := b.apis[b.follower()]
	var last error
	err = localcluster.Until(120*time.Second, 20*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, last = api.Health(ctx)
		return last == nil
	})
	if err != nil {
		return fmt.Errorf("restart of %s: not healthy (last: %v): %w\n%s", f.Name, last, err, b.c.Logs())
	}
	r.set("restart", "", fmt.Sprintf("%s (%s: SIGKILL, restart, until /v1/health is 200; %s tasks)", ms(time.Since(start)), f.Name, num(float64(n))))
	return nil
}

// clusterB runs the figures of the capacity-8 cluster: completion rate and slot bound, CPU per
// task with no backlog and with two, and the burst.
func clusterB(bin, dir string, args []string, s scale, want map[string]bool, r *results) error {
	progress("cluster B: 3 nodes at --capacity 8 ...")
	b, err := startBench(bin, dir, 3, 8, args)
	if err != nil {
		return err
	}
	defer b.stop()
	time.Sleep(s.settle)

	if want["complete"] {
		rate, how, err := b.completionRate(s.complete)
		if err != nil {
			return err
		}
		// The slot bound: 3 nodes × 8 slots, each held for a task's assigned → finished time.
		recs, _, err := b.closedLoop(50, 8)
		if err != nil {
			return err
		}
		var runs []time.Duration
		for _, t := range recs {
			if d, ok := runTime(t); ok {
				runs = append(runs, d)
			}
		}
		bound := "?"
		if d := pct(runs, 50); d > 0 {
			bound = num(float64(3*8) / d.Seconds())
		}
		r.set("complete8", "", fmt.Sprintf("%s/s (%d echo tasks %s); slot bound 3 nodes × 8 ÷ %s (median assigned → finished) = %s/s",
			num(rate), s.complete, how, ms(pct(runs, 50)), bound))
	}

	if want["cpu"] {
		if err := b.cpuPerTask(s, r); err != nil {
			return err
		}
	}
	if want["burst"] {
		if err := b.burstFigure(s.burst, r); err != nil {
			return err
		}
	}
	return nil
}

// cpuPerTask measures cluster CPU per task: with no backlog (64 clients each waiting for its task,
// so at most 64 are ever queued), then with each backlog pending (the backlog submitted first,
// then a window of tasks submitted by 64 clients without waiting, measured until as many more
// tasks are done: the backlog stays about the same meanwhile).
func (b *bench) cpuPerTask(s scale, r *results) error {
	progress("CPU per task: %d echo tasks, no backlog ...", s.window)
	before, err := b.cpu()
	if err != nil {
		return err
	}
	if _, _, err := b.closedLoop(s.window, 64); err != nil {
		return err
	}
	_, sum, err := b.cpuSince(before)
	if err != nil {
		return err
	}
	none := sum / time.Duration(s.window)
	r.set("cpu0", "", fmt.Sprintf("%s (%d echo tasks, 64 clients with `?wait`)", us(none), s.window))

	for i, backlog := range s.backlogs {
		key := fmt.Sprintf("cpu%d", i+1)
		progress("CPU per task: %d pending ...", backlog)
		c, err := b.counts()
		if err != nil {
			return err
		}
		for k := 0; k < 10 && c[api.StatePending] < backlog; k++ {
			if err := b.fill(backlog - c[api.StatePending]); err != nil {
				return err
			}
			if c, err = b.counts(); err != nil {
				return err
			}
		}
		startPending := c[api.StatePending]
		before, err := b.cpu()
		if err != nil {
			return err
		}
		if _, err := b.submitSingles(s.window, 64, -1); err != nil {
			return err
		}
		end, err := b.waitDone(c.done()+s.window, drainTimeout(s.window+backlog))
		if err != nil {
			return err
		}
		_, sum, err := b.cpuSince(before)
		if err != nil {
			return err
		}
		per := sum / time.Duration(s.window)
		r.set(key, fmt.Sprintf(" (%s pending)", num(float64(backlog))), fmt.Sprintf("%s = %.2f × no backlog (%d tasks done while %s → %s were pending)",
			us(per), float64(per)/float64(none), s.window, num(float64(startPending)), num(float64(end[api.StatePending]))))
	}
	c, err := b.counts()
	if err != nil {
		return err
	}
	progress("draining %d pending ...", c.total()-c.done())
	_, err = b.waitDone(c.total(), drainTimeout(c.total()-c.done()))
	return err
}

// sample is one reading during the burst.
type sample struct {
	at            time.Duration
	done, pending int
}

// burstFigure submits n echo tasks as fast as the cluster takes them, reads the done and pending
// counts every half second until all are done, and reports the completion rate over the first
// tenth of them, around the largest backlog and over the last tenth, and the CPU per task of the
// leader and of the followers.
func (b *bench) burstFigure(n int, r *results) error {
	progress("burst: %d echo tasks at --capacity 8 ...", n)
	c0, err := b.counts()
	if err != nil {
		return err
	}
	before, err := b.cpu()
	if err != nil {
		return err
	}
	start := time.Now()
	fillErr := make(chan error, 1)
	go func() { fillErr <- b.fill(n) }()
	var samples []sample
	var mu sync.Mutex
	err = localcluster.Until(drainTimeout(n), 500*time.Millisecond, func() bool {
		c, err := b.counts()
		if err != nil {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		samples = append(samples, sample{time.Since(start), c.done() - c0.done(), c[api.StatePending]})
		return c.done()-c0.done() >= n
	})
	if ferr := <-fillErr; ferr != nil {
		return ferr
	}
	if err != nil {
		return fmt.Errorf("burst of %d not done: %w", n, err)
	}
	per, _, err := b.cpuSince(before)
	if err != nil {
		return err
	}
	var followers time.Duration
	for i, d := range per {
		if i != b.leader {
			followers += d
		}
	}
	followers /= time.Duration(len(per) - 1)

	// Rates over the first and last tenth of the tasks done, and over the samples whose backlog
	// is at least 80 % of the largest.
	rate := func(from, to sample) float64 {
		if to.at <= from.at {
			return 0
		}
		return float64(to.done-from.done) / (to.at - from.at).Seconds()
	}
	zero := sample{}
	first, last := zero, samples[len(samples)-1]
	lastTenthFrom := zero
	peak := 0
	for _, s := range samples {
		if first == zero && s.done >= n/10 {
			first = s
		}
		if s.done <= n-n/10 {
			lastTenthFrom = s
		}
		peak = max(peak, s.pending)
	}
	i0, i1 := -1, -1
	for i, s := range samples {
		if s.pending >= peak*8/10 {
			if i0 < 0 {
				i0 = i
			}
			i1 = i
		}
	}
	hiFrom, hiTo := zero, samples[max(i1, 0)]
	if i0 > 0 {
		hiFrom = samples[i0-1]
	}
	r.set("burst", fmt.Sprintf(" (%s tasks)", num(float64(n))), fmt.Sprintf(
		"done in %s: first tenth %s/s, at the largest backlog (%s pending) %s/s, last tenth %s/s; CPU per task: leader %s, followers %s each",
		last.at.Round(100*time.Millisecond), num(rate(zero, first)), num(float64(peak)), num(rate(hiFrom, hiTo)), num(rate(lastTenthFrom, last)),
		us(per[b.leader]/time.Duration(n)), us(followers/time.Duration(n))))
	return nil
}

// idlePoint is the idle leader's CPU at one cluster size.
type idlePoint struct {
	nodes int
	pct   float64
}

// idleClusters reads the idle leader CPU of every -idle-nodes size but 3 (cluster A's reading).
func idleClusters(bin, root string, args []string, s scale, r *results) error {
	for _, n := range s.idleNodes {
		if n == 3 && len(r.idle) > 0 {
			continue
		}
		progress("idle: %d nodes ...", n)
		b, err := startBench(bin, filepath.Join(root, fmt.Sprintf("idle%d", n)), n, 8, args)
		if err != nil {
			return fmt.Errorf("idle cluster of %d: %w", n, err)
		}
		time.Sleep(s.settle)
		p, err := b.idleLeaderCPU(s.idleFor)
		b.stop()
		if err != nil {
			return err
		}
		r.idle = append(r.idle, idlePoint{n, p})
	}
	var parts []string
	for _, p := range r.idle {
		parts = append(parts, fmt.Sprintf("%.1f %% at %d nodes", p.pct, p.nodes))
	}
	r.set("idlecpu", "", strings.Join(parts, ", ")+fmt.Sprintf(" (over %s)", s.idleFor))
	return nil
}

func maxOf(v []int64) int64 {
	m := int64(-1)
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
