// Command chaos runs a cluster of real taskworker processes under steady load, injects faults
// for a while, lets the cluster settle and proves that nothing acknowledged was lost or
// corrupted.
//
//	go run ./scripts/chaos -duration 2m                 # 3 voters, secure, every fault
//	go run ./scripts/chaos -voters 5 -duration 30m -interval 10s
//	go run ./scripts/chaos -faults kill,stop,partition -insecure
//
// The cluster: -nodes agents (default -voters) started from the binary -bin (built when empty),
// secure by default (cluster CA, join token, mutual TLS) like scripts/cluster.sh, or -insecure.
// Run as root (the normal case here), each node gets a network namespace of its own joined to a
// bridge by a veth pair, with its own address and the default ports, and its data dir on a tmpfs
// of its own (-tmpfs-size). A partition between two nodes gives each a neighbour (ARP) entry for
// the other with a MAC address nobody has: their frames still cross the bridge but no interface
// takes them, so packets vanish silently both ways, gossip (UDP and TCP), raft and internode calls
// alike, while this program still reaches every node's API. A fault-injecting proxy in front of
// the ports was the other choice; it was not taken because a node advertises only a host (its
// ports are its bind ports), so a proxy cannot stand between nodes without a second address per
// node, and a TCP proxy cannot tell which node dialled it (connections come from 127.0.0.1), so
// it could not cut one pair of nodes. The kernel of the machine this was written on has no tc
// netem qdisc, no tc actions and no nfnetlink_queue, so random loss and delay are made with
// nftables (package nftables; left out, saying why, when nft does not work in a namespace). Loss:
// -loss % of the packets between the victim and the chosen peers, each drawn at random (numgen),
// every protocol, both ways, dropped on the input hook of the receiving node's namespace. Delay:
// a TCP proxy in this program, on the bridge address, holds every chunk of bytes (and the FIN)
// for -delay before passing it on, each way; nat rules in the dialling node's namespace send new
// TCP connections to the other node's gossip and raft ports through it, and a reset rule ends the
// connections opened before the fault, so that the nodes reconnect through the proxy. It delays
// raft, internode calls and gossip's TCP side (push-pull, join), not gossip's UDP probes; the
// round trip to a peer's raft port is measured from the victim's namespace before and during the
// fault and printed. tbf (a slow link) was the other option here: its delay is queueing, which
// depends on the traffic, so it cannot be chosen or stated. Without root (or without ip), the
// nodes run on 127.0.0.1 and the network and disk faults are left out, with a line saying so.
//
// Load: -clients submitters, each submitting a short sleep or count task (the result is a
// function of the input), with an idempotency key, retried on other nodes until acknowledged,
// then pausing -pause. Every acknowledgement is written down here: task ID, key, input, time.
//
// Faults, one every -interval for -duration, kinds from -faults (default all): kill (SIGKILL,
// restart once nothing runs on the node), stop (SIGSTOP 3-10 s, SIGCONT), term (SIGTERM, a
// graceful leave, restart), each also -leader; disk-full (fill the node's tmpfs for 15 s);
// partition (cut a node from every other for 10 s), partition-leader, partition-pair (cut two
// nodes from each other only; both still reach the rest); loss, loss-leader, loss-pair (random
// loss for 10 s, between the same nodes as a partition); delay, delay-leader, delay-pair (delay
// for 10 s, likewise); double (two of kill, stop, term, partition, disk-full, loss, delay on two
// nodes at once). After each
// injection a probe submits an echo task to the nodes not under a fault until one is accepted:
// that is the fault's recovery time.
//
// The checks: while a fault holds, a killed or terminated node has nothing running or assigned
// after 45 s, and a node with a full disk says so in /v1/health and holds no task untouched for
// 10 s. After the last fault, once the cluster is healthy (-settle): every acknowledged task is
// terminal and succeeded; its result is the one its input implies and belongs to the attempt the
// history records as final; every run after the first follows an interruption or failure;
// no idempotency key has two tasks; every replica holds the same tasks and, where the nodes serve
// GET /v1/operator/digest, the same FSM digest at the same index. It prints a table and exits 1
// on any violation (130 on Ctrl-C, after removing what it made: processes, mounts, namespaces).
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/agentcred"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// config is one chaos run.
type config struct {
	Bin       string
	Nodes     int
	Voters    int
	Capacity  int
	Insecure  bool
	Duration  time.Duration
	Interval  time.Duration
	Clients   int
	Pause     time.Duration
	Faults    []string
	Settle    time.Duration
	TmpfsSize string
	LossPct   int           // loss faults drop this share of packets, each way
	Delay     time.Duration // delay faults hold TCP data this long, each way
	Loopback  bool          // never use namespaces or tmpfs, even as root
	Strict    bool          // a fault kind this machine cannot inject is an error, not left out
	Keep      bool
	Verbose   bool
	// UpgradeFrom, when set, is the previous release's binary: the run starts the cluster on it
	// and, instead of injecting faults, replaces each node by Bin under the load (upgrade.go).
	UpgradeFrom string
	// PlainGets records plain GETs (this node's replica) instead of ?consistent ones: the
	// linearizability check then finds the stale reads of a lagging or cut-off node.
	PlainGets bool
}

