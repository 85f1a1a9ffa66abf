package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/tasks"
)

// getRaw fetches a route from a node and returns status and body.
func getRaw(t *testing.T, n *Node, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// decodeExact decodes b into v, failing on any JSON field v's type does not declare.
func decodeExact(t *testing.T, what string, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %s does not decode exactly into %T: %v", what, b, v, err)
	}
}

// coverage collects, per api type, the JSON objects the node sent for it, and checks that every
// field the type declares appeared in at least one of them (omitempty fields included: the test
// makes tasks that set them).
type coverage map[reflect.Type][]any

func (c coverage) add(t *testing.T, typ reflect.Type, b []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if arr, ok := v.([]any); ok {
		c[typ] = append(c[typ], arr...)
		return
	}
	c[typ] = append(c[typ], v)
}

var (
	timeType = reflect.TypeOf(time.Time{})
	rawType  = reflect.TypeOf(json.RawMessage{})
)

// check reports every field of typ (recursively through nested structs and slices of them)
// that none of the objects held.
func (c coverage) check(t *testing.T) {
	t.Helper()
	for typ, objs := range c {
		checkFields(t, typ.Name(), typ, objs)
	}
}

// elsewhere lists the fields a single node's replies cannot show here, and the test that sees them
// filled in from a real cluster.
var elsewhere = map[string]string{
	"Cluster.Nodes.DrainDeadline":        "only while a node drains: testNoPlacementWhileDraining (drain_test.go)",
	"WorkerPoll.Assignments.Resumed":     "only on an attempt after a wait: TestAWorkerWaitsForChildrenThroughTheProtocol (wait_test.go)",
	"WorkerPoll.Assignments.Children":    "only on an attempt after a wait: TestAWorkerWaitsForChildrenThroughTheProtocol (wait_test.go)",
	"Task.TraceID":                       "only for a submit with a traceparent header: TestTracesFollowATaskThatRetriedThroughAFollower (tracing_test.go)",
	"WorkerPoll.Assignments.Traceparent": "only for a traced task: TestWorkerAssignmentCarriesTheTraceparent (tracing_test.go)",
	"Cluster.TraceURLTemplate":           "only with --trace-url-template: TestAgentsExportATasksSpansOverOTLP (e2e/tracing_test.go)",
}

func checkFields(t *testing.T, path string, typ reflect.Type, objs []any) {
	t.Helper()
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		if typ == rawType {
			return
		}
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == timeType {
		return
	}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		var sub []any
		seen := false
		for _, o := range objs {
			m, ok := o.(map[string]any)
			if !ok {
				continue
			}
			v, ok := m[name]
			if !ok {
				continue
			}
			seen = true
			if arr, ok := v.([]any); ok {
				sub = append(sub, arr...)
			} else if v != nil {
				sub = append(sub, v)
			}
		}
		if !seen {
			if elsewhere[path+"."+f.Name] == "" {
				t.Errorf("%s.%s (json %q) never appears in the node's replies: is it filled in internal/endpoint/convert.go?", path, f.Name, name)
			}
			continue // a field seen elsewhere is checked, with what it holds, there
		}
		checkFields(t, path+"."+f.Name, f.Type, sub)
	}
}

