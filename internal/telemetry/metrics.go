package telemetry

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/membership"
)

// Metrics are the Prometheus series a node serves on /metrics. Each node has its own registry,
// so several nodes in one process (the tests) do not share series.
//
// Task counters and histograms are fed by the FSM's Observer on every node, not by the leader:
// each replica applies the same log, so every node's /metrics tells the same cluster-wide story
// and a scrape of any one node (or max() over all) is enough; nothing depends on which node leads
// or on a leader change. The FSM calls the observer after it applied an entry, with the
// transitions of that entry; the observer only counts, so Apply stays deterministic. The counters
// start from zero in each process and count the entries it applies, including those it replays
// from the log at start (a snapshot's tasks are not replayed): use rate() or increase().
type Metrics struct {
	reg   *prometheus.Registry
	state *prometheus.Registry // the stateCollector, read at scrape time

	transitions map[string]*prometheus.CounterVec // by fsm.Kind*, labelled by task type
	queueWait   *prometheus.HistogramVec
	runTime     *prometheus.HistogramVec
	apply       prometheus.Histogram
	httpReqs    *prometheus.CounterVec
	httpTime    *prometheus.HistogramVec
	probeFails  prometheus.Counter
	logsDropped prometheus.Counter

	throughput throughputRing // the console's per-second series (throughput.go)
	// forwardsAbandoned counts forwards given up because raft stopped naming their leader, each
	// then retried against the new one.
	forwardsAbandoned prometheus.Counter
	// placedAtSubmit counts assignments the leader proposed with their submit (in its entry, or
	// right behind it with a node older than fsm.PlaceProtocol up); the FSM may still leave some
	// of them pending.
	placedAtSubmit prometheus.Counter
	// descriptorShortages counts storage checks that failed for want of file descriptors, which
	// the storage watchdog (raftnode.WatchStorage) does not call a storage fault.
	descriptorShortages prometheus.Counter
	// joinRefused counts refused join requests, every one, though their log lines are limited.
	joinRefused prometheus.Counter
	// refused counts admission refusals by cap; trimmed, finished tasks removed by the
	// retained cap.
	refused *prometheus.CounterVec
	trimmed prometheus.Counter

	src       Source
	mu        sync.Mutex
	listeners []listener // the capped listeners (AddListener)
}

// Source is what the collector reads from the node at each scrape, from the scraping goroutine.
// A nil func reads as nothing known: no members, no raft, no executor, free disk unknown,
// storage healthy.
type Source struct {
	FSM      *fsm.FSM
	Capacity int // task slots of this node
	// Caps names the admission caps of taskworker_admission_refused_total{cap}: each one's
	// series exists from the start, at 0.
	Caps    []string
	Raft    func() *raft.Raft          // nil before raft starts
	Members func() []membership.Member // nil before gossip starts
	Running func() (n int, ok bool)    // task attempts running here; ok false without an executor
	// DiskFree is the bytes free on the data dir's file system, negative when unknown.
	DiskFree func() int64
	// StorageFault is why the node cannot persist, "" while it can.
	StorageFault func() string
}

// taskBuckets span a millisecond to about 20 minutes, for both queue wait and run time.
var taskBuckets = prometheus.ExponentialBuckets(0.001, 4, 11)

