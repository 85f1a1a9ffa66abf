package trust

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// replica is an FSM that commands are applied to directly, as the leader's raft would.
type replica struct {
	fsm   *fsm.FSM
	mu    sync.Mutex
	index uint64
}

func newReplica() *replica { return &replica{fsm: fsm.New()} }

func (r *replica) apply(_ context.Context, c *fsm.Command) (*fsm.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index++
	c.Now = time.Now().UTC()
	res := r.fsm.ApplyCommand(r.index, c)
	return res, res.Err
}

// privateDir is a t.TempDir only its owner can enter, as a data dir is.
func privateDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// config is a secure node's trust config over r; dataDir "" keeps the identity in a temporary dir.
func config(name, dataDir string, r *replica) Config {
	return Config{
		Name: name, Cluster: pki.DefaultCluster, DataDir: dataDir, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		CertValidity: time.Hour, Logger: slog.New(slog.DiscardHandler),
		FSM: r.fsm, Apply: r.apply, IsLeader: func() bool { return true },
	}
}

func mustNew(t *testing.T, cfg Config) *Trust {
	t.Helper()
	tr, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// serveInternode serves tr's internode routes over TLS with tr's certificate, as a node's
// internode listener does.
func serveInternode(t *testing.T, tr *Trust) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+JoinPath, tr.HandleJoin)
	mux.HandleFunc("GET "+SecretPath, tr.HandleSecret)
	srv := httptest.NewUnstartedServer(mux)
	// A certificate of its own, or httptest puts its own first.
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{tr.Holder().Identity().Cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func TestFirstNodeMakesTheClusterAndARestartLoadsItFromTheDataDir(t *testing.T) {
	dir, r := privateDir(t), newReplica()
	first := mustNew(t, config("n1", dir, r))
	if first.Insecure() || first.CA() == nil || first.ServerName() != pki.ServerName(pki.DefaultCluster) {
		t.Fatalf("a new cluster's first node: insecure %v, CA %v, server name %q", first.Insecure(), first.CA(), first.ServerName())
	}
	if name, ok := pki.NodeName(first.Holder().Identity().Leaf(), first.Cluster()); !ok || name != "n1" {
		t.Fatalf("the node certificate names %q, %v; want n1", name, ok)
	}
	tok, err := first.JoinToken()
	if err != nil || tok.Fingerprint != first.CA().Fingerprint() {
		t.Fatalf("join token: %v %v", tok, err)
	}
	if onDisk, err := pki.ReadTokenFile(dir); err != nil || onDisk != tok {
		t.Fatalf("the join-token file: %v %v", onDisk, err)
	}
	cred := first.ManagementCredential()
	if onDisk, err := pki.ReadManagementFile(dir); err != nil || onDisk != cred || !pki.ValidManagementCredential(cred) {
		t.Fatalf("the management credential: %v", err)
	}
	if first.IsManagement(cred) {
		t.Fatal("the management credential opens the operator routes before its hash is in the FSM")
	}
	keys := first.LocalKeys()
	if len(keys) != 1 || first.KeyIDs() != KeyID(keys[0]) {
		t.Fatalf("keyring %d keys, IDs %q", len(keys), first.KeyIDs())
	}

	// The first leader writes the hashes and the keyring; the secrets stay with the node.
	first.Seed(context.Background())
	sec := r.fsm.Security()
	if !fsm.SecretMatches(tok.Secret, sec.JoinSecretHash) || !first.IsManagement(cred) || len(sec.Keyring.Keys) != 1 ||
		sec.Keyring.Primary != pki.EncodeGossipKey(keys[0]) {
		t.Fatalf("the security state after Seed: %+v", sec)
	}
	if first.IsManagement("twm_" + strings.Repeat("0", 64)) {
		t.Fatal("another credential of the same form is taken for the management credential")
	}

	// A restart finds everything in the data dir.
	cfg := config("n1", dir, newReplica())
	cfg.Resumed = true
	again := mustNew(t, cfg)
	if again.CA().Fingerprint() != first.CA().Fingerprint() || again.ManagementCredential() != cred ||
		!slices.EqualFunc(again.LocalKeys(), keys, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Fatal("the restarted node's CA, management credential or keyring differ from the ones it made")
	}
	if got, err := again.JoinToken(); err != nil || got != tok {
		t.Fatalf("the restarted node's join token: %v %v", got, err)
	}

	// Raft state without a TLS identity: a data dir that ran --insecure.
	cfg = config("n9", privateDir(t), newReplica())
	cfg.Resumed = true
	if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("raft state without an identity: %v, want the way out named", err)
	}
}