// workerCoverage plays a worker through the protocol's routes, a cancel included, and leaves a
// task pending with a reason and the worker up, for the cluster and task replies read after it.
func workerCoverage(t *testing.T, n *Node, cov coverage) {
	t.Helper()
	call := func(what, method, path, body string, want int, into any) {
		t.Helper()
		code, b := getRaw(t, n, method, path, body)
		if code != want {
			t.Fatalf("%s: %d %s", what, code, b)
		}
		decodeExact(t, what, b, into)
		cov.add(t, reflect.TypeOf(into).Elem(), b)
	}
	var sess api.WorkerSession
	call("POST /v1/workers", "POST", api.PathWorkers, `{"name":"cov","capacity":2,"lease":"5s","labels":{"zone":"a"},
		"types":[{"type":"py-cov","version":"1","description":"covers","example_input":"hi"}]}`, http.StatusCreated, &sess)
	base := api.PathWorkers + "/" + sess.ID
	task := submitRawTo(t, n, `{"type":"py-cov","input":"x"}`)
	var poll api.WorkerPoll
	call("POST /v1/workers/{id}/poll", "POST", base+"/poll", `{"wait":"2s"}`, http.StatusOK, &poll)
	if len(poll.Assignments) != 1 {
		t.Fatalf("poll: %+v", poll)
	}
	if code, b := getRaw(t, n, "POST", "/v1/tasks/"+task.ID+"/cancel", ""); code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", code, b)
	}
	call("POST /v1/workers/{id}/poll (cancel)", "POST", base+"/poll", `{}`, http.StatusOK, &poll)
	if len(poll.Cancel) != 1 {
		t.Fatalf("poll after a cancel: %+v", poll)
	}
	ev := fmt.Sprintf(`{"events":[{"task_id":%q,"attempt":1,"kind":"log","stream":"log","level":"info","line":"stopping"},
		{"task_id":%q,"attempt":1,"kind":"cancelled"},{"task_id":"nope","attempt":1,"kind":"succeeded","result":1}]}`, task.ID, task.ID)
	var res api.WorkerEventResults
	call("POST /v1/workers/{id}/events", "POST", base+"/events", ev, http.StatusOK, &res)
	if len(res.Results) != 3 || !res.Results[0].OK || !res.Results[1].OK || res.Results[2].Code != api.CodeStaleAttempt {
		t.Fatalf("events: %+v", res)
	}
	call("POST /v1/workers/{id}/drain", "POST", base+"/drain", "", http.StatusOK, new(api.WorkerDrained))
	call("DELETE /v1/workers/{id}", "DELETE", base, "", http.StatusOK, new(api.WorkerLeft))
	// A worker left up, and a task of a version nobody offers, pending with its reason.
	call("POST /v1/workers", "POST", api.PathWorkers, `{"name":"cov2","capacity":1,"labels":{"zone":"b"},
		"types":[{"type":"py-cov","description":"covers","example_input":"hi"}]}`, http.StatusCreated, &sess)
	pending := submitRawTo(t, n, `{"type":"py-cov","version":"7","input":"x"}`)
	waitFor(t, "a pending reason", 10*time.Second, func() bool {
		code, b := getRaw(t, n, "GET", "/v1/tasks/"+pending.ID, "")
		var tk api.Task
		decodeExact(t, "GET /v1/tasks/{id} (pending)", b, &tk)
		if code == http.StatusOK && tk.PendingReason != "" {
			cov.add(t, reflect.TypeOf(api.Task{}), b)
			return true
		}
		return false
	})
}

func submitRawTo(t *testing.T, n *Node, body string) api.Task {
	t.Helper()
	code, b := getRaw(t, n, "POST", "/v1/tasks", body)
	if code != http.StatusCreated {
		t.Fatalf("submit %s: %d %s", body, code, b)
	}
	var task api.Task
	decodeExact(t, "POST /v1/tasks", b, &task)
	return task
}

