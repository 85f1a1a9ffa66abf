// Command batchrate measures how many tasks per second a taskworker cluster accepts through the
// batch endpoint (POST /v1/tasks/batch, up to 1,000 tasks per request and raft entry), beside a
// bare 3-node hashicorp/raft + raft-boltdb cluster measured in the same run (64 callers, 64-byte
// commands: one raft entry per apply).
//
//	go run ./scripts/batchrate -n 3 -total 200000 -clients 8
//
// It starts -n real taskworker processes (--insecure, fsync on) on free 127.0.0.1 ports in a
// temporary directory; -clients submitters send batches of -batch echo tasks round robin to every
// node (so followers forward theirs to the leader), until -total tasks are accepted. A task counts
// once the node answered 201 for it, i.e. once it is committed and applied on the node that took
// the request. The tasks then run at --capacity per node, which the figure does not wait for.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

var (
	flagN        = flag.Int("n", 3, "nodes in the cluster")
	flagTotal    = flag.Int("total", 200_000, "tasks to submit")
	flagBatch    = flag.Int("batch", client.MaxBatchTasks, "tasks per batch request")
	flagClients  = flag.Int("clients", 8, "concurrent submitters")
	flagCapacity = flag.Int("capacity", 8, "--capacity of every node")
	flagBaseline = flag.Duration("baseline", 5*time.Second, "how long the bare-raft baseline runs (0: skip)")
	flagBin      = flag.String("bin", "", "taskworker binary (default: build one)")
	flagKeep     = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

func main() {
	flag.Parse()
	localcluster.Main("batchrate", *flagKeep, run)
}

func run(root string) error {
	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}
	var base float64
	if *flagBaseline > 0 {
		if base, err = baseline(filepath.Join(root, "baseline"), 64, 64, *flagBaseline); err != nil {
			return err
		}
	}
	c, err := localcluster.Start(bin, filepath.Join(root, "cluster"), *flagN, *flagCapacity, "--insecure")
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := c.WaitReady(60 * time.Second); err != nil {
		return err
	}
	accepted, refused, wall, err := submitAll(c)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.Logs())
	}
	rate := float64(accepted) / wall.Seconds()
	fmt.Printf("nodes %d, %d clients, batches of %d, %d tasks accepted (%d refused) in %s\n",
		*flagN, *flagClients, *flagBatch, accepted, refused, wall.Round(time.Millisecond))
	fmt.Printf("%-34s %12s %10s\n", "figure", "per second", "target")
	fmt.Printf("%-34s %12.0f %10s\n", "batch submit: tasks accepted", rate, "≥ 50,000")
	if base > 0 {
		fmt.Printf("%-34s %12.0f %10s\n", "bare raft: applies (64 callers)", base, "")
		fmt.Printf("%-34s %12.2f\n", "ratio tasks/s : raft applies/s", rate/base)
	}
	return nil
}

// submitAll sends *flagTotal echo tasks in batches from *flagClients goroutines, round robin over
// the nodes, and returns how many were accepted and refused and the wall time.
func submitAll(c *localcluster.Cluster) (accepted, refused int64, wall time.Duration, err error) {
	batches := (*flagTotal + *flagBatch - 1) / *flagBatch
	var next atomic.Int64
	var acc, ref atomic.Int64
	var firstErr error
	var once sync.Once
	input := json.RawMessage(`{"payload":"0123456789abcdef"}`)
	reqs := make([]client.SubmitRequest, *flagBatch)
	for i := range reqs {
		reqs[i] = client.SubmitRequest{Type: "echo", Input: input}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *flagClients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				b := int(next.Add(1)) - 1
				if b >= batches || ctx.Err() != nil {
					return
				}
				n := c.Nodes[b%len(c.Nodes)]
				size := min(*flagBatch, *flagTotal-b**flagBatch)
				res, err := n.API.SubmitBatch(ctx, reqs[:size])
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("batch to %s: %w", n.Name, err); cancel() })
					return
				}
				for _, r := range res {
					if r.Status == 201 {
						acc.Add(1)
					} else {
						ref.Add(1)
						once.Do(func() { fmt.Fprintf(os.Stderr, "first refusal: %d %v\n", r.Status, r.Error) })
					}
				}
			}
		}()
	}
	wg.Wait()
	return acc.Load(), ref.Load(), time.Since(start), firstErr
}
