package httpapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// fakeACL is the ACL interface over an in-memory acl.MemStore: what the node does over the
// replicated one, minus raft.
type fakeACL struct {
	*acl.Authorizer
	store *acl.MemStore
	mu    sync.Mutex
	calls []string // the management calls that reached it
}

func newFakeACL(jwtMethod *acl.JWTMethod) *fakeACL {
	s := acl.NewMemStore()
	return &fakeACL{Authorizer: acl.NewAuthorizer(s, jwtMethod), store: s}
}

func (f *fakeACL) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeACL) Bootstrapped() bool { return f.store.Bootstrapped() }

func toAPIToken(t acl.Token) api.ACLToken {
	out := api.ACLToken{AccessorID: t.AccessorID, Description: t.Description, Policies: t.Policies,
		Management: t.Management, CreateTime: t.CreateTime}
	if !t.ExpirationTime.IsZero() {
		out.ExpirationTime = &t.ExpirationTime
	}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	return out
}

func (f *fakeACL) Bootstrap(context.Context) (api.ACLToken, error) {
	f.record("bootstrap")
	tok, secret, err := acl.Bootstrap(f.store, time.Now())
	if errors.Is(err, acl.ErrAlreadyBootstrapped) {
		return api.ACLToken{}, api.Errorf(api.CodeACLBootstrapped, "already bootstrapped")
	}
	out := toAPIToken(tok)
	out.SecretID = secret.Reveal()
	return out, err
}

// The policy's JSON is the same in api and acl.
func (f *fakeACL) SetPolicy(_ context.Context, _ Caller, p api.ACLPolicy) (api.ACLPolicy, error) {
	f.record("set policy " + p.Name)
	b, _ := json.Marshal(p)
	ap, err := acl.ParsePolicy(b)
	if err == nil {
		err = f.store.SetPolicy(ap)
	}
	if err != nil {
		return api.ACLPolicy{}, api.Errorf(api.CodeInvalidPolicy, "%v", err)
	}
	return p, nil
}

func (f *fakeACL) Policies(context.Context) ([]api.ACLPolicy, error) {
	var out []api.ACLPolicy
	for _, p := range f.store.Policies() {
		b, _ := json.Marshal(p)
		var ap api.ACLPolicy
		_ = json.Unmarshal(b, &ap)
		out = append(out, ap)
	}
	return out, nil
}

func (f *fakeACL) DeletePolicy(_ context.Context, _ Caller, name string) error {
	f.record("delete policy " + name)
	if err := f.store.DeletePolicy(name); err != nil {
		return api.Errorf(api.CodeNotFound, "%v", err)
	}
	return nil
}

func (f *fakeACL) CreateToken(_ context.Context, _ Caller, req api.ACLTokenRequest) (api.ACLToken, error) {
	f.record("create token")
	tok, secret, err := acl.NewToken(req.Description, req.Policies, false, time.Now(), time.Time{})
	if err == nil {
		err = f.store.CreateToken(tok)
	}
	if err != nil {
		return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "%v", err)
	}
	out := toAPIToken(tok)
	out.SecretID = secret.Reveal()
	return out, nil
}

func (f *fakeACL) Tokens(context.Context) ([]api.ACLToken, error) {
	var out []api.ACLToken
	for _, t := range f.store.Tokens() {
		out = append(out, toAPIToken(t))
	}
	return out, nil
}

func (f *fakeACL) DeleteToken(_ context.Context, _ Caller, accessor string) error {
	f.record("delete token " + accessor)
	if err := f.store.DeleteToken(accessor); err != nil {
		return api.Errorf(api.CodeNotFound, "%v", err)
	}
	return nil
}

func (f *fakeACL) Token(_ context.Context, accessor string) (api.ACLToken, bool) {
	t, ok := f.store.TokenByAccessor(accessor)
	return toAPIToken(t), ok
}

const (
	jwtIssuer   = "https://idp.example.test/"
	jwtAudience = "taskworker"
)

