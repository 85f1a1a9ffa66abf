package telemetry

import (
	"time"

	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/membership"
)

// Every series the Grafana dashboard queries is one this node exports (under its base name for
// histograms), so a rename cannot leave a panel empty unnoticed.
func TestGrafanaDashboardQueriesExportedSeries(t *testing.T) {
	raw, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}

	m := New(Source{})
	ch := make(chan *prometheus.Desc, 100)
	for _, c := range m.transitions {
		c.Describe(ch)
	}
	for _, c := range []prometheus.Collector{m.queueWait, m.runTime, m.apply, m.httpReqs, m.httpTime, m.probeFails, m.logsDropped, stateCollector{}} {
		c.Describe(ch)
	}
	close(ch)
	exported := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if sm := fqName.FindStringSubmatch(d.String()); sm != nil {
			exported[sm[1]] = true
		}
	}

	series := regexp.MustCompile(`taskworker_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range series.FindAllString(tg.Expr, -1) {
				if base := strings.TrimSuffix(name, "_bucket"); !exported[base] {
					t.Errorf("panel %q queries %s, which the node does not export", p.Title, name)
				}
			}
		}
	}
	for name := range exported {
		if !strings.Contains(string(raw), name) && name != "taskworker_is_leader" && name != "taskworker_fsm_applied_index" {
			t.Errorf("no panel shows %s", name)
		}
	}
}

// gather reads m's series as "name{value,...}" (label values in the order of their names) ->
// value, the way a scrape of Handler sees them.
func gather(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	fams, err := prometheus.Gatherers{m.reg, m.state}.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetValue())
			}
			key := f.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case s.Counter != nil:
				out[key] = s.Counter.GetValue()
			case s.Gauge != nil:
				out[key] = s.Gauge.GetValue()
			}
		}
	}
	return out
}

// The collector reads the node through Source at scrape time: what a func returns shows, what it
// does not know (a nil func, raft not started, free disk unknown) is absent or reads as nothing.
func TestStateSeriesComeFromTheSource(t *testing.T) {
	fault := ""
	m := New(Source{
		FSM: fsm.New(), Capacity: 3, Caps: []string{"pending", "key_length"},
		Running:      func() (int, bool) { return 2, true },
		DiskFree:     func() int64 { return -1 },
		StorageFault: func() string { return fault },
		Members: func() []membership.Member {
			return []membership.Member{{Name: "a", State: membership.StateAlive}, {Name: "b", State: membership.StateDead}}
		},
	})
	m.AddListener("api", func() limits.ListenerStats {
		return limits.ListenerStats{Open: 4, RejectedPerClient: 1, RejectedGlobal: 2, RejectedReserve: 3}
	})
	m.Refused("pending")
	m.Trimmed(5)

	got := gather(t, m)
	for k, want := range map[string]float64{
		"taskworker_local_capacity{}":                       3,
		"taskworker_local_running{}":                        2,
		"taskworker_storage_healthy{}":                      1,
		"taskworker_is_leader{}":                            0,
		"taskworker_nodes{alive}":                           1,
		"taskworker_nodes{dead}":                            1,
		"taskworker_nodes{suspect}":                         0,
		"taskworker_nodes{left}":                            0,
		"taskworker_listener_connections{api}":              4,
		"taskworker_listener_refused_total{per_client,api}": 1,
		"taskworker_listener_refused_total{total,api}":      2,
		"taskworker_listener_refused_total{reserve,api}":    3,
		"taskworker_admission_refused_total{pending}":       1,
		"taskworker_admission_refused_total{key_length}":    0,
		"taskworker_retained_trimmed_total{}":               5,
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
	for _, k := range []string{"taskworker_disk_free_bytes{}", "taskworker_raft_term{}", "taskworker_raft_state{Leader}"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s present, want it absent while unknown", k)
		}
	}

	fault = "disk full"
	if v := gather(t, m)["taskworker_storage_healthy{}"]; v != 0 {
		t.Errorf("taskworker_storage_healthy with a storage fault = %v, want 0", v)
	}
	if v, ok := gather(t, New(Source{FSM: fsm.New()}))["taskworker_local_running{}"]; ok {
		t.Errorf("without an executor taskworker_local_running = %v, want it absent", v)
	}
}

// Workers are counted by state from the FSM, and each up worker's running attempts shown.
func TestWorkerSeriesComeFromTheFSM(t *testing.T) {
	f := fsm.New()
	apply := func(i uint64, body fsm.Payload) {
		t.Helper()
		if r := f.ApplyCommand(i, &fsm.Command{Now: time.Unix(int64(i), 0), Body: body}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	apply(1, &fsm.Register{Node: fsm.Node{Name: "n1", BootID: "b", Capacity: 1}})
	up := func(name, session string) *fsm.WorkerChange {
		return &fsm.WorkerChange{Op: fsm.WorkerUp, Worker: &fsm.Node{Name: name, BootID: session, Host: "n1", Capacity: 2,
			Types: []fsm.TypeInfo{{Type: "py", Version: "1"}}}}
	}
	apply(2, up("w1", "s1"))
	apply(3, up("w2", "s2"))
	apply(4, &fsm.WorkerChange{Op: fsm.WorkerDown, Name: "w2", BootID: "s2"})
	apply(5, &fsm.SubmitBatch{Items: []fsm.Submit{{ID: "a", Type: "py", Version: "1", MaxAttempts: 1}}})
	apply(6, &fsm.AssignBatch{Items: []fsm.Assign{{TaskID: "a", Node: "w1", BootID: "s1"}}})
	got := gather(t, New(Source{FSM: f}))
	for k, want := range map[string]float64{
		"taskworker_workers{up}": 1, "taskworker_workers{down}": 1, "taskworker_workers{left}": 0,
		"taskworker_worker_running{w1}": 1,
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
	if _, ok := got["taskworker_worker_running{w2}"]; ok {
		t.Error("a down worker has a running series")
	}
}
