package httpapi

import (
	"net/http"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// readForwarder records the requests it is given: a follower's forwarder, whose leader is
// elsewhere.
type readForwarder struct{ reads, writes []string }

func (f *readForwarder) ServeWrite(w http.ResponseWriter, r *http.Request, _ http.Handler) {
	f.writes = append(f.writes, r.URL.RequestURI())
	WriteJSON(w, http.StatusOK, api.Task{ID: "from-leader"})
}

func (f *readForwarder) ServeRead(w http.ResponseWriter, r *http.Request, _ http.Handler) {
	f.reads = append(f.reads, r.URL.RequestURI())
	WriteJSON(w, http.StatusOK, api.Task{ID: "from-leader"})
}

func (f *readForwarder) Forwarded(*http.Request) bool { return false }

// ?consistent on a task read or list goes to the leader; the leader's handler runs a barrier
// before it reads, and answers no_leader when it no longer leads. Other reads, and reads without
// the parameter (or with it false), stay on this node; a bad value is refused.
func TestConsistentReads(t *testing.T) {
	f := newFake()
	f.put(api.Task{ID: "a", State: api.StateRunning, ModifyIndex: 5})
	fwd := &readForwarder{}
	follower := New(f, Options{Forward: fwd})
	for _, target := range []string{"/v1/tasks/a?consistent", "/v1/tasks/a?consistent=true", "/v1/tasks?consistent=1&state=running"} {
		rec := call(follower, "GET", target, "", "")
		var got api.Task
		decodeStrict(t, rec, &got)
		if got.ID != "from-leader" {
			t.Fatalf("%s: answered here, not by the leader: %s", target, rec.Body)
		}
	}
	for _, target := range []string{"/v1/tasks/a", "/v1/tasks/a?consistent=false", "/v1/tasks?consistent=0", "/v1/cluster?consistent"} {
		if rec := call(follower, "GET", target, "", ""); rec.Code != 200 {
			t.Fatalf("%s: %d %s", target, rec.Code, rec.Body)
		}
	}
	if len(fwd.reads) != 3 || len(fwd.writes) != 0 || f.barriers != 0 {
		t.Fatalf("forwarded reads %q, writes %q, %d barriers on the follower", fwd.reads, fwd.writes, f.barriers)
	}
	wantError(t, call(follower, "GET", "/v1/tasks/a?consistent=maybe", "", ""), 400, api.CodeInvalidRequest)
	wantError(t, call(follower, "GET", "/v1/tasks/a?consistent&wait=5s&index=5", "", ""), 400, api.CodeInvalidRequest)
	wantError(t, call(follower, "GET", "/v1/tasks?consistent=true&wait=5s", "", ""), 400, api.CodeInvalidRequest)
	if len(fwd.reads) != 3 {
		t.Fatalf("a refused consistent read was forwarded: %q", fwd.reads)
	}

	// The leader (no forwarder, or a request forwarded to it): a barrier, then its own state.
	leader := New(f, Options{})
	rec := call(leader, "GET", "/v1/tasks/a?consistent", "", "")
	var got api.Task
	decodeStrict(t, rec, &got)
	if got.ID != "a" || f.barriers != 1 {
		t.Fatalf("leader: %s after %d barriers", rec.Body, f.barriers)
	}
	if rec := call(leader, "GET", "/v1/tasks?consistent", "", ""); rec.Code != 200 || f.barriers != 2 {
		t.Fatalf("leader list: %d %s after %d barriers", rec.Code, rec.Body, f.barriers)
	}
	if rec := call(leader, "GET", "/v1/tasks/a", "", ""); rec.Code != 200 || f.barriers != 2 {
		t.Fatalf("a plain read ran a barrier: %d, %d barriers", rec.Code, f.barriers)
	}
	f.notLeader = true
	wantError(t, call(leader, "GET", "/v1/tasks/a?consistent", "", ""), 503, api.CodeNoLeader)
	wantError(t, call(leader, "GET", "/v1/tasks?consistent", "", ""), 503, api.CodeNoLeader)
}
