package httpapi

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// held starts a request in the background and returns a channel that yields its reply.
func held(h http.Handler, target string, header ...string) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	go func() { out <- call(h, "GET", target, "", "", header...) }()
	return out
}

func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func TestListBlockingQueryAnswersOnceTheIndexPasses(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "t1", Type: "echo", History: []api.HistoryEntry{}})
	h := New(f, Options{})

	rec := call(h, "GET", "/v1/tasks", "", "")
	if rec.Code != 200 || rec.Header().Get(api.HeaderIndex) != "1" {
		t.Fatalf("plain list: %d, index %q", rec.Code, rec.Header().Get(api.HeaderIndex))
	}

	f.waitingIndex = make(chan uint64, 16)
	reply := held(h, "/v1/tasks?index=1&wait=1m")
	if after := receive(t, "the list to wait", f.waitingIndex); after != 1 {
		t.Fatalf("waited for an index after %d, want 1", after)
	}
	select {
	case rec := <-reply:
		t.Fatalf("the list answered before anything changed: %d %s", rec.Code, rec.Body)
	default:
	}
	f.put(api.Task{ID: "t2", Type: "echo", History: []api.HistoryEntry{}})
	rec = receive(t, "the held list", reply)
	var tasks []api.Task
	decodeStrict(t, rec, &tasks)
	if rec.Header().Get(api.HeaderIndex) != "2" || len(tasks) != 2 || tasks[0].ID != "t2" {
		t.Fatalf("held list: index %q, %d tasks", rec.Header().Get(api.HeaderIndex), len(tasks))
	}

	// A wait that elapses answers the current list; bad parameters are the contract's errors.
	f.waitingIndex = nil
	rec = call(h, "GET", "/v1/tasks?index=9&wait=1ms", "", "")
	if rec.Code != 200 || rec.Header().Get(api.HeaderIndex) != "2" {
		t.Fatalf("elapsed wait: %d, index %q", rec.Code, rec.Header().Get(api.HeaderIndex))
	}
	wantError(t, call(h, "GET", "/v1/tasks?index=x&wait=1s", "", ""), 400, api.CodeInvalidIndex)
	wantError(t, call(h, "GET", "/v1/tasks?index=1&wait=soon", "", ""), 400, api.CodeInvalidWait)
}

func TestClusterBlockingQueryWakesOnGossipButNotOnRaftIndexes(t *testing.T) {
	f := newFake()
	h := New(f, Options{})
	rec := call(h, "GET", "/v1/cluster", "", "")
	index := rec.Header().Get(api.HeaderIndex)
	if rec.Code != 200 || index == "" {
		t.Fatalf("cluster: %d, index %q", rec.Code, index)
	}

	// Writes move the commit and applied indexes the view shows, but not what a console draws.
	f.put(api.Task{ID: "t1", Type: "echo", History: []api.HistoryEntry{}})
	if got := call(h, "GET", "/v1/cluster?index="+index+"&wait=1ms", "", "").Header().Get(api.HeaderIndex); got != index {
		t.Fatalf("index moved from %s to %s with raft indexes only", index, got)
	}

	f.waitingIndex = make(chan uint64, 64)
	reply := held(h, "/v1/cluster?index="+index+"&wait=1m")
	receive(t, "the cluster query to wait", f.waitingIndex)
	f.mu.Lock()
	f.nodeState = api.NodeDead // gossip, not the log: nothing wakes WaitIndex
	f.mu.Unlock()
	rec = receive(t, "the held cluster query", reply)
	var c api.Cluster
	decodeStrict(t, rec, &c)
	if c.Nodes[0].State != api.NodeDead || rec.Header().Get(api.HeaderIndex) == index {
		t.Fatalf("held cluster: state %s, index %s (was %s)", c.Nodes[0].State, rec.Header().Get(api.HeaderIndex), index)
	}
	wantError(t, call(h, "GET", "/v1/cluster?index=-1&wait=1s", "", ""), 400, api.CodeInvalidIndex)
}

func TestThroughputServesTheBackendSeries(t *testing.T) {
	f := newFake()
	wait := 12.5
	f.throughput = api.Throughput{Start: time.Unix(1000, 0).UTC(), Interval: "1s", Started: []int{1, 2},
		Succeeded: []int{0, 3}, Failed: []int{1, 0}, QueueWaitMS: []*float64{&wait, nil}}
	rec := call(New(f, Options{}), "GET", api.PathThroughput, "", "")
	var got api.Throughput
	decodeStrict(t, rec, &got)
	if !reflect.DeepEqual(got, f.throughput) {
		t.Fatalf("throughput %+v, want %+v", got, f.throughput)
	}
}

func TestTokenSelfTellsWhatTheTokenMayDo(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	b.types = []api.TypeInfo{{Type: "echo", Version: "1"}, {Type: "report-daily", Version: "1"},
		{Type: "report-daily", Version: "2"}, {Type: "report-payroll", Version: "1"}}
	h := New(b, Options{ACL: a})
	all := []string{"submit", "read", "cancel", "logs"}
	tests := []struct {
		token  string
		caps   map[string][]string
		rights []string
	}{
		{"reports-no-payroll", map[string][]string{"echo": {}, "report-daily": all, "report-payroll": {}}, []string{}},
		{"read-all-no-payroll", map[string][]string{"echo": {"read"}, "report-daily": {"read"}, "report-payroll": {}}, []string{}},
		{"ops", map[string][]string{"echo": {}, "report-daily": {}, "report-payroll": {}}, []string{"operator"}},
		{"management", map[string][]string{"echo": all, "report-daily": all, "report-payroll": all}, []string{"operator", "acl"}},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			rec := call(h, "GET", api.PathACLTokenSelf, "", "", "Authorization", "Bearer "+secrets[tc.token])
			var self api.ACLSelf
			decodeStrict(t, rec, &self)
			if !reflect.DeepEqual(self.Capabilities, tc.caps) || !reflect.DeepEqual(self.ClusterRights, tc.rights) {
				t.Fatalf("capabilities %v rights %v, want %v %v", self.Capabilities, self.ClusterRights, tc.caps, tc.rights)
			}
		})
	}
}

func TestConsoleIsServedWithoutACredential(t *testing.T) {
	console := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("console " + r.URL.Path)) })
	b, a, _ := newACLFixture(t, false)
	for name, h := range map[string]http.Handler{
		"token": New(newFake(), Options{Token: "s3cret", UI: console}),
		"acl":   New(b, Options{ACL: a, UI: console}),
		"open":  New(newFake(), Options{UI: console}),
	} {
		t.Run(name, func(t *testing.T) {
			if rec := call(h, "GET", "/ui/app.js", "", ""); rec.Code != 200 || rec.Body.String() != "console /ui/app.js" {
				t.Errorf("/ui/app.js: %d %s", rec.Code, rec.Body)
			}
			for path, to := range map[string]string{"/": "/ui/", "/ui": "/ui/"} {
				if rec := call(h, "GET", path, "", ""); rec.Code/100 != 3 || rec.Header().Get("Location") != to {
					t.Errorf("%s: %d to %q, want a redirect to %s", path, rec.Code, rec.Header().Get("Location"), to)
				}
			}
			if name != "open" {
				wantError(t, call(h, "GET", "/v1/tasks", "", ""), 401, api.CodeUnauthorized)
			}
		})
	}
	// Without a console, /ui/ is an unknown endpoint like any other.
	wantError(t, call(New(newFake(), Options{}), "GET", "/ui/", "", ""), 404, api.CodeNotFound)
}
