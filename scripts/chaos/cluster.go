package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/internal/store"
)

// Ports every node uses in network-namespace mode, where each node has an address of its own.
const (
	nsGossipPort = 7946
	nsRaftPort   = 7947
	nsHTTPPort   = 7948
)

// errCommand marks a failed setup command (ip, tc, mount).
var errCommand = errors.New("command failed")

// member is one node of the chaos cluster and what the fault injector knows of it.
type member struct {
	*localcluster.Node
	API      *client.Client // talks to its HTTP API
	idx      int            // 1-based
	ip       string         // its address: its own in a namespace, 127.0.0.1 otherwise
	ns       string         // network namespace, "" in loopback mode
	hostVeth string         // the bridge side of its veth pair

	mu      sync.Mutex
	faulted bool // a fault holds it: no second fault picks it
	stopped bool // SIGSTOPped: no probe or submit is sent to it

	launched atomic.Bool // it has a process (running or exited) to kill
	old      atomic.Bool // it runs the previous release (an upgrade run), which lacks ?consistent
}

// consistentReads reports whether the node serves GET ?consistent.
func (m *member) consistentReads() bool { return !m.old.Load() }

func (m *member) take() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.faulted {
		return false
	}
	m.faulted = true
	return true
}

func (m *member) release() {
	m.mu.Lock()
	m.faulted = false
	m.mu.Unlock()
}

func (m *member) setStopped(v bool) {
	m.mu.Lock()
	m.stopped = v
	m.mu.Unlock()
}

// usable reports whether requests to the node can be answered: running and not frozen.
func (m *member) usable() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.stopped && m.Running()
}

// env is the cluster and everything made for it, undone by close in reverse order.
type env struct {
	cfg     config
	root    string
	bin     string
	oldBin  string // an upgrade run's previous release: every node starts on it
	prefix  string // unique per run: names of namespaces, links
	subnet  string // "10.213.K" in namespace mode
	netns   bool
	nft     bool // nftables works in the namespaces: loss and delay faults
	tmpfs   bool
	members []*member
	cluster *localcluster.Cluster
	token   string // join token of a secure cluster

	mu       sync.Mutex
	undo     []func()
	closeOne sync.Once
	cuts     map[[2]string]int // partitioned directions (from, to) and how many faults hold each
}

func (e *env) atExit(f func()) {
	e.mu.Lock()
	e.undo = append(e.undo, f)
	e.mu.Unlock()
}

// close kills every node, then unmounts and deletes what was made, newest first. Safe to call
// twice and from a signal handler while run is still unwinding.
func (e *env) close() {
	e.closeOne.Do(func() {
		for _, m := range e.members {
			if m.launched.Load() {
				m.Kill() // SIGKILL ends a SIGSTOPped process too
			}
		}
		e.mu.Lock()
		undo := e.undo
		e.undo = nil
		e.mu.Unlock()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	})
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %v: %s", name, strings.Join(args, " "), errCommand, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// canNetns reports whether this process can make network namespaces: root, with ip installed.
func canNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("no ip (apt-get install iproute2)")
	}
	return nil
}

// canTmpfs reports whether each data dir can live on a small tmpfs of its own.
func canTmpfs() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	return nil
}

