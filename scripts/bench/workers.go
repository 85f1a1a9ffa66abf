package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// workerFigure measures a Python worker (sdk/python) at capacity 64 against 3 nodes at
// --capacity 64: echo tasks completed per second through it (py-echo, submitted in batches, a
// type only the worker offers), and submit → succeeded with ?wait, one task at a time, through
// the worker against the built-in echo, from the leader and from a follower. Without Python the
// rows say so.
func workerFigure(bin, root string, args []string, s scale, r *results) error {
	py := os.Getenv("TASKWORKER_PYTHON")
	if py == "" {
		py = "python3"
	}
	if _, err := exec.LookPath(py); err != nil {
		r.set("workerrate", "", "n/a (no "+py+")")
		r.set("workerlat", "", "n/a (no "+py+")")
		return nil
	}
	repo, err := repoDir()
	if err != nil {
		return err
	}
	progress("worker: 3 nodes at --capacity 64 and a Python worker at capacity 64 ...")
	dir := filepath.Join(root, "worker")
	b, err := startBench(bin, dir, 3, 64, args)
	if err != nil {
		return err
	}
	defer b.stop()
	var addrs []string
	for _, n := range b.c.Nodes {
		addrs = append(addrs, "http://"+n.HTTP)
	}
	logf, err := os.Create(filepath.Join(root, "worker.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(py, filepath.Join(repo, "sdk", "python", "bench", "echo_worker.py"), "bench-py", "64")
	cmd.Env = append(os.Environ(), "TASKWORKER_ADDR="+strings.Join(addrs, ","),
		"PYTHONPATH="+filepath.Join(repo, "sdk", "python", "src"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the Python worker: %w", err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	if err := b.waitWorker("bench-py", 60*time.Second); err != nil {
		return fmt.Errorf("%w (worker log: %s)", err, logf.Name())
	}

	// Latency first, on the idle cluster: one task at a time, alternating the two types.
	n := max(2*s.latencyCount, 20)
	for _, target := range []struct {
		key  string
		node int
	}{{"leader", b.leader}, {"follower", b.follower()}} {
		var viaWorker, builtin []time.Duration
		for i := range n + 10 {
			dw, _, err := typeWait(b.apis[target.node], "py-echo", i)
			if err != nil {
				return fmt.Errorf("py-echo through the %s: %w", target.key, err)
			}
			de, _, err := typeWait(b.apis[target.node], "echo", i)
			if err != nil {
				return fmt.Errorf("echo through the %s: %w", target.key, err)
			}
			if i >= 10 { // the first ten warm connections and caches up
				viaWorker, builtin = append(viaWorker, dw), append(builtin, de)
			}
		}
		slices.Sort(viaWorker)
		slices.Sort(builtin)
		w50, e50 := pct(viaWorker, 50), pct(builtin, 50)
		key := "workerlat"
		if target.key == "follower" {
			key = "workerlatf"
		}
		r.set(key, "", fmt.Sprintf("p50 %s through the worker, %s built-in: **%+.1f ms** (p99 %s and %s; %d tasks each, from the %s)",
			ms(w50), ms(e50), float64((w50-e50).Microseconds())/1000, ms(pct(viaWorker, 99)), ms(pct(builtin, 99)), n, target.key))
	}

	// Throughput: the worker's slots full, tasks submitted in batches ahead of it.
	total := 4 * s.complete
	c0, err := b.counts()
	if err != nil {
		return err
	}
	cpu0, err := b.cpu()
	if err != nil {
		return err
	}
	pyCPU0, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return err
	}
	progress("worker: %d py-echo tasks in batches ...", total)
	start := time.Now()
	if _, _, err := b.submitTypeBatches("py-echo", total, 4); err != nil {
		return err
	}
	c1, err := b.waitDone(c0.done()+total, drainTimeout(total))
	if err != nil {
		return err
	}
	wall := time.Since(start)
	_, nodes, err := b.cpuSince(cpu0)
	if err != nil {
		return err
	}
	pyCPU1, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return err
	}
	failed := c1.done() - c0.done() - (c1["succeeded"] - c0["succeeded"])
	r.set("workerrate", "", fmt.Sprintf("**%s/s** (%d tasks, %d not succeeded; cluster CPU %s and worker CPU %s per task)",
		num(float64(total)/wall.Seconds()), total, failed, us(nodes/time.Duration(total)), us((pyCPU1-pyCPU0)/time.Duration(total))))
	return nil
}

// waitWorker polls the cluster's workers until the worker name is up.
func (b *bench) waitWorker(name string, timeout time.Duration) error {
	var err error
	up := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var ws []client.Worker
		if ws, err = b.apis[b.leader].Workers(ctx); err != nil {
			return false
		}
		return slices.ContainsFunc(ws, func(w client.Worker) bool { return w.Name == name && w.State == client.WorkerUp })
	}
	if localcluster.Until(timeout, 100*time.Millisecond, up) != nil {
		return fmt.Errorf("worker %s not up after %s (last error: %v)", name, timeout, err)
	}
	return nil
}

// repoDir is the module's root directory: the Python SDK and its bench worker live there.
func repoDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("find the repository (go env GOMOD): %v", err)
	}
	return filepath.Dir(mod), nil
}
