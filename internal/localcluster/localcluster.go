// Package localcluster runs clusters of real taskworker agent processes on 127.0.0.1, for the
// benchmark programs under scripts/ and the multi-process tests in e2e/: building the binary once,
// loopback ports never handed out twice, node processes that die with the program, start, SIGKILL,
// SIGTERM and restart of one node, the client commands run against a node, node logs for a run
// that went wrong, and cleanup of processes and temporary directories.
//
// It knows nothing of testing.T: the e2e harness wraps it with its assertions and t.Cleanup, the
// scripts with Main.
package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/api"
)

// Module is the import path of the taskworker binary's main package.
const Module = "github.com/taskworker/taskworker"

// ErrTimeout is returned by Until and Node.Wait when the time is up.
var ErrTimeout = errors.New("timed out")

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
	fmt.Fprintln(os.Stderr, "building taskworker ...")
	return Build(Module, filepath.Join(dir, "taskworker"))
}

// Build runs `go build -o out pkg` and returns out. pkg is an import path or a directory; the
// build runs in the current directory, so an import path resolves in whatever module that is in.
// The binary's main.version is stamped with BuildVersion, as scripts/build.sh does.
func Build(pkg, out string) (string, error) {
	ldflags := "-X main.version=" + BuildVersion()
	b, err := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// BuildVersion is the version a build here is stamped with: `git describe --always --dirty` of
// the current directory's repository, or "dev" outside one.
func BuildVersion() string {
	b, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(b)); err == nil && v != "" && !strings.ContainsAny(v, " \t'\"") {
		return v
	}
	return "dev"
}

// Builder builds one Go package at most once per process, into a temporary directory, for test
// suites whose tests all run the same binary. The zero value is not usable; set Pkg.
type Builder struct {
	Pkg  string // import path or directory of the main package
	Name string // file name of the binary; default "taskworker"

	once sync.Once
	dir  string
	path string
	err  error
}

// Path builds the binary on the first call and returns its path (or the first call's error) on
// every call.
func (b *Builder) Path() (string, error) {
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "taskworker-bin-")
		if b.err != nil {
			return
		}
		name := b.Name
		if name == "" {
			name = "taskworker"
		}
		b.path, b.err = Build(b.Pkg, filepath.Join(b.dir, name))
	})
	return b.path, b.err
}

// Remove deletes the built binary and its directory.
func (b *Builder) Remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// Until calls cond every interval until it returns true, or returns ErrTimeout after timeout.
func Until(timeout, every time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return ErrTimeout
		}
		time.Sleep(every)
	}
	return nil
}

// Ports FreePorts has handed out in this process. A node started a moment ago may not have bound
// its ports yet, so the kernel can offer one of them again; a port is never handed out twice.
var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// FreePorts returns k distinct loopback ports, each free for both TCP and UDP (gossip uses both)
// and never returned before by this process. All k are held until the last is found.
//
// They come from below the kernel's ephemeral range (ip_local_port_range), never from it: a port
// the kernel hands out for port 0 can be taken as the local port of any outgoing connection on the
// machine (another test's HTTP client, a node's raft dial) between the moment it is picked here
// and the moment the node binds it, which failed runs with "address already in use".
func FreePorts(k int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var held []io.Closer
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	lo, hi := 10000, EphemeralLow()-1
	var out []int
	for tries := 0; len(out) < k; tries++ {
		if tries > 200*k {
			return nil, errors.New("no free ports")
		}
		port := lo + rand.IntN(hi-lo+1)
		if handedOut[port] || slices.Contains(out, port) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		held = append(held, l)
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		held = append(held, u)
		out = append(out, port)
	}
	for _, p := range out {
		handedOut[p] = true
	}
	return out, nil
}

// EphemeralLow is the first port of the kernel's ephemeral range (32768 when it cannot be read):
// a port to bind later is picked below it (FreePorts).
func EphemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 11000 {
		return 32768
	}
	return n
}

// Node is one taskworker agent process. Its addresses, data dir and log stay the same across
// restarts.
type Node struct {
	Name               string
	HTTP, Gossip, Raft string // 127.0.0.1:port
	DataDir, LogPath   string
	// Token is the bearer credential of this package's own API reads (WaitReady); "" for none.
	// Programs make their API clients from HTTP and Token.
	Token string

	bin  string
	args []string
	env  []string // added to this program's environment (the join token)

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	exitErr error         // cmd.Wait's answer, once exited is closed
}

// Args returns the agent command line the node runs with.
func (n *Node) Args() []string { return append([]string(nil), n.args...) }

// RSS is the node process's resident memory, read from /proc.
func (n *Node) RSS() (int64, error) { return n.MemStatus("VmRSS") }

// MemStatus reads one memory figure in kB of the node process's /proc status (VmRSS, RssAnon,
// RssFile, VmHWM, ...), in bytes.
func (n *Node) MemStatus(field string) (int64, error) {
	pid := n.proc().Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse %s %q: %w", field, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// OpenFDs counts the node process's open file descriptors, read from /proc.
func (n *Node) OpenFDs() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.proc().Pid))
	if err != nil {
		return 0, fmt.Errorf("descriptors of %s: %w", n.Name, err)
	}
	return len(ents), nil
}

