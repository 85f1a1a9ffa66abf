// Command failover measures how fast taskworker moves the tasks of a crashed node.
//
//	go run ./scripts/failover -n 5 -runs 5
//
// Each run starts a fresh cluster of real taskworker processes on free 127.0.0.1 ports in a
// temporary directory, fills every node (the leader too) with long sleep tasks, SIGKILLs one node
// that runs some and polls a survivor's HTTP API every -poll (20 ms) until every task that was on
// the victim is running on another node. Worker kills and leader kills use separate clusters.
// It also reports when the survivor's gossip alone shows the victim as dead. Node logs (stderr)
// are kept in the temporary directory with -keep, and printed for a run that goes wrong.
//
// The freeze experiment SIGSTOPs the leader instead, submits one task through a follower at
// that moment, and times the submit's acknowledgement against the election of a new leader: a
// forward held by the frozen leader must be given up and retried on the new one.
//
//	go run ./scripts/failover -n 3 -runs 5 -experiments freeze
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

var (
	flagN        = flag.Int("n", 5, "nodes per cluster")
	flagRuns     = flag.Int("runs", 5, "runs per experiment (each on a fresh cluster)")
	flagBin      = flag.String("bin", "", "taskworker binary (default: build one)")
	flagCapacity = flag.Int("capacity", 4, "capacity of each node")
	flagPerNode  = flag.Int("per-node", 2, "sleep tasks per node; the rest of the capacity is where moved tasks go")
	flagPoll     = flag.Duration("poll", 20*time.Millisecond, "API poll interval while measuring")
	flagTimeout  = flag.Duration("timeout", 60*time.Second, "give up on one measurement after this long")
	flagKeep     = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
	flagVerbose  = flag.Bool("v", false, "print every run's numbers")
	flagExps     = flag.String("experiments", "kill,freeze", "which experiments to run: kill (worker and leader SIGKILL), freeze (leader SIGSTOP)")
)

func main() {
	flag.Parse()
	localcluster.Main("failover", *flagKeep, run)
}

func run(root string) error {
	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}
	if *flagN < 3 {
		return errors.New("-n must be at least 3 (a leader kill needs a quorum left)")
	}

	exps := strings.Split(*flagExps, ",")
	var worker, leader []result
	var frozen []freezeResult
	for i := 0; i < *flagRuns; i++ {
		if slices.Contains(exps, "freeze") {
			dir := filepath.Join(root, fmt.Sprintf("run%d-freeze", i+1))
			r, err := measureFreeze(bin, dir)
			if err != nil {
				return fmt.Errorf("run %d (freeze leader): %w", i+1, err)
			}
			if *flagVerbose {
				fmt.Fprintf(os.Stderr, "run %d freeze leader %s: new leader %v, submit via a follower acknowledged %v\n",
					i+1, r.victim, ms(r.leader), ms(r.submit))
			}
			frozen = append(frozen, r)
		}
		if !slices.Contains(exps, "kill") {
			continue
		}
		for _, killLeader := range []bool{false, true} {
			dir := filepath.Join(root, fmt.Sprintf("run%d-%s", i+1, map[bool]string{false: "worker", true: "leader"}[killLeader]))
			r, err := measure(bin, dir, killLeader)
			if err != nil {
				return fmt.Errorf("run %d (kill leader: %v): %w", i+1, killLeader, err)
			}
			if *flagVerbose {
				fmt.Fprintf(os.Stderr, "run %d kill %-6s victim %s moved %d: gossip dead %v, new leader %v, running elsewhere %v\n",
					i+1, map[bool]string{false: "worker", true: "leader"}[killLeader], r.victim, r.moved,
					ms(r.detect), ms(r.leader), ms(r.moveDone))
			}
			if killLeader {
				leader = append(leader, r)
			} else {
				worker = append(worker, r)
			}
		}
	}

	pick := func(rs []result, f func(result) time.Duration) []time.Duration {
		var out []time.Duration
		for _, r := range rs {
			out = append(out, f(r))
		}
		return out
	}
	moved := func(r result) time.Duration { return r.moveDone }
	detect := func(r result) time.Duration { return r.detect }
	elected := func(r result) time.Duration { return r.leader }

	fmt.Printf("\n### Failover: %d-node clusters, capacity %d, %d sleep tasks per node, SIGKILL, poll every %v\n\n",
		*flagN, *flagCapacity, *flagPerNode, *flagPoll)
	fmt.Println("| experiment | runs | median | worst |")
	fmt.Println("|---|---|---|---|")
	row := func(name string, ds []time.Duration) {
		fmt.Printf("| %s | %d | %s | %s |\n", name, len(ds), ms(median(ds)), ms(slices.Max(ds)))
	}
	if len(worker) > 0 {
		row("worker kill → its tasks running elsewhere", pick(worker, moved))
		row("leader kill → new leader elected", pick(leader, elected))
		row("leader kill → its tasks running elsewhere", pick(leader, moved))
		row("gossip detection alone (survivor sees `dead`), all kills", append(pick(worker, detect), pick(leader, detect)...))
	}
	if len(frozen) > 0 {
		var elect, sub, after []time.Duration
		for _, r := range frozen {
			elect, sub, after = append(elect, r.leader), append(sub, r.submit), append(after, r.submit-r.leader)
		}
		row("leader freeze (SIGSTOP) → new leader elected", elect)
		row("leader freeze → a submit to a follower acknowledged", sub)
		row("leader freeze → that submit, past the election", after)
	}
	fmt.Println()
	fmt.Println("Baselines: Nomad marks a crashed client `down` after ~26 s (then reschedules); Dkron never re-runs a job whose node died.")
	fmt.Println("Targets: worker kill ≤ 2 s median / ≤ 4 s worst; leader kill ≤ 3 s.")
	return nil
}

