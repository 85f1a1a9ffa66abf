// Package localcluster runs clusters of real taskworker agent processes on 127.0.0.1 for the
// benchmark programs under scripts/: free loopback ports, node processes that die with the
// program, a readiness wait on the HTTP API, node logs for a run that went wrong, and cleanup of
// processes and temporary directories on exit or interrupt.
//
// (The multi-process tests of the root package keep their own harness in e2e_test.go: Go's
// internal rule lets only packages under scripts/ import this one.)
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/client"
)

// Every process and directory this package makes, for cleanup on exit or interrupt.
var (
	liveMu   sync.Mutex
	liveCmds = map[*exec.Cmd]bool{}
	tempDirs []string
)

// Main runs a benchmark program named name. run gets a new temporary directory, removed at the
// end unless keep (then its path is printed). When run fails, Main prints "name: error" to stderr
// and exits 1; on SIGINT or SIGTERM it exits 130. Every node process still running is killed first.
func Main(name string, keep bool, run func(root string) error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		cleanup(keep)
		os.Exit(130)
	}()

	err := func() error {
		root, err := os.MkdirTemp("", "taskworker-"+name+"-")
		if err != nil {
			return err
		}
		liveMu.Lock()
		tempDirs = append(tempDirs, root)
		liveMu.Unlock()
		return run(root)
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		cleanup(keep)
		os.Exit(1)
	}
	cleanup(keep)
}

func cleanup(keep bool) {
	liveMu.Lock()
	defer liveMu.Unlock()
	for c := range liveCmds {
		_ = c.Process.Kill()
	}
	if !keep {
		for _, d := range tempDirs {
			_ = os.RemoveAll(d)
		}
	} else if len(tempDirs) > 0 {
		fmt.Fprintln(os.Stderr, "kept:", strings.Join(tempDirs, " "))
	}
}

// Binary returns bin, or when it is empty builds taskworker into dir and returns that path.
func Binary(bin, dir string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	bin = filepath.Join(dir, "taskworker")
	fmt.Fprintln(os.Stderr, "building taskworker ...")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/taskworker/taskworker").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Until calls cond every interval until it returns true, or fails after timeout.
func Until(timeout, every time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(every)
	}
	return nil
}

// FreePorts returns k distinct loopback ports, each free for both TCP and UDP (gossip uses both).
// All of them are held until the last is found, so no two are the same; a cluster takes all its
// ports before starting any node, so a starting node cannot take a port another is about to get.
func FreePorts(k int) ([]int, error) {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	var out []int
	for tries := 0; len(out) < k; tries++ {
		if tries > 50*k {
			return nil, errors.New("no free ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			out = append(out, port)
		}
	}
	return out, nil
}

// Node is one taskworker agent process.
type Node struct {
	Name               string
	HTTP, Gossip, Raft string // 127.0.0.1:port
	DataDir, LogPath   string
	API                *client.Client // talks to HTTP
	cmd                *exec.Cmd
}

// RSS is the node process's resident memory, read from /proc.
func (n *Node) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", n.cmd.Process.Pid)
}

// Signal sends sig to the node's process.
func (n *Node) Signal(sig os.Signal) error { return n.cmd.Process.Signal(sig) }

// start runs bin with args, its output going to n.LogPath. The process gets SIGKILL when this
// program dies, and has a process group of its own, so that a Ctrl-C reaches only this program,
// which then kills it.
func (n *Node) start(bin string, args []string) error {
	f, err := os.Create(n.LogPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	n.cmd = cmd
	liveMu.Lock()
	liveCmds[cmd] = true
	liveMu.Unlock()
	go func() {
		_ = cmd.Wait()
		liveMu.Lock()
		delete(liveCmds, cmd)
		liveMu.Unlock()
	}()
	return nil
}

// Cluster is a set of taskworker agent processes on 127.0.0.1.
type Cluster struct {
	Nodes []*Node
}

// Start starts n nodes n1…nN of the taskworker binary bin, each after the first joining the first.
// Node nI keeps its data in dir/nI (also its --files-dir) and its output in dir/nI.log, advertises
// 127.0.0.1 and runs capacity tasks at once. On an error the nodes started so far are killed.
func Start(bin, dir string, n, capacity int) (*Cluster, error) {
	c := &Cluster{}
	ports, err := FreePorts(3 * n)
	if err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		nd := &Node{Name: fmt.Sprintf("n%d", i)}
		for j, a := range []*string{&nd.HTTP, &nd.Gossip, &nd.Raft} {
			*a = fmt.Sprintf("127.0.0.1:%d", ports[3*(i-1)+j])
		}
		nd.DataDir = filepath.Join(dir, nd.Name)
		nd.LogPath = filepath.Join(dir, nd.Name+".log")
		nd.API = client.New("http://" + nd.HTTP)
		if err := os.MkdirAll(nd.DataDir, 0o755); err != nil {
			c.Stop()
			return nil, err
		}
		args := []string{"agent", "--name", nd.Name, "--data-dir", nd.DataDir, "--advertise", "127.0.0.1",
			"--gossip-addr", nd.Gossip, "--raft-addr", nd.Raft, "--http-addr", nd.HTTP,
			"--capacity", fmt.Sprint(capacity), "--files-dir", nd.DataDir}
		if i > 1 {
			args = append(args, "--join", c.Nodes[0].Gossip)
		}
		if err := nd.start(bin, args); err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, nd)
	}
	return c, nil
}

// WaitReady waits until the first node sees a leader, every node alive with its task types, and
// min(3, n) raft voters.
func (c *Cluster) WaitReady(timeout time.Duration) error {
	want := len(c.Nodes)
	var last string
	err := Until(timeout, 50*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		cl, err := c.Nodes[0].API.Cluster(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		alive, voters := 0, 0
		for _, n := range cl.Nodes {
			if n.State == "alive" && len(n.TaskTypes) > 0 {
				alive++
			}
			if n.RaftRole == "leader" || n.RaftRole == "voter" {
				voters++
			}
		}
		last = fmt.Sprintf("leader %q, %d alive, %d voters", cl.Leader, alive, voters)
		return cl.Leader != "" && alive == want && voters >= min(3, want)
	})
	if err != nil {
		return fmt.Errorf("cluster not ready: %s", last)
	}
	return nil
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Stop kills every node.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			_ = n.cmd.Process.Kill()
		}
	}
}

// Logs returns the tail of every node's log, for a run that went wrong.
func (c *Cluster) Logs() string {
	var b strings.Builder
	names := make([]*Node, len(c.Nodes))
	copy(names, c.Nodes)
	sort.Slice(names, func(i, j int) bool { return names[i].Name < names[j].Name })
	for _, n := range names {
		data, _ := os.ReadFile(n.LogPath)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", n.Name, n.LogPath, strings.Join(lines, "\n"))
	}
	return b.String()
}
