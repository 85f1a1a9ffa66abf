package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
)

// Attacks on node identity, executions and what a token may see, with real processes: a
// certificate of the cluster's CA that names no node, a token that slips a task into another
// principal's execution, and a token that learns of tasks it may not read.

// leakCall sends method path to p with credential ("" for none) and returns the status, the
// X-Taskworker-Index header and the body; out, when not nil, receives a 2xx body.
func leakCall(ctx context.Context, t *testing.T, p *proc, credential, method, path string, body, out any) (int, string, string) {
	t.Helper()
	r := p.call(ctx, t, credential, method, path, body, out)
	if r.err != nil {
		return 0, "", r.err.Error()
	}
	return r.status, r.header.Get(api.HeaderIndex), string(r.body)
}

// Finding 6: a certificate from `taskworker tls cert create --server` without --node, signed by
// the cluster's CA (whose files a node's data dir holds), forged a drain of another node, an
// executor report that made a victim's running task succeed with "FORGED-RESULT", and a raft
// server's removal, all through the leader's internode routes. Now it acts as no node: every
// one is refused and nothing changes; the raft port closes it too. A certificate that names the
// node still works, so the refusals are about the name.
func TestNamelessServerCertificateCannotActAsANode(t *testing.T) {
	pc := startProcCluster(t, 3)
	view := pc.waitCluster(pc.procs[0], 3)
	leader := pc.byName(view.Leader)
	ids := submitSleeps(t, 6, 50000, pc.procs...)
	recs := waitTasks(t, "running", 60*time.Second, ids, pc.procs...)
	var victim taskRec
	for _, r := range recs {
		if r.Node != leader.Name {
			victim = r
			break
		}
	}
	if victim.ID == "" {
		t.Fatalf("no sleep runs outside the leader %s", leader.Name)
	}
	var cl api.Cluster
	if err := leader.getJSON("/v1/cluster", &cl); err != nil {
		t.Fatal(err)
	}
	var victimNode api.NodeInfo
	for _, n := range cl.Nodes {
		if n.Name == victim.Node {
			victimNode = n
		}
	}
	if victimNode.BootID == "" || victimNode.RaftRole != api.RoleVoter {
		t.Fatalf("victim node %s: %+v", victim.Node, victimNode)
	}

	// The attacker has the CA's files (as anyone who can read a node's data dir has) and the
	// real tool.
	tlsDir := filepath.Join(leader.DataDir, "tls")
	caFile := filepath.Join(tlsDir, pki.CACertFile)
	dir := t.TempDir()
	out, err := exec.Command(pc.c.Bin, "tls", "cert", "create", "--server", "--dir", dir,
		"--ca", caFile, "--key", filepath.Join(tlsDir, pki.CAKeyFile)).CombinedOutput()
	if err != nil {
		t.Fatalf("tls cert create: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "cannot act as any node") {
		t.Errorf("tls cert create --server without --node does not say the certificate cannot act as a node:\n%s", out)
	}
	var certFile, keyFile string
	for _, line := range strings.Split(string(out), "\n") {
		if f, ok := strings.CutPrefix(line, "==> Saved "); ok {
			if strings.HasSuffix(f, "-key.pem") {
				keyFile = f
			} else {
				certFile = f
			}
		}
	}
	nameless := leakTLS(t, caFile, certFile, keyFile)
	// A node's own certificate, for the control: its calls are heard.
	own := leakTLS(t, caFile, filepath.Join(victimNodeDir(pc, victim.Node), pki.NodeCertFile), filepath.Join(victimNodeDir(pc, victim.Node), pki.NodeKeyFile))

	post := func(cfg *tls.Config, path string, c *fsm.Command) (int, string) {
		var body []byte
		if c != nil {
			if body, err = fsm.Encode(c); err != nil {
				t.Fatal(err)
			}
		}
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://"+leader.Gossip+path, "application/msgpack", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	forgedReport := &fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: victim.ID, Attempt: victim.Attempt,
		Node: victim.Node, BootID: victimNode.BootID, Kind: fsm.ReportSucceeded, Result: json.RawMessage(`"FORGED-RESULT"`)}}}}
	if code, b := post(nameless, "/v1/internode/report", forgedReport); code != http.StatusForbidden {
		t.Errorf("forged report of %s's task: %d %s, want 403", victim.Node, code, b)
	}
	if code, b := post(nameless, "/v1/internode/drain", &fsm.Command{Body: &fsm.Drain{Name: victim.Node, Draining: true}}); code != http.StatusForbidden {
		t.Errorf("forged drain of %s: %d %s, want 403", victim.Node, code, b)
	}
	if code, b := post(nameless, "/v1/internode/remove/"+victim.Node, nil); code != http.StatusForbidden {
		t.Errorf("forged raft removal of %s: %d %s, want 403", victim.Node, code, b)
	}
	// The control: the victim node's own certificate reaches the same route (a stale report,
	// applied as a no-op).
	stale := &fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: victim.ID, Attempt: victim.Attempt + 7,
		Node: victim.Node, BootID: victimNode.BootID, Kind: fsm.ReportSucceeded, Result: json.RawMessage(`"stale"`)}}}}
	if code, b := post(own, "/v1/internode/report", stale); code != http.StatusOK {
		t.Errorf("a node's own certificate: %d %s, want 200", code, b)
	}

	// Nothing changed: the task still runs, the node is not draining and still votes.
	for _, p := range pc.procs {
		var rec taskRec
		if err := p.getJSON("/v1/tasks/"+victim.ID, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.State != "running" || strings.Contains(string(rec.Result), "FORGED") {
			t.Errorf("%s: the victim's task is %s with result %s", p.Name, rec.State, rec.Result)
		}
	}
	if err := leader.getJSON("/v1/cluster", &cl); err != nil {
		t.Fatal(err)
	}
	for _, n := range cl.Nodes {
		if n.Name == victim.Node && (n.Draining || n.RaftRole != api.RoleVoter) {
			t.Errorf("victim node after the attack: draining %v, raft role %s", n.Draining, n.RaftRole)
		}
	}

	// The raft port: the handshake completes (the certificate is the cluster CA's), then the
	// connection is closed before raft reads a byte of it.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", leader.Raft, nameless)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = conn.Write([]byte{0}) // raft's first byte: an RPC type
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
		t.Errorf("the raft port kept a connection whose certificate names no node: %v", err)
	}
}

