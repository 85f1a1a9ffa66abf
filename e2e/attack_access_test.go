package e2e

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptrace"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/pki"
)

// Attacks on the API's access to cluster secrets, with real processes: an anonymous caller on a
// secure cluster without ACLs, and an ACL token revoked at the leader used through a follower.

// managementCredential waits for p's <data-dir>/management-token (the first node makes it, the
// others fetch it from a peer) and returns it: what the operator on that node holds.
func managementCredential(t *testing.T, p *proc) string {
	t.Helper()
	return heldSecret(t, p, "management-token")
}

// callAs sends method path to p with credential ("" for none) and returns the status and body
// (the error, with status 0, when there was no answer); out, when not nil, receives a 200's or
// 201's body.
func callAs(t *testing.T, p *proc, credential, method, path string, body, out any) (int, string) {
	t.Helper()
	return callAsCtx(context.Background(), t, p, credential, method, path, body, out)
}

func callAsCtx(ctx context.Context, t *testing.T, p *proc, credential, method, path string, body, out any) (int, string) {
	t.Helper()
	r := p.call(ctx, t, credential, method, path, body, out)
	if r.err != nil {
		return 0, r.err.Error()
	}
	return r.status, string(r.body)
}

type operatorRoute struct {
	method, path string
	body         func() any
}

// operatorRoutes are the routes that read or change what admits a machine to the cluster, or show
// its internals. A keyring change installs a fresh key each time.
var operatorRoutes = []operatorRoute{
	{"GET", api.PathJoinToken, nil},
	{"POST", api.PathJoinTokenRotate, nil},
	{"GET", api.PathKeyring, nil},
	{"POST", api.PathKeyring, func() any {
		return api.KeyringRequest{Op: api.KeyringInstall, Key: pki.EncodeGossipKey(pki.GenerateGossipKey())}
	}},
	{"GET", api.PathDigest, nil},
}

// Finding 2: on a secure cluster without --acl, GET /v1/operator/join-token answered 200 to anyone,
// and a rogue node joined with what it returned. Every operator route now needs the management
// credential, on the leader and on followers (whose writes run on the leader); the CLI on a
// node finds that credential with no flags; a rogue without it cannot join.
func TestOperatorRoutesNeedTheManagementCredentialOnASecureCluster(t *testing.T) {
	// The agents write their CLI pointers here, and the CLI run below reads them from here.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	pc := startProcCluster(t, 3)
	for _, p := range pc.procs {
		cred := managementCredential(t, p)
		for _, r := range operatorRoutes {
			body := func() any {
				if r.body == nil {
					return nil
				}
				return r.body()
			}
			if code, b := callAs(t, p, "", r.method, r.path, body(), nil); code != http.StatusUnauthorized {
				t.Errorf("%s: %s %s without a credential: %d %s, want 401", p.Name, r.method, r.path, code, b)
			}
			if code, b := callAs(t, p, "twm_"+strings.Repeat("0", 64), r.method, r.path, body(), nil); code != http.StatusForbidden {
				t.Errorf("%s: %s %s with a wrong credential: %d %s, want 403", p.Name, r.method, r.path, code, b)
			}
			if code, b := callAs(t, p, cred, r.method, r.path, body(), nil); code != http.StatusOK {
				t.Errorf("%s: %s %s with the management credential: %d %s, want 200", p.Name, r.method, r.path, code, b)
			}
		}
	}

	// The operator on n2 runs the CLI as the agent's user, with no flags.
	n2 := pc.procs[1]
	var want api.JoinToken
	if code, b := callAs(t, n2, managementCredential(t, n2), "GET", api.PathJoinToken, nil, &want); code != http.StatusOK {
		t.Fatalf("join token with the management credential: %d %s", code, b)
	}
	out, errOut, code := pc.cli(n2, "join-token")
	if code != 0 || strings.TrimSpace(out) != want.Token {
		t.Fatalf("taskworker join-token on n2 with no flags: exit %d, %q %q; want the join token", code, out, errOut)
	}
	if out, err := exec.Command(pc.c.Bin, "keyring", "list", "--addr", "http://"+n2.HTTP).CombinedOutput(); err != nil || !strings.Contains(string(out), "PRIMARY") {
		t.Fatalf("taskworker keyring list on n2 with no credential flag: %v\n%s", err, out)
	}
	// Another user (here: another config dir) finds nothing, and the node refuses it.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if out, errOut, code := pc.cli(n2, "join-token"); code != 1 || strings.Contains(out, want.Token) {
		t.Fatalf("taskworker join-token as another user: exit %d, %q %q; want 1 and no token", code, out, errOut)
	}

	// A rogue machine knows the CA's fingerprint (the gossip port shows the CA certificate) but
	// not the secret, which the API no longer hands out: it cannot join.
	real, err := pki.ParseToken(want.Token)
	if err != nil {
		t.Fatal(err)
	}
	guess, err := pki.NewToken(real.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	rogue := pc.add("--join-token=" + guess.Encode())
	if err := rogue.Wait(30 * time.Second); err == nil || !strings.Contains(rogue.Log(), "join refused") {
		t.Fatalf("a rogue node with a guessed secret: %v\n%s", err, rogue.Log())
	}
	pc.procs = slices.DeleteFunc(pc.procs, func(p *proc) bool { return p == rogue })
	if c := pc.procs[0].view(); c == nil || len(c.Nodes) != 3 {
		t.Fatalf("the cluster after the rogue's try: %+v", c)
	}
}

