package node

import (
	"bytes"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/pki"
)

// A certificate of the cluster's CA that names no node (what `tls cert create --server` makes
// without --node) acts as no node: the internode routes refuse it, and so does the raft port.
func TestNamelessCertificateActsAsNoNode(t *testing.T) {
	tc := startSecureCluster(t, 3, secureOpts(nil))
	leader := tc.leader()
	var victim *Node
	for _, n := range tc.nodes {
		if n != leader {
			victim = n
			break
		}
	}
	id, err := leader.trust.CA().IssueIdentity(pki.NodeSpec{Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Validity: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pki.NodeName(id.Leaf(), leader.trust.Cluster()); ok {
		t.Fatal("the test certificate names a node")
	}
	clientTLS := pki.InternodeClientConfig(pki.NewHolder(id), leader.trust.ServerName())
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}}
	post := func(path string, c *fsm.Command) int {
		var body []byte
		if c != nil {
			if body, err = fsm.Encode(c); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := hc.Post("https://"+leader.GossipAddr()+path, "application/msgpack", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(internode.CommandPath(fsm.CmdDrain), &fsm.Command{Body: &fsm.Drain{Name: victim.Name(), Draining: true}}); code != http.StatusForbidden {
		t.Errorf("a drain of %s: %d, want 403", victim.Name(), code)
	}
	report := &fsm.ReportBatch{Items: []fsm.Report{{TaskID: "x", Attempt: 1, Node: victim.Name(), BootID: "b", Kind: fsm.ReportSucceeded}}}
	if code := post(internode.CommandPath(fsm.CmdReport), &fsm.Command{Body: report}); code != http.StatusForbidden {
		t.Errorf("a report for %s: %d, want 403", victim.Name(), code)
	}
	if code := post("/v1/internode/remove/"+victim.Name(), nil); code != http.StatusForbidden {
		t.Errorf("a raft removal of %s: %d, want 403", victim.Name(), code)
	}
	if d, _ := leader.FSM().Node(victim.Name()); d.Draining {
		t.Error("the forged drain was applied")
	}
	if got := raftServerNames(leader); len(got) != 3 {
		t.Errorf("raft servers %v after a forged removal", got)
	}

	// The raft port completes the handshake, then closes the connection before raft reads it.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", leader.RaftAddr(), clientTLS)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte{0}) // raft's first byte: an RPC type
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Error("the raft port kept a connection from a certificate that names no node")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("the raft port held the connection open: %v", err)
	}
}
