package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
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

// clkTck is the kernel's clock tick for /proc/PID/stat times: USER_HZ, 100 on every Linux
// architecture Go runs on (the value sysconf(_SC_CLK_TCK) reports).
const clkTck = 100

// cpuTime is a process's user plus system CPU time so far, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu time of %d: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state is field 3, so utime (14) and stime (15) are f[11] and f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of %d: short stat %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// bench is one running cluster and what the measurements need of it.
type bench struct {
	c      *localcluster.Cluster
	hc     *http.Client
	apis   []*client.Client // one per node, sharing hc
	leader int              // index in c.Nodes
	batch  atomic.Int32     // 0 unknown, 1 the batch endpoint answers, -1 it does not
}

// startBench starts n nodes at capacity with the agent flags args, waits until ready and finds
// the leader. The cluster set-up is retried on fresh ports (another process on a shared machine
// can take a port between FreePorts and the bind); measurements never are.
func startBench(bin, dir string, n, capacity int, args []string) (*bench, error) {
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		c, err := localcluster.Start(bin, fmt.Sprintf("%s-try%d", dir, attempt), n, capacity, args...)
		if err == nil {
			err = c.WaitReady(time.Duration(30+6*n) * time.Second)
			if err != nil {
				err = fmt.Errorf("%w\n%s", err, c.Logs())
				c.Stop()
			}
		}
		if err == nil {
			hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256}}
			b := &bench{c: c, hc: hc}
			for _, nd := range c.Nodes {
				b.apis = append(b.apis, client.New("http://"+nd.HTTP, client.WithHTTPClient(hc)))
			}
			if err := b.findLeader(); err != nil {
				c.Stop()
				return nil, err
			}
			return b, nil
		}
		lastErr = err
		first, _, _ := strings.Cut(err.Error(), "\n")
		progress("cluster set-up failed (%s); again on fresh ports", first)
	}
	return nil, lastErr
}

func (b *bench) stop() {
	b.c.Stop()
	b.hc.CloseIdleConnections()
}

func (b *bench) findLeader() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := b.apis[0].Cluster(ctx)
	if err != nil {
		return fmt.Errorf("find leader: %w", err)
	}
	for i, n := range b.c.Nodes {
		if n.Name == cl.Leader {
			b.leader = i
			return nil
		}
	}
	return fmt.Errorf("find leader: %q is none of the nodes", cl.Leader)
}

// follower is the index of a node that is not the leader.
func (b *bench) follower() int { return (b.leader + 1) % len(b.c.Nodes) }

