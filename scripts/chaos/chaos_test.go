package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/localcluster"
)

func hist(events ...string) []api.HistoryEntry {
	// "started:2@n1" is attempt 2 started on n1.
	var out []api.HistoryEntry
	for _, e := range events {
		var h api.HistoryEntry
		ev, rest, _ := strings.Cut(e, ":")
		h.Event = ev
		att, node, _ := strings.Cut(rest, "@")
		h.Attempt = int(att[0] - '0')
		h.Node = node
		out = append(out, h)
	}
	return out
}

// The checker must fail on each broken promise, and pass a task that kept them all.
func TestCheckTasks(t *testing.T) {
	in := json.RawMessage(`{"ms":120}`)
	good := client.Task{ID: "A", Type: "sleep", Input: in, State: client.StateSucceeded, Node: "n2", Attempt: 2,
		IdempotencyKey: "k-1", Result: json.RawMessage(`{"slept_ms":120}`),
		History: hist("assigned:1@n1", "started:1@n1", "interrupted:1@n1", "assigned:2@n2", "started:2@n2", "succeeded:2@n2")}
	acked := []ack{{Key: "k-1", ID: "A", Type: "sleep", Input: in}}
	cases := []struct {
		name   string
		mutate func(t *client.Task) []client.Task // the final list
		want   string                             // a substring of a violation; "" for none
	}{
		{"kept every promise", func(t *client.Task) []client.Task { return []client.Task{*t} }, ""},
		{"lost", func(t *client.Task) []client.Task { return nil }, "is gone"},
		{"stuck", func(t *client.Task) []client.Task { t.State = client.StateRunning; return []client.Task{*t} }, "still running"},
		{"result of another input", func(t *client.Task) []client.Task {
			t.Result = json.RawMessage(`{"slept_ms":300}`)
			return []client.Task{*t}
		}, "want {\"slept_ms\":120}"},
		{"re-run with no interruption", func(t *client.Task) []client.Task {
			t.History = hist("assigned:1@n1", "started:1@n1", "assigned:2@n2", "started:2@n2", "succeeded:2@n2")
			return []client.Task{*t}
		}, "no interruption or failure"},
		{"stale attempt's success last", func(t *client.Task) []client.Task {
			t.History = hist("assigned:1@n1", "started:1@n1", "interrupted:1@n1", "assigned:2@n2", "started:2@n2", "succeeded:1@n1")
			return []client.Task{*t}
		}, "history ends with succeeded of attempt 1 on n1"},
		{"two successes", func(t *client.Task) []client.Task {
			t.History = append(hist("started:1@n1", "succeeded:1@n1", "interrupted:1@n1"), hist("started:2@n2", "succeeded:2@n2")...)
			return []client.Task{*t}
		}, "followed by"},
		{"second task for the key", func(t *client.Task) []client.Task {
			u := *t
			u.ID = "B"
			return []client.Task{*t, u}
		}, "2 tasks"},
		{"failed", func(t *client.Task) []client.Task {
			t.State = client.StateFailed
			t.History = hist("started:1@n1", "failed:1@n1")
			return []client.Task{*t}
		}, "failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			task := good
			task.History = append([]api.HistoryEntry(nil), good.History...)
			_, bad := checkTasks(acked, tc.mutate(&task), "k-")
			if tc.want == "" {
				if len(bad) > 0 {
					t.Fatalf("violations %q, want none", bad)
				}
				return
			}
			if !strings.Contains(strings.Join(bad, "\n"), tc.want) {
				t.Fatalf("violations %q, want one with %q", bad, tc.want)
			}
		})
	}
}

func TestCheckResult(t *testing.T) {
	cases := []struct {
		typ, in, out string
		ok           bool
	}{
		{"sleep", `{"ms":250}`, `{"slept_ms":250}`, true},
		{"sleep", `{"ms":250}`, `{"slept_ms":251}`, false},
		{"sleep", `{"ms":250}`, `null`, false},
		{"count", `{"to":4,"step_ms":100}`, `{"counted":4,"resumed_from":2}`, true},
		{"count", `{"to":4,"step_ms":100}`, `{"counted":3,"resumed_from":0}`, false},
		{"count", `{"to":4,"step_ms":100}`, `{"counted":4,"resumed_from":9}`, false},
		{"count", `{"to":4,"step_ms":100}`, `{"counted":4}`, false},
	}
	for _, tc := range cases {
		err := checkResult(tc.typ, json.RawMessage(tc.in), json.RawMessage(tc.out))
		if (err == nil) != tc.ok {
			t.Errorf("%s %s -> %s: %v, want ok %v", tc.typ, tc.in, tc.out, err, tc.ok)
		}
	}
}

func TestCompareReplicas(t *testing.T) {
	a := client.Task{ID: "A", State: client.StateSucceeded}
	b := client.Task{ID: "B", State: client.StateSucceeded}
	if d := compareReplicas(map[string][]client.Task{"n1": {a, b}, "n2": {b, a}}); d != "" {
		t.Fatalf("same tasks in another order: %q", d)
	}
	if d := compareReplicas(map[string][]client.Task{"n1": {a, b}, "n2": {a}}); !strings.Contains(d, "holds 2 tasks") {
		t.Fatalf("a replica short of a task: %q", d)
	}
	c := b
	c.State = client.StateRunning
	if d := compareReplicas(map[string][]client.Task{"n1": {a, b}, "n2": {a, c}}); !strings.Contains(d, "task B differs") {
		t.Fatalf("a replica with another state: %q", d)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	for p, want := range map[int]string{50: "3 ms", 99: "5 ms", 100: "5 ms", 1: "1 ms"} {
		if got := pct(ds, p); got != want {
			t.Errorf("p%d = %s, want %s", p, got, want)
		}
	}
	if pct(nil, 50) != "-" {
		t.Error("no values: want -")
	}
}

var builder = localcluster.Builder{Pkg: localcluster.Module}

// TestChaos is the chaos suite itself: a cluster of real processes under load with every fault
// kind this machine allows (as root: partitions and full disks too) for 2 minutes (20 s with
// -short), and every check. CHAOS_DURATION overrides the time.
func TestChaos(t *testing.T) {
	d := 2 * time.Minute
	if testing.Short() {
		d = 20 * time.Second
	}
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatalf("CHAOS_DURATION %q: %v", s, err)
		}
	}
	bin, err := builder.Path()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(builder.Remove)
	cfg := config{Bin: bin, Voters: 3, Capacity: 4, Duration: d, Interval: 8 * time.Second,
		Clients: 3, Pause: 200 * time.Millisecond, Faults: allKinds, Settle: 4 * time.Minute, TmpfsSize: "128m"}
	var out, logs strings.Builder
	rep, err := run(context.Background(), cfg, &out, &logs)
	t.Log(out.String())
	if err != nil {
		t.Fatalf("the run could not be made: %v", err)
	}
	if len(rep.Violations) > 0 {
		t.Logf("log:\n%s", logs.String())
		t.Fatalf("%d violations (see the table above)", len(rep.Violations))
	}
	if rep.Tasks.Acked == 0 || len(rep.Faults) == 0 {
		t.Fatalf("nothing happened: %d tasks acknowledged, %d faults", rep.Tasks.Acked, len(rep.Faults))
	}
}