func TestJoinExchangeGivesTheTokenHolderItsCertificateTheCAAndTheKeys(t *testing.T) {
	r := newReplica()
	var refused atomic.Int64
	var warned []string
	cfg := config("n1", "", r)
	cfg.JoinRefused = func() { refused.Add(1) }
	cfg.AllowJoinWarning = func(ip string) (bool, int) { warned = append(warned, ip); return true, 0 }
	first := mustNew(t, cfg)
	tlsDir := first.Dir()
	addr := serveInternode(t, first)
	tok, err := first.JoinToken()
	if err != nil {
		t.Fatal(err)
	}

	joiner := func(name, token string) Config {
		c := config(name, privateDir(t), newReplica())
		c.Join, c.JoinToken = []string{addr}, token
		return c
	}
	if _, err := New(context.Background(), joiner("n2", "")); !errors.Is(err, ErrNeedJoinToken) {
		t.Fatalf("a join without a token: %v, want ErrNeedJoinToken", err)
	}
	wrong := pki.Token{Fingerprint: tok.Fingerprint, Secret: strings.Repeat("ab", 32)}
	_, err = New(context.Background(), joiner("n2", wrong.Encode()))
	if !errors.Is(err, ErrJoinRefused) || !strings.Contains(err.Error(), "403") || strings.Contains(err.Error(), wrong.Secret) {
		t.Fatalf("a join with a wrong token: %v, want a 403 refusal that does not echo the secret", err)
	}
	if strings.Count(err.Error(), "join refused") != 1 {
		t.Errorf("the refusal says so more than once: %v", err)
	}
	if refused.Load() != 1 || len(warned) != 1 || warned[0] != "127.0.0.1" {
		t.Errorf("the refusal was counted %d times and offered to the log for %q, want once for 127.0.0.1", refused.Load(), warned)
	}

	n2 := mustNew(t, joiner("n2", tok.Encode()))
	if n2.CA() == nil || n2.CA().Fingerprint() != first.CA().Fingerprint() {
		t.Fatal("the joiner did not get the cluster's CA with its key")
	}
	if name, ok := pki.NodeName(n2.Holder().Identity().Leaf(), n2.Cluster()); !ok || name != "n2" {
		t.Fatalf("the joiner's certificate names %q, %v; want n2", name, ok)
	}
	if !slices.EqualFunc(n2.LocalKeys(), first.LocalKeys(), func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Fatal("the joiner's keyring is not the cluster's")
	}
	if got, err := n2.JoinToken(); err != nil || got != tok {
		t.Fatalf("the joiner's join token: %v %v", got, err)
	}
	if n2.ManagementCredential() != "" {
		t.Fatal("a joiner made a management credential of its own")
	}

	// An in-memory node's identity goes with it.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tlsDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the temporary TLS dir is left behind: %v", err)
	}
}

