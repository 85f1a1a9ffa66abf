package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// The cost table: what a user sees of the cluster's cost per task, in each security mode, on a
// fresh 3-node cluster at --capacity 64 per mode. Each row is one load from 64 clients on this
// host; CPU is every node's utime+stime from the first submit until the last of the row's tasks
// has succeeded, divided by the row's tasks.
type costRow struct {
	mode, load string
	tasks      int
	wall       time.Duration // first submit → last task succeeded
	cpu        time.Duration // cluster CPU per task
	lat        []time.Duration
	refused    int // answers 429 (rate limit) among the row's submits
}

// costLoads are the rows measured on each mode's cluster, in order.
var costLoads = []string{"wait-spread", "wait-leader", "nowait-spread", "wait-spread-pending"}

var costLoadText = map[string]string{
	"wait-spread":         "single submits with `?wait`, spread over the 3 nodes",
	"wait-leader":         "single submits with `?wait`, all to the leader",
	"nowait-spread":       "single submits without `?wait`, spread, until all succeeded",
	"wait-spread-pending": "single submits with `?wait`, spread, %s tasks pending",
}

// costFigure measures the cost table in both modes; args are the bench's agent flags without
// the mode's.
func costFigure(bin, root string, s scale, r *results) error {
	for _, mode := range []string{"secure", "insecure"} {
		var args []string
		if mode == "insecure" {
			args = []string{"--insecure"}
		}
		progress("cost: 3 %s nodes at --capacity 64 ...", mode)
		b, err := startBench(bin, filepath.Join(root, "cost-"+mode), 3, 64, args)
		if err != nil {
			return fmt.Errorf("cost, %s: %w", mode, err)
		}
		err = b.costRows(mode, s, r)
		b.stop()
		if err != nil {
			return fmt.Errorf("cost, %s: %w", mode, err)
		}
	}
	return nil
}

func (b *bench) costRows(mode string, s scale, r *results) error {
	time.Sleep(s.settle)
	for _, load := range costLoads {
		if load == "wait-spread-pending" {
			if err := b.holdPending(s.costPending); err != nil {
				return err
			}
		}
		progress("cost, %s: %s, %d echo tasks from 64 clients ...", mode, load, s.costTasks)
		row, err := b.costRow(mode, load, s.costTasks)
		if err != nil {
			return err
		}
		r.cost = append(r.cost, row)
	}
	return nil
}

// heldQueue is the paused queue that holds the pending backlog of the last row.
const heldQueue = "bench-held"

// holdPending pauses heldQueue and fills it with n echo tasks, which stay pending: the state
// the scheduler and the FSM carry while the row runs.
func (b *bench) holdPending(n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	paused := true
	if _, err := b.apis[b.leader].UpdateQueue(ctx, heldQueue, client.QueueUpdate{Paused: &paused}); err != nil {
		return fmt.Errorf("pause %s: %w", heldQueue, err)
	}
	progress("cost: %d tasks pending in the paused queue %s ...", n, heldQueue)
	url := "http://" + b.c.Nodes[b.leader].HTTP + "/v1/tasks/batch"
	for from := 0; from < n; from += batchSize {
		reqs := make([]api.SubmitRequest, min(batchSize, n-from))
		for j := range reqs {
			reqs[j] = api.SubmitRequest{Type: "echo", Input: echoInput(from + j), Queue: heldQueue}
		}
		ok, err := b.postBatch(url, reqs)
		if err != nil {
			return err
		}
		if ok != len(reqs) {
			return fmt.Errorf("hold pending: %d of %d accepted", ok, len(reqs))
		}
	}
	c, err := b.counts()
	if err != nil {
		return err
	}
	if c[api.StatePending] < n {
		return fmt.Errorf("hold pending: %d pending, want %d", c[api.StatePending], n)
	}
	return nil
}

// costRow runs n echo tasks from 64 clients as load says and measures them until all succeeded.
func (b *bench) costRow(mode, load string, n int) (costRow, error) {
	row := costRow{mode: mode, load: load, tasks: n}
	c0, err := b.counts()
	if err != nil {
		return row, err
	}
	target := -1
	if load == "wait-leader" {
		target = b.leader
	}
	wait := load != "nowait-spread"
	var refused atomic.Int64
	var errs submitErrors
	var mu sync.Mutex
	before, err := b.cpu()
	if err != nil {
		return row, err
	}
	start := time.Now()
	parallel(n, 64, func(i int) {
		api := b.apis[i%len(b.apis)]
		if target >= 0 {
			api = b.apis[target]
		}
		var d time.Duration
		var err error
		if wait {
			d, _, err = echoWait(api, i)
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, _, err = api.Submit(ctx, client.SubmitRequest{Type: "echo", Input: echoInput(i)})
			cancel()
		}
		var ae *client.APIError
		if errors.As(err, &ae) && ae.StatusCode == http.StatusTooManyRequests {
			refused.Add(1)
		}
		if err != nil {
			errs.add(err)
			return
		}
		if wait {
			mu.Lock()
			row.lat = append(row.lat, d)
			mu.Unlock()
		}
	})
	row.refused = int(refused.Load())
	if err := errs.err(fmt.Sprintf("%s: %d echo tasks", load, n)); err != nil && row.refused == 0 {
		return row, err
	}
	if _, err := b.waitDone(c0.done()+n-row.refused, drainTimeout(n)); err != nil {
		return row, err
	}
	row.wall = time.Since(start)
	_, sum, err := b.cpuSince(before)
	if err != nil {
		return row, err
	}
	row.cpu = sum / time.Duration(max(1, n-row.refused))
	return row, nil
}

// printCost prints the cost table, with the secure/insecure ratio of CPU per task per load.
func (r *results) printCost() {
	if len(r.cost) == 0 {
		return
	}
	fmt.Println("\nCost per task: a fresh 3-node cluster at --capacity 64 per mode, 64 clients on this host, echo tasks; CPU is every node's from the first submit until the row's last task succeeded (targets: ≤ 250 µs per task, ≥ 5,000 completions/s, p50 ≤ 5 ms and p99 ≤ 10 ms idle, secure ≤ 1.15 × insecure, 0 refused).")
	fmt.Println()
	fmt.Println("| mode | load | tasks | tasks/s (submit → succeeded) | cluster CPU per task | secure / insecure | submit → succeeded p50 / p99 | refused (429) |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	insecure := map[string]time.Duration{}
	for _, c := range r.cost {
		if c.mode == "insecure" {
			insecure[c.load] = c.cpu
		}
	}
	for _, c := range r.cost {
		text := costLoadText[c.load]
		if c.load == "wait-spread-pending" {
			text = fmt.Sprintf(text, num(float64(r.costPending)))
		}
		ratio := "—"
		if c.mode == "secure" && insecure[c.load] > 0 {
			ratio = fmt.Sprintf("%.2f ×", float64(c.cpu)/float64(insecure[c.load]))
		}
		lat := "—"
		if len(c.lat) > 0 {
			lat = ms(pct(c.lat, 50)) + " / " + ms(pct(c.lat, 99))
		}
		fmt.Printf("| %s | %s | %d | %s/s | %s | %s | %s | %d |\n", c.mode, text, c.tasks,
			num(float64(c.tasks-c.refused)/c.wall.Seconds()), us(c.cpu), ratio, lat, c.refused)
	}
}
