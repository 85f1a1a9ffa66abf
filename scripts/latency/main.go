// Command latency measures taskworker's submit-to-result latency on an idle cluster, and its
// throughput with parallel submitters, for each security mode.
//
//	go run ./scripts/latency -n 3 -count 100 -concurrency 32,64 -total 2000
//	go run ./scripts/latency -modes secure -concurrency 1,8,32   # one mode: the detailed tables
//	go run ./scripts/latency -rounds 3 -concurrency 32,64        # medians of 3 interleaved rounds
//
// For each mode in -modes it starts a fresh cluster of real taskworker processes on free
// 127.0.0.1 ports in a temporary directory, and stops it before the next mode starts:
//
//   - insecure: agents run --insecure (gossip, raft and internode calls in plain text);
//   - secure: the default (cluster CA and join token, raft and internode calls over mutual TLS,
//     encrypted gossip);
//   - secure+acl: secure and --acl; a management token from POST /v1/acl/bootstrap makes a policy
//     allowing submit and read on `echo` and a token with it, and every measured request carries
//     that token, so each one pays the ACL check (on the node it reaches, and again on the leader
//     for a forwarded submit).
//
// Latency: -count echo tasks, one after another, each `POST /v1/tasks?wait=10s` to a follower,
// then the same to the leader; the clock runs from sending the request to reading the finished
// record. Throughput: for each -concurrency C, C submitters run -total echo tasks the same way,
// sent round robin to every node, and tasks/s is total / wall time. The API listens on plain HTTP
// in every mode (the contract's default), so the comparison is the cost of node-to-node security
// and of the ACL check, not of HTTPS to the client.
//
// With one mode and one round it prints the latency, throughput and memory tables; otherwise one
// table comparing the modes, each figure with its ratio to insecure (or to the first mode without
// it). On a busy machine the load drifts while modes run one after another, so -rounds R runs
// every mode R times, rotating which mode goes first, and each figure in the table is the median
// of its R values.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

var (
	flagN           = flag.Int("n", 3, "nodes in the cluster")
	flagCount       = flag.Int("count", 100, "serial echo tasks per target node")
	flagWarmup      = flag.Int("warmup", 5, "untimed echo tasks per target before measuring")
	flagConcurrency = flag.String("concurrency", "", "comma-separated submitter counts for the throughput test (empty: skip)")
	flagTotal       = flag.Int("total", 2000, "echo tasks per throughput test")
	flagCapacity    = flag.Int("capacity", 8, "capacity of each node")
	flagModes       = flag.String("modes", "insecure,secure,secure+acl", "comma-separated security modes, each on a fresh cluster: insecure, secure, secure+acl")
	flagRounds      = flag.Int("rounds", 1, "run every mode this many times, the order rotated each round, and report each figure's median")
	flagBin         = flag.String("bin", "", "taskworker binary (default: build one)")
	flagKeep        = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

// A mode is one way to run the cluster and its clients.
type mode struct {
	name string
	args []string // agent flags
	acl  bool     // bootstrap ACLs and submit with an echo-only token
}

var knownModes = []mode{
	{name: "insecure", args: []string{"--insecure"}},
	{name: "secure"},
	{name: "secure+acl", args: []string{"--acl"}, acl: true},
}

func main() {
	flag.Parse()
	localcluster.Main("latency", *flagKeep, run)
}

func parseModes(s string) ([]mode, error) {
	var out []mode
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		i := slices.IndexFunc(knownModes, func(m mode) bool { return m.name == f })
		if i < 0 {
			return nil, fmt.Errorf("bad -modes %q: unknown mode %q (known: insecure, secure, secure+acl)", s, f)
		}
		if slices.ContainsFunc(out, func(m mode) bool { return m.name == f }) {
			return nil, fmt.Errorf("bad -modes %q: %q twice", s, f)
		}
		out = append(out, knownModes[i])
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("bad -modes %q: no mode", s)
	}
	return out, nil
}

func parseConcurrency(s string) ([]int, error) {
	var conc []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		c, err := strconv.Atoi(f)
		if err != nil || c < 1 {
			return nil, fmt.Errorf("bad -concurrency %q", s)
		}
		conc = append(conc, c)
	}
	return conc, nil
}

