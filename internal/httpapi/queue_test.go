package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/taskworker/taskworker/api"
)

func (f *fakeBackend) Queues(context.Context) (api.QueueList, error) {
	return api.QueueList{Queues: []api.Queue{{Name: "default", Pending: 2}}}, f.err
}

func (f *fakeBackend) UpdateQueue(_ context.Context, _ Caller, name string, u api.QueueUpdate) (api.Queue, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := api.Queue{Name: name}
	if u.Limit != nil {
		q.Limit = *u.Limit
	}
	if u.Paused != nil {
		q.Paused = *u.Paused
	}
	f.queueCalls = append(f.queueCalls, fmt.Sprintf("queue %s limit=%d paused=%v", name, q.Limit, q.Paused))
	return q, f.err
}

func (f *fakeBackend) TypeLimits(context.Context) (api.TypeLimitList, error) {
	return api.TypeLimitList{Limits: []api.TypeLimit{}}, f.err
}

func (f *fakeBackend) SetTypeLimit(_ context.Context, _ Caller, typ string, u api.TypeLimitUpdate) (api.TypeLimit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queueCalls = append(f.queueCalls, fmt.Sprintf("type %s limit=%d", typ, u.Limit))
	return api.TypeLimit{Type: typ, Limit: u.Limit}, f.err
}

func TestQueueRoutes(t *testing.T) {
	tests := []struct {
		method, target, body string
		status               int
		code                 api.Code
		call                 string // the backend change it makes, "" for none
	}{
		{"GET", "/v1/queues", "", 200, "", ""},
		{"POST", "/v1/queues/mail", `{"limit": 3}`, 200, "", "queue mail limit=3 paused=false"},
		{"POST", "/v1/queues/mail", `{"paused": true}`, 200, "", "queue mail limit=0 paused=true"},
		{"POST", "/v1/queues/mail", `{"concurrency_key": "t-{/t}", "concurrency_limit": 2}`, 200, "", "queue mail limit=0 paused=false"},
		{"POST", "/v1/queues/mail", `{}`, 400, api.CodeInvalidRequest, ""},
		{"POST", "/v1/queues/mail", `{"limit": -1}`, 400, api.CodeInvalidQueue, ""},
		{"POST", "/v1/queues/-bad", `{"limit": 1}`, 400, api.CodeInvalidQueue, ""},
		{"POST", "/v1/queues/mail", `{"limit": 1, "colour": 2}`, 400, api.CodeInvalidRequest, ""},
		{"GET", "/v1/type-limits", "", 200, "", ""},
		{"POST", "/v1/type-limits/echo", `{"limit": 2}`, 200, "", "type echo limit=2"},
		{"POST", "/v1/type-limits/echo", `{"limit": -2}`, 400, api.CodeInvalidQueue, ""},
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
			if fmt.Sprint(b.queueCalls) != fmt.Sprint(want) {
				t.Errorf("backend calls %v, want %v", b.queueCalls, want)
			}
		})
	}
	rec := call(New(newFake(), Options{}), "GET", "/v1/queues", "", "")
	var l api.QueueList
	if err := json.Unmarshal(rec.Body.Bytes(), &l); err != nil || len(l.Queues) != 1 || l.Queues[0].Name != "default" {
		t.Errorf("GET /v1/queues = %s (%v)", rec.Body, err)
	}
}

// Changing a queue or a type limit needs the operator right; reading them any credential.
func TestQueueRoutesNeedOperatorToChange(t *testing.T) {
	routes := []struct{ method, target, body string }{
		{"GET", "/v1/queues", ""},
		{"POST", "/v1/queues/mail", `{"paused": true}`},
		{"GET", "/v1/type-limits", ""},
		{"POST", "/v1/type-limits/echo", `{"limit": 1}`},
		// A key template decides which tasks wait for which: the operator's, as limits are.
		{"POST", "/v1/queues/mail", `{"concurrency_key": "t-{/t}", "concurrency_limit": 2}`},
	}
	tests := []struct {
		token string
		want  []int
	}{
		{"none", []int{401, 401, 401, 401, 401}},
		{"reports", []int{200, 403, 200, 403, 403}},
		{"ops", []int{200, 200, 200, 200, 200}},
		{"management", []int{200, 200, 200, 200, 200}},
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
				if rec.Code != 200 && len(b.queueCalls) != 0 {
					t.Errorf("a refused request reached the backend: %v", b.queueCalls)
				}
			})
		}
	}
}
