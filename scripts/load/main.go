// Command load drives a running cluster with single echo submits from many clients and reports
// the rate and, given the nodes' process IDs, the cluster's CPU per task: the figure the cost work
// is judged by, on a cluster you started yourself (scripts/cluster.sh), with perf or pprof on it.
//
//	go run ./scripts/load -addrs 127.0.0.1:7948,127.0.0.1:7958,127.0.0.1:7968 -c 64 -d 20s \
//	    -pids "$(cat $dir/n1.pid) $(cat $dir/n2.pid) $(cat $dir/n3.pid)"
//
// Clients are spread over the addresses in turn (one address: everything to that node). Each
// client submits one task at a time, with ?wait (the default) or without, and counts what came
// back 201; anything else is counted apart, with the first few answers printed. CPU is read from
// /proc/PID/stat (utime + stime) before and after, so it includes everything the nodes did in
// that time; run it on an otherwise idle cluster.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addrs := flag.String("addrs", "127.0.0.1:7948", "comma-separated HTTP host:port of the nodes to submit to")
	clients := flag.Int("c", 64, "concurrent clients")
	dur := flag.Duration("d", 20*time.Second, "how long to submit")
	wait := flag.Bool("wait", true, "submit with ?wait=30s (the client waits for the result)")
	token := flag.String("token", os.Getenv("TASKWORKER_TOKEN"), "bearer token, if the cluster needs one")
	pids := flag.String("pids", "", "process IDs of the cluster's nodes (space or comma separated), for CPU per task")
	flag.Parse()

	as := strings.Split(*addrs, ",")
	procs, err := parsePIDs(*pids)
	if err != nil {
		log.Fatal(err)
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: *clients}}
	url := func(a string) string {
		u := "http://" + a + "/v1/tasks"
		if *wait {
			u += "?wait=30s"
		}
		return u
	}
	var ok, other atomic.Int64
	var mu sync.Mutex
	var shown []string
	cpu0, err := cpuTicks(procs)
	if err != nil {
		log.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(target string) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader([]byte(`{"type":"echo","input":"x"}`)))
				if err != nil {
					log.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/json")
				if *token != "" {
					req.Header.Set("Authorization", "Bearer "+*token)
				}
				resp, err := hc.Do(req)
				var status int
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				if status == http.StatusCreated {
					ok.Add(1)
					continue
				}
				other.Add(1)
				mu.Lock()
				if len(shown) < 5 {
					shown = append(shown, fmt.Sprintf("%d %s %v", status, bytes.TrimSpace(body), err))
				}
				mu.Unlock()
			}
		}(url(as[i%len(as)]))
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err := cpuTicks(procs)
	if err != nil {
		log.Fatal(err)
	}
	n := ok.Load()
	fmt.Printf("%d tasks in %s from %d clients over %d node(s), ?wait %v: %.0f tasks/s; %d other answers\n",
		n, elapsed.Round(time.Millisecond), *clients, len(as), *wait, float64(n)/elapsed.Seconds(), other.Load())
	for _, s := range shown {
		fmt.Println("  e.g.", s)
	}
	if len(procs) > 0 && n > 0 {
		secs := float64(cpu1-cpu0) / clockTicks
		fmt.Printf("cluster CPU: %.2f s over %d process(es) = %.0f µs per task\n", secs, len(procs), secs/float64(n)*1e6)
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTicks = 100

func parsePIDs(s string) ([]int, error) {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("-pids: %q is not a process ID", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// cpuTicks sums utime and stime (fields 14 and 15 of /proc/PID/stat) over procs.
func cpuTicks(procs []int) (int64, error) {
	var total int64
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return 0, err
		}
		// The command name (field 2) is in parentheses and may hold spaces: count after it.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", p, len(fields))
		}
		for _, f := range fields[11:13] {
			v, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %v", p, err)
			}
			total += v
		}
	}
	return total, nil
}