// result is what one mode measured.
type result struct {
	mode             mode
	leaderName       string
	followerName     string
	follower, leader []time.Duration
	tput             []tput // one per -concurrency, in order
	idle, loaded     []int64
	nodes            []string
}

func run(root string) error {
	modes, err := parseModes(*flagModes)
	if err != nil {
		return err
	}
	conc, err := parseConcurrency(*flagConcurrency)
	if err != nil {
		return err
	}
	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}

	if *flagRounds < 1 {
		return fmt.Errorf("bad -rounds %d", *flagRounds)
	}
	machine := machineNote()
	runs := make([][]*result, len(modes)) // per mode, one result per round
	for round := 0; round < *flagRounds; round++ {
		for k := range modes {
			i := (k + round) % len(modes) // rotate the order, so no mode always goes first
			m := modes[i]
			if len(modes) > 1 || *flagRounds > 1 {
				fmt.Fprintf(os.Stderr, "round %d/%d, mode %s: fresh %d-node cluster ...\n", round+1, *flagRounds, m.name, *flagN)
			}
			r, err := measure(bin, filepath.Join(root, fmt.Sprintf("%s-%d", m.name, round+1)), m, conc)
			if err != nil {
				return fmt.Errorf("mode %s: %w", m.name, err)
			}
			if len(modes) > 1 || *flagRounds > 1 {
				fmt.Fprintf(os.Stderr, "round %d/%d, mode %s: %s\n", round+1, *flagRounds, m.name, r.summary())
			}
			runs[i] = append(runs[i], r)
		}
	}

	if len(modes) == 1 && *flagRounds == 1 {
		printDetail(runs[0][0], conc)
	} else {
		printComparison(runs, conc)
	}
	fmt.Printf("\n%s\n", machine)
	return nil
}

// machineNote names what the figures were measured on; the load average says how busy the
// (possibly shared) machine was when the run began.
func machineNote() string {
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("Machine: %d CPUs, %s/%s, %s, load average at start %s.",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), load)
}

// setUp starts mode m's cluster in dir and waits until it is ready; with ACLs it also returns
// the echo token, every node's API client then carrying it. cl is the cluster as the first node
// saw it once ready. On an error the cluster is stopped and the error carries its logs.
func setUp(bin, dir string, m mode) (c *localcluster.Cluster, token string, cl *client.Cluster, err error) {
	c, err = localcluster.Start(bin, dir, *flagN, *flagCapacity, m.args...)
	if err != nil {
		return nil, "", nil, err
	}
	started := c // the error returns below set c to nil before this defer runs
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, started.Logs())
			started.Stop()
		}
	}()
	if m.acl {
		if token, err = setupACL(c); err != nil {
			return nil, "", nil, err
		}
	}
	if err := c.WaitReady(60 * time.Second); err != nil {
		return nil, "", nil, err
	}
	if cl, err = apiOf(c.Nodes[0]).Cluster(context.Background()); err != nil {
		return nil, "", nil, err
	}
	if m.acl {
		// The echo token is a raft entry: wait until every node can check it locally, so no
		// measured request fails because its node has not caught up.
		if err := waitTokenEverywhere(c, token); err != nil {
			return nil, "", nil, err
		}
		// Proof that the check is on: the same submit without a token is refused.
		_, err := client.New("http://"+c.Nodes[0].HTTP).SubmitWait(context.Background(),
			client.SubmitRequest{Type: "echo", Input: json.RawMessage(`1`)}, time.Second)
		if !errors.Is(err, &client.APIError{Code: api.CodeUnauthorized}) {
			return nil, "", nil, fmt.Errorf("a submit without a token on an --acl cluster: %v, want unauthorized", err)
		}
		for _, n := range c.Nodes {
			n.Token = token
		}
	}
	return c, token, cl, nil
}

// setupAttempts is how often measure tries to bring a mode's cluster up. On a shared machine
// another process can take a port between FreePorts finding it free and the node binding it; a
// fresh cluster on fresh ports is the cure. The measurements themselves are never retried.
const setupAttempts = 3