var (
	jwtKeyOnce sync.Once
	jwtKey     *ecdsa.PrivateKey
	otherKey   *ecdsa.PrivateKey
)

func jwtKeys(t *testing.T) (*ecdsa.PrivateKey, *ecdsa.PrivateKey) {
	t.Helper()
	jwtKeyOnce.Do(func() {
		jwtKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		otherKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
	return jwtKey, otherKey
}

func jwtMethod(t *testing.T) *acl.JWTMethod {
	t.Helper()
	key, _ := jwtKeys(t)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	m, err := acl.NewJWTMethod(acl.JWTConfig{
		PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		Issuer:       jwtIssuer, Audiences: []string{jwtAudience}, ClaimName: "groups",
		ClaimMappings: map[string][]string{"reports-team": {"reports"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func signJWT(t *testing.T, key *ecdsa.PrivateKey, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": jwtIssuer, "aud": jwtAudience, "sub": "alice@example.test", "exp": exp.Unix(),
		"groups": []string{"reports-team"},
	}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var fixturePolicies = []string{
	`{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read", "cancel", "logs"]}]}`,
	`{"name": "no-payroll", "rules": [{"task_type": "report-payroll", "capabilities": ["deny"]}]}`,
	`{"name": "read-all", "rules": [{"task_type": "*", "capabilities": ["read"]}]}`,
	`{"name": "echo-submit", "rules": [{"task_type": "echo", "capabilities": ["submit"]}]}`,
	`{"name": "ops", "cluster": ["operator"]}`,
	`{"name": "acl-admin", "cluster": ["acl"]}`,
}

// newACLFixture returns a fresh backend and ACL state; anonymous adds an anonymous policy that
// lets requests without a token read echo tasks.
func newACLFixture(t *testing.T, anonymous bool) (*fakeBackend, *fakeACL, map[string]string) {
	t.Helper()
	f := newFake()
	for _, tk := range []api.Task{
		{ID: "r1", Type: "report-daily", State: api.StateRunning},
		{ID: "p1", Type: "report-payroll", State: api.StateRunning},
		{ID: "e1", Type: "echo", State: api.StateRunning},
		{ID: "c1", Type: "count", State: api.StateRunning},
	} {
		tk.History = []api.HistoryEntry{}
		f.put(tk)
	}
	a := newFakeACL(jwtMethod(t))
	docs := fixturePolicies
	if anonymous {
		docs = append(slices.Clone(docs), `{"name": "anonymous", "rules": [{"task_type": "echo", "capabilities": ["read"]}]}`)
	}
	for _, doc := range docs {
		p, err := acl.ParsePolicy([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.store.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	secrets := map[string]string{}
	add := func(name string, expires time.Time, policies ...string) {
		tok, secret, err := acl.NewToken(name, policies, false, time.Now().Add(-time.Hour), expires)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.store.CreateToken(tok); err != nil {
			t.Fatal(err)
		}
		secrets[name] = secret.Reveal()
	}
	add("reports", time.Time{}, "reports")
	add("reports-no-payroll", time.Time{}, "reports", "no-payroll")
	add("read-all-no-payroll", time.Time{}, "read-all", "no-payroll")
	add("echo-only", time.Time{}, "echo-submit")
	add("ops", time.Time{}, "ops")
	add("acl-admin", time.Time{}, "acl-admin")
	add("expired", time.Now().Add(-time.Minute), "reports")
	_, secret, err := acl.Bootstrap(a.store, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, other := jwtKeys(t)
	secrets["management"] = secret.Reveal()
	secrets["unknown"] = "tws_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	secrets["none"] = ""
	secrets["jwt"] = signJWT(t, key, time.Now().Add(time.Hour))
	secrets["jwt-bad-signature"] = signJWT(t, other, time.Now().Add(time.Hour))
	secrets["jwt-expired"] = signJWT(t, key, time.Now().Add(-time.Hour))
	return f, a, secrets
}

type aclRoute struct {
	method, target, body string
}

// The routes of the matrix, in the order of the want strings below.
var matrixRoutes = []aclRoute{
	{"POST", "/v1/tasks", `{"type": "report-daily"}`},   // 0 submit
	{"POST", "/v1/tasks", `{"type": "echo"}`},           // 1
	{"POST", "/v1/tasks", `{"type": "report-payroll"}`}, // 2
	{"GET", "/v1/tasks/r1", ""},                         // 3 get
	{"GET", "/v1/tasks/e1?wait=1ms", ""},                // 4
	{"GET", "/v1/tasks/r1/logs", ""},                    // 5 logs
	{"POST", "/v1/tasks/e1/cancel", ""},                 // 6 cancel
	{"POST", "/v1/tasks/r1/cancel", ""},                 // 7
	{"GET", "/v1/cluster", ""},                          // 8
	{"GET", "/v1/types", ""},                            // 9
	{"POST", "/v1/agent/leave", ""},                     // 10 operator
	{"GET", "/v1/operator/join-token", ""},              // 11
	{"GET", "/v1/acl/policies", ""},                     // 12 acl
	{"PUT", "/v1/acl/policy/new", `{"rules": [{"task_type": "x", "capabilities": ["read"]}]}`}, // 13
	{"DELETE", "/v1/acl/policy/ops", ""},                    // 14
	{"GET", "/v1/acl/tokens", ""},                           // 15
	{"POST", "/v1/acl/tokens", `{"policies": ["reports"]}`}, // 16
	{"GET", "/v1/acl/token/self", ""},                       // 17 any identity
	{"GET", "/v1/nope", ""},                                 // 18
	{"GET", "/metrics", ""},                                 // 19 metrics right
}

func TestACLMatrixThroughEveryRoute(t *testing.T) {
	const unauth = "401 401 401 401 401 401 401 401 401 401 401 401 401 401 401 401 401 401 401 401"
	tests := []struct {
		token     string
		anonymous bool
		want      string // one status per matrixRoutes entry
	}{
		{"none", false, unauth},
		{"unknown", false, unauth},
		{"unknown", true, unauth},
		{"expired", false, unauth},
		{"jwt-bad-signature", false, unauth},
		{"jwt-expired", false, unauth},
		{"none", true, "403 403 403 404 200 404 403 404 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"reports", false, "201 403 201 200 404 200 404 202 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"jwt", false, "201 403 201 200 404 200 404 202 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"reports-no-payroll", false, "201 403 403 200 404 200 404 202 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"read-all-no-payroll", false, "403 403 403 200 200 403 403 403 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"echo-only", false, "403 201 403 404 404 404 404 404 200 200 403 403 403 403 403 403 403 200 404 403"},
		{"ops", false, "403 403 403 404 404 404 404 404 200 200 202 200 403 403 403 403 403 200 404 200"},
		{"acl-admin", false, "403 403 403 404 404 404 404 404 200 200 403 403 200 200 204 200 201 200 404 403"},
		{"management", false, "201 201 201 200 200 200 202 202 200 200 202 200 200 200 204 200 201 200 404 200"},
	}
	for _, tt := range tests {
		want := strings.Fields(tt.want)
		if len(want) != len(matrixRoutes) {
			t.Fatalf("%s: %d statuses for %d routes", tt.token, len(want), len(matrixRoutes))
		}
		for i, rt := range matrixRoutes {
			name := fmt.Sprintf("%s anonymous=%v %s %s", tt.token, tt.anonymous, rt.method, rt.target)
			t.Run(name, func(t *testing.T) {
				b, a, secrets := newACLFixture(t, tt.anonymous)
				h := New(b, Options{ACL: a})
				var hdr []string
				if s := secrets[tt.token]; s != "" {
					hdr = []string{"Authorization", "Bearer " + s}
				}
				before, aclBefore := b.snapshot(), a.store.State()
				rec := call(h, rt.method, rt.target, "application/json", rt.body, hdr...)
				if got := fmt.Sprint(rec.Code); got != want[i] {
					t.Fatalf("status %s, want %s: %s", got, want[i], rec.Body)
				}
				if rec.Code != 401 && rec.Code != 403 && rec.Code != 404 {
					return
				}
				code := api.CodeUnauthorized
				switch rec.Code {
				case 403:
					code = api.CodeForbidden
				case 404:
					code = api.CodeNotFound
				}
				wantError(t, rec, rec.Code, code)
				// A refused request changes nothing and reaches no backend write.
				if after := b.snapshot(); !reflect.DeepEqual(after, before) {
					t.Errorf("refused request changed the backend: %+v -> %+v", before, after)
				}
				if !reflect.DeepEqual(a.store.State(), aclBefore) || len(a.calls) != 0 {
					t.Errorf("refused request reached the ACL state: calls %v", a.calls)
				}
				if s := secrets[tt.token]; s != "" && strings.Contains(rec.Body.String(), s) {
					t.Error("the error shows the credential")
				}
			})
		}
	}
}

// snapshot is everything a request could change in the fake backend.
func (f *fakeBackend) snapshot() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return struct {
		Tasks  map[string]api.Task
		Submit api.SubmitRequest
		Leaves int
	}{maps(f.tasks), f.gotSubmit, f.leaves}
}

func maps(m map[string]api.Task) map[string]api.Task {
	out := make(map[string]api.Task, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestForbiddenNamesTheMissingCapability(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	h := New(b, Options{ACL: a})
	tests := []struct {
		token, method, target, body, want string
	}{
		{"reports", "POST", "/v1/tasks", `{"type": "echo"}`, `missing capability "submit" on task type "echo"`},
		{"reports-no-payroll", "POST", "/v1/tasks", `{"type": "report-payroll"}`, `"submit" on task type "report-payroll" is denied by policy "no-payroll"`},
		{"read-all-no-payroll", "GET", "/v1/tasks/e1/logs", "", `missing capability "logs" on task type "echo"`},
		{"read-all-no-payroll", "POST", "/v1/tasks/e1/cancel", "", `missing capability "cancel" on task type "echo"`},
		{"reports", "POST", "/v1/agent/leave", "", `missing cluster right "operator"`},
		{"ops", "GET", "/v1/acl/tokens", "", `missing cluster right "acl"`},
	}
	for _, tt := range tests {
		rec := call(h, tt.method, tt.target, "application/json", tt.body, "Authorization", "Bearer "+secrets[tt.token])
		wantError(t, rec, 403, api.CodeForbidden)
		var e api.Error
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		if !strings.Contains(e.Message, tt.want) {
			t.Errorf("%s %s: %s, want it to say %s", tt.method, tt.target, rec.Body, tt.want)
		}
	}
	rec := call(h, "GET", "/v1/cluster", "", "", "Authorization", "Bearer "+secrets["expired"])
	wantError(t, rec, 401, api.CodeUnauthorized)
	if !strings.Contains(rec.Body.String(), "expired") {
		t.Errorf("expired token: %s", rec.Body)
	}
}

func TestListShowsOnlyReadableTypes(t *testing.T) {
	tests := []struct {
		token string
		leak  bool
		want  []string
	}{
		{"reports", false, []string{"r1", "p1"}},
		{"reports-no-payroll", false, []string{"r1"}},
		{"read-all-no-payroll", false, []string{"r1", "e1", "c1"}},
		{"read-all-no-payroll", true, []string{"r1", "e1", "c1"}}, // a backend that ignores visible
		{"echo-only", true, nil},
		{"jwt", false, []string{"r1", "p1"}},
		{"management", false, []string{"r1", "p1", "e1", "c1"}},
	}
	for _, tt := range tests {
		b, a, secrets := newACLFixture(t, false)
		b.leakList = tt.leak
		rec := call(New(b, Options{ACL: a}), "GET", "/v1/tasks", "", "", "Authorization", "Bearer "+secrets[tt.token])
		var got []api.Task
		decodeStrict(t, rec, &got)
		var ids []string
		for _, tk := range got {
			ids = append(ids, tk.ID)
		}
		slices.Sort(ids)
		want := slices.Clone(tt.want)
		slices.Sort(want)
		if rec.Code != 200 || !slices.Equal(ids, want) {
			t.Errorf("%s (leaky backend %v): %d %v, want %v", tt.token, tt.leak, rec.Code, ids, want)
		}
	}
}

func TestSubmitCarriesTheCallerToTheBackend(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	h := New(b, Options{ACL: a})
	for _, hdr := range []string{"Authorization", "X-Taskworker-Token"} {
		value := secrets["reports"]
		if hdr == "Authorization" {
			value = "Bearer " + value
		}
		rec := call(h, "POST", "/v1/tasks", "application/json", `{"type": "report-daily"}`, hdr, value)
		var tk api.Task
		decodeStrict(t, rec, &tk)
		tok, _ := a.store.TokenBySecretHash(acl.HashSecret(secrets["reports"]))
		if rec.Code != 201 || tk.SubmittedBy != tok.AccessorID || b.gotCaller.Credential.Reveal() != secrets["reports"] {
			t.Errorf("%s: %d submitted_by %q, want %q", hdr, rec.Code, tk.SubmittedBy, tok.AccessorID)
		}
		if s := fmt.Sprintf("%v %+v", b.gotCaller, b.gotCaller); strings.Contains(s, secrets["reports"]) {
			t.Errorf("a caller prints its credential: %s", s)
		}
	}
	rec := call(h, "POST", "/v1/tasks", "application/json", `{"type": "report-daily"}`, "Authorization", "Bearer "+secrets["jwt"])
	var tk api.Task
	decodeStrict(t, rec, &tk)
	if tk.SubmittedBy != "alice@example.test" {
		t.Errorf("JWT submit recorded %q", tk.SubmittedBy)
	}
}

func TestBootstrapIsOpenOnlyUntilBootstrapped(t *testing.T) {
	b := newFake()
	a := newFakeACL(nil)
	h := New(b, Options{ACL: a})
	wantError(t, call(h, "GET", "/v1/cluster", "", ""), 401, api.CodeUnauthorized)
	rec := call(h, "POST", "/v1/acl/bootstrap", "", "")
	var tok api.ACLToken
	decodeStrict(t, rec, &tok)
	if rec.Code != 200 || !strings.HasPrefix(tok.SecretID, "tws_") || !tok.Management || tok.AccessorID == "" {
		t.Fatalf("bootstrap: %d %+v", rec.Code, tok)
	}
	auth := []string{"Authorization", "Bearer " + tok.SecretID}
	// Without a token, a second bootstrap is told the fact (409), and nothing reaches the backend.
	before := len(a.calls)
	rec = call(h, "POST", "/v1/acl/bootstrap", "", "")
	if body := rec.Body.String(); !strings.Contains(body, `"ACLs were bootstrapped already;`) {
		t.Errorf("second bootstrap without a token: %d %s", rec.Code, body)
	}
	wantError(t, rec, 409, api.CodeACLBootstrapped)
	if len(a.calls) != before {
		t.Errorf("a second bootstrap without a token reached the backend: %v", a.calls[before:])
	}
	wantError(t, call(h, "POST", "/v1/acl/bootstrap", "", "", "Authorization", "Bearer tws_wrong"), 401, api.CodeUnauthorized)
	wantError(t, call(h, "POST", "/v1/acl/bootstrap", "", "", auth...), 409, api.CodeACLBootstrapped)

	// The management token manages policies and tokens; a created token's secret is shown once.
	rec = call(h, "PUT", "/v1/acl/policy/team", "application/json", `{"rules": [{"task_type": "echo", "capabilities": ["submit", "read"]}]}`, auth...)
	var p api.ACLPolicy
	decodeStrict(t, rec, &p)
	if rec.Code != 200 || p.Name != "team" {
		t.Fatalf("policy apply: %d %+v", rec.Code, p)
	}
	wantError(t, call(h, "PUT", "/v1/acl/policy/team", "application/json", `{"name": "other"}`, auth...), 400, api.CodeInvalidPolicy)
	wantError(t, call(h, "PUT", "/v1/acl/policy/team", "application/json", `{"rules": [{"task_type": "echo", "capabilities": ["fly"]}]}`, auth...), 400, api.CodeInvalidPolicy)
	wantError(t, call(h, "PUT", "/v1/acl/policy/team", "application/json", `{"rulez": []}`, auth...), 400, api.CodeInvalidRequest)
	rec = call(h, "POST", "/v1/acl/tokens", "application/json", `{"policies": ["team"], "description": "team"}`, auth...)
	var team api.ACLToken
	decodeStrict(t, rec, &team)
	if rec.Code != 201 || team.SecretID == "" {
		t.Fatalf("token create: %d %+v", rec.Code, team)
	}
	rec = call(h, "GET", "/v1/acl/tokens", "", "", auth...)
	var list []api.ACLToken
	decodeStrict(t, rec, &list)
	if len(list) != 2 || strings.Contains(rec.Body.String(), team.SecretID) || strings.Contains(rec.Body.String(), "secret") {
		t.Errorf("token list: %s", rec.Body)
	}
	rec = call(h, "GET", "/v1/acl/token/self", "", "", "X-Taskworker-Token", team.SecretID)
	var self api.ACLSelf
	decodeStrict(t, rec, &self)
	if self.Principal != team.AccessorID || self.Kind != api.PrincipalToken || self.Description != "team" {
		t.Errorf("token self: %s", rec.Body)
	}
	if rec := call(h, "DELETE", "/v1/acl/token/"+team.AccessorID, "", "", auth...); rec.Code != 204 {
		t.Fatalf("token delete: %d %s", rec.Code, rec.Body)
	}
	wantError(t, call(h, "GET", "/v1/acl/token/self", "", "", "X-Taskworker-Token", team.SecretID), 401, api.CodeUnauthorized)
	wantError(t, call(h, "DELETE", "/v1/acl/token/"+team.AccessorID, "", "", auth...), 404, api.CodeNotFound)
	if rec := call(h, "DELETE", "/v1/acl/policy/team", "", "", auth...); rec.Code != 204 {
		t.Fatalf("policy delete: %d %s", rec.Code, rec.Body)
	}
	rec = call(h, "GET", "/v1/acl/policies", "", "", auth...)
	if strings.TrimSpace(rec.Body.String()) != "[]" {
		t.Errorf("policies after delete: %s", rec.Body)
	}
}

func TestACLRoutesWithoutACLs(t *testing.T) {
	h := New(newFake(), Options{})
	for _, r := range [][2]string{{"POST", "/v1/acl/bootstrap"}, {"GET", "/v1/acl/policies"}, {"GET", "/v1/acl/token/self"}} {
		wantError(t, call(h, r[0], r[1], "", ""), 400, api.CodeACLDisabled)
	}
	// The shared token still guards them, and ACLs replace the shared token when both are set.
	wantError(t, call(New(newFake(), Options{Token: "s3cret"}), "GET", "/v1/acl/policies", "", ""), 401, api.CodeUnauthorized)
	b, a, secrets := newACLFixture(t, false)
	h = New(b, Options{Token: "s3cret", ACL: a})
	wantError(t, call(h, "GET", "/v1/cluster", "", "", "Authorization", "Bearer s3cret"), 401, api.CodeUnauthorized)
	if rec := call(h, "GET", "/v1/cluster", "", "", "Authorization", "Bearer "+secrets["ops"]); rec.Code != 200 {
		t.Errorf("ACL token with a shared token configured: %d", rec.Code)
	}
	if rec := call(h, "GET", "/v1/health", "", ""); rec.Code != 200 {
		t.Errorf("health without a token: %d", rec.Code)
	}
	// Metrics show per-type counts: with ACLs they need the metrics or operator right.
	wantError(t, call(h, "GET", "/metrics", "", ""), 401, api.CodeUnauthorized)
	if rec := call(h, "GET", "/metrics", "", "", "Authorization", "Bearer "+secrets["ops"]); rec.Code != 200 {
		t.Errorf("metrics with an operator token: %d", rec.Code)
	}
}