func victimNodeDir(pc *procCluster, name string) string {
	return filepath.Join(pc.byName(name).DataDir, "tls")
}

// leakTLS is a client's TLS config with certFile and keyFile, trusting caFile, for the cluster's
// internode and raft ports.
func leakTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("no CA in %s", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert},
		ServerName: pki.ServerName(pki.DefaultCluster)}
}

// leakACLCluster starts three --acl nodes and returns the management token's secret and tokens
// made from policies (name → policy JSON), by name.
func leakACLCluster(t *testing.T, policies map[string]api.ACLPolicy) (*procCluster, string, map[string]string) {
	t.Helper()
	pc := newProcCluster(t)
	for range 3 {
		pc.add("--acl")
	}
	for _, p := range pc.procs {
		poll(t, p.Name+" healthy", 60*time.Second, func() bool {
			code, _ := callAs(t, p, "", "GET", "/v1/health", nil, nil)
			return code == http.StatusOK
		})
	}
	n1 := pc.procs[0]
	var boot api.ACLToken
	if code, b := callAs(t, n1, "", "POST", api.PathACLBootstrap, nil, &boot); code != http.StatusOK {
		t.Fatalf("bootstrap: %d %s", code, b)
	}
	tokens := map[string]string{}
	for name, p := range policies {
		p.Name = name
		if code, b := callAs(t, n1, boot.SecretID, "PUT", api.PathACLPolicy+name, p, nil); code != http.StatusOK {
			t.Fatalf("policy %s: %d %s", name, code, b)
		}
		var tok api.ACLToken
		if code, b := callAs(t, n1, boot.SecretID, "POST", api.PathACLTokens, api.ACLTokenRequest{Policies: []string{name}}, &tok); code != http.StatusCreated {
			t.Fatalf("token %s: %d %s", name, code, b)
		}
		tokens[name] = tok.SecretID
	}
	for _, p := range pc.procs {
		for name, secret := range tokens {
			poll(t, p.Name+" knows the "+name+" token", 30*time.Second, func() bool {
				code, _ := callAs(t, p, secret, "GET", api.PathACLTokenSelf, nil, nil)
				return code == http.StatusOK
			})
		}
	}
	pc.token = boot.SecretID // the harness compares the replicas with it
	return pc, boot.SecretID, tokens
}