type result struct {
	victim   string
	moved    int
	detect   time.Duration // survivor's GET /v1/cluster shows the victim dead
	leader   time.Duration // a survivor names a new leader (leader kills only)
	moveDone time.Duration // every moved task running elsewhere (and, for leader kills, a new leader)
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// measure runs one experiment on a fresh cluster in dir.
func measure(bin, dir string, killLeader bool) (res result, err error) {
	c, err := localcluster.Start(bin, dir, *flagN, *flagCapacity)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.Logs())
		}
		c.Stop()
	}()
	if err := c.WaitReady(60 * time.Second); err != nil {
		return res, err
	}

	// Long sleeps: they must still be running when we look for them elsewhere.
	ctx := context.Background()
	total := *flagN * *flagPerNode
	var ids []string
	for i := 0; i < total; i++ {
		t, _, err := apiOf(c.Nodes[i%len(c.Nodes)]).Submit(ctx, client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(`{"ms": 600000}`), Timeout: "15m"})
		if err != nil {
			return res, fmt.Errorf("submit: %w", err)
		}
		ids = append(ids, t.ID)
	}
	var placed map[string]string // task -> node
	if err := localcluster.Until(60*time.Second, 50*time.Millisecond, func() bool {
		m, ok := running(apiOf(c.Nodes[0]), ids)
		placed = m
		return ok && len(m) == total
	}); err != nil {
		return res, errors.New("tasks never all running")
	}
	perNode := map[string][]string{}
	for id, n := range placed {
		perNode[n] = append(perNode[n], id)
	}
	cl, err := apiOf(c.Nodes[0]).Cluster(ctx)
	if err != nil || cl.Leader == "" {
		return res, fmt.Errorf("cluster view: %v", err)
	}
	var victim *localcluster.Node
	for _, n := range c.Nodes {
		if (n.Name == cl.Leader) == killLeader && len(perNode[n.Name]) > 0 {
			victim = n
			break
		}
	}
	if victim == nil {
		return res, fmt.Errorf("no suitable victim (leader %s, placement %v)", cl.Leader, perNode)
	}
	moved := perNode[victim.Name]
	var obs *localcluster.Node // a survivor to watch: the first one that is not the victim
	for _, n := range c.Nodes {
		if n != victim {
			obs = n
			break
		}
	}
	res.victim, res.moved = victim.Name, len(moved)

	t0 := time.Now()
	_ = victim.Signal(syscall.SIGKILL)
	deadline := t0.Add(*flagTimeout)
	for {
		now := time.Now()
		if now.After(deadline) {
			return res, fmt.Errorf("victim %s: after %v: gossip dead %v, new leader %v, moved running %v",
				victim.Name, *flagTimeout, ms(res.detect), ms(res.leader), ms(res.moveDone))
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		if cl, err := apiOf(obs).Cluster(rctx); err == nil {
			for _, n := range cl.Nodes {
				if n.Name == victim.Name && n.State == "dead" && res.detect == 0 {
					res.detect = time.Since(t0)
				}
			}
			if killLeader && res.leader == 0 && cl.Leader != "" && cl.Leader != victim.Name {
				res.leader = time.Since(t0)
			}
		}
		if res.moveDone == 0 {
			if m, ok := running(apiOf(obs), moved); ok && len(m) == len(moved) && (!killLeader || res.leader != 0) {
				elsewhere := true
				for _, n := range m {
					elsewhere = elsewhere && n != victim.Name
				}
				if elsewhere {
					res.moveDone = time.Since(t0)
				}
			}
		}
		cancel()
		if res.detect != 0 && res.moveDone != 0 {
			break
		}
		time.Sleep(*flagPoll)
	}

	// Nothing lost: every task is still there, running, none failed.
	m, ok := running(apiOf(obs), ids)
	if !ok || len(m) != total {
		return res, fmt.Errorf("after the move only %d of %d tasks are running", len(m), total)
	}
	return res, nil
}