// measure runs every measurement of one mode on a fresh cluster in dir, and stops the cluster.
func measure(bin, dir string, m mode, conc []int) (_ *result, err error) {
	var c *localcluster.Cluster
	var token string
	var cl *client.Cluster
	for attempt := 1; ; attempt++ {
		c, token, cl, err = setUp(bin, fmt.Sprintf("%s-try%d", dir, attempt), m)
		if err == nil {
			break
		}
		if attempt == setupAttempts {
			return nil, err
		}
		first, _, _ := strings.Cut(err.Error(), "\n")
		fmt.Fprintf(os.Stderr, "mode %s: cluster set-up failed (%s); again on fresh ports\n", m.name, first)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.Logs())
		}
		c.Stop()
	}()

	var leader, follower *localcluster.Node
	for _, n := range c.Nodes {
		if n.Name == cl.Leader {
			leader = n
		} else if follower == nil {
			follower = n
		}
	}
	if leader == nil || follower == nil {
		return nil, fmt.Errorf("no leader and follower in %+v", cl)
	}

	r := &result{mode: m, leaderName: leader.Name, followerName: follower.Name, idle: memory(c)}
	for _, n := range c.Nodes {
		r.nodes = append(r.nodes, n.Name)
	}
	for _, target := range []struct {
		role string
		n    *localcluster.Node
		out  *[]time.Duration
	}{{"follower", follower, &r.follower}, {"leader", leader, &r.leader}} {
		api := apiOf(target.n)
		for i := 0; i < *flagWarmup; i++ {
			if _, err := echo(api, -1-i); err != nil {
				return nil, fmt.Errorf("warm-up on %s: %w", target.n.Name, err)
			}
		}
		for i := 0; i < *flagCount; i++ {
			d, err := echo(api, i)
			if err != nil {
				return nil, fmt.Errorf("echo %d on %s (%s): %w", i, target.n.Name, target.role, err)
			}
			*target.out = append(*target.out, d)
		}
	}
	for _, cc := range conc {
		t := throughput(c, token, cc, *flagTotal)
		if t.firstErr != nil {
			fmt.Fprintf(os.Stderr, "mode %s, throughput with %d submitters: first error: %v\n", m.name, cc, t.firstErr)
		}
		r.tput = append(r.tput, t)
	}
	r.loaded = memory(c)
	return r, nil
}

// setupACL bootstraps ACLs on c (retrying until there is a leader to apply it), makes the
// management token every node's API client, and returns the secret of a token whose only policy
// allows submit and read on echo: what a team's client would hold.
func setupACL(c *localcluster.Cluster) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mgmt *client.ACLToken
	var lastErr error
	err := localcluster.Until(60*time.Second, 100*time.Millisecond, func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		mgmt, lastErr = apiOf(c.Nodes[0]).ACLBootstrap(rctx)
		return lastErr == nil || errors.Is(lastErr, &client.APIError{Code: api.CodeACLBootstrapped})
	})
	if err != nil {
		return "", fmt.Errorf("ACL bootstrap: %w (last: %v)", err, lastErr)
	}
	if lastErr != nil {
		return "", fmt.Errorf("ACL bootstrap: %w (an earlier attempt that timed out may have applied it)", lastErr)
	}
	for _, n := range c.Nodes {
		n.Token = mgmt.SecretID
	}
	admin := apiOf(c.Nodes[0])
	pol := client.ACLPolicy{Name: "bench-echo", Description: "latency benchmark: echo only",
		Rules: []client.ACLRule{{TaskType: "echo", Capabilities: []string{"submit", "read"}}}}
	if _, err := admin.ACLPolicyApply(ctx, pol.Name, pol); err != nil {
		return "", fmt.Errorf("apply policy %s: %w", pol.Name, err)
	}
	tok, err := admin.ACLTokenCreate(ctx, client.ACLTokenRequest{Policies: []string{pol.Name}, Description: "latency benchmark"})
	if err != nil {
		return "", fmt.Errorf("create echo token: %w", err)
	}
	if tok.SecretID == "" {
		return "", errors.New("create echo token: no secret in the reply")
	}
	return tok.SecretID, nil
}

// waitTokenEverywhere waits until every node knows token and it is not a management token.
func waitTokenEverywhere(c *localcluster.Cluster, token string) error {
	for _, n := range c.Nodes {
		api := client.New("http://"+n.HTTP, client.WithToken(token))
		var last error
		err := localcluster.Until(30*time.Second, 50*time.Millisecond, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			self, err := api.ACLTokenSelf(ctx)
			if err == nil && self.Management {
				err = errors.New("the echo token is a management token")
			}
			last = err
			return err == nil
		})
		if err != nil {
			return fmt.Errorf("echo token on %s: %w (last: %v)", n.Name, err, last)
		}
	}
	return nil
}

