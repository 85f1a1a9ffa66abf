// Package e2e holds the multi-process suites: they build the real taskworker binary, run clusters
// of its processes on loopback, SIGKILL or SIGTERM some, and check the cluster's answer over the
// HTTP API and the client commands. The processes are run by internal/localcluster, the same
// harness the benchmark programs under scripts/ use.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// The taskworker binary, built once for the whole suite, from the module root.
var taskworker = &localcluster.Builder{Pkg: localcluster.Module}

// TestMain runs the suite, or, when the environment says so, makes this binary a flood client of
// TestOverloadIdleConnectionFloodLeavesNodeServing (see floodChild).
func TestMain(m *testing.M) {
	if addr := os.Getenv(floodAddrEnv); addr != "" {
		os.Exit(floodChild(addr))
	}
	flag.Parse()
	code := m.Run()
	taskworker.Remove()
	os.Exit(code)
}

// binary returns the taskworker binary, building it on first use; it skips the test in -short mode.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	bin, err := taskworker.Path()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// proc is one agent process of a test cluster.
type proc struct{ *localcluster.Node }

// procCluster is a localcluster.Cluster tied to a test: its processes are killed at the end of
// the test, their logs printed when it failed, and the records of every task compared across the
// nodes still running (see checkReplicas).
type procCluster struct {
	t     *testing.T
	c     *localcluster.Cluster
	procs []*proc
	// token is the credential the harness reads the nodes with (the replica check): a management
	// token on a cluster with --acl, "" otherwise.
	token string
}

// Agent flags every test node gets; a test's extra flags come after them (the last one wins).
var agentFlags = []string{"--capacity", "2", "--drain-timeout", "10s"}

// newProcCluster returns an empty cluster of bin's agents (the taskworker binary when bin is "").
func newProcCluster(t *testing.T, bin ...string) *procCluster {
	t.Helper()
	b := binary(t)
	if len(bin) > 0 {
		b = bin[0]
	}
	pc := &procCluster{t: t, c: localcluster.New(b, t.TempDir(), agentFlags...)}
	t.Cleanup(func() {
		pc.c.Stop()
		if t.Failed() {
			for _, p := range pc.procs {
				t.Logf("--- log of %s (%s) ---\n%s", p.Name, strings.Join(p.Args(), " "), p.Log())
			}
		}
	})
	// Registered after the kill above, so it runs first, while the processes are up.
	t.Cleanup(pc.checkReplicas)
	return pc
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

// add starts one more node with the extra agent flags.
func (pc *procCluster) add(extra ...string) *proc {
	pc.t.Helper()
	n, err := pc.c.Add(extra...)
	if err != nil {
		pc.t.Fatal(err)
	}
	p := &proc{n}
	pc.procs = append(pc.procs, p)
	return p
}

// restart starts a node that has exited again, on its data dir, with its flags.
func (pc *procCluster) restart(p *proc) {
	pc.t.Helper()
	if err := p.Restart(); err != nil {
		pc.t.Fatal(err)
	}
}

// kill SIGKILLs p and waits until it is gone.
func (pc *procCluster) kill(p *proc) { p.Kill() }

// sigtermExits sends SIGTERM and checks the process exits with status 0 in time.
func (pc *procCluster) sigtermExits(p *proc, timeout time.Duration) {
	pc.t.Helper()
	pc.sigterm(p)
	pc.exitsCleanly(p, timeout)
}

func (pc *procCluster) sigterm(p *proc) {
	pc.t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		pc.t.Fatal(err)
	}
}

// exitsCleanly checks that p's process exits with status 0 within timeout.
func (pc *procCluster) exitsCleanly(p *proc, timeout time.Duration) {
	pc.t.Helper()
	if err := p.Wait(timeout); err != nil {
		pc.t.Fatalf("%s after SIGTERM: %v, want exit status 0", p.Name, err)
	}
}

func (pc *procCluster) byName(name string) *proc {
	for _, p := range pc.procs {
		if p.Name == name {
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

// running returns the processes that have not exited.
func (pc *procCluster) running() []*proc {
	var out []*proc
	for _, p := range pc.procs {
		if p.Running() {
			out = append(out, p)
		}
	}
	return out
}

// cli runs the cluster's binary as a client against p and returns stdout, stderr and exit code.
func (pc *procCluster) cli(p *proc, args ...string) (string, string, int) {
	pc.t.Helper()
	out, errOut, code, err := p.CLI(pc.c.Bin, args...)
	if err != nil {
		pc.t.Fatal(err)
	}
	return out, errOut, code
}

// client is a client of p's HTTP API (with p's Token, if any). Clients share http's default
// transport, so making one per call costs no connection.
func (p *proc) client() *client.Client {
	return client.New("http://"+p.HTTP, client.WithToken(p.Token))
}

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
func (p *proc) getJSON(path string, v any) error { return p.getJSONAs("", path, v) }

// getJSONAs is getJSON with a bearer credential ("" for none).
func (p *proc) getJSONAs(credential, path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.HTTP+path, nil)
	if err != nil {
		return err
	}
	if credential != "" {
		req.Header.Set("Authorization", "Bearer "+credential)
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

// tasksAtOnce reads the records of ids from p in one list request, so that all of them are as of
// one applied index (tasks reads them one by one, each as of its own); ok is false on any error or
// when one of ids is missing from the list.
func (p *proc) tasksAtOnce(ids []string) (map[string]taskRec, bool) {
	var list []taskRec
	if p.getJSON("/v1/tasks?limit=1000", &list) != nil {
		return nil, false
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	out := make(map[string]taskRec, len(ids))
	for _, r := range list {
		if want[r.ID] {
			out[r.ID] = r
		}
	}
	return out, len(out) == len(ids)
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

func poll(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := localcluster.Until(timeout, 50*time.Millisecond, cond); err != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// waitCluster waits until p sees a leader and want alive nodes, all registered.
func (pc *procCluster) waitCluster(p *proc, want int) *client.Cluster {
	pc.t.Helper()
	var cl *client.Cluster
	poll(pc.t, fmt.Sprintf("%d alive nodes seen by %s", want, p.Name), 60*time.Second, func() bool {
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

// apiReply is a node's answer to one raw API request.
type apiReply struct {
	status int // 0 when the request got no answer (err)
	header http.Header
	body   []byte
	err    error
}

// apiClient is the client of raw API calls: long enough a deadline for a blocking read.
var apiClient = &http.Client{Timeout: 2 * time.Minute}

// call sends method path to p's API with a bearer credential ("" for none) and body as JSON (nil
// for none), and reads the answer; out, when not nil, receives the body of a 200 or a 201.
func (p *proc) call(ctx context.Context, t *testing.T, credential, method, path string, body, out any) apiReply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.HTTP+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if credential != "" {
		req.Header.Set("Authorization", "Bearer "+credential)
	}
	resp, err := apiClient.Do(req)
	if err != nil {
		return apiReply{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated) {
		if err := json.Unmarshal(b, out); err != nil {
			t.Errorf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return apiReply{status: resp.StatusCode, header: resp.Header, body: b}
}

// skipUnlessRequired skips the test for a missing tool or a machine limit, or fails it when the
// environment variable env is 1: CI sets it where it installs the tool, so a skip there is a
// failure, not a test quietly left out.
func skipUnlessRequired(t *testing.T, env, format string, args ...any) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf(env+"=1, but "+format, args...)
	}
	t.Skipf(format, args...)
}