// running returns task -> node for the tasks in ids that are running; ok is false when a read failed.
// It reads the list (newest first) in pages, so one call costs one or a few requests.
func running(api *client.Client, ids []string) (map[string]string, bool) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	out := map[string]string{}
	after := ""
	for {
		page, err := api.List(ctx, client.ListOptions{State: client.StateRunning, Limit: 500, After: after})
		if err != nil {
			return nil, false
		}
		for _, t := range page {
			if want[t.ID] {
				out[t.ID] = t.Node
			}
		}
		if len(page) < 500 {
			return out, true
		}
		after = page[len(page)-1].ID
	}
}

type freezeResult struct {
	victim string
	leader time.Duration // the follower names a new leader
	submit time.Duration // the submit sent through the follower at the freeze is acknowledged
}

// measureFreeze SIGSTOPs the leader of a fresh cluster, submits one task through a follower at
// once, and times, from the SIGSTOP, the follower naming a new leader and the submit's reply.
func measureFreeze(bin, dir string) (res freezeResult, err error) {
	c, err := localcluster.Start(bin, dir, *flagN, *flagCapacity)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.Logs())
		}
		c.Stop()
	}()
	if err := c.WaitReady(60 * time.Second); err != nil {
		return res, err
	}
	ctx := context.Background()
	cl, err := apiOf(c.Nodes[0]).Cluster(ctx)
	if err != nil || cl.Leader == "" {
		return res, fmt.Errorf("cluster view: %v", err)
	}
	var victim, obs *localcluster.Node
	for _, n := range c.Nodes {
		switch {
		case n.Name == cl.Leader:
			victim = n
		case obs == nil:
			obs = n
		}
	}
	if victim == nil || obs == nil {
		return res, fmt.Errorf("leader %s not among the nodes", cl.Leader)
	}
	res.victim = victim.Name
	// Warm the follower's connection to the leader, as under steady load.
	if _, _, err := apiOf(obs).Submit(ctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`0`)}); err != nil {
		return res, fmt.Errorf("warm-up submit: %w", err)
	}

	t0 := time.Now()
	if err := victim.Signal(syscall.SIGSTOP); err != nil {
		return res, err
	}
	defer func() { _ = victim.Signal(syscall.SIGCONT) }() // before c.Stop, deferred earlier
	elected := make(chan time.Duration, 1)
	go func() {
		deadline := t0.Add(*flagTimeout)
		for time.Now().Before(deadline) {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			cl, err := apiOf(obs).Cluster(rctx)
			cancel()
			if err == nil && cl.Leader != "" && cl.Leader != victim.Name {
				elected <- time.Since(t0)
				return
			}
			time.Sleep(*flagPoll)
		}
		elected <- 0
	}()
	sctx, cancel := context.WithTimeout(ctx, *flagTimeout)
	defer cancel()
	_, _, serr := apiOf(obs).Submit(sctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`1`)})
	res.submit = time.Since(t0)
	res.leader = <-elected
	if serr != nil {
		return res, fmt.Errorf("submit via %s with leader %s frozen, after %v: %w", obs.Name, victim.Name, ms(res.submit), serr)
	}
	if res.leader == 0 {
		return res, fmt.Errorf("no new leader within %v", *flagTimeout)
	}
	return res, nil
}

// apiOf is a client of n's HTTP API.
func apiOf(n *localcluster.Node) *client.Client {
	return client.New("http://"+n.HTTP, client.WithToken(n.Token))
}