func (r *result) summary() string {
	s := fmt.Sprintf("follower %s / %s, leader %s / %s (p50 / p99)",
		ms(pct(r.follower, 50)), ms(pct(r.follower, 99)), ms(pct(r.leader, 50)), ms(pct(r.leader, 99)))
	for _, t := range r.tput {
		s += fmt.Sprintf(", %d submitters %.0f tasks/s", t.submitters, t.rate())
		if t.errs > 0 {
			s += fmt.Sprintf(" (%d errors)", t.errs)
		}
	}
	return s
}

// printDetail prints one mode's latency, throughput and memory tables.
func printDetail(r *result, conc []int) {
	fmt.Printf("\n### Latency (%s): idle %d-node cluster, `echo` submitted serially with `POST /v1/tasks?wait=10s`\n\n", r.mode.name, *flagN)
	fmt.Println("| submitted to | tasks | median | p90 | p99 | max |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, row := range []struct {
		role, name string
		ds         []time.Duration
	}{{"follower", r.followerName, r.follower}, {"leader", r.leaderName, r.leader}} {
		fmt.Printf("| %s (%s) | %d | %s | %s | %s | %s |\n", row.role, row.name, len(row.ds),
			ms(pct(row.ds, 50)), ms(pct(row.ds, 90)), ms(pct(row.ds, 99)), ms(slices.Max(row.ds)))
	}

	if len(conc) > 0 {
		fmt.Printf("\n### Throughput (%s): %d-node cluster (capacity %d each), %d `echo` tasks per row, tasks sent round robin to every node, each `POST /v1/tasks?wait=10s`\n\n",
			r.mode.name, *flagN, *flagCapacity, *flagTotal)
		fmt.Println("| submitters | tasks | wall time | tasks/s | median latency | p99 latency | errors |")
		fmt.Println("|---|---|---|---|---|---|---|")
		for _, t := range r.tput {
			fmt.Printf("| %d | %d | %s | %.0f | %s | %s | %d |\n", t.submitters, t.done, t.wall.Round(time.Millisecond),
				t.rate(), ms(pct(t.lat, 50)), ms(pct(t.lat, 99)), t.errs)
		}
	}

	fmt.Printf("\n### Memory (%s): resident set of each node (VmRSS)\n\n", r.mode.name)
	fmt.Println("| node | idle | after the runs above |")
	fmt.Println("|---|---|---|")
	for i, name := range r.nodes {
		fmt.Printf("| %s | %s | %s |\n", name, mib(r.idle[i]), mib(r.loaded[i]))
	}
	fmt.Println("\nBaselines, idle per node: Nomad ~92 MB, Dkron ~218 MB.")
}

// figures is one mode's row of the comparison: each the median over the mode's rounds.
type figures struct {
	mode                   string
	fp50, fp99, lp50, lp99 time.Duration
	rates                  []float64 // per -concurrency
	idle, loaded           int64     // mean RSS per node
	errs                   int       // throughput errors, summed over rounds
}

func summarize(rs []*result, conc []int) figures {
	f := figures{mode: rs[0].mode.name}
	var fp50, fp99, lp50, lp99 []time.Duration
	var idle, loaded []int64
	rates := make([][]float64, len(conc))
	for _, r := range rs {
		fp50, fp99 = append(fp50, pct(r.follower, 50)), append(fp99, pct(r.follower, 99))
		lp50, lp99 = append(lp50, pct(r.leader, 50)), append(lp99, pct(r.leader, 99))
		idle, loaded = append(idle, mean(r.idle)), append(loaded, mean(r.loaded))
		for i, t := range r.tput {
			rates[i] = append(rates[i], t.rate())
			f.errs += t.errs
		}
	}
	f.fp50, f.fp99, f.lp50, f.lp99 = median(fp50), median(fp99), median(lp50), median(lp99)
	f.idle, f.loaded = median(idle), median(loaded)
	for _, rs := range rates {
		f.rates = append(f.rates, median(rs))
	}
	return f
}

