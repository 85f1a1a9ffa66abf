package clicmd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/agentcred"
	"github.com/taskworker/taskworker/internal/pki"
)

// Keys in the fake node's keyring: base64 of 16 bytes, K1K1... and K2K2...
const (
	primaryKey = "SzFLMUsxSzFLMUsxSzFLMQ=="
	otherKey   = "SzJLMksySzJLMksySzJLMg=="
)

// operatorNode fakes the operator routes of api/operator.go. Requests with the token "guest"
// get 403, as a caller without operator rights would.
type operatorNode struct {
	mu      sync.Mutex
	token   string
	ring    api.Keyring
	ops     []api.KeyringRequest
	auth    []string
	rotated int
}

func newOperatorNode(t *testing.T) (*operatorNode, string) {
	t.Helper()
	n := &operatorNode{token: "TW1::aa::old", ring: api.Keyring{Primary: primaryKey, Keys: []string{primaryKey, otherKey}, Nodes: map[string]int{primaryKey: 3}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathJoinToken, func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, api.JoinToken{Token: n.token})
	})
	mux.HandleFunc("POST "+api.PathJoinTokenRotate, func(w http.ResponseWriter, r *http.Request) {
		n.rotated++
		n.token = "TW1::aa::new"
		reply(w, 200, api.JoinToken{Token: n.token})
	})
	mux.HandleFunc("GET "+api.PathKeyring, func(w http.ResponseWriter, r *http.Request) { reply(w, 200, n.ring) })
	mux.HandleFunc("POST "+api.PathKeyring, func(w http.ResponseWriter, r *http.Request) {
		var req api.KeyringRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, 400, api.Errorf(api.CodeInvalidRequest, "bad body"))
			return
		}
		n.ops = append(n.ops, req)
		switch {
		case req.Op == api.KeyringRemove && req.Key == n.ring.Primary:
			reply(w, 409, map[string]string{"error": "the primary key cannot be removed", "code": "conflict"})
		case req.Op == "bogus":
			reply(w, 400, api.Errorf(api.CodeInvalidRequest, "unknown op"))
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.auth = append(n.auth, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") == "Bearer guest" {
			reply(w, 403, api.Errorf(api.CodeForbidden, "operator right needed"))
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return n, srv.URL
}

func TestJoinTokenCommands(t *testing.T) {
	n, addr := newOperatorNode(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("op-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderrIn string
	}{
		{name: "prints the token", args: []string{"join-token", "--addr", addr, "--token-file", tokenFile}, stdout: "TW1::aa::old\n"},
		{name: "without operator rights", args: []string{"join-token", "--addr", addr, "--token", "guest"}, code: 1, stderrIn: "operator right needed"},
		{name: "extra argument", args: []string{"join-token", "--addr", addr, "now"}, code: 2, stderrIn: "Incorrect Usage"},
		{name: "node unreachable", args: []string{"join-token", "--addr", "127.0.0.1:1"}, code: 2, stderrIn: "127.0.0.1:1"},
		{name: "rotate without rights changes nothing", args: []string{"join-token", "rotate", "--addr", addr, "--token", "guest"}, code: 1},
		{name: "rotate prints the new token, flags before the subcommand", args: []string{"join-token", "--addr", addr, "rotate"},
			stdout: "TW1::aa::new\n", stderrIn: "no longer works"},
		{name: "then the new token is shown", args: []string{"join-token", "--addr", addr}, stdout: "TW1::aa::new\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, "", tc.args...)
			if code != tc.code || stdout != tc.stdout || !strings.Contains(stderr, tc.stderrIn) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", code, stdout, stderr, tc.code, tc.stdout, tc.stderrIn)
			}
		})
	}
	if n.rotated != 1 {
		t.Errorf("rotated %d times, want 1", n.rotated)
	}
	if n.auth[0] != "Bearer op-secret" {
		t.Errorf("--token-file sent %q, want the file's token without its newline", n.auth[0])
	}
}

