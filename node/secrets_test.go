package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/trust"
)

func TestSecretFlagsInArgvWarnOnceNamingTheSaferWay(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"agent", "--join-token", "TW1::x::y", "--join-token=TW1::x::y"}, []string{"--join-token-file or TASKWORKER_JOIN_TOKEN"}},
		{[]string{"agent", "-token=abc", "--encrypt", "k"}, []string{"--token-file or TASKWORKER_TOKEN", "--encrypt-file or TASKWORKER_ENCRYPT"}},
		{[]string{"agent", "--join-token-file", "/x", "--token-file=/y", "--encrypt-file", "/z"}, nil},
		{[]string{"agent", "--name", "n1", "--", "--token", "x"}, nil},
	} {
		var buf bytes.Buffer
		warnSecretsInArgv(tt.args, slog.New(slog.NewTextHandler(&buf, nil)))
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if buf.Len() == 0 {
			lines = nil
		}
		if len(lines) != len(tt.want) {
			t.Errorf("%q: %d warnings, want %d:\n%s", tt.args, len(lines), len(tt.want), buf.String())
			continue
		}
		for i, w := range tt.want {
			if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], w) {
				t.Errorf("%q: warning %q does not name %q", tt.args, lines[i], w)
			}
			if strings.Contains(lines[i], "TW1::x::y") || strings.Contains(lines[i], "abc") {
				t.Errorf("%q: the warning repeats the secret: %s", tt.args, lines[i])
			}
		}
	}
}

func TestRootAgentWarnsOfCommandTypesWithoutAUser(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tasks.yaml")
	doc := "tasks:\n" +
		"  - {name: as-root, version: \"1\", command: /bin/true}\n" +
		"  - {name: as-nobody, version: \"1\", command: /bin/true, user: nobody}\n" +
		"  - {name: also-root, version: \"1\", command: /bin/true}\n"
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	warnRootCommands(f, 1000, log)
	if buf.Len() != 0 {
		t.Fatalf("a non-root agent warned: %s", buf.String())
	}
	warnRootCommands(f, 0, log)
	out := buf.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "level=WARN") || !strings.Contains(out, "types=as-root,also-root") {
		t.Errorf("root agent: %q, want one WARN naming as-root and also-root", out)
	}
}

// privateTempDir is a t.TempDir the agent accepts as its data dir: t.TempDir makes its
// directories through the umask (0755 under the usual 0022), which the node refuses.
func privateTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestClusterSecretsGoOnlyToNodesOfTheClusterAndOnlyWhenCurrent(t *testing.T) {
	tc := startSecureCluster(t, 2, secureOpts(nil))
	n1, n2 := tc.nodes[0], tc.nodes[1]
	waitFor(t, "n2 holds the management credential", 10*time.Second, func() bool {
		return n2.trust.ManagementCredential() != "" && n2.trust.ManagementCredential() == n1.trust.ManagementCredential()
	})
	ask := func(hc *http.Client, from *Node, name string) (int, string) {
		t.Helper()
		resp, err := hc.Get("https://" + from.GossipAddr() + "/v1/internode/secret/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep struct {
			Secret string `json:"secret"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&rep)
		return resp.StatusCode, rep.Secret
	}
	tok := mustToken(t, n1)
	if code, s := ask(n2.internode.Client(), n1, trust.SecretJoinToken); code != http.StatusOK || s != tok.Encode() {
		t.Errorf("a node asking for the join token: %d %q", code, s)
	}
	if code, s := ask(n2.internode.Client(), n1, trust.SecretManagement); code != http.StatusOK || s != n1.trust.ManagementCredential() {
		t.Errorf("a node asking for the management credential: %d", code)
	}
	if code, _ := ask(n2.internode.Client(), n1, "ca-key"); code != http.StatusNotFound {
		t.Errorf("an unknown secret: %d, want 404", code)
	}
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's point
	for _, name := range []string{trust.SecretJoinToken, trust.SecretManagement} {
		if code, s := ask(anon, n1, name); code != http.StatusUnauthorized || s != "" {
			t.Errorf("a caller without a node certificate asking for %s: %d, want 401 and nothing", name, code)
		}
	}

	// A copy that no longer matches the cluster's hash is never handed out, and is mended from a
	// node that holds the current one.
	stale := tok.Rotate()
	n1.trust.SetJoinToken(stale)
	if code, s := ask(n2.internode.Client(), n1, trust.SecretJoinToken); code != http.StatusNotFound || s != "" {
		t.Errorf("a stale join token was handed out: %d", code)
	}
	got, err := n1.ep.JoinToken(context.Background())
	if err != nil || got.Token != tok.Encode() {
		t.Fatalf("GET join-token on a node with a stale copy: %v %v, want the current token", got, err)
	}
}

// A cluster upgraded from a release without a management credential gets one as soon as every
// node up speaks protocol 4, even when the leader does not change: here the leader resumes a
// state in which a node of protocol 3 is up, so the credential's hash is refused at its
// election; once that node is marked down (it is not in gossip), the leader writes it.
func TestUpgradedClusterGetsAManagementCredentialOnceNoOlderNodeIsUp(t *testing.T) {
	longTest(t)
	dir, raftAddr := privateTempDir(t), freeAddr(t)
	var logs syncBuffer
	o := clusterOpts{tweak: func(_ int, c *Config) {
		c.Insecure, c.Advertise = false, "127.0.0.1"
		c.DataDir, c.RaftAddr = dir, raftAddr
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}}
	first := startCluster(t, 1, o).nodes[0] // makes the CA, the keys and this node's identity
	id := first.RaftID()
	if err := first.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// The raft state of an older release: no management hash, and an older node up.
	for _, p := range []string{"raft", pki.ManagementFile} {
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	raftDir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStore(raftDir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	_, trans := raft.NewInmemTransport(raft.ServerAddress(raftAddr))
	cf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: raft.ServerAddress(raftAddr), Suffrage: raft.Voter}}}
	if err := raft.BootstrapCluster(rc, st, st, snaps, trans, cf); err != nil {
		t.Fatal(err)
	}
	old, err := fsm.Encode(&fsm.Command{Now: time.Now().UTC(), Body: &fsm.Register{Node: fsm.Node{
		Name: "old", GossipAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", HTTPAddr: "127.0.0.1:3", BootID: "b", Capacity: 1, Protocol: 3,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.StoreLog(&raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: old}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	n := startCluster(t, 1, o).nodes[0]
	waitFor(t, "the resumed leader writes a management credential's hash", 30*time.Second, func() bool {
		return n.FSM().Security().ManagementHash != "" && n.trust.IsManagement(n.trust.ManagementCredential())
	})
	if !strings.Contains(logs.String(), "takes effect once every node is upgraded") {
		t.Error("the hash was written at once: the older node did not hold it back, so the test proves nothing")
	}
	if d, ok := n.FSM().Node("old"); !ok || d.Status == fsm.NodeUp {
		t.Errorf("the older node is still up: %+v", d)
	}
	if cred, err := pki.ReadManagementFile(dir); err != nil || cred != n.trust.ManagementCredential() {
		t.Errorf("the credential the leader made is not in its data dir: %v", err)
	}
}
