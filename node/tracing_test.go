package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing/otlpreceiver"
	"github.com/taskworker/taskworker/tasks"
)

// newOTLPReceiver is an OTLP/HTTP receiver on 127.0.0.1 that keeps the spans nodes export.
func newOTLPReceiver(t *testing.T) *otlpreceiver.Receiver {
	r := otlpreceiver.New()
	t.Cleanup(r.Close)
	return r
}

// otelEnv is the OTEL_* environment that points a node's exporter at r, with extra.
func otelEnv(r *otlpreceiver.Receiver, extra map[string]string) func(string) string {
	return func(k string) string {
		if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
			return r.URL
		}
		return extra[k]
	}
}

const (
	clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan  = "00f067aa0ba902b7"
	traceparent = "00-" + clientTrace + "-" + clientSpan + "-01"
	// secretInput is in the traced task's input: no span attribute may hold it.
	secretInput = "s3cr3t-input-value"
)

// tracedRegistry is the built-ins plus "traced-retry": it fails its first attempt, and on its
// second adds a span of its own from its Context and submits an echo child, then succeeds.
func tracedRegistry(t *testing.T) func(int) *tasks.Registry {
	return func(int) *tasks.Registry {
		reg := tasks.NewRegistry()
		if err := tasks.RegisterBuiltins(reg, t.TempDir()); err != nil {
			t.Fatal(err)
		}
		type in struct {
			Secret string `json:"secret"`
		}
		err := reg.Register(tasks.Func(tasks.Definition{Name: "traced-retry", Version: "1"}, func(ctx *tasks.Context, _ in) (string, error) {
			if ctx.Attempt == 1 {
				return "", fmt.Errorf("first attempt fails")
			}
			_, span := ctx.Span().TracerProvider().Tracer("user-code").Start(ctx, "user.work")
			span.End()
			child, err := ctx.Submit(tasks.ChildTask{Type: "echo", Input: 1, MaxAttempts: 1})
			return child, err
		}))
		if err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

// A task submitted through a follower with a traceparent header, which fails once and then
// succeeds: every span the cluster exports belongs to the caller's trace; the follower's server
// span is the caller's span's child and the leader's is the follower's; the commit, placements
// and attempts are children of the leader's submit span; the first attempt failed, the second
// succeeded, on a named node; the task's own span is its attempt's child; its child task records
// the same trace; and no attribute holds the task's input.
func TestTracesFollowATaskThatRetriedThroughAFollower(t *testing.T) {
	longTest(t) // a retry's backoff
	recv := newOTLPReceiver(t)
	tc := startCluster(t, 3, clusterOpts{inmem: true, registry: tracedRegistry(t), tweak: func(i int, c *Config) {
		c.Getenv = otelEnv(recv, map[string]string{"OTEL_SERVICE_NAME": "tw-test", "OTEL_BSP_SCHEDULE_DELAY": "100"})
	}})
	tc.waitHealthy(3)
	leader, follower := tc.leader(), tc.follower()

	body := fmt.Sprintf(`{"type": "traced-retry", "input": {"secret": %q}, "max_attempts": 3}`, secretInput)
	req, _ := http.NewRequest("POST", "http://"+follower.HTTPAddr()+"/v1/tasks", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", traceparent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var task api.Task
	_ = json.NewDecoder(resp.Body).Decode(&task)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || task.TraceID != clientTrace {
		t.Fatalf("submit: status %d, trace_id %q, want 201 and %s", resp.StatusCode, task.TraceID, clientTrace)
	}
	task = waitTaskEnded(t, follower, task.ID)
	if task.State != api.StateSucceeded || task.Attempt != 2 || task.TraceID != clientTrace {
		t.Fatalf("task = %s after %d attempts, trace %q; want succeeded after 2, trace %s", task.State, task.Attempt, task.TraceID, clientTrace)
	}
	var childID string
	_ = json.Unmarshal(task.Result, &childID)
	child := waitTaskEnded(t, follower, childID)
	if child.TraceID != clientTrace {
		t.Errorf("child task's trace_id = %q, want %s", child.TraceID, clientTrace)
	}

	// Spans arrive in batches (every OTEL_BSP_SCHEDULE_DELAY).
	var spans []otlpreceiver.Span
	byName := func(name string) []otlpreceiver.Span {
		var out []otlpreceiver.Span
		for _, s := range spans {
			if s.GetName() == name {
				out = append(out, s)
			}
		}
		return out
	}
	waitFor(t, "the task's spans exported", 60*time.Second, func() bool {
		spans = recv.Spans()
		attempts, placements := 0, 0
		for _, s := range spans {
			if s.Attrs()["taskworker.task.id"] == task.ID {
				switch s.GetName() {
				case "task.attempt":
					attempts++
				case "task.placement":
					placements++
				}
			}
		}
		return attempts == 2 && placements == 2 && len(byName("POST /v1/tasks")) >= 2 && len(byName("user.work")) == 1 &&
			len(byName("task.attempt")) >= 3 // the child's too
	})
	if bad := recv.Bad(); len(bad) > 0 {
		t.Errorf("exports the receiver could not decode: %v", bad)
	}

	for _, s := range spans {
		if s.Trace() != clientTrace {
			t.Errorf("span %q on %s is in trace %s, want %s", s.GetName(), s.Resource["taskworker.node"], s.Trace(), clientTrace)
		}
		if s.Resource["service.name"] != "tw-test" || s.Resource["taskworker.node"] == "" || s.Resource["service.instance.id"] != s.Resource["taskworker.node"] {
			t.Errorf("span %q resource = %v: want service.name from OTEL_SERVICE_NAME and the node's name", s.GetName(), s.Resource)
		}
		for k, v := range s.Attrs() {
			if strings.Contains(v, secretInput) {
				t.Errorf("span %q attribute %s holds the task's input: %q", s.GetName(), k, v)
			}
		}
	}

	var followerSpan, leaderSpan otlpreceiver.Span
	for _, s := range byName("POST /v1/tasks") {
		switch s.Resource["taskworker.node"] {
		case follower.Name():
			followerSpan = s
		case leader.Name():
			leaderSpan = s
		}
	}
	if followerSpan.Span == nil || leaderSpan.Span == nil {
		t.Fatalf("server spans: follower %v, leader %v; want one on each", followerSpan.Span != nil, leaderSpan.Span != nil)
	}
	if followerSpan.Parent() != clientSpan || followerSpan.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("follower's submit span: parent %s kind %v, want the caller's span %s, server", followerSpan.Parent(), followerSpan.GetKind(), clientSpan)
	}
	if leaderSpan.Parent() != followerSpan.ID() {
		t.Errorf("leader's submit span's parent = %s, want the follower's span %s: the forward lost the context", leaderSpan.Parent(), followerSpan.ID())
	}
	submitSpan := leaderSpan.ID()

	commits := 0
	for _, s := range byName("raft.apply") {
		if s.Parent() == submitSpan && s.Attrs()["taskworker.command"] == "submit" {
			commits++
		}
	}
	if commits != 1 {
		t.Errorf("%d commit spans under the leader's submit span, want 1", commits)
	}

	placements := 0
	for _, s := range byName("task.placement") {
		if s.Attrs()["taskworker.task.id"] != task.ID {
			continue
		}
		placements++
		if s.Parent() != submitSpan || s.Resource["taskworker.node"] != leader.Name() || s.Attrs()["taskworker.node"] == "" {
			t.Errorf("placement span: parent %s on %s, attrs %v; want a child of %s on the leader %s naming its target", s.Parent(),
				s.Resource["taskworker.node"], s.Attrs(), submitSpan, leader.Name())
		}
	}
	if placements != 2 {
		t.Errorf("%d placement spans for the task, want 2 (one per attempt)", placements)
	}

	outcome := map[string]string{}
	var second otlpreceiver.Span
	for _, s := range byName("task.attempt") {
		a := s.Attrs()
		if a["taskworker.task.id"] != task.ID {
			continue
		}
		outcome[a["taskworker.attempt"]] = a["taskworker.outcome"]
		if s.Parent() != submitSpan {
			t.Errorf("attempt %s span's parent = %s, want the leader's submit span %s", a["taskworker.attempt"], s.Parent(), submitSpan)
		}
		if a["taskworker.node"] == "" || a["taskworker.node"] != s.Resource["taskworker.node"] {
			t.Errorf("attempt %s span names node %q, exported by %q", a["taskworker.attempt"], a["taskworker.node"], s.Resource["taskworker.node"])
		}
		if s.GetEndTimeUnixNano() <= s.GetStartTimeUnixNano() {
			t.Errorf("attempt %s span has no duration", a["taskworker.attempt"])
		}
		if a["taskworker.attempt"] == "2" {
			second = s
		}
	}
	if outcome["1"] != "failed" || outcome["2"] != "succeeded" {
		t.Errorf("attempt outcomes = %v, want 1 failed, 2 succeeded", outcome)
	}
	if u := byName("user.work"); second.Span == nil || u[0].Parent() != second.ID() {
		t.Errorf("the task's own span is not a child of its second attempt's span")
	}
	for _, s := range byName("task.attempt") {
		if s.Attrs()["taskworker.task.id"] == childID && (second.Span == nil || s.Parent() != second.ID()) {
			t.Errorf("the child task's attempt span's parent = %s, want its parent's attempt span", s.Parent())
		}
	}
}

// A workflow submitted with a traceparent records the trace on every step's task.
func TestWorkflowStepsJoinTheSubmitsTrace(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	body := `{"name": "w", "steps": [{"name": "a", "type": "calc-square", "input": 3},
		{"name": "b", "type": "calc-square", "depends_on": ["a"], "input_from": "a"}]}`
	req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/workflows", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", traceparent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var wf api.Workflow
	_ = json.NewDecoder(resp.Body).Decode(&wf)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("workflow submit: status %d", resp.StatusCode)
	}
	waitFor(t, "workflow done", 30*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/workflows/"+wf.ID, nil, &wf)
		return wf.State == "succeeded"
	})
	for _, s := range wf.Steps {
		var task api.Task
		httpCall(t, n, "GET", "/v1/tasks/"+s.TaskID, nil, &task)
		if task.TraceID != clientTrace {
			t.Errorf("step %s's task trace_id = %q, want %s", s.Name, task.TraceID, clientTrace)
		}
	}
}