// Finding 2 too: an API bound beyond loopback without access control refused nobody and warned only
// about TLS. It now refuses to start, naming the flag that accepts it. 0.0.0.0:0 is bound by
// nobody: the agent stops while checking its flags, before it listens or sends anything.
func TestAnAnonymousAPIBeyondLoopbackRefusesToStart(t *testing.T) {
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "agent", "--name", "open", "--data-dir", t.TempDir(),
		"--http-addr", "0.0.0.0:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("an agent with --http-addr 0.0.0.0:0 and no --acl: %v, want a non-zero exit\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "--allow-anonymous-api") {
		t.Fatalf("the refusal does not name --allow-anonymous-api:\n%s", stderr.String())
	}
}

// Finding 5: an ACL token deleted at the leader still rotated the join token and installed a
// gossip key through a follower that had not applied the deletion yet, because those writes were
// proposed without the caller and the leader allowed any command type it had no rule for. The
// follower here is frozen (SIGSTOP) while the token is deleted and the requests are sent, so it
// serves them behind the leader; every one must be refused, and nothing may change.
func TestARevokedOperatorTokenCannotRotateOrChangeTheKeyringThroughAFollower(t *testing.T) {
	pc := newProcCluster(t)
	for range 3 {
		pc.add("--acl")
	}
	n1 := pc.procs[0]
	var boot api.ACLToken
	poll(t, "ACL bootstrap on n1", 60*time.Second, func() bool {
		code, _ := callAs(t, n1, "", "POST", api.PathACLBootstrap, nil, &boot)
		return code == http.StatusOK
	})
	root := boot.SecretID
	pc.token = root // the harness compares the replicas with it
	if code, b := callAs(t, n1, root, "PUT", api.PathACLPolicy+"ops", api.ACLPolicy{Name: "ops", Cluster: []string{"operator"}}, nil); code != http.StatusOK {
		t.Fatalf("policy: %d %s", code, b)
	}
	var ops api.ACLToken
	if code, b := callAs(t, n1, root, "POST", api.PathACLTokens, api.ACLTokenRequest{Policies: []string{"ops"}}, &ops); code != http.StatusCreated {
		t.Fatalf("token: %d %s", code, b)
	}

	var leader string
	poll(t, "three nodes alive, all with the same leader", 60*time.Second, func() bool {
		leaders := map[string]bool{}
		for _, p := range pc.procs {
			var view api.Cluster
			code, _ := callAs(t, p, root, "GET", "/v1/cluster", nil, &view)
			alive := 0
			for _, nd := range view.Nodes {
				if nd.State == "alive" && nd.RaftRole != "none" {
					alive++
				}
			}
			if code != http.StatusOK || alive != 3 || view.Leader == "" {
				return false
			}
			leaders[view.Leader], leader = true, view.Leader
		}
		return len(leaders) == 1
	})
	var lp, follower *proc
	for _, p := range pc.procs {
		if p.Name == leader {
			lp = p
		} else if follower == nil {
			follower = p
		}
	}
	if lp == nil {
		t.Fatalf("no leader among %v", leader)
	}
	// The token works through the follower, as it did for the attacker before the deletion.
	var last string
	poll(t, "the follower knows the ops token", 20*time.Second, func() bool {
		code, b := callAs(t, follower, ops.SecretID, "GET", api.PathKeyring, nil, nil)
		if b != last {
			t.Logf("ops token on %s: %d %s", follower.Name, code, b)
			last = b
		}
		return code == http.StatusOK
	})
	var tokenBefore api.JoinToken
	var ringBefore api.Keyring
	if code, b := callAs(t, lp, root, "GET", api.PathJoinToken, nil, &tokenBefore); code != http.StatusOK {
		t.Fatalf("join token: %d %s", code, b)
	}
	if code, b := callAs(t, lp, root, "GET", api.PathKeyring, nil, &ringBefore); code != http.StatusOK {
		t.Fatalf("keyring: %d %s", code, b)
	}

	if err := follower.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = follower.Signal(syscall.SIGCONT)
		}
	}()
	if code, b := callAs(t, lp, root, "DELETE", api.PathACLToken+ops.AccessorID, nil, nil); code != http.StatusNoContent {
		t.Fatalf("delete the ops token at the leader: %d %s", code, b)
	}

	// The attacker's requests wait in the frozen follower's socket queue; they are served the
	// moment it resumes, while its replica is still behind the leader's.
	const tries = 12
	var wg, sent sync.WaitGroup
	var mu sync.Mutex
	var answers []string
	attack := func(method, path string, body any) {
		defer wg.Done()
		var once sync.Once
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(sent.Done) },
		})
		r := follower.call(ctx, t, ops.SecretID, method, path, body, nil)
		once.Do(sent.Done)
		code, b := r.status, string(r.body)
		if r.err != nil {
			b = r.err.Error()
		}
		mu.Lock()
		answers = append(answers, method+" "+path+": "+http.StatusText(code)+" "+strings.TrimSpace(b)+
			" (served by "+r.header.Get("X-Taskworker-Served-By")+")")
		if code == http.StatusOK {
			t.Errorf("the revoked token did %s %s through the follower: %s", method, path, b)
		}
		mu.Unlock()
	}
	for i := 0; i < tries; i++ {
		wg.Add(2)
		sent.Add(2)
		go attack("POST", api.PathJoinTokenRotate, nil)
		go attack("POST", api.PathKeyring, api.KeyringRequest{Op: api.KeyringInstall, Key: pki.EncodeGossipKey(pki.GenerateGossipKey())})
	}
	sent.Wait() // every request is in the follower's socket buffers
	if err := follower.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	wg.Wait()
	t.Logf("answers: %s", strings.Join(answers, "\n"))
	// The follower forwards a write before it reads the credential: the leader must be the one
	// that refused it, with its own replica, where the token is gone.
	if !slices.ContainsFunc(answers, func(a string) bool { return strings.HasSuffix(a, "(served by "+leader+")") }) {
		t.Fatal("no request reached the leader through the follower, so this run did not try the attack")
	}

	// Nothing changed: the same join token, the same keys, on every node.
	for _, p := range pc.procs {
		poll(t, p.Name+" answers with the root token", 30*time.Second, func() bool {
			var tok api.JoinToken
			var ring api.Keyring
			c1, _ := callAs(t, p, root, "GET", api.PathJoinToken, nil, &tok)
			c2, _ := callAs(t, p, root, "GET", api.PathKeyring, nil, &ring)
			if c1 != http.StatusOK || c2 != http.StatusOK {
				return false
			}
			if tok.Token != tokenBefore.Token {
				t.Fatalf("%s: the join token changed", p.Name)
			}
			if !slices.Equal(ring.Keys, ringBefore.Keys) || ring.Primary != ringBefore.Primary {
				t.Fatalf("%s: the keyring changed: %v, was %v", p.Name, ring.Keys, ringBefore.Keys)
			}
			return true
		})
	}
}