func TestKeyringFollowsTheFSMAndIsSavedAndGossiped(t *testing.T) {
	r := newReplica()
	cfg := config("n1", privateDir(t), r)
	var gossiped []string
	cfg.GossipKeyIDs = func(ids string) error { gossiped = append(gossiped, ids); return nil }
	tr := mustNew(t, cfg)
	tr.Seed(context.Background())
	old := tr.LocalKeys()[0]
	next := pki.GenerateGossipKey()
	for _, step := range []struct {
		op, key     string
		primary     []byte
		keys        int
		gossipedIDs string
	}{
		{fsm.KeyInstall, pki.EncodeGossipKey(next), old, 2, KeyID(old) + "," + KeyID(next)},
		{fsm.KeyUse, pki.EncodeGossipKey(next), next, 2, KeyID(next) + "," + KeyID(old)},
		{fsm.KeyRemove, pki.EncodeGossipKey(old), next, 1, KeyID(next)},
	} {
		if _, err := r.apply(context.Background(), &fsm.Command{Body: &fsm.KeyringOp{Op: step.op, Key: step.key}}); err != nil {
			t.Fatalf("%s: %v", step.op, err)
		}
		tr.followKeyring(r.fsm.Security().Keyring)
		keys := tr.LocalKeys()
		if string(keys[0]) != string(step.primary) || len(keys) != step.keys {
			t.Fatalf("after %s: primary %s, %d keys; want %s, %d", step.op, KeyID(keys[0]), len(keys), KeyID(step.primary), step.keys)
		}
		saved, err := pki.LoadKeyring(tr.Dir())
		if err != nil || !slices.EqualFunc(saved, keys, func(a, b []byte) bool { return string(a) == string(b) }) {
			t.Fatalf("after %s: the keyring file holds %d keys, %v", step.op, len(saved), err)
		}
		if gossiped[len(gossiped)-1] != step.gossipedIDs {
			t.Fatalf("after %s: gossiped %q, want %q", step.op, gossiped[len(gossiped)-1], step.gossipedIDs)
		}
	}
	// Nothing changes, nothing is gossiped again.
	tr.followKeyring(r.fsm.Security().Keyring)
	if len(gossiped) != 3 {
		t.Fatalf("gossiped %d times, want 3", len(gossiped))
	}
}

func TestSecretsGoOnlyToNamedNodesAndOnlyWhenCurrentAndAreFetchedWhenStale(t *testing.T) {
	r := newReplica()       // one replica: every node's FSM holds the same state
	var caller atomic.Value // the node n1's internode listener says a call came from
	caller.Store("")
	n1cfg := config("n1", "", r)
	n1cfg.Caller = func(context.Context) string { return caller.Load().(string) }
	n1 := mustNew(t, n1cfg)
	n1.Seed(context.Background())
	tok, err := n1.JoinToken()
	if err != nil {
		t.Fatal(err)
	}
	ask := func(from, name string) (int, string) {
		caller.Store(from)
		req := httptest.NewRequest(http.MethodGet, "/v1/internode/secret/"+name, nil)
		req.SetPathValue("name", name)
		rec := httptest.NewRecorder()
		n1.HandleSecret(rec, req)
		var rep secretReply
		_ = json.NewDecoder(rec.Body).Decode(&rep)
		return rec.Code, rep.Secret
	}
	if code, s := ask("", SecretJoinToken); code != http.StatusForbidden || s != "" {
		t.Errorf("a caller that names no node: %d %q, want 403 and nothing", code, s)
	}
	if code, s := ask("n2", SecretJoinToken); code != http.StatusOK || s != tok.Encode() {
		t.Errorf("a node asking for the join token: %d %q", code, s)
	}
	if code, s := ask("n2", SecretManagement); code != http.StatusOK || s != n1.ManagementCredential() {
		t.Errorf("a node asking for the management credential: %d", code)
	}
	if code, _ := ask("n2", "ca-key"); code != http.StatusNotFound {
		t.Errorf("an unknown secret: %d, want 404", code)
	}

	// n2 joined after the cluster was made: it fetches the management credential from n1, and a
	// rotated join token once n1 holds it.
	caller.Store("n2")
	addr := serveInternode(t, n1)
	n2cfg := config("n2", "", r)
	n2cfg.Join, n2cfg.JoinToken = []string{addr}, tok.Encode()
	n2cfg.Members = func() []membership.Member {
		return []membership.Member{{Name: "n2", State: membership.StateAlive, GossipAddr: "127.0.0.1:1"},
			{Name: "n1", State: membership.StateAlive, GossipAddr: "127.0.0.1:2", Meta: membership.Meta{Internode: addr}}}
	}
	anyNode := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // n1's server is the test's own
	n2cfg.Get = func(ctx context.Context, addr, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
		if err != nil {
			return nil, err
		}
		return anyNode.Do(req)
	}
	n2 := mustNew(t, n2cfg)
	if got := n2.missingSecrets(); !slices.Equal(got, []string{SecretManagement}) {
		t.Fatalf("a joiner misses %q, want only the management credential", got)
	}
	if missing := n2.fetchSecrets(context.Background(), n2.missingSecrets()); len(missing) != 0 || n2.ManagementCredential() != n1.ManagementCredential() {
		t.Fatalf("the management credential was not fetched (still missing %q)", missing)
	}

	rotated := tok.Rotate()
	if _, err := r.apply(context.Background(), &fsm.Command{Body: &fsm.JoinSecret{Secret: fsm.HashSecret(rotated.Secret)}}); err != nil {
		t.Fatal(err)
	}
	if code, s := ask("n2", SecretJoinToken); code != http.StatusNotFound || s != "" {
		t.Errorf("a stale join token was handed out: %d", code)
	}
	if got := n2.missingSecrets(); !slices.Equal(got, []string{SecretJoinToken}) {
		t.Fatalf("after a rotation elsewhere n2 misses %q, want the join token", got)
	}
	if _, err := n2.CurrentJoinToken(context.Background()); err == nil {
		t.Fatal("a join token no node holds was given")
	}
	n1.SetJoinToken(rotated)
	if got, err := n2.CurrentJoinToken(context.Background()); err != nil || got != rotated {
		t.Fatalf("the rotated join token, fetched from n1: %v %v", got, err)
	}
}