// parentRegistry adds "parent": it submits an echo child (so parent_id shows) and returns its ID;
// "final-fail", and "wait-parent", which waits for a child.
func parentRegistry(t *testing.T) func(int) *tasks.Registry {
	return func(int) *tasks.Registry {
		reg, err := tasks.NewBuiltinRegistry(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := tasks.Func(tasks.Definition{Name: "parent", Version: "1"}, func(ctx *tasks.Context, _ any) (string, error) {
			return ctx.Submit(tasks.ChildTask{Type: "echo", Input: "child", MaxAttempts: 2, Timeout: time.Minute})
		})
		if err := reg.Register(h); err != nil {
			t.Fatal(err)
		}
		// "wait-parent" waits for a sleeping child (wait_for and wait_left show while it waits).
		waiting := tasks.Func(tasks.Definition{Name: "wait-parent", Version: "1"}, func(ctx *tasks.Context, _ any) (int, error) {
			id, err := ctx.Submit(tasks.ChildTask{Type: "sleep", Input: map[string]int{"ms": 300}, IdempotencyKey: ctx.TaskID + "/child"})
			if err != nil {
				return 0, err
			}
			res, err := ctx.WaitChildren(id)
			return len(res), err
		})
		if err := reg.Register(waiting); err != nil {
			t.Fatal(err)
		}
		final := tasks.Func(tasks.Definition{Name: "final-fail", Version: "1"}, func(*tasks.Context, any) (any, error) {
			return nil, tasks.Finalf("no retry can fix this")
		})
		if err := reg.Register(final); err != nil {
			t.Fatal(err)
		}
		return reg
	}
}

// TestEveryRouteMatchesItsAPIType pins the JSON of every route to its api type, both ways: every
// field the node sends is declared in the api type (DisallowUnknownFields), and every field the
// api type declares is sent. A wire field added on one side only fails here.
func TestEveryRouteMatchesItsAPIType(t *testing.T) {
	longTest(t)
	tc := startCluster(t, 1, clusterOpts{inmem: true, registry: parentRegistry(t)})
	n := tc.nodes[0]
	cov := coverage{}
	taskType := reflect.TypeOf(api.Task{})

	// followTask records every version of a task's record through blocking queries until it ends.
	followTask := func(id string) {
		var index uint64
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			code, b := getRaw(t, n, "GET", fmt.Sprintf("/v1/tasks/%s?wait=10s&index=%d", id, index), "")
			if code != http.StatusOK {
				t.Fatalf("GET task %s: %d %s", id, code, b)
			}
			var task api.Task
			decodeExact(t, "GET /v1/tasks/{id}", b, &task)
			cov.add(t, taskType, b)
			if api.IsTerminal(task.State) {
				return
			}
			index = task.ModifyIndex
		}
		t.Fatalf("task %s did not end", id)
	}
	submitRaw := func(body string) api.Task {
		code, b := getRaw(t, n, "POST", "/v1/tasks", body)
		if code != http.StatusCreated {
			t.Fatalf("submit %s: %d %s", body, code, b)
		}
		var task api.Task
		decodeExact(t, "POST /v1/tasks", b, &task)
		cov.add(t, taskType, b)
		return task
	}

	// A retried task (not_before, failures, error), a checkpointing one, a parent with a child
	// (parent_id), and a cancelled running one (cancel_requested).
	flaky := submitRaw(`{"type":"flaky","input":{"fail_attempts":1},"idempotency_key":"k1"}`)
	counter := submitRaw(`{"type":"count","input":{"to":3,"step_ms":20}}`)
	parent := submitRaw(`{"type":"parent","input":null}`)
	sleeper := submitRaw(`{"type":"sleep","input":{"ms":60000}}`)
	waitFor(t, "sleep running", 20*time.Second, func() bool {
		task, _ := n.FSM().Task(sleeper.ID)
		return task.State == "running"
	})
	code, b := getRaw(t, n, "POST", "/v1/tasks/"+sleeper.ID+"/cancel", "")
	if code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/tasks/{id}/cancel", b, new(api.Task))
	cov.add(t, taskType, b)
	for _, id := range []string{flaky.ID, counter.ID, parent.ID, sleeper.ID} {
		followTask(id)
	}
	code, b = getRaw(t, n, "POST", "/v1/tasks?wait=20s", `{"type":"print","input":"hi","idempotency_key":"k1"}`)
	if code != http.StatusOK { // the key was seen: the existing record
		t.Fatalf("idempotent resubmit: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/tasks (existing)", b, new(api.Task))

	code, b = getRaw(t, n, "GET", "/v1/tasks", "")
	var list []api.Task
	decodeExact(t, "GET /v1/tasks", b, &list)
	cov.add(t, taskType, b)
	if code != http.StatusOK || len(list) != 5 {
		t.Fatalf("list: %d, %d tasks", code, len(list))
	}

	// A parent that waits for its child (wait_for, wait_left).
	followTask(submitRaw(`{"type":"wait-parent"}`).ID)

	code, b = getRaw(t, n, "POST", "/v1/tasks/batch", `{"tasks":[{"type":"echo","input":1},{"type":"no-such-type"}]}`)
	if code != http.StatusOK {
		t.Fatalf("batch: %d %s", code, b)
	}
	var batch api.BatchSubmitReply
	decodeExact(t, "POST /v1/tasks/batch", b, &batch)
	if len(batch.Results) != 2 || batch.Results[0].Task == nil || batch.Results[1].Error == nil {
		t.Fatalf("batch: %s", b)
	}

	// A schedule's trigger: a task that records its schedule. The schedule's own JSON is pinned
	// one way (every field sent is declared); some of its fields need ACLs or a failing tick.
	code, b = getRaw(t, n, "PUT", "/v1/schedules/sq", `{"cron":"@every 1h","time_zone":"UTC","type":"echo","input":1,"start":"2026-01-01T00:00:00Z","end":"2036-01-01T00:00:00Z"}`)
	if code != http.StatusCreated {
		t.Fatalf("put schedule: %d %s", code, b)
	}
	decodeExact(t, "PUT /v1/schedules/{name}", b, new(api.Schedule))
	code, b = getRaw(t, n, "POST", "/v1/schedules/sq/trigger", "")
	if code != http.StatusCreated {
		t.Fatalf("trigger: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/schedules/{name}/trigger", b, new(api.Task))
	cov.add(t, taskType, b)
	code, b = getRaw(t, n, "GET", "/v1/schedules", "")
	if code != http.StatusOK {
		t.Fatalf("list schedules: %d %s", code, b)
	}
	decodeExact(t, "GET /v1/schedules", b, new([]api.Schedule))
	// Unique key, final error, retry (by, final) and purge.
	final := submitRaw(`{"type":"final-fail","unique_key":"u1","unique_for":"1h","max_attempts":3}`)
	followTask(final.ID)
	code, b = getRaw(t, n, "POST", "/v1/tasks/"+final.ID+"/retry", "")
	if code != http.StatusAccepted {
		t.Fatalf("retry: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/tasks/{id}/retry", b, new(api.Task))
	cov.add(t, taskType, b)
	followTask(final.ID)
	code, b = getRaw(t, n, "POST", "/v1/tasks", `{"type":"final-fail","unique_key":"u1","unique_for":"1h"}`)
	if code != http.StatusConflict {
		t.Fatalf("duplicate unique key: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/tasks (duplicate unique key)", b, new(api.Error))
	cov.add(t, reflect.TypeOf(api.Error{}), b)
	code, b = getRaw(t, n, "POST", api.PathTasksPurge, `{"type":"final-fail","state":"failed"}`)
	if code != http.StatusOK {
		t.Fatalf("purge: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/tasks/purge", b, new(api.PurgeReply))
	cov.add(t, reflect.TypeOf(api.PurgeReply{}), b)
	// A delayed task in a named queue with a priority (run_at, priority, queue), and the queue
	// and type limit routes.
	delayed := submitRaw(`{"type":"print","input":"later","delay":"300ms","priority":3,"queue":"mail"}`)
	if delayed.State != api.StateScheduled || delayed.RunAt == nil || delayed.Queue != "mail" || delayed.Priority != 3 {
		t.Fatalf("delayed submit: %+v", delayed)
	}
	followTask(delayed.ID)
	for _, r := range []struct {
		path, body string
		into       any
	}{
		{"/v1/queues/mail", `{"limit":3,"paused":false,"concurrency_key":"tenant-{/tenant}","concurrency_limit":2}`, new(api.Queue)},
		{"/v1/type-limits/print", `{"limit":2}`, new(api.TypeLimit)},
	} {
		code, b := getRaw(t, n, "POST", r.path, r.body)
		if code != http.StatusOK {
			t.Fatalf("POST %s: %d %s", r.path, code, b)
		}
		decodeExact(t, "POST "+r.path, b, r.into)
		cov.add(t, reflect.TypeOf(r.into).Elem(), b)
	}

	// A rate limit's routes, and a task under it that is debounced (rate_limit, rate_limit_key,
	// debounce_key, debounce).
	code, b = getRaw(t, n, "POST", api.PathRateLimits+"/rl", `{"rate":"50/s","burst":5}`)
	if code != http.StatusOK {
		t.Fatalf("set rate limit: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/rate-limits/{name}", b, new(api.RateLimit))
	cov.add(t, reflect.TypeOf(api.RateLimit{}), b)
	code, b = getRaw(t, n, "GET", api.PathRateLimits+"/rl?key=t1", "")
	if code != http.StatusOK {
		t.Fatalf("get rate limit: %d %s", code, b)
	}
	decodeExact(t, "GET /v1/rate-limits/{name}", b, new(api.RateLimit))
	limited := submitRaw(`{"type":"print","input":"paced","rate_limit":"rl","rate_limit_key":"t1","debounce_key":"d1","debounce":"200ms"}`)
	if limited.RateLimit != "rl" || limited.RateLimitKey != "t1" || limited.DebounceKey != "d1" || limited.Debounce != "200ms" {
		t.Fatalf("rate-limited, debounced submit: %+v", limited)
	}
	followTask(limited.ID)

	// A task under a concurrency key (concurrency_key, concurrency_limit).
	keyed := submitRaw(`{"type":"print","input":"keyed","concurrency_key":"k1","concurrency_limit":2}`)
	if keyed.ConcurrencyKey != "k1" || keyed.ConcurrencyLimit != 2 {
		t.Fatalf("keyed submit: %+v", keyed)
	}
	followTask(keyed.ID)

	// Logs: the print task of a fresh submit writes a stdout line, the count task log lines.
	printed := submitRaw(`{"type":"print","input":"hello"}`)
	followTask(printed.ID)
	for _, id := range []string{printed.ID, counter.ID} {
		code, b = getRaw(t, n, "GET", "/v1/tasks/"+id+"/logs", "")
		if code != http.StatusOK {
			t.Fatalf("logs: %d %s", code, b)
		}
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			decodeExact(t, "GET /v1/tasks/{id}/logs", line, new(api.LogLine))
			cov.add(t, reflect.TypeOf(api.LogLine{}), line)
		}
	}

	workerCoverage(t, n, cov)

	for _, r := range []struct {
		path string
		into any
	}{
		{"/v1/cluster", new(api.Cluster)},
		{api.PathWorkers, new([]api.WorkerInfo)},
		{"/v1/types", new([]api.TypeInfo)},
		{"/v1/health", new(api.Health)},
		{api.PathThroughput, new(api.Throughput)},
		{api.PathQueues, new(api.QueueList)},
		{api.PathTypeLimits, new(api.TypeLimitList)},
		{api.PathRateLimits, new(api.RateLimitList)},
	} {
		code, b := getRaw(t, n, "GET", r.path, "")
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", r.path, code, b)
		}
		decodeExact(t, "GET "+r.path, b, r.into)
		cov.add(t, reflect.TypeOf(r.into).Elem(), b)
	}

	code, b = getRaw(t, n, "GET", "/v1/tasks/nope", "")
	decodeExact(t, "GET /v1/tasks/{unknown}", b, new(api.Error))
	cov.add(t, reflect.TypeOf(api.Error{}), b)
	if code != http.StatusNotFound {
		t.Fatalf("unknown task: %d", code)
	}

	// Last: this node leaves (forced, as the only one).
	code, b = getRaw(t, n, "POST", "/v1/agent/leave?force=true", "")
	if code != http.StatusAccepted {
		t.Fatalf("leave: %d %s", code, b)
	}
	decodeExact(t, "POST /v1/agent/leave", b, new(api.LeaveReply))
	cov.add(t, reflect.TypeOf(api.LeaveReply{}), b)

	// A node whose FSM halted (a log entry this build cannot apply) says why in its health.
	halted := startCluster(t, 1, clusterOpts{twin: true}).nodes[0]
	halted.FSM().Apply(&raft.Log{Type: raft.LogCommand, Index: halted.FSM().Index() + 1, Data: []byte{99, 0x80}})
	code, b = getRaw(t, halted, "GET", "/v1/health", "")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("health of a halted node: %d %s", code, b)
	}
	decodeExact(t, "GET /v1/health (halted)", b, new(api.Health))
	cov.add(t, reflect.TypeOf(api.Health{}), b)

	aclCoverage(t, cov)

	// []api.TypeInfo and []api.Task were added under their slice types: check their elements.
	for typ, objs := range cov {
		if typ.Kind() == reflect.Slice {
			cov[typ.Elem()] = append(cov[typ.Elem()], objs...)
			delete(cov, typ)
		}
	}
	cov.check(t)
	select {
	case <-n.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("leave did not finish")
	}
}
