package clicmd

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// fakeACLAPI answers the ACL routes and records what the commands sent.
type fakeACLAPI struct {
	mu       sync.Mutex
	auth     []string // Authorization of every request
	policies map[string]client.ACLPolicy
	tokenReq []client.ACLTokenRequest
	deleted  []string
}

func newFakeACLAPI(t *testing.T) (*fakeACLAPI, string) {
	f := &fakeACLAPI{policies: map[string]client.ACLPolicy{}}
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/acl/bootstrap", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, client.ACLToken{AccessorID: "acc-boot", SecretID: "tws_boot", Management: true, Policies: []string{}})
	})
	mux.HandleFunc("PUT /v1/acl/policy/{name}", func(w http.ResponseWriter, r *http.Request) {
		var p client.ACLPolicy
		_ = json.NewDecoder(r.Body).Decode(&p)
		p.Name = r.PathValue("name")
		f.mu.Lock()
		f.policies[p.Name] = p
		f.mu.Unlock()
		reply(w, 200, p)
	})
	mux.HandleFunc("GET /v1/acl/policies", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		out := []client.ACLPolicy{}
		for _, p := range f.policies {
			out = append(out, p)
		}
		reply(w, 200, out)
	})
	mux.HandleFunc("DELETE /v1/acl/policy/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.policies[r.PathValue("name")]; !ok {
			reply(w, 404, client.APIError{Message: "policy not found", Code: "not_found"})
			return
		}
		delete(f.policies, r.PathValue("name"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/acl/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req client.ACLTokenRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.tokenReq = append(f.tokenReq, req)
		f.mu.Unlock()
		reply(w, 201, client.ACLToken{AccessorID: "acc-team", SecretID: "tws_team", Policies: req.Policies, ExpirationTime: &exp})
	})
	mux.HandleFunc("GET /v1/acl/tokens", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []client.ACLToken{{AccessorID: "acc-boot", Management: true, Policies: []string{}},
			{AccessorID: "acc-team", Description: "team", Policies: []string{"team"}, ExpirationTime: &exp}})
	})
	mux.HandleFunc("DELETE /v1/acl/token/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.deleted = append(f.deleted, r.PathValue("id"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/acl/token/self", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, client.ACLSelf{Principal: "acc-team", Kind: "token", Policies: []string{"team"}, Description: "team"})
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func TestACLCommands(t *testing.T) {
	f, addr := newFakeACLAPI(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("tws_boot\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	policyFile := filepath.Join(t.TempDir(), "team.json")
	if err := os.WriteFile(policyFile, []byte(`{"rules": [{"task_type": "echo", "capabilities": ["submit", "read"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, stdin string
		args        []string
		code        int
		stdout      []string // pieces the output must hold
	}{
		{"bootstrap shows the secret", "", []string{"acl", "bootstrap", "--addr", addr}, 0, []string{"acc-boot", "tws_boot", "(management)"}},
		{"policy apply from a file", "", []string{"acl", "policy", "apply", "team", policyFile, "--addr", addr, "--token-file", tokenFile}, 0, []string{"Policy team applied"}},
		{"policy apply from stdin", `{"cluster": ["operator"]}`, []string{"acl", "policy", "apply", "ops", "-", "--addr", addr, "--token-file", tokenFile}, 0, []string{"Policy ops applied"}},
		{"policy apply refuses unknown fields", `{"rulez": []}`, []string{"acl", "policy", "apply", "bad", "-", "--addr", addr}, 2, nil},
		{"policy list", "", []string{"acl", "policy", "list", "--addr", addr, "--token", "tws_boot"}, 0, []string{"team", "echo:submit+read", "ops", "operator"}},
		{"policy delete", "", []string{"acl", "policy", "delete", "ops", "--addr", addr, "--token", "tws_boot"}, 0, []string{"Policy ops deleted"}},
		{"policy delete unknown", "", []string{"acl", "policy", "delete", "ops", "--addr", addr, "--token", "tws_boot"}, 1, nil},
		{"token create", "", []string{"acl", "token", "create", "--policy", "team", "--description", "team", "--ttl", "24h", "--addr", addr, "--token", "tws_boot"}, 0, []string{"acc-team", "tws_team", "team"}},
		{"token create needs a policy", "", []string{"acl", "token", "create", "--addr", addr}, 2, nil},
		{"token list", "", []string{"acl", "token", "list", "--addr", addr, "--token", "tws_boot"}, 0, []string{"acc-boot", "(management)", "never", "acc-team", "team"}},
		{"token self", "", []string{"acl", "token", "self", "--addr", addr, "--token", "tws_team"}, 0, []string{"acc-team", "token", "team"}},
		{"token delete", "", []string{"acl", "token", "delete", "acc-team", "--addr", addr, "--token", "tws_boot"}, 0, []string{"Token acc-team deleted"}},
	}
	for _, tt := range tests {
		stdout, stderr, code := run(t, tt.stdin, tt.args...)
		if code != tt.code {
			t.Fatalf("%s: exit %d, want %d\n%s%s", tt.name, code, tt.code, stdout, stderr)
		}
		for _, want := range tt.stdout {
			if !strings.Contains(stdout, want) {
				t.Errorf("%s: output lacks %q:\n%s", tt.name, want, stdout)
			}
		}
	}
	if len(f.tokenReq) != 1 || f.tokenReq[0].TTL != "24h0m0s" || f.tokenReq[0].Description != "team" || f.tokenReq[0].Policies[0] != "team" {
		t.Errorf("token requests %+v", f.tokenReq)
	}
	if f.policies["team"].Rules[0].TaskType != "echo" {
		t.Errorf("policies %+v", f.policies)
	}
	if f.auth[1] != "Bearer tws_boot" || f.auth[0] != "" {
		t.Errorf("authorization sent: %q", f.auth)
	}
}

func TestTokenComesFromAFileOrTheEnvironment(t *testing.T) {
	f, addr := newFakeACLAPI(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("  from-file  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TASKWORKER_TOKEN_FILE", file)
	if _, stderr, code := run(t, "", "acl", "token", "self", "--addr", addr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Setenv("TASKWORKER_TOKEN", "from-env")
	if _, stderr, code := run(t, "", "acl", "token", "self", "--addr", addr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := []string{"Bearer from-file", "Bearer from-env"}; strings.Join(f.auth, ",") != strings.Join(want, ",") {
		t.Errorf("authorization %q, want %q", f.auth, want)
	}
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	t.Setenv("TASKWORKER_TOKEN", "")
	if _, _, code := run(t, "", "acl", "token", "self", "--addr", addr, "--token-file", empty); code != 2 {
		t.Errorf("empty token file: exit %d, want 2", code)
	}
	if _, _, code := run(t, "", "acl", "token", "self", "--addr", addr, "--token-file", filepath.Join(dir, "missing")); code != 2 {
		t.Errorf("missing token file: exit %d, want 2", code)
	}
}

func TestTaskGetShowsTheSubmitter(t *testing.T) {
	var b bytes.Buffer
	if err := printTask(&b, &client.Task{ID: "t1", Type: "echo", SubmittedBy: "acc-team"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Submitted by") || !strings.Contains(b.String(), "acc-team") {
		t.Errorf("task get:\n%s", b.String())
	}
}
