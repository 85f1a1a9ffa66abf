package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// Connection floods against a node's own ports, as an outsider with many addresses would send them
// (findings 3 and 11 of the security review). The node under attack runs under `prlimit --nofile`,
// so that a few thousand connections are enough to use up its descriptors when nothing caps them;
// the flood comes from many 127.0.0.x source addresses of this test process.

const (
	// peerVictimNofile is the descriptor limit of the node whose raft or gossip port is flooded.
	// The peer ports are then capped at 4096/16 = 256 connections each (64 per address).
	peerVictimNofile = 4096
	// peerFloodConns exceed peerVictimNofile, so that without caps the node runs out.
	peerFloodConns = 5000
	// peerFloodSources is few enough that each address holds more than a peer does (8), so the
	// reserve at the top of the cap stays free for the cluster's own connections.
	peerFloodSources = 10
	// floodFor is how long a flood lasts; the storage watchdog probes every second.
	floodFor = 20 * time.Second
	// apiVictimNofile puts the API's global cap at 1024-256 = 768 connections, the last 76 of
	// them kept for addresses that hold fewer than 4.
	apiVictimNofile = 1024
	apiFloodConns   = 1000
	apiFloodSources = 40
)

// requireFloodEnv makes a missing flood tool a failure instead of a skip (CI sets it).
const requireFloodEnv = "TASKWORKER_REQUIRE_FLOOD"

// prlimitPath is the prlimit binary, or the test is skipped before it starts anything.
func prlimitPath(t *testing.T) string {
	t.Helper()
	binary(t) // skips in -short mode
	p, err := exec.LookPath("prlimit")
	if err != nil {
		skipUnlessRequired(t, requireFloodEnv, "prlimit (util-linux) is not installed: it runs the attacked node with a low descriptor limit")
	}
	if out, err := exec.Command(p, "--nofile=64:64", "true").CombinedOutput(); err != nil {
		skipUnlessRequired(t, requireFloodEnv, "prlimit cannot lower a descriptor limit here: %v: %s", err, out)
	}
	return p
}

// needFloodTools skips the test, before it starts anything, when prlimit is missing or this
// process cannot hold a flood of conns connections.
func needFloodTools(t *testing.T, conns int) {
	t.Helper()
	prlimitPath(t)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < uint64(conns)+1000 {
		skipUnlessRequired(t, requireFloodEnv, "this process may open %d descriptors (%v); the flood needs %d", rl.Cur, err, conns+1000)
	}
}

// addUnderNofile starts the cluster's first node, as pc.add would, but under
// `prlimit --nofile=nofile:nofile`; prlimit execs the agent, so the process is the agent itself.
func addUnderNofile(t *testing.T, pc *procCluster, nofile int, extra ...string) *proc {
	t.Helper()
	if len(pc.procs) != 0 {
		t.Fatal("addUnderNofile starts the first node only")
	}
	prlimit := prlimitPath(t)
	ports, err := localcluster.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	nd := &localcluster.Node{Name: "n1"}
	for j, a := range []*string{&nd.HTTP, &nd.Gossip, &nd.Raft} {
		*a = fmt.Sprintf("127.0.0.1:%d", ports[j])
	}
	nd.DataDir = filepath.Join(pc.c.Dir, nd.Name)
	nd.LogPath = filepath.Join(pc.c.Dir, nd.Name+".log")
	if err := os.MkdirAll(nd.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	args := []string{fmt.Sprintf("--nofile=%d:%d", nofile, nofile), pc.c.Bin,
		"agent", "--name", nd.Name, "--data-dir", nd.DataDir, "--advertise", "127.0.0.1",
		"--gossip-addr", nd.Gossip, "--raft-addr", nd.Raft, "--http-addr", nd.HTTP, "--files-dir", nd.DataDir}
	args = append(append(args, pc.c.Args...), extra...)
	if err := localcluster.Launch(nd, prlimit, args, nil); err != nil {
		t.Fatal(err)
	}
	pc.c.Nodes = append(pc.c.Nodes, nd)
	p := &proc{nd}
	pc.procs = append(pc.procs, p)
	return p
}

// idleFlood keeps conns connections to addr open from sources addresses 127.0.0.2, 127.0.0.3, ...
// Each of its conns workers dials, sends send (when not empty), and holds the connection until the
// server closes it or admitted says it was refused; then it pauses and dials again, until the
// flood stops. Every loop is bounded by the flood's context, which ends within its lifetime.
type idleFlood struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	held     atomic.Int64 // connections open now and not refused
	dials    atomic.Int64 // dials that succeeded
	failures atomic.Int64 // dials that failed (a full backlog, a timeout)
}

