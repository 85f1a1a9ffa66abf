package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/membership/memnet"
	"github.com/taskworker/taskworker/tasks"
)

// testCluster is a set of real nodes on loopback ports inside one test process.
type testCluster struct {
	t     *testing.T
	nodes []*Node
	twin  *twinNet // in-memory gossip and raft networks, when the cluster runs on twins

	verifyOnce sync.Once // the replicas are compared once, before the first node is shut down
}

// twinNet is an in-memory network for gossip (memnet) and raft (InmemTransport) with partitions.
type twinNet struct {
	mu     sync.Mutex
	gossip *memnet.Network
	raft   map[string]*raft.InmemTransport
}

func newTwinNet() *twinNet {
	return &twinNet{gossip: &memnet.Network{}, raft: map[string]*raft.InmemTransport{}}
}

// attach gives a node config in-memory transports, connected to every other node's raft.
func (tn *twinNet) attach(c *Config) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	_, rt := raft.NewInmemTransportWithTimeout(raft.ServerAddress("raft-"+c.Name), time.Second)
	for _, other := range tn.raft {
		rt.Connect(other.LocalAddr(), other)
		other.Connect(rt.LocalAddr(), rt)
	}
	tn.raft[c.Name] = rt
	c.RaftTransport = rt
	c.GossipTransport = tn.gossip.NewTransport(c.Name)
	c.InmemRaft = true
}

// partition cuts a node off from every other node, for gossip and raft.
func (tn *twinNet) partition(name string) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.gossip.Isolate(name)
	me := tn.raft[name]
	me.DisconnectAll()
	for _, other := range tn.raft {
		if other != me {
			other.Disconnect(me.LocalAddr())
		}
	}
}

// heal reconnects a partitioned node.
func (tn *twinNet) heal(name string) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.gossip.Heal(name)
	me := tn.raft[name]
	for _, other := range tn.raft {
		if other != me {
			me.Connect(other.LocalAddr(), other)
			other.Connect(me.LocalAddr(), me)
		}
	}
}

