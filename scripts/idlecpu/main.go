// Command idlecpu measures the CPU an idle taskworker leader uses, for clusters of several sizes:
//
//	go run ./scripts/idlecpu -sizes 3,5,20 -settle 30s -measure 20s
//
// For each size it starts that many real taskworker processes (--insecure) on free 127.0.0.1
// ports in a temporary directory, waits until the cluster is ready and then -settle more, and
// reads the leader's utime+stime from /proc/PID/stat at the start and the end of -measure. It
// prints one table, nodes → leader CPU % (of one core), with the followers' mean beside it. No
// task runs; the figure is what the cluster costs doing nothing. Linux only (/proc).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

var (
	flagSizes   = flag.String("sizes", "3,5,20", "comma-separated cluster sizes")
	flagSettle  = flag.Duration("settle", 30*time.Second, "idle time before measuring")
	flagMeasure = flag.Duration("measure", 20*time.Second, "how long CPU time is measured")
	flagBin     = flag.String("bin", "", "taskworker binary (default: build one)")
	flagKeep    = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

func main() {
	flag.Parse()
	localcluster.Main("idlecpu", *flagKeep, run)
}

func run(root string) error {
	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}
	type row struct {
		size              int
		leader, followers float64
	}
	var rows []row
	for _, f := range strings.Split(*flagSizes, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || size < 1 {
			return fmt.Errorf("bad size %q", f)
		}
		leader, followers, err := measure(bin, filepath.Join(root, fmt.Sprintf("n%d", size)), size)
		if err != nil {
			return fmt.Errorf("%d nodes: %w", size, err)
		}
		fmt.Fprintf(os.Stderr, "%d nodes: leader %.1f %%, followers %.1f %%\n", size, leader, followers)
		rows = append(rows, row{size, leader, followers})
	}
	fmt.Printf("\n### Idle CPU (%% of one core, over %s after %s idle)\n\n", *flagMeasure, *flagSettle)
	fmt.Println("| nodes | leader | follower (mean) |")
	fmt.Println("|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %d | %.1f %% | %.1f %% |\n", r.size, r.leader, r.followers)
	}
	b, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\nload average at the end: %s\n", strings.Join(strings.Fields(string(b))[:3], " "))
	return nil
}

func measure(bin, dir string, size int) (leader, followers float64, err error) {
	c, err := localcluster.Start(bin, dir, size, 2, "--insecure")
	if err != nil {
		return 0, 0, err
	}
	defer c.Stop()
	if err := c.WaitReady(time.Duration(size)*10*time.Second + 60*time.Second); err != nil {
		return 0, 0, err
	}
	time.Sleep(*flagSettle)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cl, err := apiOf(c.Nodes[0]).Cluster(ctx)
	if err != nil {
		return 0, 0, err
	}
	pids := map[string]int{}
	for _, n := range c.Nodes {
		pid, err := pidOf(n.DataDir)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", n.Name, err)
		}
		pids[n.Name] = pid
	}
	before := map[string]float64{}
	for name, pid := range pids {
		if before[name], err = cpuSeconds(pid); err != nil {
			return 0, 0, err
		}
	}
	start := time.Now()
	time.Sleep(*flagMeasure)
	wall := time.Since(start).Seconds()
	var sum float64
	for name, pid := range pids {
		after, err := cpuSeconds(pid)
		if err != nil {
			return 0, 0, err
		}
		pct := 100 * (after - before[name]) / wall
		if name == cl.Leader {
			leader = pct
		} else {
			sum += pct
		}
	}
	if size > 1 {
		followers = sum / float64(size-1)
	}
	if _, ok := pids[cl.Leader]; !ok {
		return 0, 0, fmt.Errorf("no leader among the nodes (%q)", cl.Leader)
	}
	return leader, followers, nil
}

// pidOf finds the agent process whose command line names dataDir.
func pidOf(dataDir string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmd, []byte("\x00agent\x00")) && bytes.Contains(cmd, append([]byte("\x00"+dataDir), 0)) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process with data dir %s", dataDir)
}

// cpuSeconds is the process's user+system CPU time so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: count from after it.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return (utime + stime) / clockTicks, nil
}

// apiOf is a client of n's HTTP API.
func apiOf(n *localcluster.Node) *client.Client {
	return client.New("http://"+n.HTTP, client.WithToken(n.Token))
}