func main() {
	var cfg config
	var faults string
	flag.StringVar(&cfg.Bin, "bin", "", "taskworker binary (default: build one)")
	flag.IntVar(&cfg.Voters, "voters", 3, "raft voters (3 or 5)")
	flag.IntVar(&cfg.Nodes, "nodes", 0, "nodes (default: -voters)")
	flag.IntVar(&cfg.Capacity, "capacity", 4, "capacity of each node")
	flag.BoolVar(&cfg.Insecure, "insecure", false, "run the agents --insecure")
	flag.DurationVar(&cfg.Duration, "duration", 2*time.Minute, "how long faults are injected")
	flag.DurationVar(&cfg.Interval, "interval", 10*time.Second, "a fault starts every interval (or when the previous one has ended)")
	flag.IntVar(&cfg.Clients, "clients", 4, "submitting clients")
	flag.DurationVar(&cfg.Pause, "pause", 150*time.Millisecond, "each client's pause between submits")
	flag.StringVar(&faults, "faults", strings.Join(allKinds, ","), "comma-separated fault kinds")
	flag.DurationVar(&cfg.Settle, "settle", 5*time.Minute, "after the faults, how long the cluster may take to be healthy and finish every task")
	flag.StringVar(&cfg.TmpfsSize, "tmpfs-size", "128m", "size of each node's data dir tmpfs (as root)")
	flag.IntVar(&cfg.LossPct, "loss", 20, "percent of packets a loss fault drops, each way (1-100)")
	flag.DurationVar(&cfg.Delay, "delay", 100*time.Millisecond, "how long a delay fault holds node-to-node TCP data, each way")
	flag.BoolVar(&cfg.Strict, "strict", false, "fail when this machine cannot inject every fault kind asked for, instead of leaving it out")
	flag.BoolVar(&cfg.Loopback, "loopback", false, "run on 127.0.0.1 without namespaces or tmpfs even as root (no network or disk faults)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory (node logs and data)")
	flag.BoolVar(&cfg.Verbose, "v", false, "log every fault as it starts")
	flag.BoolVar(&cfg.PlainGets, "plain-gets", false, "record plain GETs instead of GET ?consistent (reads through a lagging node are then stale, and the linearizability check says so)")
	flag.StringVar(&cfg.UpgradeFrom, "upgrade-from", "", "an upgrade run: start the cluster on this binary (the previous release) and replace each node by -bin under load instead of injecting faults (scripts/upgrade-test)")
	flag.Parse()
	cfg.Faults = splitList(faults)

	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	interrupted := false
	go func() {
		<-sig
		interrupted = true
		fmt.Fprintln(os.Stderr, "chaos: interrupted; cleaning up (again to exit at once)")
		cancel()
		<-sig
		os.Exit(130)
	}()
	rep, err := run(ctx, cfg, os.Stdout, os.Stderr)
	if interrupted {
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	if len(rep.Violations) > 0 {
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// report is the outcome of a run.
type report struct {
	Mode       string
	Elapsed    time.Duration
	Faults     []faultRun
	Skipped    []string // kinds left out
	SkippedWhy string   // and why
	Tasks      taskStats
	GaveUp     int
	Retries    int64
	Replicas   string        // how replicas were compared, and the verdict
	Upgrade    []upgradeStep // an upgrade run's replacements
	Linear     linVerdict
	Violations []string
}

// run is one chaos run; the report's Violations say whether the cluster kept its promises, the
// error whether the run itself could not be made (no binary, no cluster).
func run(ctx context.Context, cfg config, out, logw io.Writer) (*report, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = cfg.Voters
	}
	if cfg.LossPct == 0 {
		cfg.LossPct = 20
	}
	if cfg.Delay == 0 {
		cfg.Delay = 100 * time.Millisecond
	}
	if cfg.LossPct < 1 || cfg.LossPct > 100 || cfg.Delay < 0 {
		return nil, fmt.Errorf("-loss %d, -delay %s: want 1-100 %% and a positive delay", cfg.LossPct, cfg.Delay)
	}
	if cfg.Voters < 3 || cfg.Nodes < cfg.Voters {
		return nil, fmt.Errorf("-voters %d, -nodes %d: want at least 3 voters and as many nodes", cfg.Voters, cfg.Nodes)
	}
	if cfg.UpgradeFrom != "" {
		cfg.Faults = nil
	}
	for _, k := range cfg.Faults {
		if !slices.Contains(allKinds, k) {
			return nil, fmt.Errorf("unknown fault kind %q (known: %s)", k, strings.Join(allKinds, ", "))
		}
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, time.Now().Format("15:04:05 ")+format+"\n", args...)
	}
	root, err := os.MkdirTemp("", "taskworker-chaos-")
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, root: root, prefix: fmt.Sprintf("cw%d", os.Getpid()%100000)}
	defer func() {
		e.close()
		if cfg.Keep {
			logf("kept %s", root)
		} else {
			_ = os.RemoveAll(root)
		}
	}()
	if e.bin, err = localcluster.Binary(cfg.Bin, root); err != nil {
		return nil, err
	}
	if bin, err := filepath.Abs(e.bin); err == nil {
		e.bin = bin
	}
	if cfg.UpgradeFrom != "" {
		if e.oldBin, err = filepath.Abs(cfg.UpgradeFrom); err != nil {
			return nil, err
		}
		if fi, err := os.Stat(e.oldBin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("-upgrade-from %s: not an executable file (%v)", cfg.UpgradeFrom, err)
		}
	}

	rep := &report{}
	var why []string
	if err := canNetns(); err != nil || cfg.Loopback {
		why = append(why, fmt.Sprintf("network faults (%v)", orLoopback(err)))
	} else {
		e.netns = true
	}
	if e.netns {
		if err := canNft(e.prefix); err != nil {
			why = append(why, fmt.Sprintf("loss and delay faults (%v)", err))
		} else {
			e.nft = true
		}
	}
	if err := canTmpfs(); err != nil || cfg.Loopback {
		why = append(why, fmt.Sprintf("disk faults (%v)", orLoopback(err)))
	} else {
		e.tmpfs = true
	}
	var kinds []string
	for _, k := range cfg.Faults {
		wantNetns, wantNft, wantTmpfs := needs(k)
		if (wantNetns && !e.netns) || (wantNft && !e.nft) || (wantTmpfs && !e.tmpfs) {
			rep.Skipped = append(rep.Skipped, k)
			continue
		}
		kinds = append(kinds, k)
	}
	if len(rep.Skipped) > 0 {
		rep.SkippedWhy = "no " + strings.Join(why, ", no ")
		if cfg.Strict {
			return nil, fmt.Errorf("cannot inject %s on this machine: %s", strings.Join(rep.Skipped, ", "), rep.SkippedWhy)
		}
		logf("left out %v: %s", rep.Skipped, rep.SkippedWhy)
	}
	if len(kinds) == 0 && e.oldBin == "" {
		return nil, errors.New("no fault kind left to inject")
	}
	if e.oldBin != "" {
		rep.Mode = "upgrade from " + filepath.Base(e.oldBin) + ", "
	}
	rep.Mode += fmt.Sprintf("%d nodes, %d voters, %s, %s", cfg.Nodes, cfg.Voters,
		map[bool]string{true: "insecure", false: "secure"}[cfg.Insecure],
		map[bool]string{true: "network namespaces + tmpfs data dirs", false: "127.0.0.1"}[e.netns && e.tmpfs])

	fail := func(err error) (*report, error) {
		var b strings.Builder
		if e.cluster != nil {
			e.logTail(&b)
		}
		return nil, fmt.Errorf("%w\n%s", err, b.String())
	}
	logf("starting %s in %s", rep.Mode, root)
	if err := e.start(); err != nil {
		return fail(err)
	}
	if err := e.waitHealthy(ctx, 3*time.Minute); err != nil {
		return fail(err)
	}

	runID := fmt.Sprintf("%x", rand.Uint32())
	l := ledger{hist: newHistory()}
	v := &violations{}
	loadCtx, stopLoad := context.WithCancel(ctx)
	waitLoad := runLoad(loadCtx, e, &l, runID)
	in := &injector{e: e, v: v, kinds: kinds, logf: func(f string, a ...any) {
		if cfg.Verbose {
			logf(f, a...)
		}
	}}
	start := time.Now()
	if e.oldBin != "" {
		logf("load on; replacing each node running %s by %s", e.oldBin, e.bin)
		rep.Upgrade = e.upgrade(ctx, v, logf)
	} else {
		logf("load on; faults for %s, one every %s, then until each kind has taken effect: %s", cfg.Duration, cfg.Interval, strings.Join(kinds, ", "))
	}
	took, tries := map[string]int{}, map[string]int{}
	for i := 0; ctx.Err() == nil && e.oldBin == ""; i++ {
		next := time.Now().Add(cfg.Interval)
		// Every kind in turn, in a shuffled order each round, so that a short run sees each.
		if i%len(kinds) == 0 {
			rand.Shuffle(len(kinds), func(a, b int) { kinds[a], kinds[b] = kinds[b], kinds[a] })
		}
		kind := nextKind(kinds, i, time.Since(start) < cfg.Duration, took, tries)
		if kind == "" {
			break
		}
		// One fault at a time: the next starts on a whole cluster (every node alive, serving and
		// a voter again), so that a single fault never meets the remains of the last one and
		// turns into a double without anyone saying so. A cluster that does not become whole
		// is a violation of its own.
		if err := e.waitWhole(ctx, wholeDeadline); err != nil && ctx.Err() == nil {
			v.add("before %s: %v; disks: %s", kind, err, e.diskReport())
		}
		fr := in.inject(ctx, kind)
		tries[kind]++
		if fr.Took {
			took[kind]++
		}
		rep.Faults = append(rep.Faults, fr)
		sleep(ctx, time.Until(next))
	}
	for _, miss := range missedKinds(kinds, rep.Faults) {
		v.add("%s", miss)
	}
	stopLoad()
	waitLoad()
	rep.Elapsed = time.Since(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	logf("%s over after %s; %d acknowledged; settling", map[bool]string{true: "upgrade", false: "faults"}[e.oldBin != ""],
		rep.Elapsed.Round(time.Second), len(l.snapshot()))

	// Settle: every node running and answering, one leader, every acknowledged task terminal.
	for _, m := range e.members {
		if !m.Running() {
			v.add("%s not running after the faults ended", m.Name)
			_ = e.restart(m)
		}
	}
	if err := e.waitHealthy(ctx, cfg.Settle); err != nil {
		v.add("%v", err)
	}
	acks := l.snapshot()
	var final []client.Task
	_ = localcluster.Until(cfg.Settle, time.Second, func() bool {
		if ctx.Err() != nil {
			return true
		}
		l := e.leader(ctx)
		if l == nil {
			return false
		}
		ts, err := listAll(ctx, l)
		if err != nil {
			return false
		}
		final = ts
		return allTerminal(acks, ts)
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	rep.Tasks, rep.Violations = checkTasks(acks, final, "chaos-"+runID+"-")
	rep.Violations = append(v.all(), rep.Violations...)
	l.mu.Lock()
	rep.GaveUp, rep.Retries = l.gaveUp, l.retries
	rep.Violations = append(rep.Violations, l.conflict...)
	l.mu.Unlock()

	verdict, bad := compareAll(ctx, e)
	rep.Replicas = verdict
	rep.Violations = append(rep.Violations, bad...)

	// A visualization must outlive the run's directory, which is removed without -keep.
	rep.Linear = checkLinear(l.hist.operations(), filepath.Join(os.TempDir(), "taskworker-chaos-"+runID))
	if rep.Linear.Violation != "" {
		rep.Violations = append(rep.Violations, rep.Linear.Violation)
	}

	printReport(out, rep)
	if len(rep.Violations) > 0 {
		var b strings.Builder
		e.logTail(&b)
		fmt.Fprintf(logw, "node logs (tail):\n%s", b.String())
	}
	return rep, nil
}

// maxTries is how often a fault kind that has not taken effect yet is tried after the run's
// duration before the run gives up on it (and reports it).
const maxTries = 3

// nextKind is the fault kind to inject next, "" when the run is over: while the run's duration
// lasts every kind in turn (the caller reshuffles kinds each round); after it, each kind that has
// not taken effect yet, until it has or has been tried maxTries times in all.
func nextKind(kinds []string, i int, during bool, took, tries map[string]int) string {
	if during {
		return kinds[i%len(kinds)]
	}
	for _, k := range kinds {
		if took[k] == 0 && tries[k] < maxTries {
			return k
		}
	}
	return ""
}

// missedKinds names each kind asked for that never took effect, with why: a run in which a kind
// was only skipped (no victim free) or failed to inject has not tested it.
func missedKinds(kinds []string, faults []faultRun) []string {
	var out []string
	for _, k := range kinds {
		var why []string
		took := false
		for _, f := range faults {
			if f.Kind != k {
				continue
			}
			switch {
			case f.Took:
				took = true
			case f.Skipped != "":
				why = append(why, f.Skipped)
			default:
				why = append(why, "injection failed (see above)")
			}
		}
		if took {
			continue
		}
		if len(why) == 0 {
			why = []string{"never tried"}
		}
		out = append(out, fmt.Sprintf("fault kind %s never took effect (%d tries: %s)", k, len(why), strings.Join(why, "; ")))
	}
	return out
}

func orLoopback(err error) error {
	if err == nil {
		return errors.New("-loopback")
	}
	return err
}

// listAll reads every task the node holds, page by page, from its own state.
func listAll(ctx context.Context, m *member) ([]client.Task, error) {
	var out []client.Task
	after := ""
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		page, err := m.API.List(rctx, client.ListOptions{Limit: 1000, After: after})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list tasks on %s: %w", m.Name, err)
		}
		out = append(out, page...)
		if len(page) < 1000 {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

func allTerminal(acks []ack, ts []client.Task) bool {
	state := map[string]string{}
	for _, t := range ts {
		state[t.ID] = t.State
	}
	for _, a := range acks {
		if !client.IsTerminal(state[a.ID]) {
			return false
		}
	}
	return true
}

// digest is GET /v1/operator/digest: a replica's FSM digest at its applied index.
type digest struct {
	Index  uint64 `json:"index"`
	Digest string `json:"digest"`
}

const digestPath = "/v1/operator/digest"

// operatorAPI is m's API with the management credential from its data dir, which a secure
// cluster's operator routes (the digest among them) need; m.API on an insecure one.
func operatorAPI(m *member) *client.Client {
	b, err := os.ReadFile(filepath.Join(m.DataDir, agentcred.TokenFile))
	if err != nil {
		return m.API
	}
	return client.New("http://"+m.HTTP, client.WithToken(strings.TrimSpace(string(b))))
}

// compareAll compares the replicas once they have caught up: their FSM digests at one index
// when every node serves them, and their full task lists always. It polls for up to a minute,
// as a follower may be a few entries behind.
func compareAll(ctx context.Context, e *env) (verdict string, bad []string) {
	var lastDiff, digestNote string
	digestOK := false
	haveDigest := true
	err := localcluster.Until(time.Minute, time.Second, func() bool {
		if ctx.Err() != nil {
			return true
		}
		lists := map[string][]client.Task{}
		for _, m := range e.members {
			ts, err := listAll(ctx, m)
			if err != nil {
				lastDiff = err.Error()
				return false
			}
			lists[m.Name] = ts
		}
		if lastDiff = compareReplicas(lists); lastDiff != "" {
			return false
		}
		if !haveDigest {
			return true
		}
		ds := map[string]digest{}
		for _, m := range e.members {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			raw, err := operatorAPI(m).Raw(rctx, digestPath, nil)
			cancel()
			if client.IsNotFound(err) {
				haveDigest = false
				digestNote = "no " + digestPath + " on " + m.Name
				return true
			}
			var d digest
			if err == nil {
				err = json.Unmarshal(raw, &d)
			}
			if err != nil {
				lastDiff = fmt.Sprintf("digest of %s: %v", m.Name, err)
				return false
			}
			ds[m.Name] = d
		}
		idx, sums := map[uint64]bool{}, map[string][]string{}
		for n, d := range ds {
			idx[d.Index] = true
			sums[d.Digest] = append(sums[d.Digest], n)
		}
		if len(idx) != 1 {
			lastDiff = fmt.Sprintf("digests at different indexes: %v", ds)
			return false
		}
		if len(sums) != 1 {
			lastDiff = fmt.Sprintf("FSM digests differ at one index: %v", ds)
			return true // at one index they can only differ for good
		}
		digestOK = true
		return true
	})
	switch {
	case err != nil || (lastDiff != "" && !digestOK && haveDigest):
		return "replicas differ", []string{"replicas do not agree after a minute: " + lastDiff}
	case digestOK:
		return fmt.Sprintf("%d replicas: same task lists, same FSM digest at one index", len(e.members)), nil
	default:
		return fmt.Sprintf("%d replicas: same task lists (%s)", len(e.members), digestNote), nil
	}
}

// printReport prints the run's table in Markdown.
func printReport(w io.Writer, r *report) {
	if len(r.Upgrade) > 0 {
		fmt.Fprintf(w, "\n### Chaos: %s; nodes replaced under load for %s\n\n", r.Mode, r.Elapsed.Round(time.Second))
	} else {
		fmt.Fprintf(w, "\n### Chaos: %s; faults for %s\n\n", r.Mode, r.Elapsed.Round(time.Second))
		printFaults(w, r)
	}
	printTasks(w, r)
}

// printFaults prints the table of faults and recovery times.
func printFaults(w io.Writer, r *report) {
	fmt.Fprintln(w, "| fault | injected | recovery p50 | p99 | max |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	byKind := map[string][]time.Duration{}
	count := map[string]int{}
	var all []time.Duration
	var kinds []string
	for _, f := range r.Faults {
		if !f.Took {
			continue
		}
		if count[f.Kind] == 0 {
			kinds = append(kinds, f.Kind)
		}
		count[f.Kind]++
		if f.Recover {
			byKind[f.Kind] = append(byKind[f.Kind], f.Recovery)
			all = append(all, f.Recovery)
		}
	}
	sort.Strings(kinds)
	row := func(name string, n int, ds []time.Duration) {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", name, n, pct(ds, 50), pct(ds, 99), pct(ds, 100))
	}
	total := 0
	for _, k := range kinds {
		row(k, count[k], byKind[k])
		total += count[k]
	}
	row("**all**", total, all)
}

// printTasks prints what became of the tasks, the upgrade's steps, the replicas' and the
// linearizability verdicts, and the violations.
func printTasks(w io.Writer, r *report) {
	t := r.Tasks
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| tasks | |")
	fmt.Fprintln(w, "|---|---|")
	for _, kv := range []struct {
		k string
		v any
	}{
		{"acknowledged", t.Acked}, {"succeeded", t.Succeeded}, {"failed", t.Failed},
		{"lost (acknowledged, gone)", t.Lost}, {"stuck (not terminal at the end)", t.Stuck},
		{"stale (result or final record not of the final attempt)", t.Stale},
		{"duplicates (a second task for one idempotency key)", t.Dupes},
		{"re-run after an interruption", t.Reruns}, {"re-run without one", t.Unjust},
		{"cancelled (by the load's cancels)", t.Cancelled},
		{"executions started", t.Attempts}, {"submits given up (never acknowledged)", r.GaveUp},
		{"submit requests retried", r.Retries},
	} {
		fmt.Fprintf(w, "| %s | %v |\n", kv.k, kv.v)
	}
	if len(r.Upgrade) > 0 {
		fmt.Fprintln(w, "\n| upgraded | was leader | old binary's snapshot | restored by the new binary | healthy after |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, u := range r.Upgrade {
			fmt.Fprintf(w, "| %s | %v | %s | %s | %d ms |\n", u.Node, u.Leader, cmp.Or(u.Snapshot, "-"), cmp.Or(u.Restored, "-"), u.Healthy.Milliseconds())
		}
	}
	fmt.Fprintf(w, "\nReplicas: %s.\n", r.Replicas)
	lv := r.Linear
	fmt.Fprintf(w, "\nLinearizability (porcupine): %d operations (%s) on %d tasks, %d unanswered (taken as pending): %s, checked in %s.\n",
		lv.Ops, lv.kinds(), lv.Keys, lv.Pending, map[porcupine.CheckResult]string{porcupine.Ok: "linearizable", porcupine.Illegal: "NOT linearizable",
			porcupine.Unknown: "undecided within " + linCheckTimeout.String()}[lv.Result], lv.Took.Round(time.Millisecond))
	var notes []string
	for _, f := range r.Faults {
		notes = append(notes, f.Notes...)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nLoss and delay as injected (round trips measured from the victim's namespace):")
		for i, n := range notes {
			if i == 30 {
				fmt.Fprintf(w, "- ... and %d more\n", len(notes)-30)
				break
			}
			fmt.Fprintln(w, "-", n)
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, "Left out: %s (%s).\n", strings.Join(r.Skipped, ", "), r.SkippedWhy)
	}
	if len(r.Violations) == 0 {
		fmt.Fprintln(w, "\nNo violations.")
		return
	}
	fmt.Fprintf(w, "\n%d violations:\n", len(r.Violations))
	for i, s := range r.Violations {
		if i == 50 {
			fmt.Fprintf(w, "... and %d more\n", len(r.Violations)-50)
			break
		}
		fmt.Fprintln(w, "-", s)
	}
}

// pct is the p-th percentile (nearest rank) of ds in ms, "-" when there is none.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	i = max(1, min(i, len(s)))
	return fmt.Sprintf("%d ms", s[i-1].Milliseconds())
}