type clusterOpts struct {
	capacity int
	inmem    bool // in-memory raft stores (with real loopback transports)
	twin     bool // in-memory raft stores and transports, in-memory gossip
	registry func(i int) *tasks.Registry
	tweak    func(i int, c *Config)
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TASKWORKER_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (o clusterOpts) config(t *testing.T, i int, join []string) Config {
	reg := tasks.NewRegistry()
	if o.registry != nil {
		reg = o.registry(i)
	} else if err := tasks.RegisterBuiltins(reg, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	capacity := o.capacity
	if capacity == 0 {
		capacity = 2
	}
	c := Config{
		Name: fmt.Sprintf("n%d", i+1), GossipAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Join: join, Capacity: capacity, Registry: reg, Logger: testLogger(t), DrainTimeout: 5 * time.Second,
		// The in-process tests are about scheduling and failure, not trust: security_test.go
		// runs nodes secure.
		Insecure: true,
	}
	if o.inmem || o.twin {
		c.InmemRaft = true
	} else {
		c.DataDir = privateTempDir(t)
	}
	if o.tweak != nil {
		o.tweak(i, &c)
	}
	return c
}

// startCluster starts size nodes: the first bootstraps, the others join it.
func startCluster(t *testing.T, size int, o clusterOpts) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	if o.twin {
		tc.twin = newTwinNet()
	}
	for i := 0; i < size; i++ {
		var join []string
		if i > 0 {
			join = []string{tc.nodes[0].GossipAddr()}
		}
		c := o.config(t, i, join)
		if tc.twin != nil {
			tc.twin.attach(&c)
		}
		tc.start(c)
	}
	tc.waitHealthy(size)
	return tc
}

func (tc *testCluster) start(c Config) *Node {
	tc.t.Helper()
	n, err := Start(c)
	if err != nil {
		tc.t.Fatalf("start %s: %v", c.Name, err)
	}
	tc.nodes = append(tc.nodes, n)
	// Cleanups run last-registered first, so the newest node's cleanup is the first to run: it
	// compares the replicas while every node is still up, then each shuts its node down.
	tc.t.Cleanup(func() {
		tc.verifyOnce.Do(tc.verifyReplicas)
		_ = n.Shutdown()
	})
	return n
}

// replicaDeadline is how long verifyReplicas waits for the replicas to reach the same index.
const replicaDeadline = 30 * time.Second

// verifyReplicas checks that every node still in the cluster (not shut down, not left) holds the
// same FSM, as hashicorp/raft's fuzzy tests do with VerifyFSM: it waits until they have all
// applied the same index, then their digests must match. Skipped when the test already failed.
func (tc *testCluster) verifyReplicas() {
	t := tc.t
	if t.Failed() {
		return
	}
	var nodes []*Node
	for _, n := range tc.live() {
		select {
		case <-n.Done():
		default:
			nodes = append(nodes, n)
		}
	}
	if len(nodes) < 2 {
		return
	}
	var last string
	deadline := time.Now().Add(replicaDeadline)
	for {
		sums := map[string][]string{} // digest -> node names
		indexes := make([]string, len(nodes))
		same := true
		var first uint64
		for i, n := range nodes {
			index, sum := n.FSM().Digest()
			if i == 0 {
				first = index
			}
			same = same && index == first
			sums[sum] = append(sums[sum], n.Name())
			indexes[i] = fmt.Sprintf("%s@%d", n.Name(), index)
		}
		last = strings.Join(indexes, " ")
		if same {
			if len(sums) == 1 {
				return
			}
			var groups []string
			for sum, names := range sums {
				groups = append(groups, fmt.Sprintf("%v: %s", names, sum[:12]))
			}
			sort.Strings(groups)
			t.Errorf("replicas diverge at index %d: %s", first, strings.Join(groups, "; "))
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("replicas never reached the same applied index in %s: %s", replicaDeadline, last)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if localcluster.Until(timeout, 20*time.Millisecond, cond) != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// waitHealthy waits until one leader sees want nodes registered up, and every node knows it.
func (tc *testCluster) waitHealthy(want int) {
	tc.t.Helper()
	waitFor(tc.t, fmt.Sprintf("%d healthy nodes", want), 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		for _, n := range tc.live() {
			if n.Leader() != l.Name() || len(upNodes(n)) != want {
				return false
			}
		}
		return true
	})
}

// upNodes lists the nodes a node's own FSM holds as up.
func upNodes(n *Node) []string {
	var up []string
	for _, nd := range n.FSM().Nodes() {
		if nd.Status == fsm.NodeUp {
			up = append(up, nd.Name)
		}
	}
	return up
}

func (tc *testCluster) live() []*Node {
	var out []*Node
	for _, n := range tc.nodes {
		if !n.stopped() {
			out = append(out, n)
		}
	}
	return out
}

// leader returns the node that leads, waiting out an election (up to leaderWait: on a loaded
// machine a heartbeat can be missed and leadership change hands), nil if none by then.
func (tc *testCluster) leader() *Node {
	deadline := time.Now().Add(leaderWait)
	for {
		for _, n := range tc.live() {
			if n.IsLeader() {
				return n
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

const leaderWait = 5 * time.Second

func (tc *testCluster) follower() *Node {
	for _, n := range tc.live() {
		if !n.IsLeader() {
			return n
		}
	}
	tc.t.Fatal("no follower")
	return nil
}

// httpCall sends a JSON request to a node's HTTP API and decodes the reply into out.
func httpCall(t *testing.T, n *Node, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+n.HTTPAddr()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

func submit(t *testing.T, n *Node, typ string, input any, wait string) api.Task {
	t.Helper()
	var task api.Task
	path := "/v1/tasks"
	if wait != "" {
		path += "?wait=" + wait
	}
	body := map[string]any{"type": typ, "input": input}
	if code := httpCall(t, n, "POST", path, body, &task); code != http.StatusCreated {
		t.Fatalf("submit %s: status %d", typ, code)
	}
	return task
}

// waitTaskEnded returns task id, read through n, once it has ended.
func waitTaskEnded(t *testing.T, n *Node, id string) api.Task {
	t.Helper()
	var task api.Task
	waitFor(t, "task "+id+" done", 30*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/tasks/"+id+"?wait=5s", nil, &task)
		return api.IsTerminal(task.State)
	})
	return task
}

func TestSubmitOnFollowerReturnsResult(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	f := tc.follower()
	task := submit(t, f, "calc-square", 12, "20s")
	if task.State != api.StateSucceeded || string(task.Result) != "144" {
		t.Fatalf("task = %s %s, want succeeded 144", task.State, task.Result)
	}
	for _, n := range tc.nodes {
		// A node behind the others answers 404 until the submit reaches it.
		waitFor(t, "task replicated to "+n.Name(), 10*time.Second, func() bool {
			code, b := aclCall(t, n, "GET", "/v1/tasks/"+task.ID, "", "")
			var got api.Task
			return code == http.StatusOK && json.Unmarshal(b, &got) == nil && got.State == api.StateSucceeded
		})
	}
}

func TestTasksSpreadOverAllNodes(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 2})
	var ids []string
	for i := 0; i < 12; i++ {
		ids = append(ids, submit(t, tc.nodes[i%3], "sleep", map[string]int{"ms": 300}, "").ID)
	}
	ran := map[string]int{}
	for _, id := range ids {
		task := waitTaskEnded(t, tc.nodes[0], id)
		if task.State != api.StateSucceeded {
			t.Fatalf("task %s ended %s: %+v", id, task.State, task.Error)
		}
		ran[task.Node]++
	}
	if len(ran) != 3 {
		t.Fatalf("tasks ran on %v, want all 3 nodes", ran)
	}
}

func TestBadRequestsGetContractErrors(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	cases := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"missing type", map[string]any{"input": 1}, 400, "missing_type"},
		{"unknown type", map[string]any{"type": "nope"}, 400, "unknown_task_type"},
		{"wrong input shape", map[string]any{"type": "calc-square", "input": "twelve"}, 400, "invalid_input"},
		{"bad timeout", map[string]any{"type": "echo", "timeout": "soon"}, 400, "invalid_timeout"},
		{"timeout not text", map[string]any{"type": "echo", "timeout": 30}, 400, "invalid_request"},
		{"negative timeout", map[string]any{"type": "echo", "timeout": "-1s"}, 400, "invalid_timeout"},
		{"timeout over the limit", map[string]any{"type": "echo", "timeout": "10000h"}, 400, "invalid_timeout"},
		{"negative max attempts", map[string]any{"type": "echo", "max_attempts": -1}, 400, "invalid_max_attempts"},
		{"max attempts over the limit", map[string]any{"type": "echo", "max_attempts": 101}, 400, "invalid_max_attempts"},
		{"bad version", map[string]any{"type": "echo", "version": "1 0/.."}, 400, "invalid_version"},
		{"long idempotency key", map[string]any{"type": "echo", "idempotency_key": strings.Repeat("k", 257)}, 400, "invalid_idempotency_key"},
		{"unknown field", map[string]any{"type": "echo", "colour": "red"}, 400, "invalid_request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var e api.Error
			if code := httpCall(t, n, "POST", "/v1/tasks", c.body, &e); code != c.status || string(e.Code) != c.code || e.Message == "" {
				t.Fatalf("got %d %+v, want %d %s", code, e, c.status, c.code)
			}
		})
	}
	if n := len(n.FSM().List(fsm.Filter{})); n != 0 {
		t.Fatalf("bad submits created %d tasks", n)
	}
	// Zero values mean the defaults: 3 attempts, 30 s.
	for _, body := range []map[string]any{{"type": "echo", "max_attempts": 0, "timeout": ""}, {"type": "echo", "timeout": "0s"}} {
		var task api.Task
		if code := httpCall(t, n, "POST", "/v1/tasks", body, &task); code != http.StatusCreated || task.MaxAttempts != 3 || task.Timeout != "30s" {
			t.Fatalf("%v: %d max_attempts %d timeout %q, want 201 3 30s", body, code, task.MaxAttempts, task.Timeout)
		}
	}
	before := len(n.FSM().List(fsm.Filter{}))
	var e api.Error
	if code := httpCall(t, n, "GET", "/v1/tasks/nope", nil, &e); code != 404 || e.Code != "not_found" {
		t.Fatalf("get unknown: %d %+v", code, e)
	}
	big := map[string]any{"type": "echo", "input": string(make([]byte, 2<<20))}
	if code := httpCall(t, n, "POST", "/v1/tasks", big, &e); code != 413 {
		t.Fatalf("big body: %d %+v", code, e)
	}
	req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/tasks", bytes.NewReader([]byte("type=echo")))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 415 {
		t.Fatalf("text/plain: %d", resp.StatusCode)
	}
	if n := len(n.FSM().List(fsm.Filter{})); n != before {
		t.Fatalf("bad requests created %d tasks", n)
	}
}

func TestWholeClusterRestartKeepsEveryTask(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, submit(t, tc.nodes[i%3], "calc-square", i, "20s").ID)
	}
	var configs []Config
	for _, n := range tc.nodes {
		c := n.cfg
		c.Logger = testLogger(t)
		// Same addresses: raft's configuration names them.
		c.GossipAddr, c.RaftAddr, c.HTTPAddr = n.GossipAddr(), n.RaftAddr(), n.HTTPAddr()
		configs = append(configs, c)
	}
	for _, n := range tc.nodes {
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range configs {
		if i > 0 {
			c.Join = []string{configs[0].GossipAddr}
		}
		tc.start(c)
	}
	tc.waitHealthy(3)
	for _, n := range tc.live() {
		// A restarted follower applies the old log once the new leader tells it the commit index.
		waitFor(t, n.Name()+" replayed its log", 20*time.Second, func() bool { return n.FSM().Index() >= tc.leader().FSM().Index() })
		for i, id := range ids {
			got, ok := n.FSM().Task(id)
			if !ok || got.State != fsm.Succeeded || string(got.Result) != fmt.Sprint(i*i) {
				t.Fatalf("after restart %s sees task %s: %v %s %s", n.Name(), id, ok, got.State, got.Result)
			}
		}
	}
	if task := submit(t, tc.live()[1], "calc-square", 12, "20s"); string(task.Result) != "144" {
		t.Fatalf("after restart: %s", task.Result)
	}
}