// median of v (the mean of the middle two for an even count); zero for none.
func median[T int64 | float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// printComparison prints one table of every mode's figures, each with its ratio to the baseline
// mode (insecure when measured, else the first): above 1× is slower for latency, and faster for
// tasks/s.
func printComparison(runs [][]*result, conc []int) {
	var fs []figures
	for _, rs := range runs {
		fs = append(fs, summarize(rs, conc))
	}
	base := 0
	for i, f := range fs {
		if f.mode == "insecure" {
			base = i
		}
	}
	b := fs[base]
	rounds := ""
	if *flagRounds > 1 {
		rounds = fmt.Sprintf("; each figure the median of %d rounds, the mode order rotated each round", *flagRounds)
	}
	fmt.Printf("\n### Cost of security: a fresh %d-node cluster per mode (capacity %d each); latency of %d `echo` tasks submitted serially, throughput of %d `echo` tasks per column sent round robin to every node, each `POST /v1/tasks?wait=10s`%s; (N×) is the ratio to %s\n\n",
		*flagN, *flagCapacity, *flagCount, *flagTotal, rounds, b.mode)
	head := "| mode | follower p50 | follower p99 | leader p50 | leader p99 |"
	sep := "|---|---|---|---|---|"
	for _, cc := range conc {
		head += fmt.Sprintf(" tasks/s, %d submitters |", cc)
		sep += "---|"
	}
	head += " RSS per node, idle → after | errors |"
	sep += "---|---|"
	fmt.Println(head)
	fmt.Println(sep)
	for i, f := range fs {
		lat := func(v, bv time.Duration) string {
			if i == base || bv <= 0 {
				return ms(v)
			}
			return fmt.Sprintf("%s (%s)", ms(v), ratio(float64(v)/float64(bv)))
		}
		row := fmt.Sprintf("| %s | %s | %s | %s | %s |", f.mode,
			lat(f.fp50, b.fp50), lat(f.fp99, b.fp99), lat(f.lp50, b.lp50), lat(f.lp99, b.lp99))
		for j, rate := range f.rates {
			if i != base && b.rates[j] > 0 {
				row += fmt.Sprintf(" %.0f (%s) |", rate, ratio(rate/b.rates[j]))
			} else {
				row += fmt.Sprintf(" %.0f |", rate)
			}
		}
		row += fmt.Sprintf(" %s → %s | %d |", mib(f.idle), mib(f.loaded), f.errs)
		fmt.Println(row)
	}
}

func ratio(x float64) string { return fmt.Sprintf("%.2f×", x) }

// mean of the known values in v; -1 when none is known.
func mean(v []int64) int64 {
	var sum, k int64
	for _, x := range v {
		if x >= 0 {
			sum, k = sum+x, k+1
		}
	}
	if k == 0 {
		return -1
	}
	return sum / k
}

// memory reads every node's resident memory; -1 where it cannot.
func memory(c *localcluster.Cluster) []int64 {
	out := make([]int64, len(c.Nodes))
	for i, n := range c.Nodes {
		rss, err := n.RSS()
		if err != nil {
			rss = -1
		}
		out[i] = rss
	}
	return out
}

func mib(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
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
	submitters, done, errs int
	wall                   time.Duration
	lat                    []time.Duration
	firstErr               error
}

func (t tput) rate() float64 {
	if t.wall <= 0 {
		return 0
	}
	return float64(t.done) / t.wall.Seconds()
}

// throughput runs total echo tasks from submitters parallel clients, round robin over c's nodes,
// each request carrying token when it is not empty.
func throughput(c *localcluster.Cluster, token string, submitters, total int) tput {
	// One connection pool big enough for every submitter, per node.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 4 * submitters, MaxIdleConnsPerHost: submitters}}
	opts := []client.Option{client.WithHTTPClient(hc)}
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	apis := make([]*client.Client, len(c.Nodes))
	for i, n := range c.Nodes {
		apis[i] = client.New("http://"+n.HTTP, opts...)
	}
	var next atomic.Int64
	var mu sync.Mutex
	r := tput{submitters: submitters}
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

// apiOf is a client of n's HTTP API with the node's credential.
func apiOf(n *localcluster.Node) *client.Client {
	return client.New("http://"+n.HTTP, client.WithToken(n.Token))
}
