package clicmd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// uniqAPI answers submit (a duplicate unique key once "k" was used), retry and purge.
type uniqAPI struct {
	mu      sync.Mutex
	submits []client.SubmitRequest
	purges  []client.PurgeRequest
}

func newUniqAPI(t *testing.T) *uniqAPI {
	u := &uniqAPI{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		var req client.SubmitRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		u.mu.Lock()
		defer u.mu.Unlock()
		u.submits = append(u.submits, req)
		if req.UniqueKey == "taken" {
			w.Header().Set(api.HeaderExistingTask, "T0")
			reply(w, 409, map[string]string{"error": "unique key taken by task T0", "code": "duplicate_unique_key", "existing_task": "T0"})
			return
		}
		reply(w, 201, client.Task{ID: "T1", Type: req.Type, State: client.StatePending})
	})
	mux.HandleFunc("POST /v1/tasks/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("id") {
		case "failed1":
			reply(w, 202, client.Task{ID: "failed1", State: client.StatePending, Attempt: 1})
		case "running1":
			reply(w, 409, map[string]string{"error": "task running1 is neither failed nor cancelled", "code": "not_retryable"})
		default:
			reply(w, 404, map[string]string{"error": "no task", "code": "not_found"})
		}
	})
	mux.HandleFunc("POST /v1/tasks/purge", func(w http.ResponseWriter, r *http.Request) {
		var req client.PurgeRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		u.mu.Lock()
		u.purges = append(u.purges, req)
		u.mu.Unlock()
		reply(w, 200, api.PurgeReply{Purged: 4})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Setenv("TASKWORKER_ADDR", srv.URL)
	return u
}

func TestSubmitUniqueFlags(t *testing.T) {
	u := newUniqAPI(t)
	if stdout, stderr, code := run(t, "", "submit", "--unique-key", "k", "--unique-for", "90m", "echo", `"x"`); code != 0 || stdout != "T1\n" {
		t.Fatalf("submit: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if got := u.submits[0]; got.UniqueKey != "k" || got.UniqueFor != "1h30m0s" {
		t.Errorf("sent %+v", got)
	}
	_, stderr, code := run(t, "", "submit", "--unique-key", "taken", "--unique-for", "1h", "echo")
	if code != ExitRequest || !strings.Contains(stderr, "T0") || !strings.Contains(stderr, "duplicate_unique_key") {
		t.Errorf("duplicate: exit %d, stderr %q", code, stderr)
	}
}

func TestTaskRetry(t *testing.T) {
	newUniqAPI(t)
	tests := []struct {
		id       string
		wantCode int
		wantOut  string
	}{
		{"failed1", 0, "Task failed1 is pending again (attempt 2 next)\n"},
		{"running1", ExitRequest, ""},
		{"nope", 1, ""},
	}
	for _, tc := range tests {
		stdout, stderr, code := run(t, "", "task", "retry", tc.id)
		if code != tc.wantCode || stdout != tc.wantOut {
			t.Errorf("task retry %s: exit %d, stdout %q, stderr %q", tc.id, code, stdout, stderr)
		}
	}
}

func TestTaskPurge(t *testing.T) {
	u := newUniqAPI(t)
	stdout, stderr, code := run(t, "", "task", "purge", "--state", "failed", "--type", "echo", "--finished-before", "2026-01-02T03:04:05Z", "--limit", "9")
	if code != 0 || stdout != "Purged 4 tasks\n" {
		t.Fatalf("purge: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	want := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got := u.purges[0]; got.State != "failed" || got.Type != "echo" || got.Limit != 9 || got.FinishedBefore == nil || !got.FinishedBefore.Equal(want) {
		t.Errorf("sent %+v", got)
	}
	if _, _, code := run(t, "", "task", "purge", "--finished-before", "24h"); code != 0 {
		t.Fatalf("purge with a duration: exit %d", code)
	}
	if age := time.Since(*u.purges[1].FinishedBefore); age < 24*time.Hour || age > 25*time.Hour {
		t.Errorf("--finished-before 24h sent %s", u.purges[1].FinishedBefore)
	}
	for _, args := range [][]string{{}, {"--finished-before", "yesterday"}} {
		if _, _, code := run(t, "", append([]string{"task", "purge"}, args...)...); code != ExitRequest {
			t.Errorf("purge %v: exit %d, want %d", args, code, ExitRequest)
		}
	}
	if len(u.purges) != 2 {
		t.Errorf("%d purges reached the server, want 2", len(u.purges))
	}
	if _, _, code := run(t, "", "task", "purge", "--all"); code != 0 || len(u.purges) != 3 || u.purges[2] != (client.PurgeRequest{}) {
		t.Errorf("purge --all: exit %d, sent %+v", code, u.purges)
	}
}

func TestDescribeFinalError(t *testing.T) {
	got := describeError(&client.TaskError{Type: "task_error", Message: "closed", Final: true})
	if got != "closed (task_error, final: not retried)" {
		t.Errorf("describeError = %q", got)
	}
}

func TestPurgedLineCountsInEnglish(t *testing.T) {
	for n, want := range map[int]string{0: "Purged 0 tasks", 1: "Purged 1 task", 2: "Purged 2 tasks"} {
		if got := purgedLine(n); got != want {
			t.Errorf("purgedLine(%d) = %q, want %q", n, got, want)
		}
	}
}