// PID is the process ID of the node's current process (for /proc readings such as CPU time).
func (n *Node) PID() int { return n.proc().Pid }

func (n *Node) proc() *os.Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process
}

// current returns the running process's exit channel and a way to read its exit error.
func (n *Node) current() (<-chan struct{}, func() error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd, exited := n.cmd, n.exited
	return exited, func() error {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.cmd != cmd {
			return nil
		}
		return n.exitErr
	}
}

// Signal sends sig to the node's process.
func (n *Node) Signal(sig os.Signal) error {
	if err := n.proc().Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", n.Name, err)
	}
	return nil
}

// Running reports whether the node's process has not exited.
func (n *Node) Running() bool {
	exited, _ := n.current()
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the current process exits.
func (n *Node) Exited() <-chan struct{} {
	exited, _ := n.current()
	return exited
}

// Wait waits up to timeout for the process to exit and returns how it exited (nil for status 0),
// or ErrTimeout.
func (n *Node) Wait(timeout time.Duration) error {
	exited, exitErr := n.current()
	select {
	case <-exited:
		return exitErr()
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s: %w", n.Name, timeout, ErrTimeout)
	}
}

// Kill sends SIGKILL, as a crash would, and waits for the process to be gone.
func (n *Node) Kill() {
	exited, _ := n.current()
	_ = n.proc().Kill()
	<-exited
}

// Restart starts the node again with the same command line, on the same data dir and ports;
// its output goes on in the same log. The previous process must have exited.
func (n *Node) Restart() error {
	if n.Running() {
		return fmt.Errorf("restart %s: still running", n.Name)
	}
	return n.start()
}

// Log returns everything the node has written so far (every run of it).
func (n *Node) Log() string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// start runs the node's command line, its output appended to n.LogPath. The process gets SIGKILL
// when this program dies, and has a process group of its own, so that a Ctrl-C reaches only this
// program, which then kills it.
func (n *Node) start() error {
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", n.Name, err)
	}
	defer f.Close()
	cmd := exec.Command(n.bin, n.args...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(n.env) > 0 {
		cmd.Env = append(os.Environ(), n.env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	exited := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.exited, n.exitErr = cmd, exited, nil
	n.mu.Unlock()
	liveMu.Lock()
	liveCmds[cmd] = true
	liveMu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		if n.cmd == cmd {
			n.exitErr = err
		}
		n.mu.Unlock()
		close(exited)
		liveMu.Lock()
		delete(liveCmds, cmd)
		liveMu.Unlock()
	}()
	return nil
}

// Launch starts n with a command line of the caller's making (bin, args, and env added to this
// program's environment), for programs that place nodes themselves: the chaos suite runs each
// node inside a network namespace of its own (bin is then `ip netns exec NS taskworker`). n.Name,
// n.HTTP and n.LogPath must be set. Launch on a node whose
// process has exited starts it again with the new command line (a restart whose --join differs).
func Launch(n *Node, bin string, args, env []string) error {
	if n.cmd != nil && n.Running() {
		return fmt.Errorf("launch %s: still running", n.Name)
	}
	n.bin, n.args, n.env = bin, append([]string(nil), args...), append([]string(nil), env...)
	return n.start()
}

// CLI runs the client command args[0] (with its subcommands and flags in args[1:]) of bin
// against the node, with --addr pointing at it, and returns its stdout, stderr and exit status.
// err is set only when the command could not run at all.
func (n *Node) CLI(bin string, args ...string) (stdout, stderr string, code int, err error) {
	if len(args) == 0 {
		return "", "", 0, errors.New("CLI: no command")
	}
	full := append([]string{args[0], "--addr", "http://" + n.HTTP}, args[1:]...)
	cmd := exec.Command(bin, full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return out.String(), errb.String(), -1, fmt.Errorf("run %s %v: %w", bin, args, err)
	}
	return out.String(), errb.String(), 0, nil
}

// Cluster is a set of taskworker agent processes on 127.0.0.1.
type Cluster struct {
	Bin   string   // the taskworker binary (or one built like it, with agent and client commands)
	Dir   string   // node nI keeps its data in Dir/nI and its output in Dir/nI.log
	Args  []string // agent flags every node gets after the ones Add sets
	Nodes []*Node
}

// New returns an empty cluster of bin's agents in dir; Add starts its nodes.
func New(bin, dir string, args ...string) *Cluster {
	return &Cluster{Bin: bin, Dir: dir, Args: args}
}

// JoinTokenTimeout is how long Add waits for the first node to write its join token.
const JoinTokenTimeout = 30 * time.Second

// Add starts one more node, n<k+1> for a cluster of k, joining the first node (unless it is the
// first). It advertises 127.0.0.1, uses its data dir as --files-dir, and gets c.Args and then
// extra (a flag given twice: the last one wins). As a user would, a node that joins a secure
// cluster gets the join token the first node wrote to <data-dir>/join-token, in
// TASKWORKER_JOIN_TOKEN; not with --insecure, nor with operator certificates (--tls-cert).
func (c *Cluster) Add(extra ...string) (*Node, error) {
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	nd := &Node{Name: fmt.Sprintf("n%d", len(c.Nodes)+1), bin: c.Bin}
	for j, a := range []*string{&nd.HTTP, &nd.Gossip, &nd.Raft} {
		*a = fmt.Sprintf("127.0.0.1:%d", ports[j])
	}
	nd.DataDir = filepath.Join(c.Dir, nd.Name)
	nd.LogPath = filepath.Join(c.Dir, nd.Name+".log")
	if err := os.MkdirAll(nd.DataDir, 0o700); err != nil { // the agent refuses a data dir others can reach
		return nil, fmt.Errorf("data dir of %s: %w", nd.Name, err)
	}
	nd.args = []string{"agent", "--name", nd.Name, "--data-dir", nd.DataDir, "--advertise", "127.0.0.1",
		"--gossip-addr", nd.Gossip, "--raft-addr", nd.Raft, "--http-addr", nd.HTTP, "--files-dir", nd.DataDir}
	if len(c.Nodes) > 0 {
		nd.args = append(nd.args, "--join", c.Nodes[0].Gossip)
	}
	nd.args = append(append(nd.args, c.Args...), extra...)
	if len(c.Nodes) > 0 && !hasFlag(nd.args, "--insecure") && !hasFlag(nd.args, "--tls-cert") && !hasFlag(nd.args, "--join-token") && !hasFlag(nd.args, "--join-token-file") {
		tok, err := c.Nodes[0].JoinToken(JoinTokenTimeout)
		if err != nil {
			return nil, err
		}
		nd.env = append(nd.env, "TASKWORKER_JOIN_TOKEN="+tok)
	}
	if err := nd.start(); err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, nd)
	return nd, nil
}

// JoinToken waits up to timeout for the node's <data-dir>/join-token (a secure cluster's first
// node writes it at start) and returns the token.
func (n *Node) JoinToken(timeout time.Duration) (string, error) {
	var tok string
	err := Until(timeout, 50*time.Millisecond, func() bool {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "join-token"))
		tok = strings.TrimSpace(string(b))
		return err == nil && tok != ""
	})
	if err != nil {
		return "", fmt.Errorf("no join token from %s in %s (is it running --insecure?): %w", n.Name, timeout, err)
	}
	return tok, nil
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// Start starts n nodes n1…nN of the taskworker binary bin in dir, each after the first joining the
// first, each running capacity tasks at once, with args (say --insecure or --acl) added to every
// node's agent flags. On an error the nodes started so far are killed.
// The benchmarks drive a node from one address, so the API's per-client rate limit is off (as it
// is by default, said again so that another default cannot skew them); args come after that flag
// and could turn it on, which Start refuses rather than let a benchmark measure the limiter.
func Start(bin, dir string, n, capacity int, args ...string) (*Cluster, error) {
	if hasFlag(args, "--http-rate-limit") {
		return nil, fmt.Errorf("start cluster: --http-rate-limit in %q: the benchmarks run with the rate limit off", args)
	}
	c := New(bin, dir, append([]string{"--capacity", fmt.Sprint(capacity), "--http-rate-limit", "0"}, args...)...)
	for i := 0; i < n; i++ {
		if _, err := c.Add(); err != nil {
			c.Stop()
			return nil, err
		}
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
		cl, err := c.Nodes[0].cluster(ctx)
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

// cluster is n's GET /v1/cluster, read with n.Token.
func (n *Node) cluster(ctx context.Context) (*api.Cluster, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTP+"/v1/cluster", nil)
	if err != nil {
		return nil, err
	}
	if n.Token != "" {
		req.Header.Set("Authorization", "Bearer "+n.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("GET /v1/cluster on %s: %w", n.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ae api.Error
		_ = json.Unmarshal(body, &ae)
		return nil, fmt.Errorf("GET /v1/cluster on %s: %s: %s", n.Name, resp.Status, ae.Message)
	}
	cl := new(api.Cluster)
	if err := json.Unmarshal(body, cl); err != nil {
		return nil, fmt.Errorf("GET /v1/cluster on %s: %w", n.Name, err)
	}
	return cl, nil
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

// Running returns the nodes whose process has not exited.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Stop kills every node and waits until their processes are gone.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Logs returns the tail of every node's log, for a run that went wrong.
func (c *Cluster) Logs() string {
	var b strings.Builder
	names := make([]*Node, len(c.Nodes))
	copy(names, c.Nodes)
	sort.Slice(names, func(i, j int) bool { return names[i].Name < names[j].Name })
	for _, n := range names {
		lines := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", n.Name, n.LogPath, strings.Join(lines, "\n"))
	}
	return b.String()
}