func TestKeyringCommands(t *testing.T) {
	n, addr := newOperatorNode(t)
	key := pki.EncodeGossipKey(pki.GenerateGossipKey())
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKey := "c2hvcnQ=" // base64 of 5 bytes
	for _, tc := range []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stdoutIn []string
		lines    [][]string // lines of stdout, as fields
		stderrIn string
		op       *api.KeyringRequest // the request the node must have got; nil: none
	}{
		{name: "list", args: []string{"keyring", "list", "--addr", addr},
			lines: [][]string{{"KEY", "PRIMARY", "NODES"}, {primaryKey, "yes", "3"}, {otherKey, "-"}}},
		{name: "list --json", args: []string{"keyring", "list", "--addr", addr, "--json"}, stdoutIn: []string{`"primary": "` + primaryKey + `"`}},
		{name: "install", args: []string{"keyring", "install", "--addr", addr, key}, stdoutIn: []string{"Key installed"},
			op: &api.KeyringRequest{Op: "install", Key: key}},
		{name: "use, key from a file", args: []string{"keyring", "use", "--addr", addr, "@" + keyFile}, stdoutIn: []string{"in use"},
			op: &api.KeyringRequest{Op: "use", Key: key}},
		{name: "remove, key from stdin", stdin: key + "\n", args: []string{"keyring", "remove", "--addr", addr, "-"},
			stdoutIn: []string{"Key removed"}, op: &api.KeyringRequest{Op: "remove", Key: key}},
		{name: "removing the primary is refused", args: []string{"keyring", "remove", "--addr", addr, primaryKey},
			code: 1, stderrIn: "primary key cannot be removed", op: &api.KeyringRequest{Op: "remove", Key: primaryKey}},
		{name: "without operator rights", args: []string{"keyring", "list", "--addr", addr, "--token", "guest"}, code: 1},
		{name: "a malformed key never leaves the CLI", args: []string{"keyring", "install", "--addr", addr, badKey},
			code: 2, stderrIn: "invalid gossip key"},
		{name: "no key", args: []string{"keyring", "install", "--addr", addr}, code: 2, stderrIn: "Incorrect Usage"},
		{name: "no subcommand", args: []string{"keyring"}, code: 2, stderrIn: "want a subcommand: list, install, use, remove"},
		{name: "unknown subcommand", args: []string{"keyring", "rotate"}, code: 2, stderrIn: `unknown subcommand "rotate"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.mu.Lock()
			n.ops = nil
			n.mu.Unlock()
			stdout, stderr, code := run(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderrIn) {
				t.Fatalf("exit %d, stderr %q; want %d, stderr with %q", code, stderr, tc.code, tc.stderrIn)
			}
			for _, s := range tc.stdoutIn {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout %q lacks %q", stdout, s)
				}
			}
			if tc.lines != nil {
				var got [][]string
				for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
					got = append(got, strings.Fields(l))
				}
				if !reflect.DeepEqual(got, tc.lines) {
					t.Errorf("stdout %q, want the lines %q", stdout, tc.lines)
				}
			}
			if strings.Contains(stderr, badKey) {
				t.Errorf("stderr %q echoes the key", stderr)
			}
			n.mu.Lock()
			defer n.mu.Unlock()
			switch {
			case tc.op == nil && len(n.ops) > 0:
				t.Errorf("the node got %+v, want no keyring change", n.ops)
			case tc.op != nil && (len(n.ops) != 1 || n.ops[0] != *tc.op):
				t.Errorf("the node got %+v, want %+v", n.ops, *tc.op)
			}
		})
	}
}

// A 400 is a request error (2), not a refusal (1), as for the other commands.
func TestOperatorErrorExitCodes(t *testing.T) {
	for _, tc := range []struct {
		status, code int
	}{{400, 2}, {401, 1}, {403, 1}, {404, 1}, {409, 1}, {500, 2}, {503, 2}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reply(w, tc.status, map[string]string{"error": "no", "code": "x"})
		}))
		_, _, code := run(t, "", "join-token", "--addr", srv.URL)
		srv.Close()
		if code != tc.code {
			t.Errorf("HTTP %d: exit %d, want %d", tc.status, code, tc.code)
		}
	}
}

func TestOperatorCommandsFindTheAgentsManagementCredential(t *testing.T) {
	n, addr := newOperatorNode(t)
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("TASKWORKER_TOKEN", "")
	t.Setenv("TASKWORKER_TOKEN_FILE", "")
	dataDir := t.TempDir()
	cred := pki.NewManagementCredential()
	if err := pki.WriteManagementFile(dataDir, cred); err != nil {
		t.Fatal(err)
	}
	hostport := strings.TrimPrefix(addr, "http://")
	if err := agentcred.WritePointer(hostport, dataDir); err != nil { // as the agent at addr does
		t.Fatal(err)
	}
	t.Setenv("TASKWORKER_DATA_DIR", "")
	for _, args := range [][]string{
		{"join-token", "--addr", addr},
		{"join-token", "rotate", "--addr", addr},
		{"keyring", "list", "--addr", addr},
		{"keyring", "install", primaryKey, "--addr", addr},
		{"status", "--addr", addr}, // not an operator command: no credential of its own
		{"join-token", "--addr", addr, "--token", "mine"},
	} {
		n.mu.Lock()
		n.auth = nil
		n.mu.Unlock()
		run(t, "", args...)
		want := "Bearer " + cred
		switch args[0] {
		case "status":
			want = ""
		}
		if args[len(args)-1] == "mine" {
			want = "Bearer mine" // a credential given wins
		}
		n.mu.Lock()
		got := n.auth
		n.mu.Unlock()
		if len(got) == 0 || got[0] != want {
			t.Errorf("%v sent %q, want %q", args, got, want)
		}
	}
}
