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
)

// scheduleNode fakes the /v1/schedules routes with one table.
func scheduleNode(t *testing.T) (*sync.Mutex, map[string]api.ScheduleRequest, string) {
	t.Helper()
	var mu sync.Mutex
	got := map[string]api.ScheduleRequest{}
	next := []time.Time{time.Date(2026, 1, 2, 9, 0, 0, 0, time.UTC)}
	record := func(name string, r api.ScheduleRequest) api.Schedule {
		return api.Schedule{Name: name, Cron: r.Cron, TimeZone: r.TimeZone, Type: r.Type, Overlap: r.Overlap, Paused: r.Paused, NextRuns: next}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/schedules/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req api.ScheduleRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, 400, api.Errorf(api.CodeInvalidRequest, "bad body"))
			return
		}
		if req.Cron == "bad" {
			reply(w, 400, api.Errorf(api.CodeInvalidSchedule, "invalid cron spec"))
			return
		}
		_, existed := got[r.PathValue("name")]
		got[r.PathValue("name")] = req
		reply(w, map[bool]int{true: 200, false: 201}[existed], record(r.PathValue("name"), req))
	})
	mux.HandleFunc("GET /v1/schedules", func(w http.ResponseWriter, r *http.Request) {
		out := []api.Schedule{}
		for name, req := range got {
			out = append(out, record(name, req))
		}
		reply(w, 200, out)
	})
	mux.HandleFunc("POST /v1/schedules/{name}/{op}", func(w http.ResponseWriter, r *http.Request) {
		req, ok := got[r.PathValue("name")]
		if !ok {
			reply(w, 404, api.Errorf(api.CodeNotFound, "schedule not found"))
			return
		}
		switch r.PathValue("op") {
		case "trigger":
			reply(w, 201, api.Task{ID: "T1", Type: req.Type})
		default:
			req.Paused = r.PathValue("op") == "pause"
			got[r.PathValue("name")] = req
			reply(w, 200, record(r.PathValue("name"), req))
		}
	})
	mux.HandleFunc("DELETE /v1/schedules/{name}", func(w http.ResponseWriter, r *http.Request) {
		delete(got, r.PathValue("name"))
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &mu, got, srv.URL
}

func TestScheduleCommands(t *testing.T) {
	mu, got, addr := scheduleNode(t)
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdoutIn string
		stderrIn string
	}{
		{name: "create", args: []string{"schedule", "create", "--addr", addr, "--name", "nightly", "--cron", "0 9 * * *", "--tz", "Europe/Paris",
			"--overlap", "buffer_one", "--start", "2026-01-01T00:00:00Z", "--max-attempts", "2", "calc-square", "7"},
			stdoutIn: "Schedule nightly created; next runs: 2026-01-02T09:00:00Z"},
		{name: "replace", args: []string{"schedule", "create", "--addr", addr, "--name", "nightly", "--cron", "0 9 * * *", "calc-square", "8"},
			stdoutIn: "replaced"},
		{name: "invalid spec", args: []string{"schedule", "create", "--addr", addr, "--name", "x", "--cron", "bad", "calc-square"},
			code: 2, stderrIn: "invalid cron spec"},
		{name: "bad start", args: []string{"schedule", "create", "--addr", addr, "--name", "x", "--cron", "@daily", "--start", "tomorrow", "calc-square"},
			code: 2, stderrIn: "RFC 3339"},
		{name: "missing cron", args: []string{"schedule", "create", "--addr", addr, "--name", "x", "calc-square"}, code: 2},
		{name: "list shows next runs", args: []string{"schedule", "list", "--addr", addr}, stdoutIn: "2026-01-02T09:00:00Z"},
		{name: "flags before the subcommand", args: []string{"schedule", "--addr", addr, "list"}, stdoutIn: "nightly"},
		{name: "pause", args: []string{"schedule", "pause", "--addr", addr, "nightly"}, stdoutIn: "Schedule nightly paused"},
		{name: "list shows paused", args: []string{"schedule", "list", "--addr", addr}, stdoutIn: "paused"},
		{name: "resume", args: []string{"schedule", "resume", "--addr", addr, "nightly"}, stdoutIn: "resumed"},
		{name: "trigger prints the task", args: []string{"schedule", "trigger", "--addr", addr, "nightly"}, stdoutIn: "T1\n"},
		{name: "trigger unknown", args: []string{"schedule", "trigger", "--addr", addr, "nope"}, code: 1, stderrIn: "not found"},
		{name: "delete", args: []string{"schedule", "delete", "--addr", addr, "nightly"}, stdoutIn: "deleted"},
		{name: "no subcommand", args: []string{"schedule"}, code: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdoutIn) || !strings.Contains(stderr, tc.stderrIn) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q", code, stdout, stderr, tc.code, tc.stdoutIn, tc.stderrIn)
			}
			if tc.name == "create" {
				mu.Lock()
				req := got["nightly"]
				mu.Unlock()
				if req.Cron != "0 9 * * *" || req.TimeZone != "Europe/Paris" || req.Overlap != "buffer_one" || req.Type != "calc-square" ||
					string(req.Input) != "7" || req.MaxAttempts != 2 || req.Start == nil || req.CatchUp != 1 {
					t.Errorf("request sent: %+v", req)
				}
			}
		})
	}
}

// TestScheduleListShowsNoLastFiredBesideFiredZero: the API's last_fired also moves when ticks are
// passed over (creation, resume); after only a manual trigger, the list shows no last fired time
// beside FIRED 0, and the trigger under MANUAL. Once a tick fired, its time shows.
func TestScheduleListShowsNoLastFiredBesideFiredZero(t *testing.T) {
	at := time.Date(2026, 12, 7, 1, 19, 26, 0, time.UTC)
	var fired int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []api.Schedule{{Name: "sq", Type: "calc-square", Cron: "@every 30s", Overlap: "allow_all",
			NextRuns: []time.Time{at.Add(30 * time.Second)}, LastFired: &at, Fired: fired, Manual: 1}})
	}))
	defer srv.Close()
	stdout, stderr, code := run(t, "", "schedule", "list", "--addr", srv.URL)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "LAST FIRED  FIRED  SKIPPED  MANUAL") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if f := strings.Fields(lines[1]); strings.Contains(lines[1], "01:19:26Z") || strings.Join(f[len(f)-4:], " ") != "- 0 0 1" {
		t.Errorf("after a manual trigger only: %q, want LAST FIRED -, FIRED 0, SKIPPED 0, MANUAL 1", lines[1])
	}
	fired = 1
	stdout, _, _ = run(t, "", "schedule", "list", "--addr", srv.URL)
	if !strings.Contains(stdout, "2026-12-07T01:19:26Z  1      0        1") {
		t.Errorf("after a fired tick: %q", stdout)
	}
}