func TestTokenGuardsTheAPIAndNodesCarryIt(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true, tweak: func(_ int, c *Config) { c.Token = "s3cret" }})
	f := tc.follower()
	call := func(method, path, token string, body string) (int, api.Error) {
		req, _ := http.NewRequest(method, "http://"+f.HTTPAddr()+path, bytes.NewReader([]byte(body)))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e api.Error
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e
	}
	submitBody := `{"type": "print", "input": "hi"}`
	if code, e := call("POST", "/v1/tasks", "", submitBody); code != http.StatusUnauthorized || e.Code != "unauthorized" {
		t.Fatalf("no token: %d %+v", code, e)
	}
	if code, e := call("POST", "/v1/tasks", "wrong", submitBody); code != http.StatusForbidden || e.Code != "forbidden" {
		t.Fatalf("wrong token: %d %+v", code, e)
	}
	// The public API has no node-to-node route, whatever the token.
	for _, path := range []string{"/v1/internal/apply", "/v1/internode/apply"} {
		if code, _ := call("POST", path, "s3cret", "x"); code != http.StatusNotFound {
			t.Fatalf("%s on the public API: %d, want 404", path, code)
		}
	}
	// Health stays open (it is 503 only until this node's own record has replicated to it).
	waitFor(t, "health answers without a token", 20*time.Second, func() bool {
		code, _ := call("GET", "/v1/health", "", "")
		return code == http.StatusOK
	})
	// With the token, a follower forwards to the leader and reads logs from whichever node ran it.
	if code, _ := call("POST", "/v1/tasks?wait=20s", "s3cret", submitBody); code != http.StatusCreated {
		t.Fatalf("with token: %d", code)
	}
	tasksList := f.FSM().List(fsm.Filter{})
	if len(tasksList) != 1 || tasksList[0].State != fsm.Succeeded {
		t.Fatalf("tasks after the authorised submit: %+v", tasksList)
	}
	req, _ := http.NewRequest("GET", "http://"+f.HTTPAddr()+"/v1/tasks/"+tasksList[0].ID+"/logs", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"line":"hi"`) {
		t.Fatalf("logs through %s: %s", f.Name(), body)
	}
}

func TestNodeRestartedAfterLeaveWithoutJoinFindsItsCluster(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	n1 := tc.nodes[0] // bootstrapped the cluster: started without --join
	if len(n1.cfg.Join) != 0 {
		t.Fatal("n1 has a join list")
	}
	cfg := n1.cfg
	cfg.Logger = testLogger(t)
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = n1.GossipAddr(), n1.RaftAddr(), n1.HTTPAddr()
	if err := n1.Leave(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n1.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("leave did not finish")
	}
	waitFor(t, "n1 recorded as left", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, _ := l.FSM().Node("n1")
		return nd.Status == fsm.NodeLeft
	})
	back := tc.start(cfg) // same data dir, still no --join
	waitFor(t, "n1 back as an alive raft member", 30*time.Second, func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		nd, _ := l.FSM().Node("n1")
		inRaft := false
		for _, s := range raftServers(t, l) {
			inRaft = inRaft || s.ID == "n1"
		}
		return nd.Status == fsm.NodeUp && nd.BootID == back.BootID() && inRaft
	})
	if task := submit(t, back, "calc-square", 4, "20s"); string(task.Result) != "16" {
		t.Fatalf("via the returned node: %s", task.Result)
	}
}