// New makes a node's metrics, reading the rest of its state from src at scrape time.
func New(src Source) *Metrics {
	m := &Metrics{
		src:         src,
		reg:         prometheus.NewRegistry(),
		state:       prometheus.NewRegistry(),
		transitions: map[string]*prometheus.CounterVec{},
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "taskworker_task_queue_wait_seconds", Buckets: taskBuckets,
			Help: "Time from a task becoming pending (created, or requeued after a failure or interruption) to its attempt starting, by type.",
		}, []string{"type"}),
		runTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "taskworker_task_run_seconds", Buckets: taskBuckets,
			Help: "Time from an attempt starting to its end (succeeded, failed, cancelled or interrupted), by type.",
		}, []string{"type"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "taskworker_raft_apply_seconds",
			Help:    "Time the leader takes to commit and apply one raft command (a batch of proposals).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskworker_http_requests_total",
			Help: "Public API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		httpTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "taskworker_http_request_duration_seconds", Buckets: prometheus.DefBuckets,
			Help: "Public API request latency by route pattern (held waits and follows included).",
		}, []string{"route"}),
		probeFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_gossip_probe_failures_total",
			Help: "Gossip probes of a peer that got no ack, direct or indirect (the peer is then suspected).",
		}),
		placedAtSubmit: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_placed_at_submit_total",
			Help: "Assignments the leader proposed together with their task's submit, one commit sooner than the scheduler loop would (applied only while the node has a free slot).",
		}),
		forwardsAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_forwards_abandoned_total",
			Help: "Writes and executor reports forwarded to a leader that raft stopped naming before it answered (frozen, partitioned or deposed), then retried against the new leader.",
		}),
		descriptorShortages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_fd_shortages_total",
			Help: "Storage checks that failed because the process or the system ran out of file descriptors (EMFILE, ENFILE); a warning, not a storage fault.",
		}),
		logsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_log_lines_suppressed_total",
			Help: "Repeated raft and gossip warnings and errors folded into a count by the log rate limit.",
		}),
		joinRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_join_refused_total",
			Help: "Join requests this node refused (wrong or rotated token, unreadable request); the log shows one per remote address per minute.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskworker_admission_refused_total",
			Help: "Submits, batch items and schedules this node refused for a cap, by cap: max_pending (queue_full), pending and schedules (quota_exceeded), schedule_interval, schedule_input, key_length.",
		}, []string{"cap"}),
		trimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskworker_retained_trimmed_total",
			Help: "Finished tasks the leader removed because their principal kept more than its retained cap (oldest finished first).",
		}),
	}
	help := map[string]string{
		fsm.KindSubmitted:   "Tasks submitted, by type.",
		fsm.KindStarted:     "Task attempts started, by type.",
		fsm.KindSucceeded:   "Tasks that succeeded, by type.",
		fsm.KindFailed:      "Tasks that failed for good (their last attempt failed), by type.",
		fsm.KindRetried:     "Failed attempts that were requeued for another attempt, by type.",
		fsm.KindInterrupted: "Attempts interrupted by their node dying, restarting or leaving, by type.",
		fsm.KindCancelled:   "Tasks cancelled, by type.",
		fsm.KindWaiting:     "Attempts that ended to wait for their child tasks, by type.",
	}
	for kind, h := range help {
		m.transitions[kind] = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskworker_tasks_" + kind + "_total", Help: h,
		}, []string{"type"})
		m.reg.MustRegister(m.transitions[kind])
	}
	m.reg.MustRegister(m.queueWait, m.runTime, m.apply, m.httpReqs, m.httpTime, m.probeFails, m.logsDropped, m.forwardsAbandoned, m.placedAtSubmit, m.descriptorShortages, m.joinRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range src.Caps {
		m.refused.WithLabelValues(c) // every cap's series exists from the start, at 0
	}
	m.reg.MustRegister(m.refused, m.trimmed)
	m.state.MustRegister(stateCollector{m})
	return m
}

// Observe is the FSM's Observer.
func (m *Metrics) Observe(_ uint64, ts []fsm.Transition) {
	m.throughput.add(time.Now(), ts)
	for _, tr := range ts {
		if c := m.transitions[tr.Kind]; c != nil {
			c.WithLabelValues(tr.Type).Inc()
		}
		if tr.Kind == fsm.KindStarted {
			m.queueWait.WithLabelValues(tr.Type).Observe(nonNegative(tr.Waited))
		}
		if tr.HasRun {
			m.runTime.WithLabelValues(tr.Type).Observe(nonNegative(tr.Ran))
		}
	}
}

// nonNegative guards against clock steps between leaders: the timestamps come from whichever
// leader wrote each command.
func nonNegative(d time.Duration) float64 { return max(d, 0).Seconds() }

// ObserveHTTP is httpapi's ObserveFunc.
func (m *Metrics) ObserveHTTP(route string, code int, d time.Duration) {
	m.httpReqs.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.httpTime.WithLabelValues(route).Observe(d.Seconds())
}

// ObserveApply records how long the leader took to commit and apply one raft command.
func (m *Metrics) ObserveApply(d time.Duration) { m.apply.Observe(d.Seconds()) }

// ForwardAbandoned counts a forward given up because raft stopped naming its leader.
func (m *Metrics) ForwardAbandoned() { m.forwardsAbandoned.Inc() }

// PlacedAtSubmit counts k assignments proposed together with their submit.
func (m *Metrics) PlacedAtSubmit(k int) { m.placedAtSubmit.Add(float64(k)) }

