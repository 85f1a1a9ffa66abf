package httpapi

import (
	"net/http"
	"testing"

	"github.com/taskworker/taskworker/api"
)

var operatorRoutes = [][3]string{
	{"GET", api.PathJoinToken, ""},
	{"POST", api.PathJoinTokenRotate, ""},
	{"GET", api.PathKeyring, ""},
	{"POST", api.PathKeyring, `{"op":"install","key":"k2"}`},
	{"GET", api.PathDigest, ""},
	{"GET", "/debug/pprof/", ""},
	{"GET", "/v1/operator/added-later", ""},
}

func managementOptions(token string) Options {
	return Options{Token: token, Management: func(c string) bool { return c == "twm_mgmt" },
		Pprof: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })}
}

func TestOperatorRoutesNeedTheManagementCredential(t *testing.T) {
	for _, token := range []string{"", "shared"} { // without ACLs, with and without the shared token
		f := newFake()
		h := New(f, managementOptions(token))
		for _, r := range operatorRoutes {
			wantError(t, call(h, r[0], r[1], "application/json", r[2]), 401, api.CodeUnauthorized)
			wantError(t, call(h, r[0], r[1], "application/json", r[2], "Authorization", "Bearer wrong"), 403, api.CodeForbidden)
			if token != "" { // the shared user token is not the management credential
				wantError(t, call(h, r[0], r[1], "application/json", r[2], "Authorization", "Bearer "+token), 403, api.CodeForbidden)
			}
			want := 200
			if r[1] == "/v1/operator/added-later" {
				want = 404
			}
			if rec := call(h, r[0], r[1], "application/json", r[2], "Authorization", "Bearer twm_mgmt"); rec.Code != want {
				t.Errorf("token %q: %s %s with the management credential: %d %s, want %d", token, r[0], r[1], rec.Code, rec.Body, want)
			}
		}
		if rec := call(h, "POST", api.PathKeyring, "application/json", `{"op":"install","key":"k2"}`, "X-Taskworker-Token", "twm_mgmt"); rec.Code != 200 {
			t.Fatalf("keyring change with X-Taskworker-Token: %d", rec.Code)
		}
		if got := f.gotCaller.Credential.Reveal(); got != "twm_mgmt" {
			t.Errorf("the keyring change reached the backend with credential %q, want the caller's, for the leader to check", got)
		}
		// The other routes are as the shared token makes them.
		rec := call(h, "GET", "/v1/cluster", "", "")
		if token == "" && rec.Code != 200 || token != "" && rec.Code != 401 {
			t.Errorf("token %q: GET /v1/cluster without a credential: %d", token, rec.Code)
		}
	}
}

func TestOperatorRoutesAreOpenWithoutManagement(t *testing.T) {
	h := New(newFake(), Options{}) // an insecure or dev node
	for _, r := range operatorRoutes[:5] {
		if rec := call(h, r[0], r[1], "application/json", r[2]); rec.Code != 200 {
			t.Errorf("%s %s on a node without a management credential: %d", r[0], r[1], rec.Code)
		}
	}
}
