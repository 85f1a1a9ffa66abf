package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePortBase finds a base B whose ports B+10i+{0,1,2} (i < nodes) are free on 127.0.0.1 for
// TCP, and B+10i for UDP too (gossip), as scripts/cluster.sh lays them out. They lie below the
// kernel's ephemeral range, as localcluster.FreePorts's do: a port in it can be taken as the
// local port of any dial on the machine (this test's HTTP clients, another package's nodes)
// between this check and the moment a node binds it, seconds later for the nodes a document
// starts.
func freePortBase(t *testing.T, nodes int) int {
	t.Helper()
	lo, top := 10000, localcluster.EphemeralLow()-10*nodes // the last base whose ports stay below
	for range 200 {
		base := lo + 10*rand.IntN((top-lo)/10)
		if portsFree(base, nodes) {
			return base
		}
	}
	t.Fatal("no free port base found")
	return 0
}

func portsFree(base, nodes int) bool {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for i := range nodes {
		for off := range 3 {
			addr := fmt.Sprintf("127.0.0.1:%d", base+10*i+off)
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, l.Close)
			if off == 0 {
				u, err := net.ListenPacket("udp", addr)
				if err != nil {
					return false
				}
				closers = append(closers, u.Close)
			}
		}
	}
	return true
}

// clusterScript is `scripts/cluster.sh --port-base base nodes` with the built binary, in dir.
func clusterScript(ctx context.Context, bin, dir string, base, nodes int) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join("..", "scripts", "cluster.sh"), "--port-base", strconv.Itoa(base), strconv.Itoa(nodes))
	cmd.Env = append(os.Environ(), "TASKWORKER_BIN="+bin, "TASKWORKER_CLUSTER_DIR="+dir,
		"TASKWORKER_CLUSTER_TIMEOUT=90", "TASKWORKER_PORT_BASE=")
	// SIGTERM, not SIGKILL, when the context ends: the script's trap stops its nodes.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 60 * time.Second
	return cmd
}

// killNodes SIGKILLs the nodes a cluster.sh run recorded in dir (n<i>.pid) that still run: the
// last resort when the script itself could not stop them.
func killNodes(dir string) {
	pids, _ := filepath.Glob(filepath.Join(dir, "n*.pid"))
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func healthOK(addr string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/v1/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestClusterScriptSecondRunOnTheSamePortsFailsLoudly runs scripts/cluster.sh twice on one port
// base: the second run must exit non-zero naming its failing node and the address in use, and
// the first cluster must keep running, untouched; SIGTERM then stops the first run's nodes.
func TestClusterScriptSecondRunOnTheSamePortsFailsLoudly(t *testing.T) {
	bin := binary(t)
	const nodes = 2
	base := freePortBase(t, nodes)
	dir1, dir2 := t.TempDir(), t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	first := clusterScript(ctx, bin, dir1, base, nodes)
	out1 := &lockedBuffer{}
	first.Stdout, first.Stderr = out1, out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(70 * time.Second):
		}
		killNodes(dir1)
		killNodes(dir2)
	})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(120 * time.Second)
		for !cond() {
			select {
			case err := <-exited:
				t.Fatalf("first cluster.sh exited (%v) before %s:\n%s", err, what, out1)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s:\n%s", what, out1)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("the first cluster", func() bool { return strings.Contains(out1.String(), fmt.Sprintf("%d nodes running", nodes)) })
	// It prints the web console's URL, and the console answers there.
	console := fmt.Sprintf("http://127.0.0.1:%d/ui/", base+2)
	waitFor("the console URL", func() bool { return strings.Contains(out1.String(), "Web console: "+console) })
	if resp, err := http.Get(console); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %v %v", console, resp, err)
	} else {
		resp.Body.Close()
	}

	// The second run, on the same ports.
	sctx, scancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer scancel()
	second := clusterScript(sctx, bin, dir2, base, nodes)
	begin := time.Now()
	out2, err := second.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("second cluster.sh on the same ports: %v, want a non-zero exit; output:\n%s", err, out2)
	}
	t.Logf("second run exited %d after %s", ee.ExitCode(), time.Since(begin).Round(time.Millisecond))
	inUse := fmt.Sprintf("127.0.0.1:%d", base+2) // n1's HTTP port, the first it binds
	for _, want := range []string{"n1 failed", "address already in use", inUse} {
		if !strings.Contains(string(out2), want) {
			t.Errorf("second run's output lacks %q:\n%s", want, out2)
		}
	}
	if strings.Contains(string(out2), "nodes running") {
		t.Errorf("second run claims its nodes run:\n%s", out2)
	}

	// The first cluster is untouched: its script and every one of its nodes still run and answer.
	select {
	case err := <-exited:
		t.Fatalf("first cluster.sh exited (%v) after the second run:\n%s", err, out1)
	default:
	}
	for i := range nodes {
		if addr := fmt.Sprintf("127.0.0.1:%d", base+10*i+2); !healthOK(addr) {
			t.Errorf("first cluster's n%d at %s is not healthy after the second run", i+1, addr)
		}
		b, err := os.ReadFile(filepath.Join(dir1, fmt.Sprintf("n%d.pid", i+1)))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
			t.Errorf("first cluster's n%d process (pid file: %v) does not run", i+1, err)
		}
	}

	// SIGTERM (what Ctrl-C does through the trap) stops the first run and its nodes.
	if err := first.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("first cluster.sh still runs 60s after SIGTERM:\n%s", out1)
	}
	for i := range nodes {
		b, _ := os.ReadFile(filepath.Join(dir1, fmt.Sprintf("n%d.pid", i+1)))
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && syscall.Kill(pid, 0) == nil {
			t.Errorf("n%d (pid %d) still runs after its cluster.sh stopped", i+1, pid)
		}
	}
}

// TestAgentBinaryRefusesNonsenseConfigWithExit2: the real binary exits 2 with one line per problem.
func TestAgentBinaryRefusesNonsenseConfigWithExit2(t *testing.T) {
	bin := binary(t)
	cmd := exec.Command(bin, "agent", "--name", "x", "--data-dir", t.TempDir(), "--capacity", "-1",
		"--voters", "0", "--drain-timeout", "-5s", "--http-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("agent with nonsense flags: %v, want exit 2; stderr:\n%s", err, stderr.String())
	}
	for _, want := range []string{"--capacity must be at least 1, got -1", "--voters must be at least 1, got 0", "--drain-timeout must be positive, got -5s"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