func TestInsecureTrustHoldsNothingAndRefusesJoinsAndSecrets(t *testing.T) {
	r := newReplica()
	cfg := config("n1", "", r)
	cfg.Insecure = true
	tr := mustNew(t, cfg)
	if !tr.Insecure() || tr.Holder() != nil || tr.Keyring() != nil || tr.KeyIDs() != "" || tr.CA() != nil {
		t.Fatal("an insecure node holds trust material")
	}
	if _, err := tr.JoinToken(); err == nil {
		t.Fatal("an insecure node has a join token")
	}
	if tr.IsManagement(pki.NewManagementCredential()) {
		t.Fatal("an insecure node took a credential for the management credential")
	}
	if err := tr.Reload(); err == nil {
		t.Fatal("an insecure node reloaded TLS files")
	}
	for _, route := range []struct {
		h    http.HandlerFunc
		want int
	}{{tr.HandleJoin, http.StatusConflict}, {tr.HandleSecret, http.StatusForbidden}} {
		rec := httptest.NewRecorder()
		route.h(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}")))
		if b, _ := io.ReadAll(rec.Body); rec.Code != route.want {
			t.Errorf("%d %s, want %d", rec.Code, b, route.want)
		}
	}
	done := make(chan struct{})
	go func() { tr.Run(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run on an insecure node did not return at once")
	}
	if remove := tr.PublishCLIPointer("127.0.0.1:0", "127.0.0.1:1234"); remove == nil {
		t.Fatal("no remove func")
	}
}

func TestServerNameOfFindsTheClusterInAnOperatorCertificate(t *testing.T) {
	ca, err := pki.CreateCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.IssueIdentity(pki.NodeSpec{Name: "n1", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if name, cluster, err := serverNameOf(id.Leaf()); err != nil || name != "server.prod.taskworker" || cluster != "prod" {
		t.Fatalf("%q %q %v", name, cluster, err)
	}
	leaf := *id.Leaf()
	leaf.DNSNames = []string{"server.taskworker", "node.prod.taskworker", "server.Bad Name.taskworker"}
	if _, _, err := serverNameOf(&leaf); err == nil || !strings.Contains(err.Error(), "tls cert create --server") {
		t.Fatalf("a certificate without a server name: %v", err)
	}
}
