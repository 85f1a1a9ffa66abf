package node

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves Prometheus metrics read from the FSM and raft at scrape time, plus the
// Go runtime and process collectors.
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), stateCollector{n})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

var (
	descTasks    = prometheus.NewDesc("taskworker_tasks", "Tasks in the cluster by state.", []string{"state"}, nil)
	descNodes    = prometheus.NewDesc("taskworker_nodes", "Nodes known to the cluster by gossip state.", []string{"state"}, nil)
	descLeader   = prometheus.NewDesc("taskworker_is_leader", "1 if this node is the raft leader.", nil, nil)
	descRunning  = prometheus.NewDesc("taskworker_local_running", "Task attempts running on this node.", nil, nil)
	descCapacity = prometheus.NewDesc("taskworker_local_capacity", "Task slots of this node.", nil, nil)
	descIndex    = prometheus.NewDesc("taskworker_fsm_applied_index", "Last raft index applied to this node's FSM.", nil, nil)
)

type stateCollector struct{ n *Node }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTasks, descNodes, descLeader, descRunning, descCapacity, descIndex} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	for s, v := range n.fsm.Counts() {
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(v), string(s))
	}
	states := map[string]int{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	for _, m := range n.members.Members() {
		states[string(m.State)]++
	}
	for s, v := range states {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(v), s)
	}
	leader := 0.0
	if n.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(len(n.exec.Running())))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(n.cfg.Capacity))
	ch <- prometheus.MustNewConstMetric(descIndex, prometheus.GaugeValue, float64(n.fsm.Index()))
}
