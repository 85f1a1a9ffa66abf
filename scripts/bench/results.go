package main

import (
	"fmt"
	"strings"
	"time"
)

// A row of the table: the figure's fixed name (the test looks for it), which -only figure
// measures it, and the target BENCHMARKS.md sets for it.
type rowSpec struct {
	key, figure, measuredBy, target string
}

var rowSpecs = []rowSpec{
	{"baseline", "bare 3-node hashicorp/raft + raft-boltdb", "baseline", "(the baseline)"},
	{"serial", "the same, one caller: one commit's latency", "baseline", "(what each serial commit of the latency rows costs)"},
	{"submit", "durable single submits/s", "submit", "≥ 0.66 × the baseline"},
	{"batch", "batch submits accepted/s", "batch", "≥ 50,000/s"},
	{"complete64", "tasks completed/s at --capacity 64", "complete", "≥ 5,000/s"},
	{"complete8", "tasks completed/s at --capacity 8", "complete", "bounded by slots, not CPU: ≈ the slot bound"},
	{"cpu0", "cluster CPU per task, no backlog", "cpu", "≤ 250 µs"},
	{"cpu1", "cluster CPU per task, small backlog", "cpu", "≤ 250 µs, within ±25 % of no backlog"},
	{"cpu2", "cluster CPU per task, large backlog", "cpu", "≤ 250 µs, within ±25 % of no backlog"},
	{"burst", "burst at --capacity 8", "burst", "drained at the slot-bound rate, cost flat"},
	{"rss", "RSS per node, idle → after finished small tasks", "memory", "≤ 1 GB per node at 1,000,000"},
	{"bytes", "memory per finished task", "memory", "≤ 1 KB"},
	{"snapshot", "snapshot size", "memory", "(no target; restore must fit the restart target)"},
	{"restart", "restart → healthy, a node with that state", "memory", "≤ 10 s"},
	{"latleader", "echo submit → succeeded, idle, from the leader", "latency", "p50 ≤ 5 ms, p99 ≤ 10 ms"},
	{"latfollower", "echo submit → succeeded, idle, from a follower", "latency", "p50 ≤ 5 ms, p99 ≤ 10 ms"},
	{"idlecpu", "idle leader CPU", "idle", "≤ 5 %, not growing with nodes"},
	{"idlerss", "idle node RSS", "idle", "≤ 30 MB"},
	{"workerrate", "echo tasks completed/s through a Python worker at capacity 64", "worker", "≥ 2,000/s"},
	{"workerlat", "echo submit → succeeded through a Python worker vs built-in echo, idle, from the leader", "worker", "p50 ≤ 2 ms above the built-in"},
	{"workerlatf", "the same, from a follower", "worker", "p50 ≤ 2 ms above the built-in"},
}

// curvePoint is one point of the cost curve.
type curvePoint struct {
	tasks        int           // tasks in the state when probed
	cpuPerTask   time.Duration // cluster CPU per probe task
	rss          int64         // mean RSS per node
	place50      time.Duration // submit → assigned, median of the probe's tasks
	place99      time.Duration
	probeTasks   int
	probeLatency time.Duration // submit → succeeded median, for reference
}

type results struct {
	baseline float64
	rows     map[string][2]string // key → figure suffix, measured
	curve    []curvePoint
	idle     []idlePoint
	// The cost table (cost.go), and the backlog its last load ran with.
	cost        []costRow
	costPending int
}

func newResults() *results { return &results{rows: map[string][2]string{}} }

// set records a row's measurement; suffix is added to the figure's name (say, the backlog size).
func (r *results) set(key, suffix, measured string) { r.rows[key] = [2]string{suffix, measured} }

func (r *results) print(want map[string]bool) {
	fmt.Println("| figure | measured | target |")
	fmt.Println("|---|---|---|")
	for _, s := range rowSpecs {
		v, ok := r.rows[s.key]
		measured := v[1]
		switch {
		case ok: // measured, if only as a step of another figure (the baseline of the submit ratio)
		case !want[s.measuredBy]:
			measured = "not measured (-only)"
		default:
			measured = "not measured (an earlier step failed)"
		}
		fmt.Printf("| %s%s | %s | %s |\n", s.figure, v[0], measured, s.target)
	}
	if len(r.curve) > 0 {
		fmt.Println("\nCost curve: a 3-node cluster at --capacity 64 probed as its state grows; each probe runs echo tasks from 64 clients with `?wait` (round robin over the nodes); placement is submit → assigned from the task records' `created_at` and first `assigned` event.")
		fmt.Println()
		fmt.Println("| tasks in the state | cluster CPU per task | RSS per node (mean) | placement p50 | placement p99 | submit → succeeded p50 |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, p := range r.curve {
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", num(float64(p.tasks)), us(p.cpuPerTask), mb(p.rss),
				ms(p.place50), ms(p.place99), ms(p.probeLatency))
		}
	}
}

// num formats x with thousands separators, no decimals.
func num(x float64) string {
	neg := x < 0
	if neg {
		x = -x
	}
	s := fmt.Sprintf("%.0f", x)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func us(d time.Duration) string { return num(float64(d.Nanoseconds())/1e3) + " µs" }

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

func mb(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
}

func mean(v []int64) int64 {
	if len(v) == 0 {
		return -1
	}
	var s int64
	for _, x := range v {
		s += x
	}
	return s / int64(len(v))
}
