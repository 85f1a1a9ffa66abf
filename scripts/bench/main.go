// Command bench measures the cluster's performance figures (BENCHMARKS.md) on a local cluster of real taskworker processes
// and prints them in one markdown table, each beside its target, with a bare hashicorp/raft +
// raft-boltdb cluster measured in the same run as the baseline for the submit rate; then the cost
// curve (CPU per task, RSS, placement latency as the state grows), optionally drawn as a PNG.
//
//	go run ./scripts/bench -quick                    # tiny counts: checks the tool end to end (CI)
//	go run ./scripts/bench                           # medium scale, a few minutes
//	go run ./scripts/bench -full -plot docs/bench-cost.png   # the real run (1M tasks; long)
//	go run ./scripts/bench -only latency,idle        # some figures only
//
// Clusters, one after another: A, 3 nodes at --capacity 64 (idle CPU and RSS, latency, the cost
// curve and the memory figures, the state growing as it goes); C, 3 fresh nodes at --capacity 64
// (single and batch submit rates, completion rate); B, 3 nodes at --capacity 8 (completion rate
// against the slot bound, CPU per task with no backlog and with two backlogs, the burst); and one
// idle cluster per other -idle-nodes count; then the cost table (cost.go): a fresh 3-node cluster at
// --capacity 64 per security mode (secure, then --insecure, whatever -secure says), each running
// 64 clients' echo tasks spread over the nodes or all to the leader, with and without ?wait,
// and with a backlog held pending in a paused queue.
// Nodes run --insecure (the baseline has no TLS either) unless -secure, with the API rate limit
// off. CPU is utime+stime of the node processes from /proc/PID/stat, memory VmRSS from
// /proc/PID/status. The bench polls the leader's /v1/cluster every 250 ms while it waits for
// tasks, which the CPU figures include.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// scale is how much every figure measures.
type scale struct {
	name         string
	baselineFor  time.Duration // bare-raft applies run this long
	settle       time.Duration // a new cluster rests this long before idle readings
	idleFor      time.Duration // idle CPU is read over this long
	latencyCount int           // serial echo tasks per target node
	submits      int           // single submits for submits/s
	batchTasks   int           // tasks in batches for batch submits/s
	complete     int           // tasks per completion-rate run
	window       int           // tasks per CPU-per-task window
	backlogs     [2]int        // the two pending backlogs of the CPU-per-task rows
	burst        int           // tasks in the burst at capacity 8
	curve        []int         // tasks in the state at each cost-curve point; the last is the memory figure's
	idleNodes    []int         // cluster sizes of the idle leader CPU row
	memorySettle time.Duration // the memory figures' rest after the fill (nodes check every 10 s)
	costTasks    int           // echo tasks per row of the cost table
	costPending  int           // tasks held pending during its last row
}

var scales = map[string]scale{
	"quick": {name: "quick", baselineFor: 500 * time.Millisecond, settle: 500 * time.Millisecond, idleFor: 500 * time.Millisecond,
		latencyCount: 5, submits: 200, batchTasks: 2000, complete: 200, window: 100,
		backlogs: [2]int{100, 200}, burst: 300, curve: []int{0, 200, 400, 600}, idleNodes: []int{3, 5},
		memorySettle: time.Second, costTasks: 300, costPending: 1000},
	"medium": {name: "medium", baselineFor: 5 * time.Second, settle: 3 * time.Second, idleFor: 5 * time.Second,
		latencyCount: 100, submits: 5000, batchTasks: 20000, complete: 5000, window: 2000,
		backlogs: [2]int{2000, 10000}, burst: 10000, curve: []int{0, 2000, 10000, 50000}, idleNodes: []int{3, 5, 10},
		memorySettle: 30 * time.Second, costTasks: 10000, costPending: 20000},
	"full": {name: "full", baselineFor: 10 * time.Second, settle: 5 * time.Second, idleFor: 10 * time.Second,
		latencyCount: 200, submits: 20000, batchTasks: 200000, complete: 20000, window: 5000,
		backlogs: [2]int{10000, 100000}, burst: 100000, curve: []int{0, 10000, 100000, 1000000}, idleNodes: []int{3, 5, 20},
		memorySettle: 30 * time.Second, costTasks: 30000, costPending: 100000},
}