// setupNet makes a bridge with an address for this program, and per node a namespace joined to
// the bridge by a veth pair. A partition (cut) changes only the nodes' neighbour entries for each
// other, so this program (the bridge address) always reaches every node's API, and a fault hits
// node-to-node traffic only: gossip (UDP and TCP), raft and internode calls.
func (e *env) setupNet() error {
	pid := os.Getpid()
	e.subnet = fmt.Sprintf("10.213.%d", pid%250+1)
	br := e.prefix + "br"
	if err := sh("ip", "link", "add", br, "type", "bridge"); err != nil {
		return err
	}
	e.atExit(func() { _ = sh("ip", "link", "del", br) })
	if err := sh("ip", "addr", "add", e.subnet+".1/24", "dev", br); err != nil {
		return err
	}
	if err := sh("ip", "link", "set", br, "up"); err != nil {
		return err
	}
	for _, m := range e.members {
		m.ns = fmt.Sprintf("%sn%d", e.prefix, m.idx)
		m.hostVeth = fmt.Sprintf("%sv%d", e.prefix, m.idx)
		m.ip = fmt.Sprintf("%s.%d", e.subnet, 10+m.idx)
		if err := sh("ip", "netns", "add", m.ns); err != nil {
			return err
		}
		ns := m.ns
		e.atExit(func() { _ = sh("ip", "netns", "del", ns) })
		steps := [][]string{
			{"ip", "link", "add", m.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", m.ns},
			{"ip", "link", "set", m.hostVeth, "master", br, "up"},
			{"ip", "-n", m.ns, "addr", "add", m.ip + "/24", "dev", "eth0"},
			{"ip", "-n", m.ns, "link", "set", "eth0", "up"},
			{"ip", "-n", m.ns, "link", "set", "lo", "up"},
		}
		for _, s := range steps {
			if err := sh(s[0], s[1:]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// cut makes the traffic between a and b vanish both ways, as a partition does: each one's
// neighbour entry for the other gets a MAC address nobody has, so the bridge floods their frames
// to ports whose interfaces drop them. Nothing answers, not even an error: connections time out,
// as across a real partition. Cuts are counted per direction, so two faults that cut the same
// pair (a double partition) heal it only when both have ended.
func (e *env) cut(a, b *member) error {
	return errors.Join(e.cutOne(a, b, true), e.cutOne(b, a, true))
}

// uncut undoes one cut of a and b.
func (e *env) uncut(a, b *member) error {
	return errors.Join(e.cutOne(a, b, false), e.cutOne(b, a, false))
}

// bogusMAC is a locally administered address that no interface has.
const bogusMAC = "02:00:5e:c4:a0:5f"

func (e *env) cutOne(from, to *member, on bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cuts == nil {
		e.cuts = map[[2]string]int{}
	}
	k := [2]string{from.Name, to.Name}
	if on {
		e.cuts[k]++
		if e.cuts[k] > 1 {
			return nil
		}
		return sh("ip", "-n", from.ns, "neigh", "replace", to.ip, "lladdr", bogusMAC, "dev", "eth0", "nud", "permanent")
	}
	if e.cuts[k] == 0 {
		return nil
	}
	e.cuts[k]--
	if e.cuts[k] > 0 {
		return nil
	}
	return sh("ip", "-n", from.ns, "neigh", "del", to.ip, "dev", "eth0")
}

// setupDisks mounts a tmpfs of cfg.TmpfsSize on each node's data dir.
func (e *env) setupDisks() error {
	for _, m := range e.members {
		if err := syscall.Mount("tmpfs", m.DataDir, "tmpfs", 0, "mode=0700,size="+e.cfg.TmpfsSize); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", m.DataDir, err)
		}
		dir := m.DataDir
		e.atExit(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	}
	return nil
}

// fillDisk writes zeros to a file in the member's data dir until the tmpfs is full, and returns
// how to free it again.
func (m *member) fillDisk() (undo func(), err error) {
	path := filepath.Join(m.DataDir, "chaos-fill")
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("fill %s: %w", m.Name, err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			break // ENOSPC: full, which is the point
		}
	}
	f.Close()
	return func() { _ = os.Remove(path) }, nil
}

// start creates the members, their namespaces and disks, and starts the nodes: the first
// bootstraps, the others join it.
func (e *env) start() error {
	e.cluster = localcluster.New(e.bin, e.root)
	var ports []int
	if !e.netns {
		var err error
		if ports, err = localcluster.FreePorts(3 * e.cfg.Nodes); err != nil {
			return err
		}
	}
	for i := 1; i <= e.cfg.Nodes; i++ {
		m := &member{idx: i, ip: "127.0.0.1", Node: &localcluster.Node{Name: fmt.Sprintf("n%d", i)}}
		m.old.Store(e.oldBin != "")
		m.DataDir = filepath.Join(e.root, m.Name)
		m.LogPath = filepath.Join(e.root, m.Name+".log")
		if err := os.MkdirAll(m.DataDir, 0o700); err != nil { // the agent refuses a data dir others can reach
			return err
		}
		e.members = append(e.members, m)
		e.cluster.Nodes = append(e.cluster.Nodes, m.Node)
	}
	if e.netns {
		if err := e.setupNet(); err != nil {
			return fmt.Errorf("network namespaces: %w", err)
		}
	}
	if e.tmpfs {
		if err := e.setupDisks(); err != nil {
			return err
		}
	}
	for i, m := range e.members {
		if e.netns {
			m.Gossip = fmt.Sprintf("%s:%d", m.ip, nsGossipPort)
			m.Raft = fmt.Sprintf("%s:%d", m.ip, nsRaftPort)
			m.HTTP = fmt.Sprintf("%s:%d", m.ip, nsHTTPPort)
		} else {
			m.Gossip = fmt.Sprintf("127.0.0.1:%d", ports[3*i])
			m.Raft = fmt.Sprintf("127.0.0.1:%d", ports[3*i+1])
			m.HTTP = fmt.Sprintf("127.0.0.1:%d", ports[3*i+2])
		}
		m.API = client.New("http://" + m.HTTP)
	}
	for i, m := range e.members {
		var join []string
		if i > 0 {
			join = []string{e.members[0].Gossip}
		}
		if err := e.launch(m, join); err != nil {
			return err
		}
		if i == 0 && !e.cfg.Insecure {
			tok, err := m.JoinToken(localcluster.JoinTokenTimeout)
			if err != nil {
				return err
			}
			e.token = tok
		}
	}
	return nil
}

// launch starts m's agent joining join (none: it bootstraps, or resumes its raft state).
func (e *env) launch(m *member, join []string) error {
	args := []string{"agent", "--name", m.Name, "--data-dir", m.DataDir, "--files-dir", m.DataDir,
		"--advertise", m.ip, "--gossip-addr", m.Gossip, "--raft-addr", m.Raft, "--http-addr", m.HTTP,
		"--capacity", fmt.Sprint(e.cfg.Capacity), "--voters", fmt.Sprint(e.cfg.Voters),
		"--http-rate-limit", "0", "--drain-timeout", "5s",
		// The tmpfs is small on purpose: warn only when it is nearly full, not all the time.
		"--min-free-disk", "4MiB"}
	if e.cfg.Insecure {
		args = append(args, "--insecure")
	}
	if e.netns && !e.cfg.Insecure {
		// Each namespace's API listens on its veth address, reachable from the host only; the
		// suite calls it without a credential, as it does on loopback.
		args = append(args, "--allow-anonymous-api")
	}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	var envv []string
	if e.token != "" {
		envv = []string{"TASKWORKER_JOIN_TOKEN=" + e.token}
	}
	bin := e.bin
	if m.old.Load() {
		bin = e.oldBin
	}
	if e.oldBin != "" {
		args = append(args, upgradeArgs...)
	}
	if e.netns {
		args = append([]string{"netns", "exec", m.ns, bin}, args...)
		bin = "ip"
	}
	m.setStopped(false)
	if err := localcluster.Launch(m.Node, bin, args, envv); err != nil {
		return err
	}
	m.launched.Store(true)
	return nil
}

// restart starts a node whose process has exited, joining every other node so that it finds the
// cluster whichever of them is up (the first node too: after a graceful leave it must rejoin).
func (e *env) restart(m *member) error {
	var join []string
	for _, o := range e.members {
		if o != m {
			join = append(join, o.Gossip)
		}
	}
	return e.launch(m, join)
}

// clusterView asks usable members, in turn, for the cluster and returns the first answer.
func (e *env) clusterView(ctx context.Context) (*client.Cluster, *member, error) {
	var last error = errors.New("no usable node")
	for _, m := range e.members {
		if !m.usable() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cl, err := m.API.Cluster(rctx)
		cancel()
		if err == nil {
			return cl, m, nil
		}
		last = err
	}
	return nil, nil, last
}

// leader returns the member the cluster names leader, or nil.
func (e *env) leader(ctx context.Context) *member {
	cl, _, err := e.clusterView(ctx)
	if err != nil || cl.Leader == "" {
		return nil
	}
	return e.member(cl.Leader)
}

func (e *env) member(name string) *member {
	for _, m := range e.members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// waitHealthy waits until every node answers, they agree on a leader, every node is alive with
// its task types, and the cluster has cfg.Voters voters.
func (e *env) waitHealthy(ctx context.Context, timeout time.Duration) error {
	var last string
	err := localcluster.Until(timeout, 200*time.Millisecond, func() bool {
		if ctx.Err() != nil {
			return true
		}
		leaders := map[string]bool{}
		for _, m := range e.members {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			cl, err := m.API.Cluster(rctx)
			cancel()
			if err != nil {
				last = fmt.Sprintf("%s: %v", m.Name, err)
				return false
			}
			alive, voters := 0, 0
			for _, n := range cl.Nodes {
				if n.State == client.NodeAlive && len(n.TaskTypes) > 0 {
					alive++
				}
				if n.RaftRole == "leader" || n.RaftRole == "voter" {
					voters++
				}
			}
			last = fmt.Sprintf("%s sees leader %q, %d alive, %d voters", m.Name, cl.Leader, alive, voters)
			if cl.Leader == "" || alive != len(e.members) || voters != min(e.cfg.Voters, len(e.members)) {
				return false
			}
			leaders[cl.Leader] = true
		}
		return len(leaders) == 1
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("cluster not healthy after %s: %s", timeout, last)
	}
	return nil
}

// wholeDeadline is how long after a fault the cluster may take to be whole again before the next.
const wholeDeadline = time.Minute

// waitWhole waits until the cluster is healthy (waitHealthy) and every node's /v1/health is 200:
// none of them has a storage fault left.
func (e *env) waitWhole(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	if err := e.waitHealthy(ctx, timeout); err != nil {
		return err
	}
	var last error
	err := localcluster.Until(max(timeout-time.Since(start), time.Second), 200*time.Millisecond, func() bool {
		for _, m := range e.members {
			if last = healthOK(m); last != nil {
				last = fmt.Errorf("%s: %w", m.Name, last)
				return ctx.Err() != nil
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("cluster not whole after %s: %v", timeout, last)
	}
	return nil
}

// diskReport says, for each node's data dir, the free space on its file system and the files of
// 1 MiB or more in it: what filled a disk, when a node ran out.
func (e *env) diskReport() string {
	var parts []string
	for _, m := range e.members {
		free, err := store.DiskFree(m.DataDir)
		s := fmt.Sprintf("%s free %s", m.Name, humanize.IBytes(free))
		if err != nil {
			s = fmt.Sprintf("%s free ? (%v)", m.Name, err)
		}
		var big []string
		_ = filepath.WalkDir(m.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if fi, err := d.Info(); err == nil && fi.Size() >= 1<<20 {
				rel, _ := filepath.Rel(m.DataDir, path)
				big = append(big, fmt.Sprintf("%s %s", rel, humanize.IBytes(uint64(fi.Size()))))
			}
			return nil
		})
		if len(big) > 0 {
			s += " [" + strings.Join(head(big, 12), ", ") + fmt.Sprintf("; %d files of 1 MiB or more]", len(big))
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// logTail returns the end of every node's log, for a run that went wrong.
func (e *env) logTail(w io.Writer) {
	fmt.Fprint(w, e.cluster.Logs())
}
