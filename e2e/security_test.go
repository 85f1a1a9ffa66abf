package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/pki"
)

// The multi-process suites above run secure, as every cluster does by default: the first node
// makes the CA and the join token and the harness hands the token to the others through
// TASKWORKER_JOIN_TOKEN, as a user would. These tests prove what that buys.

func TestThreeProcessesFormASecureClusterWithTheJoinToken(t *testing.T) {
	pc := startProcCluster(t, 3)
	n1 := pc.procs[0]

	cl := pc.waitCluster(n1, 3)
	poll(t, "every node in raft", 30*time.Second, func() bool {
		c := n1.view()
		if c == nil || len(c.Nodes) != 3 {
			return false
		}
		for _, nd := range c.Nodes {
			if nd.RaftRole == "none" {
				return false
			}
		}
		return true
	})
	var view struct {
		Nodes []api.NodeInfo `json:"nodes"`
	}
	if err := n1.getJSON("/v1/cluster", &view); err != nil {
		t.Fatal(err)
	}
	for _, nd := range view.Nodes {
		if nd.Insecure {
			t.Errorf("%s reports insecure", nd.Name)
		}
	}
	follower := pc.procs[1]
	if cl.Leader == follower.Name {
		follower = pc.procs[2]
	}
	out, errOut, code := pc.cli(follower, "exec", "calc-square", "11")
	if code != 0 || strings.TrimSpace(out) != "121" {
		t.Fatalf("exec on follower %s: %d %q %q", follower.Name, code, out, errOut)
	}

	// The trust material is on disk with tight modes, and the token is logged once, by n1 only.
	fi, err := os.Stat(filepath.Join(n1.DataDir, "join-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("join-token file: %v %v", fi, err)
	}
	for _, p := range pc.procs {
		if fi, err := os.Stat(filepath.Join(p.DataDir, "tls")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s tls dir: %v %v", p.Name, fi, err)
		}
	}
	tok, err := n1.JoinToken(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pc.procs { // n1 names the file that holds it instead
		if strings.Contains(p.Log(), tok) || strings.Contains(p.Log(), strings.Split(tok, "::")[2]) {
			t.Errorf("%s logs the join token or its secret", p.Name)
		}
	}
	if !strings.Contains(n1.Log(), "new secure cluster: add nodes with --join") {
		t.Errorf("n1 does not say how to join")
	}
}

func TestAgentsWithoutOrWithAWrongTokenCannotJoin(t *testing.T) {
	pc := startProcCluster(t, 2)
	n1 := pc.procs[0]
	tok, err := n1.JoinToken(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := pki.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	wrong := pki.Token{Fingerprint: parsed.Fingerprint, Secret: strings.Repeat("0f", 32)}

	none := pc.add("--join-token=")
	if err := none.Wait(30 * time.Second); err == nil {
		t.Fatal("an agent without a token exited 0")
	}
	if !strings.Contains(none.Log(), "needs its join token: pass --join-token") {
		t.Errorf("the agent without a token does not say what to pass:\n%s", none.Log())
	}
	bad := pc.add("--join-token=" + wrong.Encode())
	if err := bad.Wait(30 * time.Second); err == nil {
		t.Fatal("an agent with a wrong token exited 0")
	}
	if !strings.Contains(bad.Log(), "join refused") || !strings.Contains(bad.Log(), "403") {
		t.Errorf("the agent with a wrong token does not say it was refused:\n%s", bad.Log())
	}
	if strings.Contains(bad.Log(), wrong.Secret) {
		t.Error("the refused agent logs its secret")
	}
	poll(t, "n1 logs the refusal with the remote address", 10*time.Second, func() bool {
		return strings.Contains(n1.Log(), "refused a node's join: wrong join token") && strings.Contains(n1.Log(), "remote=127.0.0.1:")
	})

	cl := pc.waitCluster(n1, 2)
	for _, nd := range cl.Nodes {
		if nd.Name == none.Name || nd.Name == bad.Name {
			t.Errorf("%s is in the cluster: %+v", nd.Name, nd)
		}
	}
	if len(cl.Nodes) != 2 {
		t.Errorf("cluster has %d nodes, want 2", len(cl.Nodes))
	}
}

func TestRawTCPOnTheRaftPortIsRefusedAndTheClusterStaysHealthy(t *testing.T) {
	pc := startProcCluster(t, 3)
	n1 := pc.procs[0]
	// A raft AppendEntries-looking byte stream, as an attacker's bare raft client would send.
	for i := 0; i < 20; i++ {
		c, err := net.DialTimeout("tcp", n1.Raft, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(append([]byte{0 /* rpcAppendEntries */}, bytes.Repeat([]byte{0x81, 0xa4}, 64)...))
		n, err := c.Read(make([]byte, 64))
		c.Close()
		if err == nil && n > 0 {
			// TLS answers a non-TLS client with at most an alert record (0x15); never raft.
			t.Logf("read %d bytes back", n)
		}
	}
	poll(t, "n1 logs the refused raft connections", 10*time.Second, func() bool {
		return strings.Contains(n1.Log(), "raft TLS: refused connection")
	})
	pc.waitCluster(n1, 3)
	out, _, code := pc.cli(pc.procs[2], "exec", "calc-square", "3")
	if code != 0 || strings.TrimSpace(out) != "9" {
		t.Fatalf("exec after the attack: %d %q", code, out)
	}
}

// operatorCall sends an operator request to p with the management credential the operator on
// p's machine holds, and decodes a 200's answer into out.
func operatorCall(t *testing.T, p *proc, method, path string, body, out any) int {
	t.Helper()
	r := p.call(context.Background(), t, managementCredential(t, p), method, path, body, out)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.status != http.StatusOK {
		t.Logf("%s %s: %d %s", method, path, r.status, r.body)
	}
	return r.status
}

func TestJoinTokenAndKeyringRotateOnThreeProcessesWithNoNodeLost(t *testing.T) {
	pc := startProcCluster(t, 3)
	n1, n2 := pc.procs[0], pc.procs[1]
	old, err := n1.JoinToken(time.Second)
	if err != nil {
		t.Fatal(err)
	}

	var rotated api.JoinToken
	if code := operatorCall(t, n2, "POST", api.PathJoinTokenRotate, nil, &rotated); code != 200 || rotated.Token == old || rotated.Token == "" {
		t.Fatalf("rotate on n2: %d %+v", code, rotated)
	}
	// The rotation runs on the leader, which rewrites its own file before it answers; every other
	// node, the one that took the request included, rewrites its file once it has fetched the new
	// secret (internal/trust), moments later.
	poll(t, "n2 rewrites its join-token file", 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(n2.DataDir, "join-token"))
		return strings.TrimSpace(string(b)) == rotated.Token
	})
	poll(t, "n1 rewrites its join-token file", 10*time.Second, func() bool {
		tok, _ := n1.JoinToken(time.Second)
		return tok == rotated.Token
	})
	poll(t, "n3 serves the new join token", 20*time.Second, func() bool {
		var got api.JoinToken
		return operatorCall(t, pc.procs[2], "GET", api.PathJoinToken, nil, &got) == 200 && got.Token == rotated.Token
	})
	stale := pc.add("--join-token=" + old)
	if err := stale.Wait(30 * time.Second); err == nil || !strings.Contains(stale.Log(), "join refused") {
		t.Fatalf("the old token: %v\n%s", err, stale.Log())
	}
	fresh := pc.add() // the harness reads n1's join-token file: the new token
	pc.waitCluster(n1, 4)

	var ring api.Keyring
	if code := operatorCall(t, n1, "GET", api.PathKeyring, nil, &ring); code != 200 || len(ring.Keys) != 1 {
		t.Fatalf("keyring: %d %+v", code, ring)
	}
	first := ring.Primary
	next := pki.EncodeGossipKey(pki.GenerateGossipKey())
	if code := operatorCall(t, n2, "POST", api.PathKeyring, api.KeyringRequest{Op: api.KeyringRemove, Key: first}, nil); code != http.StatusConflict {
		t.Fatalf("removing the primary: %d, want 409", code)
	}
	steps := []struct {
		op, key string
		holders func(api.Keyring) bool
	}{
		{api.KeyringInstall, next, func(r api.Keyring) bool { return r.Nodes[next] == 4 && r.Primary == first }},
		{api.KeyringUse, next, func(r api.Keyring) bool { return r.Primary == next }},
		{api.KeyringRemove, first, func(r api.Keyring) bool { return len(r.Keys) == 1 && r.Nodes[next] == 4 }},
	}
	for _, s := range steps {
		if code := operatorCall(t, n2, "POST", api.PathKeyring, api.KeyringRequest{Op: s.op, Key: s.key}, &ring); code != 200 {
			t.Fatalf("%s: %d", s.op, code)
		}
		poll(t, "every node follows keyring "+s.op, 20*time.Second, func() bool {
			var r api.Keyring
			return operatorCall(t, pc.procs[2], "GET", api.PathKeyring, nil, &r) == 200 && s.holders(r)
		})
	}
	for _, p := range []*proc{n1, n2, pc.procs[2], fresh} {
		if !strings.Contains(p.Log(), "gossip keyring changed") {
			t.Errorf("%s did not change its keyring", p.Name)
		}
	}
	// No node lost: all four alive on the new key, and a task runs.
	poll(t, "four nodes alive after the rotation", 20*time.Second, func() bool {
		c := n1.view()
		if c == nil {
			return false
		}
		alive := 0
		for _, nd := range c.Nodes {
			if nd.State == "alive" {
				alive++
			}
		}
		return alive == 4
	})
	out, _, code := pc.cli(fresh, "exec", "calc-square", "4")
	if code != 0 || strings.TrimSpace(out) != "16" {
		t.Fatalf("exec after rotation: %d %q", code, out)
	}
}

func TestOperatorCertificatesServeHTTPSAndRefuseAnotherCA(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	caFiles, err := pki.CreateCAFiles(dir, "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCAFiles(caFiles.Cert, caFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	key := pki.EncodeGossipKey(pki.GenerateGossipKey())
	pc := newProcCluster(t)
	var n1Files pki.Files
	for i := 1; i <= 3; i++ {
		f, err := pki.CreateCertFiles(dir, ca, pki.NodeSpec{Name: fmt.Sprintf("n%d", i), Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, now)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			n1Files = f
		}
		pc.add("--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", caFiles.Cert, "--encrypt", key, "--http-tls")
	}
	// Kill the processes ourselves at the end: the replica check speaks plain HTTP.
	defer pc.c.Stop()

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	clients := make([]*client.Client, len(pc.procs))
	for i, p := range pc.procs {
		clients[i] = client.New("https://"+p.HTTP, client.WithHTTPClient(hc))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	poll(t, "three nodes alive over HTTPS", 60*time.Second, func() bool {
		cl, err := clients[0].Cluster(ctx)
		if err != nil || cl.Leader == "" {
			return false
		}
		alive := 0
		for _, nd := range cl.Nodes {
			if nd.State == "alive" && len(nd.TaskTypes) > 0 && nd.RaftRole != "none" {
				alive++
			}
		}
		return alive == 3
	})
	task, err := clients[2].SubmitWait(ctx, client.SubmitRequest{Type: "print", Input: json.RawMessage(`"over https"`)}, 30*time.Second)
	if err != nil || task.State != "succeeded" {
		t.Fatalf("submit over HTTPS: %+v %v", task, err)
	}
	var lines []string
	if err := clients[1].Logs(ctx, task.ID, false, func(l client.LogLine) error { lines = append(lines, l.Line); return nil }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "over https") {
		t.Errorf("logs over HTTPS: %q", lines)
	}

	// Plain HTTP to the API is refused.
	if resp, err := http.Get("http://" + pc.procs[0].HTTP + "/v1/cluster"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the HTTPS API: %d", resp.StatusCode)
		}
	}

	// A node certificate of another CA is refused on raft and on internode calls.
	otherFiles, err := pki.CreateCAFiles(t.TempDir(), "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.LoadCAFiles(otherFiles.Cert, otherFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := other.IssueIdentity(pki.NodeSpec{Name: "n1", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, now)
	if err != nil {
		t.Fatal(err)
	}
	rogueTLS := &tls.Config{Certificates: []tls.Certificate{rogue.Cert}, InsecureSkipVerify: true} //nolint:gosec // the attacker's side
	target := pc.procs[0]
	raftConn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", target.Raft, rogueTLS)
	if err == nil {
		// TLS 1.3: the client's handshake returns before the server checked its certificate;
		// the refusal arrives as an alert on the first read.
		_ = raftConn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = raftConn.Write([]byte{0})
		_, err = raftConn.Read(make([]byte, 1))
		raftConn.Close()
	}
	if err == nil {
		t.Error("raft accepted a certificate of another CA")
	}
	rogueClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: rogueTLS}}
	body := bytes.NewReader([]byte{1})
	if resp, err := rogueClient.Post("https://"+target.Gossip+"/v1/internode/report", "application/msgpack", body); err == nil {
		resp.Body.Close()
		t.Errorf("internode call with a certificate of another CA: %d", resp.StatusCode)
	}
	poll(t, "the target logs both refusals", 10*time.Second, func() bool {
		log := target.Log()
		return strings.Contains(log, "raft TLS: refused connection") && strings.Contains(log, "TLS handshake error")
	})

	// SIGHUP reloads the certificate files: n1 serves its new certificate from then on.
	served := func() string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", target.HTTP, &tls.Config{RootCAs: pool})
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	renewed, err := pki.CreateCertFiles(t.TempDir(), ca, pki.NodeSpec{Name: "n1", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{renewed.Cert, n1Files.Cert}, {renewed.Key, n1Files.Key}} {
		b, err := os.ReadFile(pair[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pair[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := served(); got != before {
		t.Fatalf("the certificate changed before SIGHUP: %s -> %s", before, got)
	}
	if err := target.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll(t, "n1 serves the reloaded certificate after SIGHUP", 20*time.Second, func() bool {
		got := served()
		return got != before && !strings.HasPrefix(got, "dial:")
	})
	// The reloaded node still works with the others (raft and internode use the new identity).
	if task, err := clients[1].SubmitWait(ctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`"after reload"`)}, 30*time.Second); err != nil || task.State != "succeeded" {
		t.Fatalf("submit after the reload: %+v %v", task, err)
	}
}