func startIdleFlood(t *testing.T, addr string, conns, sources int, lifetime time.Duration, send string, admitted func(*bufio.Reader) bool) *idleFlood {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lifetime)
	f := &idleFlood{cancel: cancel}
	const pause = 2 * time.Second // between a closed connection and the next dial: keeps the churn affordable
	for i := range conns {
		src := net.IPv4(127, 0, 0, byte(2+i%sources))
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 2 * time.Second}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for ctx.Err() == nil {
				f.hold(ctx, d, addr, send, admitted)
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		}()
	}
	t.Cleanup(f.stop)
	return f
}

// hold makes one connection and keeps it until the server closes it or the flood ends.
func (f *idleFlood) hold(ctx context.Context, d *net.Dialer, addr, send string, admitted func(*bufio.Reader) bool) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		f.failures.Add(1)
		return
	}
	f.dials.Add(1)
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer func() {
		stop()
		_ = c.Close()
	}()
	if send != "" {
		if _, err := c.Write([]byte(send)); err != nil {
			return
		}
	}
	r := bufio.NewReader(c)
	if admitted != nil && !admitted(r) {
		return
	}
	f.held.Add(1)
	defer f.held.Add(-1)
	for { // until the server closes it (or the flood does); no byte is expected
		if _, err := r.ReadByte(); err != nil {
			return
		}
	}
}

// stop ends the flood and closes every connection; it waits for all workers.
func (f *idleFlood) stop() {
	f.cancel()
	f.wg.Wait()
}

// floodPeerPort floods one peer port (raft or gossip) of the leader of a 3-node secure cluster
// whose leader runs with peerVictimNofile descriptors, and checks that all through the flood the
// leader stays leader, takes submits (its own and a follower's forwards), runs them, and never
// runs out of descriptors or reports a storage fault.
func floodPeerPort(t *testing.T, port func(*proc) string) {
	needFloodTools(t, peerFloodConns)
	pc := newProcCluster(t)
	victim := addUnderNofile(t, pc, peerVictimNofile)
	pc.add()
	pc.add()
	cl := pc.waitCluster(victim, 3)
	if cl.Leader != victim.Name {
		t.Fatalf("leader is %s, want %s (the first node, which bootstrapped)", cl.Leader, victim.Name)
	}
	other := pc.procs[1]
	fdsBefore, err := victim.OpenFDs()
	if err != nil {
		skipUnlessRequired(t, requireFloodEnv, "cannot count the node's descriptors: %v", err)
	}
	peak := sampleFDs(t, victim)

	start := time.Now()
	f := startIdleFlood(t, port(victim), peerFloodConns, peerFloodSources, floodFor+time.Minute, "", nil)
	var ids []string
	var looks, unanswered int
	pace := time.NewTicker(500 * time.Millisecond) // a submit and a look at the leader twice a second
	defer pace.Stop()
	for ; time.Since(start) < floodFor; <-pace.C {
		// One submit to the leader and one through a follower, which forwards it over the
		// leader's gossip port (flooded in one of the tests).
		for _, p := range []*proc{victim, other} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			task, _, err := p.client().Submit(ctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`"flood"`), Timeout: "60s"})
			cancel()
			if err != nil {
				t.Fatalf("submit to %s %s into the flood: %v", p.Name, time.Since(start).Round(time.Millisecond), err)
			}
			ids = append(ids, task.ID)
		}
		// A look that gets no answer in its 2 s (a loaded machine) proves nothing either way; a
		// leader other than the victim fails the test, and so do looks that mostly go unanswered.
		looks++
		if v := other.view(); v == nil {
			unanswered++
		} else if v.Leader != victim.Name {
			t.Fatalf("%s into the flood %s names %q the leader, want %s", time.Since(start).Round(time.Millisecond), other.Name, v.Leader, victim.Name)
		}
	}
	if unanswered*2 > looks {
		t.Fatalf("%s did not answer %d of %d looks at the leader during the flood", other.Name, unanswered, looks)
	}
	t.Logf("flood: %d dials, %d failed, %d held at the end; node descriptors %d before, peak %d (limit %d)",
		f.dials.Load(), f.failures.Load(), f.held.Load(), fdsBefore, peak(), peerVictimNofile)
	if f.dials.Load() < peerFloodConns {
		t.Fatalf("the flood made %d connections, want at least %d", f.dials.Load(), peerFloodConns)
	}
	f.stop()

	waitTasks(t, "succeeded", 2*time.Minute, ids, pc.procs...)
	if v := other.view(); v == nil || v.Leader != victim.Name {
		t.Fatalf("after the flood the leader is not %s: %+v", victim.Name, v)
	}
	log := victim.Log()
	// "storage fault:" begins the watchdog's error line; its warning about a shortage of
	// descriptors says "not a storage fault," and is caught by the second string.
	for _, bad := range []string{"storage fault:", "too many open files"} {
		if strings.Contains(log, bad) {
			t.Fatalf("the attacked node's log says %q", bad)
		}
	}
	if top := peak(); top >= peerVictimNofile-64 {
		t.Fatalf("the attacked node held %d descriptors at its peak, too close to its limit %d", top, peerVictimNofile)
	}
}

