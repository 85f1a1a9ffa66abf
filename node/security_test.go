package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
)

// secureOpts runs nodes secure (the default outside tests) on loopback, with in-memory stores.
func secureOpts(rec *logRecorder) clusterOpts {
	return clusterOpts{inmem: true, tweak: func(i int, c *Config) {
		c.Insecure = false
		c.Advertise = "127.0.0.1"
		if rec != nil && i == 0 {
			c.Logger = slog.New(rec)
		}
	}}
}

// startSecureCluster starts size secure nodes: the first makes the cluster, the others join it
// with its join token, as a user would.
func startSecureCluster(t *testing.T, size int, o clusterOpts) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	for i := 0; i < size; i++ {
		c := o.config(t, i, nil)
		if i > 0 {
			c.Join = []string{tc.nodes[0].GossipAddr()}
			c.JoinToken = mustToken(t, tc.nodes[0]).Encode()
		}
		tc.start(c)
	}
	tc.waitHealthy(size)
	return tc
}

func mustToken(t *testing.T, n *Node) pki.Token {
	t.Helper()
	tok, err := n.trust.JoinToken()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func raftServerNames(n *Node) []string {
	var out []string
	if cf := n.rn.Raft().GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			out = append(out, n.rn.ServerName(s.ID))
		}
	}
	slices.Sort(out)
	return out
}

func TestSecureClusterFormsWithTheJoinTokenAndRunsTasks(t *testing.T) {
	tc := startSecureCluster(t, 3, secureOpts(nil))
	if task := submit(t, tc.follower(), "calc-square", 9, "20s"); string(task.Result) != "81" {
		t.Fatalf("task from a follower: %+v", task)
	}
	info, _ := tc.leader().ep.Cluster(context.Background())
	for _, ni := range info.Nodes {
		if ni.Insecure || ni.State != "alive" {
			t.Errorf("node %s: insecure %v state %s", ni.Name, ni.Insecure, ni.State)
		}
	}
	if got := raftServerNames(tc.leader()); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("raft servers %v", got)
	}
	// Every node follows the FSM's keyring and secret, which the first leader wrote.
	sec := tc.leader().FSM().Security()
	if !fsm.IsSecretHash(sec.JoinSecretHash) || len(sec.Keyring.Keys) != 1 {
		t.Fatalf("security state %+v", sec)
	}
}

func TestJoinWithoutTokenOrWithAWrongOneIsRefusedAndLogged(t *testing.T) {
	rec := &logRecorder{}
	o := secureOpts(rec)
	tc := startSecureCluster(t, 2, o)
	n1 := tc.nodes[0]

	c := o.config(t, 5, []string{n1.GossipAddr()})
	if _, err := Start(c); !errors.Is(err, trust.ErrNeedJoinToken) {
		t.Fatalf("join without a token: %v, want trust.ErrNeedJoinToken", err)
	}
	wrong := pki.Token{Fingerprint: mustToken(t, n1).Fingerprint, Secret: strings.Repeat("ab", 32)}
	c = o.config(t, 6, []string{n1.GossipAddr()})
	c.JoinToken = wrong.Encode()
	_, err := Start(c)
	if !errors.Is(err, trust.ErrJoinRefused) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("join with a wrong token: %v, want a 403 refusal", err)
	}
	if strings.Contains(err.Error(), wrong.Secret) {
		t.Fatalf("the refusal echoes the secret: %v", err)
	}
	rec.mu.Lock()
	logged := slices.ContainsFunc(rec.msgs, func(m string) bool { return strings.Contains(m, "wrong join token") })
	rec.mu.Unlock()
	if !logged {
		t.Errorf("the contacted node did not log the refusal")
	}
	for _, name := range []string{"n6", "n7"} {
		if slices.Contains(raftServerNames(tc.leader()), name) {
			t.Errorf("%s is in raft", name)
		}
		if _, ok := memberState(n1.members.Members(), name); ok {
			t.Errorf("%s is in gossip", name)
		}
	}
}