func leakRule(typ string, caps ...string) api.ACLRule {
	return api.ACLRule{TaskType: typ, Capabilities: caps}
}

// Findings 7 and 8 on an --acl cluster. The victim runs sleep and echo tasks; the attacker's token
// may submit and read calc-square only.
//   - 7: the attacker's submit naming the victim's task as parent_id and execution_id is refused
//     with 403 on every node, alone and in a batch, and the victim's execution list is unchanged.
//   - 8: every route that takes a task ID answers the attacker 404 for the victim's task, word for
//     word as for a missing ID; its blocking lists do not answer when the victim submits; /v1/types
//     and /v1/queues show it no counts of the victim's work; /metrics needs the metrics right.
func TestExecutionHijackAndLeaksToAnotherToken(t *testing.T) {
	all := []string{"submit", "read", "cancel", "logs"}
	pc, root, tok := leakACLCluster(t, map[string]api.ACLPolicy{
		"victim":   {Rules: []api.ACLRule{leakRule("sleep", all...), leakRule("echo", all...), leakRule("calc-square", all...)}},
		"attacker": {Rules: []api.ACLRule{leakRule("calc-square", "submit", "read")}},
	})
	victim, attacker := tok["victim"], tok["attacker"]

	// The victim fills every slot (3 nodes of capacity 2) and queues two more.
	var sleeps []api.Task
	for i := 0; i < 8; i++ {
		var task api.Task
		if code, b := callAs(t, pc.procs[i%3], victim, "POST", "/v1/tasks", map[string]any{"type": "sleep", "input": map[string]int{"ms": 50000}, "timeout": "60s"}, &task); code != http.StatusCreated {
			t.Fatalf("victim submit: %d %s", code, b)
		}
		sleeps = append(sleeps, task)
	}
	rootTask := sleeps[0]
	poll(t, "the victim's first sleep runs", 60*time.Second, func() bool {
		var rec api.Task
		code, _ := callAs(t, pc.procs[0], victim, "GET", "/v1/tasks/"+rootTask.ID, nil, &rec)
		return code == http.StatusOK && rec.State == api.StateRunning
	})

	t.Run("execution hijack", func(t *testing.T) {
		hijack := map[string]any{"type": "calc-square", "input": 3, "parent_id": rootTask.ID, "execution_id": rootTask.ID}
		for _, p := range pc.procs {
			if code, b := callAs(t, p, attacker, "POST", "/v1/tasks", hijack, nil); code != http.StatusForbidden || !strings.Contains(b, `"forbidden"`) {
				t.Errorf("%s: hijacking submit: %d %s, want 403 forbidden", p.Name, code, b)
			}
			var reply api.BatchSubmitReply
			if code, b := callAs(t, p, attacker, "POST", api.PathTasksBatch, map[string]any{"tasks": []any{hijack}}, &reply); code != http.StatusOK || len(reply.Results) != 1 || reply.Results[0].Status != http.StatusForbidden {
				t.Errorf("%s: hijacking batch: %d %s, want its item refused with 403", p.Name, code, b)
			}
		}
		for _, p := range pc.procs {
			var list []api.Task
			if code, b := callAs(t, p, victim, "GET", "/v1/tasks?execution="+rootTask.ID, nil, &list); code != http.StatusOK || len(list) != 1 || list[0].ID != rootTask.ID {
				t.Errorf("%s: the victim's execution: %d %s, want its own task only", p.Name, code, b)
			}
		}
	})

	t.Run("unreadable IDs answer as missing", func(t *testing.T) {
		missing := "01JZZZZZZZZZZZZZZZZZZZZZZZ"
		for _, r := range []struct{ method, path string }{
			{"GET", "/v1/tasks/%s"}, {"GET", "/v1/tasks/%s?index=1&wait=1s"}, {"GET", "/v1/tasks/%s/logs"},
			{"POST", "/v1/tasks/%s/cancel"}, {"POST", "/v1/tasks/%s/retry"},
		} {
			p := pc.procs[1]
			hc, hb := callAs(t, p, attacker, r.method, fmt.Sprintf(r.path, rootTask.ID), nil, nil)
			mc, mb := callAs(t, p, attacker, r.method, fmt.Sprintf(r.path, missing), nil, nil)
			if hc != http.StatusNotFound || mc != http.StatusNotFound || strings.ReplaceAll(hb, rootTask.ID, missing) != mb {
				t.Errorf("%s %s: the victim's task %d %s; a missing one %d %s; want the same 404", r.method, r.path, hc, hb, mc, mb)
			}
			if strings.Contains(hb, "sleep") {
				t.Errorf("%s %s: the answer names the task's type: %s", r.method, r.path, hb)
			}
		}
	})

	t.Run("blocking lists do not wake for the victim", func(t *testing.T) {
		p := pc.procs[2]
		// What the finding did: a blocking list of a type the token may not read.
		code, index, b := leakCall(context.Background(), t, p, attacker, "GET", "/v1/tasks?type=echo", nil, nil)
		if code != http.StatusOK || index == "" {
			t.Fatalf("list: %d %q %s", code, index, b)
		}
		const wait = 3 * time.Second
		typed := make(chan string, 1)
		sent := time.Now()
		typedPath := "/v1/tasks?type=echo&wait=3s&index=" + index // index is reused below
		go func() {
			_, _, b := leakCall(context.Background(), t, p, attacker, "GET", typedPath, nil, nil)
			typed <- b
		}()
		// And one over everything it may read, which a change it may see must end.
		code, index, b = leakCall(context.Background(), t, p, attacker, "GET", "/v1/tasks", nil, nil)
		if code != http.StatusOK {
			t.Fatalf("list: %d %s", code, b)
		}
		type reply struct {
			code  int
			index string
			body  string
		}
		all := make(chan reply, 1)
		allPath := "/v1/tasks?wait=60s&index=" + index
		go func() {
			code, idx, b := leakCall(context.Background(), t, p, attacker, "GET", allPath, nil, nil)
			all <- reply{code, idx, b}
		}()

		var echo api.Task
		if code, b := callAs(t, p, victim, "POST", "/v1/tasks", map[string]any{"type": "echo", "input": "secret"}, &echo); code != http.StatusCreated {
			t.Fatalf("victim echo: %d %s", code, b)
		}
		if b := <-typed; b != "[]\n" {
			t.Errorf("blocking list of echo: %q, want []", b)
		}
		if waited := time.Since(sent); waited < wait {
			t.Errorf("the blocking list of echo answered after %s, before its %s wait: woken by the victim's submit", waited, wait)
		}
		// The victim's echo is on p by now (it answered the submit); then a change the attacker
		// may see.
		var mine api.Task
		if code, b := callAs(t, p, attacker, "POST", "/v1/tasks", map[string]any{"type": "calc-square", "input": 4}, &mine); code != http.StatusCreated {
			t.Fatalf("attacker submit: %d %s", code, b)
		}
		r := <-all
		if r.code != http.StatusOK || !strings.Contains(r.body, mine.ID) || strings.Contains(r.body, echo.ID) {
			t.Errorf("blocking list: %d %s; want it to end on the attacker's own task %s, not before", r.code, r.body, mine.ID)
		}
		if r.index == index {
			t.Errorf("blocking list index unchanged (%s) after a change the caller may see", r.index)
		}

		// The cluster view, blocking on its index, while the victim submits: its counts and
		// nodes' running counts would move.
		code, index, b = leakCall(context.Background(), t, p, attacker, "GET", "/v1/cluster", nil, nil)
		if code != http.StatusOK || index == "" {
			t.Fatalf("cluster: %d %q %s", code, index, b)
		}
		held := make(chan string, 1)
		sent = time.Now()
		go func() {
			_, _, b := leakCall(context.Background(), t, p, attacker, "GET", "/v1/cluster?wait=3s&index="+index, nil, nil)
			held <- b
		}()
		if code, b := callAs(t, p, victim, "POST", "/v1/tasks", map[string]any{"type": "echo", "input": "again"}, nil); code != http.StatusCreated {
			t.Fatalf("victim echo: %d %s", code, b)
		}
		<-held
		if waited := time.Since(sent); waited < wait {
			t.Errorf("the blocking cluster view answered after %s, before its %s wait: woken by the victim's submit", waited, wait)
		}
	})

	t.Run("counts and metrics", func(t *testing.T) {
		p := pc.procs[0]
		pendingSleep := func(credential string) (int, int) {
			var types []api.TypeInfo
			if code, b := callAs(t, p, credential, "GET", "/v1/types", nil, &types); code != http.StatusOK {
				t.Fatalf("types: %d %s", code, b)
			}
			n := 0
			for _, ti := range types {
				if ti.Type == "sleep" {
					n += ti.Pending
				}
			}
			var ql api.QueueList
			if code, b := callAs(t, p, credential, "GET", api.PathQueues, nil, &ql); code != http.StatusOK {
				t.Fatalf("queues: %d %s", code, b)
			}
			q := 0
			for _, x := range ql.Queues {
				q += x.Pending + x.Running + x.Scheduled
			}
			return n, q
		}
		poll(t, "the victim's sleeps pending and counted", 30*time.Second, func() bool {
			n, q := pendingSleep(root)
			return n > 0 && q > 0
		})
		if n, q := pendingSleep(attacker); n != 0 || q != 0 {
			t.Errorf("the attacker sees %d pending sleeps in /v1/types and %d tasks in /v1/queues, want 0", n, q)
		}
		var cl api.Cluster
		if code, b := callAs(t, p, attacker, "GET", "/v1/cluster", nil, &cl); code != http.StatusOK {
			t.Fatalf("cluster: %d %s", code, b)
		}
		running, total := 0, 0
		for _, nd := range cl.Nodes {
			running += nd.Running
		}
		for _, c := range cl.Tasks {
			total += c
		}
		if total != 1 || running != 0 { // its own calc-square, queued behind the victim's sleeps
			t.Errorf("the attacker's /v1/cluster counts the victim's tasks: tasks %v, running on nodes %d; want its one task", cl.Tasks, running)
		}
		started := func(credential string) int {
			var tp api.Throughput
			if code, b := callAs(t, p, credential, "GET", api.PathThroughput, nil, &tp); code != http.StatusOK {
				t.Fatalf("throughput: %d %s", code, b)
			}
			n := 0
			for _, c := range tp.Started {
				n += c
			}
			return n
		}
		if all, seen := started(root), started(attacker); all == 0 || seen != 0 {
			t.Errorf("throughput: %d tasks started in the series, the attacker sees %d; want some, and 0", all, seen)
		}
		metrics := func(who, credential string, want int) {
			t.Helper()
			code, b := callAs(t, p, credential, "GET", "/metrics", nil, nil)
			if code != want || code == http.StatusOK && !strings.Contains(b, "taskworker_") {
				t.Errorf("/metrics for %s: %d, want %d", who, code, want)
			}
		}
		metrics("no token", "", http.StatusUnauthorized)
		metrics("the attacker", attacker, http.StatusForbidden)
		metrics("the management token", root, http.StatusOK)
		if code, b := callAs(t, p, root, "PUT", api.PathACLPolicy+"prom", api.ACLPolicy{Name: "prom", Cluster: []string{"metrics"}}, nil); code != http.StatusOK {
			t.Fatalf("policy prom: %d %s", code, b)
		}
		var prom api.ACLToken
		if code, b := callAs(t, p, root, "POST", api.PathACLTokens, api.ACLTokenRequest{Policies: []string{"prom"}}, &prom); code != http.StatusCreated {
			t.Fatalf("token prom: %d %s", code, b)
		}
		metrics("a metrics token", prom.SecretID, http.StatusOK)
	})
}
