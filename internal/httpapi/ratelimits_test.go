package httpapi

import (
	"context"
	"fmt"
	"testing"

	"github.com/taskworker/taskworker/api"
)

func (f *fakeBackend) RateLimits(context.Context) (api.RateLimitList, error) {
	return api.RateLimitList{RateLimits: []api.RateLimit{}}, f.err
}

func (f *fakeBackend) RateLimit(_ context.Context, name, key string) (api.RateLimit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rateCalls = append(f.rateCalls, fmt.Sprintf("get %s key=%s", name, key))
	return api.RateLimit{Name: name}, f.err
}

func (f *fakeBackend) SetRateLimit(_ context.Context, _ Caller, name string, u api.RateLimitUpdate) (api.RateLimit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	burst := int64(0)
	if u.Burst != nil {
		burst = *u.Burst
	}
	f.rateCalls = append(f.rateCalls, fmt.Sprintf("set %s rate=%s burst=%d", name, u.Rate, burst))
	return api.RateLimit{Name: name, Rate: u.Rate, Burst: burst}, f.err
}

func (f *fakeBackend) DeleteRateLimit(_ context.Context, _ Caller, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rateCalls = append(f.rateCalls, "delete "+name)
	return f.err
}

// Bad names, rates and bursts are refused before the backend hears of them.
func TestRateLimitRoutes(t *testing.T) {
	long := fmt.Sprintf("%065d", 0)
	tests := []struct {
		method, target, body string
		status               int
		code                 api.Code
		call                 string // the backend call it makes, "" for none
	}{
		{"GET", "/v1/rate-limits", "", 200, "", ""},
		{"GET", "/v1/rate-limits/api?key=t1", "", 200, "", "get api key=t1"},
		{"POST", "/v1/rate-limits/api", `{"rate": "100/s", "burst": 200}`, 200, "", "set api rate=100/s burst=200"},
		{"POST", "/v1/rate-limits/api", `{"rate": "5/m"}`, 200, "", "set api rate=5/m burst=0"},
		{"POST", "/v1/rate-limits/api", `{"rate": "abc", "burst": 1}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/d", "burst": 1}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "0/s", "burst": 1}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "-5/s", "burst": 1}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "1000001/s", "burst": 1}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "burst": 0}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "burst": 100001}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "burst": 99999999999999999999}`, 400, api.CodeInvalidRequest, ""},
		{"POST", "/v1/rate-limits/" + long, `{"rate": "10/s"}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/-x", `{"rate": "10/s"}`, 400, api.CodeInvalidRateLimit, ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "10/s", "colour": 1}`, 400, api.CodeInvalidRequest, ""},
		{"DELETE", "/v1/rate-limits/api", "", 204, "", "delete api"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target+" "+tc.body, func(t *testing.T) {
			b := newFake()
			rec := call(New(b, Options{}), tc.method, tc.target, "application/json", tc.body)
			if tc.code != "" {
				wantError(t, rec, tc.status, tc.code)
			} else if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			var want []string
			if tc.call != "" {
				want = []string{tc.call}
			}
			if fmt.Sprint(b.rateCalls) != fmt.Sprint(want) {
				t.Errorf("backend calls %v, want %v", b.rateCalls, want)
			}
		})
	}
}

// Setting or removing a rate limit needs the operator right; reading them any credential.
func TestRateLimitRoutesNeedOperatorToChange(t *testing.T) {
	routes := []struct{ method, target, body string }{
		{"GET", "/v1/rate-limits", ""},
		{"GET", "/v1/rate-limits/api", ""},
		{"POST", "/v1/rate-limits/api", `{"rate": "1/s"}`},
		{"DELETE", "/v1/rate-limits/api", ""},
	}
	tests := []struct {
		token string
		want  []int
	}{
		{"none", []int{401, 401, 401, 401}},
		{"reports", []int{200, 200, 403, 403}},
		{"ops", []int{200, 200, 200, 204}},
		{"management", []int{200, 200, 200, 204}},
	}
	for _, tt := range tests {
		for i, rt := range routes {
			t.Run(tt.token+" "+rt.method+" "+rt.target, func(t *testing.T) {
				b, a, secrets := newACLFixture(t, false)
				var hdr []string
				if s := secrets[tt.token]; s != "" {
					hdr = []string{"Authorization", "Bearer " + s}
				}
				rec := call(New(b, Options{ACL: a}), rt.method, rt.target, "application/json", rt.body, hdr...)
				if rec.Code != tt.want[i] {
					t.Fatalf("status %d, want %d: %s", rec.Code, tt.want[i], rec.Body)
				}
				if rec.Code >= 400 && len(b.rateCalls) != 0 {
					t.Errorf("a refused request reached the backend: %v", b.rateCalls)
				}
			})
		}
	}
}