// DescriptorShortage counts a storage check that failed for want of file descriptors.
func (m *Metrics) DescriptorShortage() { m.descriptorShortages.Inc() }

// JoinRefused counts a refused join request.
func (m *Metrics) JoinRefused() { m.joinRefused.Inc() }

// LogSuppressed counts a log line folded by the rate limit (RateLimitHandler's onSuppress).
func (m *Metrics) LogSuppressed() { m.logsDropped.Inc() }

// ProbeFailed counts a gossip probe that got no ack (ProbeCountHandler's count).
func (m *Metrics) ProbeFailed() { m.probeFails.Inc() }

// Refused counts an admission refused for cap, one of Source.Caps.
func (m *Metrics) Refused(cap string) { m.refused.WithLabelValues(cap).Inc() }

// Trimmed counts k finished tasks removed by their principal's retained cap.
func (m *Metrics) Trimmed(k int) { m.trimmed.Add(float64(k)) }

// Throughput is the per-second task counts of the last api.ThroughputSeconds seconds up to now.
func (m *Metrics) Throughput(now time.Time) api.Throughput { return m.throughput.series(now) }

// AddListener adds a capped listener (api, raft, gossip) whose connection counters /metrics
// shows.
func (m *Metrics) AddListener(name string, stats func() limits.ListenerStats) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.listeners = append(m.listeners, listener{name, stats})
}

// Handler serves the node's registry plus the series read from the FSM, raft and gossip at
// scrape time.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{m.reg, m.state}, promhttp.HandlerOpts{})
}

var (
	descTasks         = prometheus.NewDesc("taskworker_tasks", "Tasks in the cluster by state.", []string{"state"}, nil)
	descPending       = prometheus.NewDesc("taskworker_tasks_pending", "Pending tasks by type.", []string{"type"}, nil)
	descNodes         = prometheus.NewDesc("taskworker_nodes", "Nodes known to the cluster by gossip state.", []string{"state"}, nil)
	descLeader        = prometheus.NewDesc("taskworker_is_leader", "1 if this node is the raft leader.", nil, nil)
	descRunning       = prometheus.NewDesc("taskworker_local_running", "Task attempts running on this node.", nil, nil)
	descCapacity      = prometheus.NewDesc("taskworker_local_capacity", "Task slots of this node.", nil, nil)
	descIndex         = prometheus.NewDesc("taskworker_fsm_applied_index", "Last raft index applied to this node's FSM.", nil, nil)
	descWorkers       = prometheus.NewDesc("taskworker_workers", "Workers the cluster knows by state (up, down, left).", []string{"state"}, nil)
	descWorkerRunning = prometheus.NewDesc("taskworker_worker_running", "Task attempts assigned to or running on each up worker.", []string{"worker"}, nil)

	descRaftState   = prometheus.NewDesc("taskworker_raft_state", "1 for this node's raft state (Follower, Candidate, Leader, Shutdown), 0 for the others.", []string{"state"}, nil)
	descRaftTerm    = prometheus.NewDesc("taskworker_raft_term", "This node's current raft term.", nil, nil)
	descRaftCommit  = prometheus.NewDesc("taskworker_raft_commit_index", "Highest raft index this node knows committed.", nil, nil)
	descRaftApplied = prometheus.NewDesc("taskworker_raft_applied_index", "Highest raft index applied to this node's FSM.", nil, nil)
	descDiskFree    = prometheus.NewDesc("taskworker_disk_free_bytes", "Bytes free on the data dir's file system, as the storage watchdog last read them (absent when unknown); below --min-free-disk the node warns.", nil, nil)
	descStorageOK   = prometheus.NewDesc("taskworker_storage_healthy", "1 while this node's raft log, stable store, snapshots and data dir take writes; 0 while it cannot persist (health says storage_fault, and the leader runs its tasks elsewhere).", nil, nil)
	descRaftLast    = prometheus.NewDesc("taskworker_raft_last_contact_seconds", "Seconds since a follower last heard from the leader (0 on the leader; absent before any contact).", nil, nil)
)

