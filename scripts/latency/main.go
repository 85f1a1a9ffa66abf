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
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	flagBin         = flag.String("bin", "", "taskworker binary (default: build one)")
	flagKeep        = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

func main() {
	flag.Parse()
	localcluster.Main("latency", *flagKeep, run)
}

func run(root string) (err error) {
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

	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}

	c, err := localcluster.Start(bin, filepath.Join(root, "cluster"), *flagN, *flagCapacity)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.Logs())
		}
		c.Stop()
	}()
	if err := c.WaitReady(60 * time.Second); err != nil {
		return err
	}
	cl, err := c.Nodes[0].API.Cluster(context.Background())
	if err != nil {
		return err
	}
	var leader, follower *localcluster.Node
	for _, n := range c.Nodes {
		if n.Name == cl.Leader {
			leader = n
		} else if follower == nil {
			follower = n
		}
	}
	if leader == nil || follower == nil {
		return fmt.Errorf("no leader and follower in %+v", cl)
	}

	idle := memory(c)

	fmt.Printf("\n### Latency: idle %d-node cluster, `echo` submitted serially with `POST /v1/tasks?wait=10s`\n\n", *flagN)
	fmt.Println("| submitted to | tasks | median | p90 | p99 | max |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, target := range []struct {
		role string
		n    *localcluster.Node
	}{{"follower", follower}, {"leader", leader}} {
		for i := 0; i < *flagWarmup; i++ {
			if _, err := echo(target.n.API, -1-i); err != nil {
				return fmt.Errorf("warm-up on %s: %w", target.n.Name, err)
			}
		}
		var ds []time.Duration
		for i := 0; i < *flagCount; i++ {
			d, err := echo(target.n.API, i)
			if err != nil {
				return fmt.Errorf("echo %d on %s (%s): %w", i, target.n.Name, target.role, err)
			}
			ds = append(ds, d)
		}
		fmt.Printf("| %s (%s) | %d | %s | %s | %s | %s |\n", target.role, target.n.Name, len(ds),
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

	fmt.Printf("\n### Memory: resident set of each node (VmRSS)\n\n")
	fmt.Println("| node | idle | after the runs above |")
	fmt.Println("|---|---|---|")
	loaded := memory(c)
	for i, n := range c.Nodes {
		fmt.Printf("| %s | %s | %s |\n", n.Name, mib(idle[i]), mib(loaded[i]))
	}
	fmt.Println("\nBaselines, idle per node: Nomad ~92 MB, Dkron ~218 MB.")
	return nil
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
	done, errs int
	wall       time.Duration
	lat        []time.Duration
	firstErr   error
}

func throughput(c *localcluster.Cluster, submitters, total int) tput {
	// One connection pool big enough for every submitter, per node.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 4 * submitters, MaxIdleConnsPerHost: submitters}}
	apis := make([]*client.Client, len(c.Nodes))
	for i, n := range c.Nodes {
		apis[i] = client.New("http://"+n.HTTP, client.WithHTTPClient(hc))
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
