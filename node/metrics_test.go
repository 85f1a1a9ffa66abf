package node

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/taskworker/taskworker/api"
)

// scrape reads a node's /metrics as samples keyed by "name{label="value",...}" (labels sorted);
// a histogram appears as its _count and _sum.
func scrape(t *testing.T, n *Node) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", n.cfg.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("scrape %s: status %d, content type %q", n.cfg.Name, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: parse: %v", n.cfg.Name, err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[strings.Replace(key, name, name+"_count", 1)] = float64(m.Histogram.GetSampleCount())
				out[strings.Replace(key, name, name+"_sum", 1)] = m.Histogram.GetSampleSum()
			}
		}
	}
	return out
}

func TestMetricsMoveWithWork(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{})
	leader, follower := tc.leader(), tc.follower()
	before := map[*Node]map[string]float64{leader: scrape(t, leader), follower: scrape(t, follower)}
	if before[leader]["taskworker_raft_state{state=\"Leader\"}"] != 1 || before[follower]["taskworker_raft_state{state=\"Follower\"}"] != 1 {
		t.Fatalf("raft state series: leader %v, follower %v", before[leader]["taskworker_raft_state{state=\"Leader\"}"],
			before[follower]["taskworker_raft_state{state=\"Follower\"}"])
	}

	// Two echoes and a task that fails twice (one retry, then failed for good), all through the follower.
	for i := 0; i < 2; i++ {
		if task := submit(t, follower, "echo", i, "20s"); task.State != api.StateSucceeded {
			t.Fatalf("echo: state %s", task.State)
		}
	}
	var failed api.Task
	body := map[string]any{"type": "fail", "input": "boom", "max_attempts": 2}
	if code := httpCall(t, follower, "POST", "/v1/tasks?wait=30s", body, &failed); code != http.StatusCreated || failed.State != api.StateFailed {
		t.Fatalf("fail task: status %d, state %s", code, failed.State)
	}

	// Every node counts from its own FSM, so the follower's counters must move too (once it has
	// applied the last entry).
	want := map[string]float64{
		`taskworker_tasks_submitted_total{type="echo"}`:         2,
		`taskworker_tasks_submitted_total{type="fail"}`:         1,
		`taskworker_tasks_started_total{type="echo"}`:           2,
		`taskworker_tasks_started_total{type="fail"}`:           2,
		`taskworker_tasks_succeeded_total{type="echo"}`:         2,
		`taskworker_tasks_retried_total{type="fail"}`:           1,
		`taskworker_tasks_failed_total{type="fail"}`:            1,
		`taskworker_task_queue_wait_seconds_count{type="echo"}`: 2,
		`taskworker_task_queue_wait_seconds_count{type="fail"}`: 2,
		`taskworker_task_run_seconds_count{type="echo"}`:        2,
		`taskworker_task_run_seconds_count{type="fail"}`:        2,
	}
	for _, n := range []*Node{leader, follower} {
		var after map[string]float64
		var missing []string
		deadline := time.Now().Add(20 * time.Second)
		for {
			after, missing = scrape(t, n), nil
			for k, v := range want {
				if after[k]-before[n][k] != v {
					missing = append(missing, fmt.Sprintf("%s moved by %v, want %v", k, after[k]-before[n][k], v))
				}
			}
			if len(missing) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // polling for the follower to apply, with a deadline
		}
		if len(missing) > 0 {
			t.Errorf("%s: %s", n.cfg.Name, strings.Join(missing, "; "))
		}
		for _, k := range []string{"taskworker_raft_commit_index", "taskworker_raft_applied_index", "taskworker_fsm_applied_index"} {
			if after[k] <= before[n][k] {
				t.Errorf("%s: %s did not grow: %v -> %v", n.cfg.Name, k, before[n][k], after[k])
			}
		}
		if after["taskworker_raft_term"] < 1 || after[`taskworker_nodes{state="alive"}`] != 3 || after["taskworker_local_capacity"] != 2 {
			t.Errorf("%s: term %v, alive %v, capacity %v", n.cfg.Name, after["taskworker_raft_term"],
				after[`taskworker_nodes{state="alive"}`], after["taskworker_local_capacity"])
		}
		if _, ok := after["taskworker_raft_last_contact_seconds"]; !ok {
			t.Errorf("%s: no taskworker_raft_last_contact_seconds", n.cfg.Name)
		}
	}

	after := scrape(t, follower)
	if k := `taskworker_http_requests_total{code="201",route="POST /v1/tasks"}`; after[k]-before[follower][k] != 3 {
		t.Errorf("%s moved by %v, want 3", k, after[k]-before[follower][k])
	}
	if k := `taskworker_http_request_duration_seconds_count{route="POST /v1/tasks"}`; after[k]-before[follower][k] != 3 {
		t.Errorf("%s moved by %v, want 3", k, after[k]-before[follower][k])
	}
	// The leader applied every write: its apply latency histogram counts them.
	if k := "taskworker_raft_apply_seconds_count"; scrape(t, leader)[k] <= before[leader][k] {
		t.Errorf("%s did not grow on the leader", k)
	}
}

// A crashed peer is probed without answer: the survivors count probe failures and see it leave
// the alive members.
func TestMetricsCountGossipProbeFailures(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{inmem: true})
	victim, watcher := tc.follower(), tc.leader()
	before := scrape(t, watcher)
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "probe failures counted and the victim no longer alive", 20*time.Second, func() bool {
		m := scrape(t, watcher)
		return m["taskworker_gossip_probe_failures_total"] > before["taskworker_gossip_probe_failures_total"] &&
			m[`taskworker_nodes{state="alive"}`] == 2
	})
}