// Figures -only can name.
var figureNames = []string{"baseline", "submit", "batch", "complete", "cpu", "burst", "memory", "latency", "idle", "curve", "cost", "worker"}

var (
	flagQuick   = flag.Bool("quick", false, "tiny counts, seconds per figure: checks the tool end to end (CI)")
	flagFull    = flag.Bool("full", false, "the real run: 100k burst, 1M finished tasks, 20 idle nodes (long)")
	flagScale   = flag.String("scale", "medium", "quick, medium or full (-quick and -full set it)")
	flagOnly    = flag.String("only", "", "comma-separated figures to measure ("+strings.Join(figureNames, ",")+"); empty: all")
	flagBurst   = flag.Int("burst", 0, "tasks in the burst at capacity 8 (default: the scale's; 100,000 at -full)")
	flagMemory  = flag.Int("memory-tasks", 0, "finished tasks for the memory figures, the cost curve's last point (default: the scale's; 1,000,000 at -full)")
	flagIdle    = flag.String("idle-nodes", "", "comma-separated cluster sizes for idle leader CPU (default: the scale's; 3,5,20 at -full)")
	flagBaseFor = flag.Duration("baseline-for", 0, "how long the bare-raft baseline applies (default: the scale's)")
	flagPlot    = flag.String("plot", "", "draw the cost curve as a PNG into this file (docs/bench-cost.png)")
	flagSecure  = flag.Bool("secure", false, "run the nodes secure (mutual TLS, encrypted gossip) instead of --insecure")
	flagBin     = flag.String("bin", "", "taskworker binary (default: build one with the version stamped)")
	flagKeep    = flag.Bool("keep", false, "keep the temporary directory (data and node logs)")
)

func main() {
	flag.Parse()
	localcluster.Main("bench", *flagKeep, run)
}

// config resolves the flags into a scale and the set of figures to measure.
func config() (scale, map[string]bool, error) {
	name := *flagScale
	switch {
	case *flagQuick && *flagFull:
		return scale{}, nil, fmt.Errorf("-quick and -full: pick one")
	case *flagQuick:
		name = "quick"
	case *flagFull:
		name = "full"
	}
	s, ok := scales[name]
	if !ok {
		return scale{}, nil, fmt.Errorf("bad -scale %q: quick, medium or full", name)
	}
	if *flagBurst > 0 {
		s.burst = *flagBurst
	}
	if *flagBaseFor > 0 {
		s.baselineFor = *flagBaseFor
	}
	if *flagMemory > 0 {
		// The curve keeps its points below the new last one.
		var pts []int
		for _, p := range s.curve[:len(s.curve)-1] {
			if p < *flagMemory {
				pts = append(pts, p)
			}
		}
		s.curve = append(pts, *flagMemory)
	}
	if *flagIdle != "" {
		s.idleNodes = nil
		for _, f := range strings.Split(*flagIdle, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return scale{}, nil, fmt.Errorf("bad -idle-nodes %q", *flagIdle)
			}
			s.idleNodes = append(s.idleNodes, n)
		}
	}
	only := map[string]bool{}
	for _, f := range strings.Split(*flagOnly, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(figureNames, f) {
			return scale{}, nil, fmt.Errorf("bad -only %q: unknown figure %q (known: %s)", *flagOnly, f, strings.Join(figureNames, ","))
		}
		only[f] = true
	}
	if len(only) == 0 {
		for _, f := range figureNames {
			only[f] = true
		}
	}
	return s, only, nil
}

