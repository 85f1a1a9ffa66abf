// Command latency measures taskworker's submit-to-result latency on an idle cluster, and its
// throughput with parallel submitters.
//
//	go run ./scripts/latency -n 3 -count 100 -concurrency 1,8,32 -total 2000
//
// It starts a fresh cluster of real taskworker processes on free 127.0.0.1 ports in a temporary
// directory. Latency: -count echo tasks, one after another, each `POST /v1/tasks?wait=10s` to a
// follower, then the same to the leader; the clock runs from sending the request to reading the
// finished record. Throughput: for each -concurrency C, C submitters run -total echo tasks the
// same way, sent round robin to every node, and tasks/s is total / wall time.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
)

var (
	flagN           = flag.Int("n", 3, "nodes in the cluster")
	flagCount       = flag.Int("count", 100, "serial echo tasks per target node")
	flagWarmup      = flag.Int("warmup", 5, "untimed echo tasks per target before measuring")
	flagConcurrency = flag.String("concurrency", "", "comma-separated submitter counts for the throughput test (empty: skip)")
	flagTotal       = flag.Int("total", 2000, "echo tasks per throughput test")
	flagCapacity    = flag.Int("capacity", 8, "capacity of each node")
	flagBin         = flag.String("bin", "", "taskworker binary (default: build one)")
	flagKeep        = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "latency:", err)
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

func run() (err error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		cleanup()
		os.Exit(130)
	}()

	var conc []int
	for _, f := range strings.Split(*flagConcurrency, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		c, err := strconv.Atoi(f)
		if err != nil || c < 1 {
			return fmt.Errorf("bad -concurrency %q", *flagConcurrency)
		}
		conc = append(conc, c)
	}

	root, err := os.MkdirTemp("", "taskworker-latency-")
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

	c, err := startCluster(bin, filepath.Join(root, "cluster"), *flagN, *flagCapacity)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.logs())
		}
		c.stop()
	}()
	if err := c.waitReady(60 * time.Second); err != nil {
		return err
	}
	cl, err := c.nodes[0].api.Cluster(context.Background())
	if err != nil {
		return err
	}
	var leader, follower *node
	for _, n := range c.nodes {
		if n.name == cl.Leader {
			leader = n
		} else if follower == nil {
			follower = n
		}
	}
	if leader == nil || follower == nil {
		return fmt.Errorf("no leader and follower in %+v", cl)
	}

	fmt.Printf("\n### Latency: idle %d-node cluster, `echo` submitted serially with `POST /v1/tasks?wait=10s`\n\n", *flagN)
	fmt.Println("| submitted to | tasks | median | p90 | p99 | max |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, target := range []struct {
		role string
		n    *node
	}{{"follower", follower}, {"leader", leader}} {
		for i := 0; i < *flagWarmup; i++ {
			if _, err := echo(target.n.api, -1-i); err != nil {
				return fmt.Errorf("warm-up on %s: %w", target.n.name, err)
			}
		}
		var ds []time.Duration
		for i := 0; i < *flagCount; i++ {
			d, err := echo(target.n.api, i)
			if err != nil {
				return fmt.Errorf("echo %d on %s (%s): %w", i, target.n.name, target.role, err)
			}
			ds = append(ds, d)
		}
		fmt.Printf("| %s (%s) | %d | %s | %s | %s | %s |\n", target.role, target.n.name, len(ds),
			ms(pct(ds, 50)), ms(pct(ds, 90)), ms(pct(ds, 99)), ms(slices.Max(ds)))
	}

	if len(conc) > 0 {
		fmt.Printf("\n### Throughput: %d-node cluster (capacity %d each), %d `echo` tasks per row, tasks sent round robin to every node, each `POST /v1/tasks?wait=10s`\n\n",
			*flagN, *flagCapacity, *flagTotal)
		fmt.Println("| submitters | tasks | wall time | tasks/s | median latency | p99 latency | errors |")
		fmt.Println("|---|---|---|---|---|---|---|")
		for _, cc := range conc {
			r := throughput(c, cc, *flagTotal)
			fmt.Printf("| %d | %d | %s | %.0f | %s | %s | %d |\n", cc, r.done, r.wall.Round(time.Millisecond),
				float64(r.done)/r.wall.Seconds(), ms(pct(r.lat, 50)), ms(pct(r.lat, 99)), r.errs)
			if r.firstErr != nil {
				fmt.Fprintf(os.Stderr, "throughput with %d submitters: first error: %v\n", cc, r.firstErr)
			}
		}
	}
	return nil
}

// echo runs one echo task through api and returns the time from request to finished record.
func echo(api *client.Client, i int) (time.Duration, error) {
	in := json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	t, err := api.SubmitWait(ctx, client.SubmitRequest{Type: "echo", Input: in}, 10*time.Second)
	d := time.Since(start)
	if err != nil {
		return d, err
	}
	if t.State != client.StateSucceeded {
		return d, fmt.Errorf("task %s is %s after %v", t.ID, t.State, d)
	}
	var got, want any
	if json.Unmarshal(t.Result, &got) != nil || json.Unmarshal(in, &want) != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		return d, fmt.Errorf("task %s: result %s, want %s", t.ID, t.Result, in)
	}
	return d, nil
}

type tput struct {
	done, errs int
	wall       time.Duration
	lat        []time.Duration
	firstErr   error
}

func throughput(c *cluster, submitters, total int) tput {
	// One connection pool big enough for every submitter, per node.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 4 * submitters, MaxIdleConnsPerHost: submitters}}
	apis := make([]*client.Client, len(c.nodes))
	for i, n := range c.nodes {
		apis[i] = client.New("http://"+n.http, client.WithHTTPClient(hc))
	}
	var next atomic.Int64
	var mu sync.Mutex
	var r tput
	var wg sync.WaitGroup
	start := time.Now()
	for s := 0; s < submitters; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > total {
					return
				}
				d, err := echo(apis[i%len(apis)], i) // round robin over the nodes
				mu.Lock()
				if err != nil {
					r.errs++
					if r.firstErr == nil {
						r.firstErr = err
					}
				} else {
					r.done++
					r.lat = append(r.lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	hc.CloseIdleConnections()
	return r
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := (p*len(s) + 99) / 100 // ceil(p/100 * n)
	return s[max(k, 1)-1]
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
