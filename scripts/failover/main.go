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
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
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
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		cleanup()
		os.Exit(1)
	}
	cleanup()
}

// Every process and directory this program makes, for cleanup on exit or interrupt.
var (
	liveMu   sync.Mutex
	liveCmds = map[*exec.Cmd]bool{}
	tempDirs []string
)

func cleanup() {
	liveMu.Lock()
	defer liveMu.Unlock()
	for c := range liveCmds {
		_ = c.Process.Kill()
	}
	if !*flagKeep {
		for _, d := range tempDirs {
			_ = os.RemoveAll(d)
		}
	} else if len(tempDirs) > 0 {
		fmt.Fprintln(os.Stderr, "kept:", strings.Join(tempDirs, " "))
	}
}

func run() error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		cleanup()
		os.Exit(130)
	}()

	root, err := os.MkdirTemp("", "taskworker-failover-")
	if err != nil {
		return err
	}
	liveMu.Lock()
	tempDirs = append(tempDirs, root)
	liveMu.Unlock()

	bin := *flagBin
	if bin == "" {
		bin = filepath.Join(root, "taskworker")
		fmt.Fprintln(os.Stderr, "building taskworker ...")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/taskworker/taskworker").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	if *flagN < 3 {
		return errors.New("-n must be at least 3 (a leader kill needs a quorum left)")
	}

	var worker, leader []result
	for i := 0; i < *flagRuns; i++ {
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
	row("worker kill → its tasks running elsewhere", pick(worker, moved))
	row("leader kill → new leader elected", pick(leader, elected))
	row("leader kill → its tasks running elsewhere", pick(leader, moved))
	row("gossip detection alone (survivor sees `dead`), all kills", append(pick(worker, detect), pick(leader, detect)...))
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
	c, err := startCluster(bin, dir, *flagN, *flagCapacity)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.logs())
		}
		c.stop()
	}()
	if err := c.waitReady(60 * time.Second); err != nil {
		return res, err
	}

	// Long sleeps: they must still be running when we look for them elsewhere.
	ctx := context.Background()
	total := *flagN * *flagPerNode
	var ids []string
	for i := 0; i < total; i++ {
		t, _, err := c.nodes[i%len(c.nodes)].api.Submit(ctx, client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(`{"ms": 600000}`), Timeout: "15m"})
		if err != nil {
			return res, fmt.Errorf("submit: %w", err)
		}
		ids = append(ids, t.ID)
	}
	var placed map[string]string // task -> node
	if err := until(60*time.Second, 50*time.Millisecond, func() bool {
		m, ok := running(c.nodes[0].api, ids)
		placed = m
		return ok && len(m) == total
	}); err != nil {
		return res, errors.New("tasks never all running")
	}
	perNode := map[string][]string{}
	for id, n := range placed {
		perNode[n] = append(perNode[n], id)
	}
	cl, err := c.nodes[0].api.Cluster(ctx)
	if err != nil || cl.Leader == "" {
		return res, fmt.Errorf("cluster view: %v", err)
	}
	var victim *node
	for _, n := range c.nodes {
		if (n.name == cl.Leader) == killLeader && len(perNode[n.name]) > 0 {
			victim = n
			break
		}
	}
	if victim == nil {
		return res, fmt.Errorf("no suitable victim (leader %s, placement %v)", cl.Leader, perNode)
	}
	moved := perNode[victim.name]
	var obs *node // a survivor to watch: the first one that is not the victim
	for _, n := range c.nodes {
		if n != victim {
			obs = n
			break
		}
	}
	res.victim, res.moved = victim.name, len(moved)

	t0 := time.Now()
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	deadline := t0.Add(*flagTimeout)
	for {
		now := time.Now()
		if now.After(deadline) {
			return res, fmt.Errorf("victim %s: after %v: gossip dead %v, new leader %v, moved running %v",
				victim.name, *flagTimeout, ms(res.detect), ms(res.leader), ms(res.moveDone))
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		if cl, err := obs.api.Cluster(rctx); err == nil {
			for _, n := range cl.Nodes {
				if n.Name == victim.name && n.State == "dead" && res.detect == 0 {
					res.detect = time.Since(t0)
				}
			}
			if killLeader && res.leader == 0 && cl.Leader != "" && cl.Leader != victim.name {
				res.leader = time.Since(t0)
			}
		}
		if res.moveDone == 0 {
			if m, ok := running(obs.api, moved); ok && len(m) == len(moved) && (!killLeader || res.leader != 0) {
				elsewhere := true
				for _, n := range m {
					elsewhere = elsewhere && n != victim.name
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
	m, ok := running(obs.api, ids)
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

func until(timeout, every time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(every)
	}
	return nil
}

// --- a cluster of taskworker processes on 127.0.0.1 ---

type node struct {
	name, http, gossip, raft string
	cmd                      *exec.Cmd
	logPath                  string
	api                      *client.Client
}

type cluster struct {
	nodes []*node
}

// freePorts returns k distinct loopback ports, each free for both TCP and UDP (gossip uses both).
// All of them are held until the last is found, so no two are the same; a cluster takes all its
// ports before starting any node, so a starting node cannot take a port another is about to get.
func freePorts(k int) ([]int, error) {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	var out []int
	for tries := 0; len(out) < k; tries++ {
		if tries > 50*k {
			return nil, errors.New("no free ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			out = append(out, port)
		}
	}
	return out, nil
}

func startCluster(bin, dir string, n, capacity int) (*cluster, error) {
	c := &cluster{}
	ports, err := freePorts(3 * n)
	if err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		nd := &node{name: fmt.Sprintf("n%d", i)}
		for j, a := range []*string{&nd.http, &nd.gossip, &nd.raft} {
			*a = fmt.Sprintf("127.0.0.1:%d", ports[3*(i-1)+j])
		}
		data := filepath.Join(dir, nd.name)
		if err := os.MkdirAll(data, 0o755); err != nil {
			c.stop()
			return nil, err
		}
		args := []string{"agent", "--name", nd.name, "--data-dir", data, "--advertise", "127.0.0.1",
			"--gossip-addr", nd.gossip, "--raft-addr", nd.raft, "--http-addr", nd.http,
			"--capacity", fmt.Sprint(capacity), "--files-dir", data}
		if i > 1 {
			args = append(args, "--join", c.nodes[0].gossip)
		}
		nd.logPath = filepath.Join(dir, nd.name+".log")
		f, err := os.Create(nd.logPath)
		if err != nil {
			c.stop()
			return nil, err
		}
		nd.cmd = exec.Command(bin, args...)
		nd.cmd.Stdout, nd.cmd.Stderr = f, f
		nd.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := nd.cmd.Start(); err != nil {
			f.Close()
			c.stop()
			return nil, err
		}
		f.Close()
		liveMu.Lock()
		liveCmds[nd.cmd] = true
		liveMu.Unlock()
		go func(cmd *exec.Cmd) {
			_ = cmd.Wait()
			liveMu.Lock()
			delete(liveCmds, cmd)
			liveMu.Unlock()
		}(nd.cmd)
		nd.api = client.New("http://" + nd.http)
		c.nodes = append(c.nodes, nd)
	}
	return c, nil
}

// waitReady waits for a leader, every node alive with its task types, and min(3, n) raft voters.
func (c *cluster) waitReady(timeout time.Duration) error {
	want := len(c.nodes)
	var last string
	err := until(timeout, 50*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		cl, err := c.nodes[0].api.Cluster(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		alive, voters := 0, 0
		for _, n := range cl.Nodes {
			if n.State == "alive" && len(n.TaskTypes) > 0 {
				alive++
			}
			if n.RaftRole == "leader" || n.RaftRole == "voter" {
				voters++
			}
		}
		last = fmt.Sprintf("leader %q, %d alive, %d voters", cl.Leader, alive, voters)
		return cl.Leader != "" && alive == want && voters >= min(3, want)
	})
	if err != nil {
		return fmt.Errorf("cluster not ready: %s", last)
	}
	return nil
}

func (c *cluster) stop() {
	for _, n := range c.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			_ = n.cmd.Process.Kill()
		}
	}
}

// logs returns the tail of every node's log, for a run that went wrong.
func (c *cluster) logs() string {
	var b strings.Builder
	names := make([]*node, len(c.nodes))
	copy(names, c.nodes)
	sort.Slice(names, func(i, j int) bool { return names[i].name < names[j].name })
	for _, n := range names {
		data, _ := os.ReadFile(n.logPath)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", n.name, n.logPath, strings.Join(lines, "\n"))
	}
	return b.String()
}