func run(root string) error {
	s, want, err := config()
	if err != nil {
		return err
	}
	bin, err := localcluster.Binary(*flagBin, root)
	if err != nil {
		return err
	}
	args := []string{"--insecure"}
	if *flagSecure {
		args = nil
	}
	fmt.Println(machine(s, bin))
	r := newResults()
	start := time.Now()

	if want["baseline"] || want["submit"] {
		progress("bare raft baseline, %s ...", s.baselineFor)
		rate, cpu, err := baseline(filepath.Join(root, "baseline"), 64, 64, s.baselineFor)
		if err != nil {
			return err
		}
		r.baseline = rate
		r.set("baseline", "", fmt.Sprintf("%s applies/s, %s of CPU per apply (64 callers, 64-byte commands, fsync on; the three nodes in one process)", num(rate), us(cpu)))
	}
	if want["baseline"] || want["latency"] {
		// One caller: the latency of one commit, what the latency rows' serial commits cost each.
		progress("bare raft baseline, one caller, %s ...", s.baselineFor/2)
		rate, _, err := baseline(filepath.Join(root, "baseline-serial"), 1, 64, s.baselineFor/2)
		if err != nil {
			return err
		}
		r.set("serial", "", fmt.Sprintf("%s applies/s with one caller = %s per commit", num(rate),
			(time.Duration(float64(time.Second)/rate)).Round(10*time.Microsecond)))
	}
	if want["idle"] || want["latency"] || want["memory"] || want["curve"] {
		if err := clusterA(bin, filepath.Join(root, "a"), args, s, want, r); err != nil {
			return fmt.Errorf("capacity-64 cluster A: %w", err)
		}
	}
	if want["submit"] || want["batch"] || want["complete"] {
		if err := clusterC(bin, filepath.Join(root, "c"), args, s, want, r); err != nil {
			return fmt.Errorf("capacity-64 cluster C: %w", err)
		}
	}
	if want["complete"] || want["cpu"] || want["burst"] {
		if err := clusterB(bin, filepath.Join(root, "b"), args, s, want, r); err != nil {
			return fmt.Errorf("capacity-8 cluster: %w", err)
		}
	}
	if want["idle"] {
		if err := idleClusters(bin, root, args, s, r); err != nil {
			return err
		}
	}
	if want["cost"] {
		r.costPending = s.costPending
		if err := costFigure(bin, root, s, r); err != nil {
			return err
		}
	}

	if want["worker"] {
		if err := workerFigure(bin, root, args, s, r); err != nil {
			return fmt.Errorf("worker: %w", err)
		}
	}

	r.print(want)
	r.printCost()
	if want["curve"] && *flagPlot != "" {
		if err := drawCurve(*flagPlot, r.curve); err != nil {
			return err
		}
		fmt.Printf("\nCost curve drawn in %s.\n", *flagPlot)
	}
	fmt.Printf("\nWhole run: %s.\n", time.Since(start).Round(time.Second))
	return nil
}

// machine names what the figures were measured on; the load average says how busy the (possibly
// shared) machine was when the run began.
func machine(s scale, bin string) string {
	cpuModel := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	goVersion := runtime.Version()
	if out, err := exec.Command("go", "env", "GOVERSION").Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
		goVersion = strings.TrimSpace(string(out)) // the toolchain that built the nodes
	}
	build := "?"
	if out, err := exec.Command(bin, "version").Output(); err == nil {
		build = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "taskworker version"))
	}
	mode := "--insecure"
	if *flagSecure {
		mode = "secure (mutual TLS, encrypted gossip)"
	}
	return fmt.Sprintf("## taskworker bench, %s scale (%s)\n\nMachine: %s, %d cores, Linux %s, %s, load average at start %s. Nodes: %s, fsync on, on 127.0.0.1; build %s.\n",
		s.name, time.Now().UTC().Format("2006-01-02"), cpuModel, runtime.NumCPU(), kernel, goVersion, load, mode, build)
}