var (
	descConnsOpen     = prometheus.NewDesc("taskworker_listener_connections", "Connections a capped listener (api, raft, gossip) holds open.", []string{"listener"}, nil)
	descConnsAccepted = prometheus.NewDesc("taskworker_listener_accepted_total", "Connections a capped listener (api, raft, gossip) accepted within its caps. On the gossip port it grows by about one per peer and restart: nodes share one HTTP/2 connection for their internode calls.", []string{"listener"}, nil)
	descConnsRefused  = prometheus.NewDesc("taskworker_listener_refused_total", "Connections a capped listener refused at accept, by the cap they met: per_client (one address at its cap), total (the listener full), reserve (only slots for addresses holding few were left).", []string{"listener", "cap"}, nil)
)

// listener is a capped listener's name (api, raft, gossip) and counters, for /metrics.
type listener struct {
	name  string
	stats func() limits.ListenerStats
}

var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

// stateCollector reads the series of a node's state at scrape time (Source).
type stateCollector struct{ m *Metrics }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTasks, descPending, descNodes, descWorkers, descWorkerRunning, descLeader, descRunning, descCapacity, descIndex,
		descRaftState, descRaftTerm, descRaftCommit, descRaftApplied, descRaftLast, descDiskFree, descStorageOK,
		descConnsOpen, descConnsAccepted, descConnsRefused} {
		ch <- d
	}
}

// Collect reads what the node keeps anyway: FSM counters under its read lock and raft's atomics
// (State, CurrentTerm, CommitIndex, AppliedIndex, LastContact), not raft.Stats, which asks the
// raft loop for its configuration.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.src
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for s, v := range src.FSM.Counts() {
		gauge(descTasks, float64(v), string(s))
	}
	for typ, v := range src.FSM.PendingByType() {
		gauge(descPending, float64(v), typ)
	}
	states := map[string]int{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	if src.Members != nil {
		for _, m := range src.Members() {
			states[string(m.State)]++
		}
	}
	for s, v := range states {
		gauge(descNodes, float64(v), s)
	}
	workers := map[fsm.NodeStatus]int{fsm.NodeUp: 0, fsm.NodeDown: 0, fsm.NodeLeft: 0}
	load := src.FSM.Load()
	for _, w := range src.FSM.Workers() {
		workers[w.Status]++
		if w.Status == fsm.NodeUp {
			gauge(descWorkerRunning, float64(load[w.Name]), w.Name)
		}
	}
	for s, v := range workers {
		gauge(descWorkers, float64(v), string(s))
	}
	var r *raft.Raft
	if src.Raft != nil {
		r = src.Raft()
	}
	leader := 0.0
	if r != nil && r.State() == raft.Leader {
		leader = 1
	}
	gauge(descLeader, leader)
	if src.Running != nil {
		if running, ok := src.Running(); ok {
			gauge(descRunning, float64(running))
		}
	}
	gauge(descCapacity, float64(src.Capacity))
	gauge(descIndex, float64(src.FSM.Index()))
	if src.DiskFree != nil {
		if free := src.DiskFree(); free >= 0 {
			gauge(descDiskFree, float64(free))
		}
	}
	storageOK := 1.0
	if src.StorageFault != nil && src.StorageFault() != "" {
		storageOK = 0
	}
	gauge(descStorageOK, storageOK)
	c.m.mu.Lock()
	listeners := c.m.listeners
	c.m.mu.Unlock()
	for _, l := range listeners {
		st := l.stats()
		gauge(descConnsOpen, float64(st.Open), l.name)
		ch <- prometheus.MustNewConstMetric(descConnsAccepted, prometheus.CounterValue, float64(st.Accepted), l.name)
		for capName, v := range map[string]uint64{"per_client": st.RejectedPerClient, "total": st.RejectedGlobal, "reserve": st.RejectedReserve} {
			ch <- prometheus.MustNewConstMetric(descConnsRefused, prometheus.CounterValue, float64(v), l.name, capName)
		}
	}
	if r != nil {
		state := r.State()
		for _, s := range raftStates {
			v := 0.0
			if s == state {
				v = 1
			}
			gauge(descRaftState, v, s.String())
		}
		gauge(descRaftTerm, float64(r.CurrentTerm()))
		gauge(descRaftCommit, float64(r.CommitIndex()))
		gauge(descRaftApplied, float64(r.AppliedIndex()))
		switch last := r.LastContact(); {
		case state == raft.Leader:
			gauge(descRaftLast, 0)
		case !last.IsZero():
			gauge(descRaftLast, time.Since(last).Seconds())
		}
	}
}