func TestInternodeCallsNeedANodeCertificateAndReportsMustNameTheirSender(t *testing.T) {
	tc := startSecureCluster(t, 3, secureOpts(nil))
	leader := tc.leader()
	var sender, other *Node
	for _, n := range tc.nodes {
		if n == leader {
			continue
		}
		if sender == nil {
			sender = n
		} else {
			other = n
		}
	}
	post := func(hc *http.Client, c *fsm.Command) int {
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Post("https://"+leader.GossipAddr()+internode.CommandPath(c.Type()), "application/msgpack", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	report := func(node string) *fsm.Command {
		return &fsm.Command{Body: &fsm.ReportBatch{Items: []fsm.Report{{TaskID: "x", Attempt: 1, Node: node, BootID: "b", Kind: fsm.ReportSucceeded}}}}
	}
	if code := post(sender.internode.Client(), report(other.Name())); code != http.StatusForbidden {
		t.Errorf("a report for another node: %d, want 403", code)
	}
	if code := post(sender.internode.Client(), &fsm.Command{Body: &fsm.Drain{Name: other.Name(), Draining: true}}); code != http.StatusForbidden {
		t.Errorf("a drain for another node: %d, want 403", code)
	}
	if code := post(sender.internode.Client(), report(sender.Name())); code != http.StatusOK {
		t.Errorf("a report for itself: %d, want 200 (applied, the item itself stale)", code)
	}
	// No certificate: the TLS session is set up (the join route needs that) but the route refuses.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's point
	if code := post(anon, report(sender.Name())); code != http.StatusUnauthorized {
		t.Errorf("no client certificate: %d, want 401", code)
	}
	if d, _ := leader.FSM().Node(other.Name()); d.Draining {
		t.Error("the forged drain was applied")
	}
}

func TestJoinTokenAndKeyringRotateWithNoNodeLost(t *testing.T) {
	o := secureOpts(nil)
	tc := startSecureCluster(t, 3, o)
	f := tc.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	old := mustToken(t, f)
	// The operator's credential, which every node fetches from the node that made the cluster.
	waitFor(t, "every node holds the management credential", 10*time.Second, func() bool {
		for _, n := range tc.nodes {
			if !n.trust.IsManagement(n.trust.ManagementCredential()) {
				return false
			}
		}
		return true
	})
	// Through a follower's API, as the CLI does: it forwards the request to the leader.
	operator := f.trust.ManagementCredential()
	code, body := aclCall(t, f, "POST", api.PathJoinTokenRotate, operator, "")
	var rotated api.JoinToken
	mustJSON(t, body, &rotated)
	if code != http.StatusOK || rotated.Token == old.Encode() {
		t.Fatalf("rotate: %d %s", code, body)
	}
	waitFor(t, "every node knows the new secret", 10*time.Second, func() bool {
		for _, n := range tc.nodes {
			if tok, _ := n.trust.JoinToken(); tok.Encode() != rotated.Token {
				return false
			}
		}
		return true
	})
	c := o.config(t, 3, []string{tc.nodes[0].GossipAddr()})
	c.JoinToken = old.Encode()
	if _, err := Start(c); !errors.Is(err, trust.ErrJoinRefused) {
		t.Fatalf("join with the old token: %v", err)
	}
	c = o.config(t, 3, []string{tc.nodes[0].GossipAddr()})
	c.JoinToken = rotated.Token
	tc.start(c)
	tc.waitHealthy(4)

	first := pki.EncodeGossipKey(tc.nodes[0].trust.LocalKeys()[0])
	next := pki.EncodeGossipKey(pki.GenerateGossipKey())
	keyring := func(op, key string) (int, []byte) {
		return aclCall(t, tc.follower(), "POST", api.PathKeyring, operator, fmt.Sprintf(`{"op": %q, "key": %q}`, op, key))
	}
	code, body = keyring(api.KeyringRemove, first)
	wantAPIError(t, "removing the primary", code, body, 409, api.CodeKeyringConflict, "")
	for _, op := range []string{api.KeyringInstall, api.KeyringUse, api.KeyringRemove} {
		key := next
		if op == api.KeyringRemove {
			key = first
		}
		if code, body := keyring(op, key); code != http.StatusOK {
			t.Fatalf("%s: %d %s", op, code, body)
		}
		waitFor(t, "every node follows "+op, 10*time.Second, func() bool {
			for _, n := range tc.nodes {
				keys := n.trust.LocalKeys()
				if pki.EncodeGossipKey(keys[0]) != map[string]string{api.KeyringInstall: first, api.KeyringUse: next, api.KeyringRemove: next}[op] {
					return false
				}
				if op == api.KeyringRemove && len(keys) != 1 {
					return false
				}
			}
			return true
		})
	}
	b := tc.follower().ep // reads
	ring, err := b.Keyring(ctx)
	if err != nil || ring.Primary != next || len(ring.Keys) != 1 {
		t.Fatalf("keyring after rotation: %+v %v", ring, err)
	}
	waitFor(t, "gossip reports the new key on every node", 10*time.Second, func() bool {
		r, _ := b.Keyring(ctx)
		return r.Nodes[next] == 4
	})
	// Gossip still works on the new key: every node sees every other alive.
	for _, n := range tc.nodes {
		alive := 0
		for _, m := range n.members.Members() {
			if m.State == membership.StateAlive {
				alive++
			}
		}
		if alive != 4 {
			t.Errorf("%s sees %d alive", n.Name(), alive)
		}
	}
	if task := submit(t, tc.follower(), "calc-square", 5, "20s"); string(task.Result) != "25" {
		t.Fatalf("after rotation: %+v", task)
	}
}

func TestNodeCertificateRenewsItselfBeforeItExpires(t *testing.T) {
	o := secureOpts(nil)
	tweak := o.tweak
	o.tweak = func(i int, c *Config) { tweak(i, c); c.CertValidity = 3 * time.Second }
	tc := startSecureCluster(t, 1, o)
	n := tc.nodes[0]
	first := n.trust.Holder().Identity().Leaf()
	if life := first.NotAfter.Sub(first.NotBefore); life > time.Minute {
		t.Fatalf("certificate valid for %s, want the configured 3s", life)
	}
	waitFor(t, "a renewed node certificate", 30*time.Second, func() bool {
		return n.trust.Holder().Identity().Leaf().SerialNumber.Cmp(first.SerialNumber) != 0
	})
	renewed := n.trust.Holder().Identity().Leaf()
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed certificate expires %s, not after the first one's %s", renewed.NotAfter, first.NotAfter)
	}
	// Saved for a restart, and the node keeps serving on it.
	waitFor(t, "the renewed certificate saved in the data dir", 10*time.Second, func() bool {
		saved, err := pki.DirSource(n.trust.Dir()).Load()
		return err == nil && saved.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if task := submit(t, n, "calc-square", 4, "20s"); string(task.Result) != "16" {
		t.Fatalf("task after the renewal: %+v", task)
	}
}
