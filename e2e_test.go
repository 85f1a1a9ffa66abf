package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// These tests build the real binary and run clusters of real processes on loopback.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "taskworker-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "taskworker")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Ports freePort has handed out: a node started a moment ago may not have bound its ports yet, so
// the kernel can offer the same one again; never hand one out twice.
var (
	usedPortsMu sync.Mutex
	usedPorts   = map[int]bool{}
)

// freePort returns a loopback port free for both TCP and UDP (gossip uses both).
func freePort(t *testing.T) int {
	t.Helper()
	usedPortsMu.Lock()
	defer usedPortsMu.Unlock()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			if usedPorts[port] {
				continue
			}
			usedPorts[port] = true
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type proc struct {
	name, dataDir            string
	gossip, raftAddr, httpAd string
	cmd                      *exec.Cmd
	log                      *bytes.Buffer
	done                     chan error
}

type procCluster struct {
	t     *testing.T
	bin   string
	procs []*proc
}

func newProcCluster(t *testing.T) *procCluster {
	return &procCluster{t: t, bin: binary(t)}
}

// startProcCluster starts n nodes, each with the extra agent flags, and waits until the first
// sees all n alive.
func startProcCluster(t *testing.T, n int, extra ...string) *procCluster {
	t.Helper()
	pc := newProcCluster(t)
	for i := 0; i < n; i++ {
		pc.add(extra...)
	}
	pc.waitCluster(pc.procs[0], n)
	return pc
}

type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// add creates a node's addresses and data dir, and starts it.
func (pc *procCluster) add(extra ...string) *proc {
	pc.t.Helper()
	p := &proc{
		name:     fmt.Sprintf("n%d", len(pc.procs)+1),
		dataDir:  pc.t.TempDir(),
		gossip:   fmt.Sprintf("127.0.0.1:%d", freePort(pc.t)),
		raftAddr: fmt.Sprintf("127.0.0.1:%d", freePort(pc.t)),
		httpAd:   fmt.Sprintf("127.0.0.1:%d", freePort(pc.t)),
	}
	pc.procs = append(pc.procs, p)
	pc.start(p, extra...)
	return p
}

func (pc *procCluster) start(p *proc, extra ...string) {
	pc.t.Helper()
	args := []string{"agent", "--name", p.name, "--data-dir", p.dataDir, "--gossip-addr", p.gossip,
		"--raft-addr", p.raftAddr, "--http-addr", p.httpAd, "--capacity", "2", "--drain-timeout", "10s"}
	if p != pc.procs[0] {
		args = append(args, "--join", pc.procs[0].gossip)
	}
	args = append(args, extra...)
	p.cmd = exec.Command(pc.bin, args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphans if the test binary dies
	var buf syncBuffer
	p.cmd.Stdout, p.cmd.Stderr = &buf, &buf
	p.log = &buf.Buffer
	if err := p.cmd.Start(); err != nil {
		pc.t.Fatal(err)
	}
	cmd, done := p.cmd, make(chan error, 1)
	p.done = done
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	pc.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if pc.t.Failed() {
			buf.mu.Lock()
			pc.t.Logf("--- log of %s ---\n%s", p.name, buf.String())
			buf.mu.Unlock()
		}
	})
}

func (pc *procCluster) kill(p *proc) {
	pc.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// sigtermExits sends SIGTERM and checks the process exits with status 0 in time.
func (pc *procCluster) sigtermExits(p *proc, timeout time.Duration) {
	pc.t.Helper()
	pc.sigterm(p)
	pc.exitsCleanly(p, timeout)
}

func (pc *procCluster) sigterm(p *proc) {
	pc.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		pc.t.Fatal(err)
	}
}

// exitsCleanly checks that p's process exits with status 0 within timeout.
func (pc *procCluster) exitsCleanly(p *proc, timeout time.Duration) {
	pc.t.Helper()
	select {
	case err := <-p.done:
		if err != nil {
			pc.t.Fatalf("%s after SIGTERM: %v, want exit status 0", p.name, err)
		}
	case <-time.After(timeout):
		pc.t.Fatalf("%s still running %s after SIGTERM", p.name, timeout)
	}
}

func (pc *procCluster) byName(name string) *proc {
	for _, p := range pc.procs {
		if p.name == name {
			return p
		}
	}
	pc.t.Fatalf("no process %s", name)
	return nil
}