// Finding 3: 5,000 idle connections from 10 addresses to the leader's raft port, more than its
// descriptor limit, and kept up for 20 s.
func TestAttackRaftPortFloodLeaderKeepsLeadership(t *testing.T) {
	floodPeerPort(t, func(p *proc) string { return p.Raft })
}

// The same flood against the gossip port, which also carries internode calls.
func TestAttackGossipPortFloodLeaderKeepsLeadership(t *testing.T) {
	floodPeerPort(t, func(p *proc) string { return p.Gossip })
}

// Finding 11: idle keep-alive connections from 40 addresses fill the API's global cap, each address
// greedy for more; a client that opens a new connection for each of its 32 requests gets an
// answer to every one.
func TestAttackAPIFloodLeavesRoomForNewClients(t *testing.T) {
	needFloodTools(t, apiFloodConns)
	pc := newProcCluster(t)
	victim := addUnderNofile(t, pc, apiVictimNofile)
	pc.waitCluster(victim, 1)

	var refusals atomic.Int64
	admitted := func(r *bufio.Reader) bool {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return false
		}
		if resp.StatusCode != http.StatusOK {
			refusals.Add(1)
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	f := startIdleFlood(t, victim.HTTP, apiFloodConns, apiFloodSources, 3*time.Minute, floodRequest, admitted)
	// The flood is at the cap once it holds most of it and new connections meet refusals.
	poll(t, "the flood holding the API's connections up to its cap", time.Minute, func() bool {
		return f.held.Load() >= 600 && refusals.Load() > 100
	})
	t.Logf("flood holds %d connections, %d refusals so far", f.held.Load(), refusals.Load())

	normal := httpClientFrom("127.0.0.250")
	failed := 0
	var last string
	for i := range 32 {
		resp, err := normal.Get("http://" + victim.HTTP + "/v1/health")
		if err != nil {
			failed++
			last = err.Error()
			continue
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			failed++
			last = fmt.Sprintf("request %d: %s", i, resp.Status)
		}
	}
	held := f.held.Load()
	f.stop()
	if failed > 0 {
		t.Fatalf("%d of 32 requests on new connections failed while the flood held %d connections; last: %s", failed, held, last)
	}
	t.Logf("32 of 32 requests answered while the flood held %d connections", held)
}