// With tracing off (no OTEL_* endpoint), nothing is exported; a submit without a traceparent
// records no trace, and one with a valid traceparent records the caller's trace ID (for log
// correlation), while a malformed one is ignored.
func TestTracingOffExportsNothingAndKeepsOnlyTheCallersTraceID(t *testing.T) {
	recv := newOTLPReceiver(t)
	tc := startCluster(t, 1, clusterOpts{inmem: true, tweak: func(i int, c *Config) {
		// A receiver is there, but nothing names it: OTEL_SERVICE_NAME alone turns nothing on.
		c.Getenv = func(k string) string {
			if k == "OTEL_SERVICE_NAME" {
				return "tw-off"
			}
			return ""
		}
	}})
	n := tc.nodes[0]
	if n.tracer != nil {
		t.Fatal("tracing is on without an OTLP endpoint")
	}
	post := func(tp string) api.Task {
		req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/tasks?wait=10s", strings.NewReader(`{"type": "echo", "input": 1}`))
		req.Header.Set("Content-Type", "application/json")
		if tp != "" {
			req.Header.Set("Traceparent", tp)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var task api.Task
		_ = json.NewDecoder(resp.Body).Decode(&task)
		if resp.StatusCode != http.StatusCreated || task.State != api.StateSucceeded {
			t.Fatalf("submit: status %d, state %s", resp.StatusCode, task.State)
		}
		return task
	}
	if task := post(""); task.TraceID != "" {
		t.Errorf("a submit without traceparent recorded trace %q with tracing off", task.TraceID)
	}
	for _, bad := range []string{"00-" + clientTrace + "-" + clientSpan, "00-00000000000000000000000000000000-" + clientSpan + "-01",
		"zz-" + clientTrace + "-" + clientSpan + "-01", strings.ToUpper(traceparent)} {
		if task := post(bad); task.TraceID != "" {
			t.Errorf("malformed traceparent %q recorded trace %q", bad, task.TraceID)
		}
	}
	if task := post(traceparent); task.TraceID != clientTrace {
		t.Errorf("trace_id = %q, want the caller's %s", task.TraceID, clientTrace)
	}
	tc.verifyOnce.Do(tc.verifyReplicas)
	if err := n.Shutdown(); err != nil { // a provider would flush its spans here
		t.Fatal(err)
	}
	spans, bad := recv.Spans(), recv.Bad()
	if len(spans) > 0 || len(bad) > 0 {
		t.Errorf("tracing off, yet the receiver got %d spans and %d bad exports", len(spans), len(bad))
	}
}

// While a node of an older protocol is up, a submit with a traceparent is still accepted, and
// its task has no trace context (the leader dropped it: the old node could not decode it), on
// every replica alike.
func TestTraceContextIsLeftOutWhileAnOldProtocolNodeIsUp(t *testing.T) {
	tc := startCluster(t, 2, clusterOpts{inmem: true, tweak: func(i int, c *Config) {
		if i == 1 {
			c.Protocol = fsm.TraceProtocol - 1
		}
	}})
	tc.waitHealthy(2)
	waitFor(t, "the old node registered", 30*time.Second, func() bool {
		d, ok := tc.nodes[0].FSM().Node("n2")
		return ok && d.Status == fsm.NodeUp && d.Protocol == fsm.TraceProtocol-1
	})
	for _, n := range tc.nodes {
		req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/tasks", strings.NewReader(`{"type": "echo", "input": 1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Traceparent", traceparent)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var task api.Task
		_ = json.NewDecoder(resp.Body).Decode(&task)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || task.TraceID != "" {
			t.Errorf("submit through %s with an old node up: status %d, trace_id %q; want 201 without a trace", n.Name(), resp.StatusCode, task.TraceID)
		}
		waitTaskEnded(t, n, task.ID)
	}
	tc.verifyReplicas()
}

// A worker's assignment carries the attempt's trace context, so its own spans can continue it.
func TestWorkerAssignmentCarriesTheTraceparent(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{inmem: true})
	n := tc.nodes[0]
	w := mustRegisterProtoWorker(t, n, "", "py1", 1, "py-upper")
	got := make(chan string, 2)
	w.serve(func(a api.WorkerAssignment) []api.WorkerEvent {
		got <- a.Traceparent
		return upperHandler(a)
	})
	defer w.kill()
	req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/tasks?wait=10s", strings.NewReader(`{"type": "py-upper", "input": "hi"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", traceparent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Tracing is off: the attempt has no span of its own, and the worker gets the task's context.
	if tp := <-got; tp != traceparent {
		t.Errorf("assignment traceparent = %q, want %q", tp, traceparent)
	}
	submit(t, n, "py-upper", "untraced", "10s")
	if tp := <-got; tp != "" {
		t.Errorf("an untraced task's assignment has traceparent %q", tp)
	}
}