// others returns every process but p.
func (pc *procCluster) others(p *proc) []*proc {
	var out []*proc
	for _, q := range pc.procs {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

func (p *proc) client() *client.Client { return client.New("http://" + p.httpAd) }

// view returns p's GET /v1/cluster, or nil on error.
func (p *proc) view() *client.Cluster {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := p.client().Cluster(ctx)
	if err != nil {
		return nil
	}
	return c
}

// getJSON decodes the answer to GET path on p into v; a status other than 200 is an error.
func (p *proc) getJSON(path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAd+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// taskRec is the task record plus the failure count the client package does not decode.
type taskRec struct {
	client.Task
	Failures int `json:"failures"`
}

// tasks reads the records of ids from p; ok is false on any error (say, a 503 during an election).
func (p *proc) tasks(ids []string) (map[string]taskRec, bool) {
	out := make(map[string]taskRec, len(ids))
	for _, id := range ids {
		var rec taskRec
		if p.getJSON("/v1/tasks/"+id, &rec) != nil {
			return nil, false
		}
		out[id] = rec
	}
	return out, true
}

// hasHistory reports whether r's history holds event on node (on any node when node is "").
func hasHistory(r taskRec, event, node string) bool {
	return slices.ContainsFunc(r.History, func(h client.HistoryEntry) bool {
		return h.Event == event && (node == "" || h.Node == node)
	})
}

// submitSleeps submits count sleep tasks of ms milliseconds, round robin to the processes in to.
func submitSleeps(t *testing.T, count, ms int, to ...*proc) []string {
	t.Helper()
	var ids []string
	for i := 0; i < count; i++ {
		task, _, err := to[i%len(to)].client().Submit(context.Background(), client.SubmitRequest{
			Type: "sleep", Input: json.RawMessage(fmt.Sprintf(`{"ms": %d}`, ms)), Timeout: "60s"})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

// waitTasks waits until every task in ids is in state, reading them from the processes in from
// in turn (any one that answers will do), and returns their records.
func waitTasks(t *testing.T, state string, timeout time.Duration, ids []string, from ...*proc) map[string]taskRec {
	t.Helper()
	var recs map[string]taskRec
	turn := 0
	poll(t, "all tasks "+state, timeout, func() bool {
		turn++
		got, ok := from[turn%len(from)].tasks(ids)
		if !ok {
			return false
		}
		for _, r := range got {
			if r.State != state {
				return false
			}
		}
		recs = got
		return true
	})
	return recs
}

// cli runs the taskworker binary as a client against p and returns stdout, stderr and exit code.
func (pc *procCluster) cli(p *proc, args ...string) (string, string, int) {
	pc.t.Helper()
	cmd := exec.Command(pc.bin, append(args[:1:1], append([]string{"--addr", "http://" + p.httpAd}, args[1:]...)...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		pc.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func poll(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitCluster waits until p sees a leader and want alive nodes, all registered.
func (pc *procCluster) waitCluster(p *proc, want int) *client.Cluster {
	pc.t.Helper()
	var cl *client.Cluster
	poll(pc.t, fmt.Sprintf("%d alive nodes seen by %s", want, p.name), 60*time.Second, func() bool {
		c := p.view()
		if c == nil || c.Leader == "" {
			return false
		}
		alive := 0
		for _, n := range c.Nodes {
			if n.State == "alive" && len(n.TaskTypes) > 0 {
				alive++
			}
		}
		cl = c
		return alive == want
	})
	return cl
}

func TestProcessClusterExecStatusAndRestart(t *testing.T) {
	pc := startProcCluster(t, 3)

	for _, p := range pc.procs {
		out, errOut, code := pc.cli(p, "exec", "calc-square", "12")
		if code != 0 || strings.TrimSpace(out) != "144" {
			t.Fatalf("exec on %s: code %d out %q err %q", p.name, code, out, errOut)
		}
	}
	out, _, code := pc.cli(pc.procs[1], "status")
	if code != 0 || strings.Count(out, "alive") != 3 || strings.Count(out, "leader") < 1 {
		t.Fatalf("status: code %d\n%s", code, out)
	}
	var cl client.Cluster
	out, _, _ = pc.cli(pc.procs[2], "status", "--json")
	if err := json.Unmarshal([]byte(out), &cl); err != nil || len(cl.Nodes) != 3 || cl.Leader == "" {
		t.Fatalf("status --json: %v %q", err, out)
	}

	// Kill a follower, restart it on its data dir: it rejoins and sees every task.
	victim := pc.procs[2]
	if cl.Leader == victim.name {
		victim = pc.procs[1]
	}
	pc.kill(victim)
	ctx := context.Background()
	task, _, err := pc.procs[0].client().Submit(ctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`{"while":"down"}`)})
	if err != nil {
		t.Fatal(err)
	}
	pc.start(victim)
	pc.waitCluster(victim, 3)
	poll(t, "restarted node sees the task it missed", 30*time.Second, func() bool {
		got, err := victim.client().Get(ctx, task.ID)
		return err == nil && got.State == "succeeded"
	})
	out, _, code = pc.cli(victim, "exec", "calc-square", "7")
	if code != 0 || strings.TrimSpace(out) != "49" {
		t.Fatalf("exec after restart: %d %q", code, out)
	}
}