// cpu is the CPU time of every node process so far, in node order.
func (b *bench) cpu() ([]time.Duration, error) {
	out := make([]time.Duration, len(b.c.Nodes))
	for i, n := range b.c.Nodes {
		t, err := cpuTime(n.PID())
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// cpuSince is the CPU time each node used since before (a reading of cpu), and their sum.
func (b *bench) cpuSince(before []time.Duration) (per []time.Duration, sum time.Duration, err error) {
	now, err := b.cpu()
	if err != nil {
		return nil, 0, err
	}
	per = make([]time.Duration, len(now))
	for i := range now {
		per[i] = now[i] - before[i]
		sum += per[i]
	}
	return per, sum, nil
}

// rss is every node's resident memory, in node order.
func (b *bench) rss() ([]int64, error) { return b.memStatus("VmRSS") }

// memStatus is one /proc status memory figure of every node, in node order.
func (b *bench) memStatus(field string) ([]int64, error) {
	out := make([]int64, len(b.c.Nodes))
	for i, n := range b.c.Nodes {
		r, err := n.MemStatus(field)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// counts is the leader's count of tasks by state.
type counts map[string]int

func (c counts) done() int { return c[api.StateSucceeded] + c[api.StateFailed] + c[api.StateCancelled] }
func (c counts) total() int {
	return c.done() + c[api.StatePending] + c[api.StateAssigned] + c[api.StateRunning]
}

func (b *bench) counts() (counts, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := b.apis[b.leader].Cluster(ctx)
	if err != nil {
		return nil, fmt.Errorf("task counts: %w", err)
	}
	return cl.Tasks, nil
}

// pollEvery is how often the bench asks the leader for its task counts while it waits; each ask
// costs the leader a little CPU, which the figures then include.
const pollEvery = 250 * time.Millisecond

// waitDone waits until at least want tasks are done (finished in any way), or timeout.
func (b *bench) waitDone(want int, timeout time.Duration) (counts, error) {
	var last counts
	var lastErr error
	err := localcluster.Until(timeout, pollEvery, func() bool {
		last, lastErr = b.counts()
		return lastErr == nil && last.done() >= want
	})
	if err != nil {
		return last, fmt.Errorf("waiting for %d tasks done (last counts %v, %v): %w", want, last, lastErr, err)
	}
	return last, nil
}

// drainTimeout is a generous bound for n tasks to finish on a slow, shared machine.
func drainTimeout(n int) time.Duration { return 120*time.Second + time.Duration(n)*20*time.Millisecond }

// echoInput is a small task input: what the memory figures call a small task.
func echoInput(i int) json.RawMessage { return json.RawMessage(`{"i":` + strconv.Itoa(i) + `}`) }

// submitErrors keeps the first error of a run and counts them all.
type submitErrors struct {
	mu    sync.Mutex
	n     int
	first error
}

func (e *submitErrors) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if e.first == nil {
		e.first = err
	}
}

func (e *submitErrors) err(what string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		return nil
	}
	return fmt.Errorf("%s: %d errors, the first: %w", what, e.n, e.first)
}

// parallel calls f(1) … f(n) from conc goroutines, each taking the next number when its call
// returns, and returns the wall time.
func parallel(n, conc int, f func(i int)) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)); i <= n; i = int(next.Add(1)) {
				f(i)
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// submitSingles submits n echo tasks from conc concurrent clients, one POST /v1/tasks each
// (answered once the entry is committed), all to node target (-1: round robin over every node),
// and returns the wall time.
func (b *bench) submitSingles(n, conc, target int) (time.Duration, error) {
	var errs submitErrors
	wall := parallel(n, conc, func(i int) {
		api := b.apis[i%len(b.apis)]
		if target >= 0 {
			api = b.apis[target]
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, _, err := api.Submit(ctx, client.SubmitRequest{Type: "echo", Input: echoInput(i)}); err != nil {
			errs.add(err)
		}
	})
	return wall, errs.err(fmt.Sprintf("%d single submits", n))
}

// errNoBatch: the cluster has no POST /v1/tasks/batch (it answered 404).
var errNoBatch = errors.New("no batch endpoint")

// batchSize is the tasks per POST /v1/tasks/batch, the most one request may carry.
const batchSize = 1000

// submitBatches submits n echo tasks in batches of batchSize from conc concurrent clients to the
// leader, and returns the wall time and how many tasks the results accepted. errNoBatch when the
// endpoint answers 404.
func (b *bench) submitBatches(n, conc int) (time.Duration, int, error) {
	return b.submitTypeBatches("echo", n, conc)
}

// submitTypeBatches is submitBatches for tasks of type typ, each with an echo task's input.
func (b *bench) submitTypeBatches(typ string, n, conc int) (time.Duration, int, error) {
	var next atomic.Int64
	var accepted atomic.Int64
	var errs submitErrors
	var missing atomic.Bool
	var wg sync.WaitGroup
	url := "http://" + b.c.Nodes[b.leader].HTTP + "/v1/tasks/batch"
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !missing.Load() {
				from := int(next.Add(batchSize)) - batchSize
				if from >= n {
					return
				}
				k := min(batchSize, n-from)
				reqs := make([]api.SubmitRequest, k)
				for j := range reqs {
					reqs[j] = api.SubmitRequest{Type: typ, Input: echoInput(from + j)}
				}
				ok, err := b.postBatch(url, reqs)
				switch {
				case errors.Is(err, errNoBatch):
					missing.Store(true)
				case err != nil:
					errs.add(err)
				}
				accepted.Add(int64(ok))
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if missing.Load() {
		b.batch.Store(-1)
		return wall, 0, errNoBatch
	}
	b.batch.Store(1)
	return wall, int(accepted.Load()), errs.err(fmt.Sprintf("%d tasks in batches", n))
}

// postBatch sends one POST /v1/tasks/batch {"tasks": [...]} and counts the results without an
// error. The answer is {"results": [...]}, one per item in order; an item that failed carries an
// "error".
func (b *bench) postBatch(url string, reqs []api.SubmitRequest) (int, error) {
	body, err := json.Marshal(map[string]any{"tasks": reqs})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("POST /v1/tasks/batch: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("POST /v1/tasks/batch: read: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		return 0, errNoBatch
	}
	if resp.StatusCode/100 != 2 {
		return 0, fmt.Errorf("POST /v1/tasks/batch: %s: %.300s", resp.Status, raw)
	}
	var out struct {
		Results []map[string]json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return 0, fmt.Errorf("POST /v1/tasks/batch: decode: %w", err)
	}
	ok := 0
	for _, r := range out.Results {
		if e, bad := r["error"]; !bad || string(e) == "null" {
			ok++
		}
	}
	if ok < len(reqs) {
		return ok, fmt.Errorf("POST /v1/tasks/batch: %d of %d accepted", ok, len(reqs))
	}
	return ok, nil
}

// fill submits n echo tasks as fast as the cluster takes them: in batches when the batch
// endpoint exists, else as single submits from 64 clients to the leader.
func (b *bench) fill(n int) error {
	if n <= 0 {
		return nil
	}
	if b.batch.Load() >= 0 {
		_, _, err := b.submitBatches(n, 4)
		if !errors.Is(err, errNoBatch) {
			return err
		}
	}
	_, err := b.submitSingles(n, 64, b.leader)
	return err
}

// echoWait runs one echo task through api with POST /v1/tasks?wait and returns the time from
// request to finished record, and the record.
func echoWait(api *client.Client, i int) (time.Duration, *client.Task, error) {
	return typeWait(api, "echo", i)
}

// typeWait is echoWait for a task of type typ, with an echo task's input.
func typeWait(api *client.Client, typ string, i int) (time.Duration, *client.Task, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	t, err := api.SubmitWait(ctx, client.SubmitRequest{Type: typ, Input: echoInput(i)}, 30*time.Second)
	d := time.Since(start)
	if err != nil {
		return d, nil, err
	}
	if !client.IsTerminal(t.State) {
		if t, err = api.WaitDone(ctx, t.ID); err != nil {
			return d, nil, err
		}
		d = time.Since(start)
	}
	if t.State != client.StateSucceeded {
		return d, t, fmt.Errorf("task %s is %s", t.ID, t.State)
	}
	return d, t, nil
}

// closedLoop runs n echo tasks from conc clients, each submitting with ?wait and sending the
// next when its task is done, round robin over the nodes; it returns the finished records.
func (b *bench) closedLoop(n, conc int) ([]*client.Task, time.Duration, error) {
	var errs submitErrors
	var mu sync.Mutex
	var recs []*client.Task
	wall := parallel(n, conc, func(i int) {
		_, t, err := echoWait(b.apis[i%len(b.apis)], i)
		if err != nil {
			errs.add(err)
			return
		}
		mu.Lock()
		recs = append(recs, t)
		mu.Unlock()
	})
	return recs, wall, errs.err(fmt.Sprintf("%d echo tasks with ?wait", n))
}

// placement is a finished task's submit → assigned time, from its record: created_at and the
// first "assigned" event of its history. ok is false when the record has no such event.
func placement(t *client.Task) (time.Duration, bool) {
	for _, h := range t.History {
		if h.Event == api.EventAssigned {
			return h.At.Sub(t.CreatedAt), true
		}
	}
	return 0, false
}

// runTime is a finished task's assigned → finished time: how long it held its slot.
func runTime(t *client.Task) (time.Duration, bool) {
	if t.FinishedAt == nil {
		return 0, false
	}
	for _, h := range t.History {
		if h.Event == api.EventAssigned {
			return t.FinishedAt.Sub(h.At), true
		}
	}
	return 0, false
}

// snapshotSize is the size of the newest raft snapshot in a node's data dir, or -1 when it has none.
func snapshotSize(dataDir string) int64 {
	dirs, _ := filepath.Glob(filepath.Join(dataDir, "raft", "snapshots", "*"))
	size := int64(-1)
	var newest time.Time
	for _, d := range dirs {
		if st, err := os.Stat(filepath.Join(d, "state.bin")); err == nil && st.ModTime().After(newest) {
			size, newest = st.Size(), st.ModTime()
		}
	}
	return size
}

// pct is the p-th percentile (nearest rank) of ds; 0 for none.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := (p*len(s) + 99) / 100
	return s[max(k, 1)-1]
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}
