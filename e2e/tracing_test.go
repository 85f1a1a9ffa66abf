package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/taskworker/taskworker/api"
)

const (
	e2eTrace       = "4bf92f3577b34da6a3ce929d0e0e4736"
	e2eTraceparent = "00-" + e2eTrace + "-00f067aa0ba902b7-01"
	e2eTraceLink   = "http://127.0.0.1:16686/trace/{trace_id}"
)

// exportedSpan is what the receiver keeps of a span: its name, trace, exporting node and
// attributes.
type exportedSpan struct {
	name, trace, node string
	attrs             map[string]string
}

// newSpanReceiver is an OTLP/HTTP receiver on 127.0.0.1 that decodes the protobuf exports.
func newSpanReceiver(t *testing.T) (url string, spans func() []exportedSpan) {
	var mu sync.Mutex
	var got []exportedSpan
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var msg coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &msg) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range msg.GetResourceSpans() {
			node := ""
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "taskworker.node" {
					node = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					a := map[string]string{}
					for _, kv := range s.GetAttributes() {
						a[kv.GetKey()] = kv.GetValue().GetStringValue()
					}
					got = append(got, exportedSpan{name: s.GetName(), trace: hex.EncodeToString(s.GetTraceId()), node: node, attrs: a})
				}
			}
		}
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []exportedSpan {
		mu.Lock()
		defer mu.Unlock()
		return append([]exportedSpan(nil), got...)
	}
}

func submitTraced(t *testing.T, addr, body string) api.Task {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/tasks", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", e2eTraceparent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var task api.Task
	if err := json.NewDecoder(resp.Body).Decode(&task); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("submit: status %d, %v", resp.StatusCode, err)
	}
	return task
}

// Real agents, configured by the OTEL_* environment only, export the spans of a task submitted
// with a traceparent to every node's OTLP endpoint; the record and GET /v1/cluster carry the
// trace ID and the link template.
func TestAgentsExportATasksSpansOverOTLP(t *testing.T) {
	url, spans := newSpanReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
	t.Setenv("OTEL_SERVICE_NAME", "tw-e2e")
	pc := startProcCluster(t, 2, "--trace-url-template", e2eTraceLink)
	via := pc.procs[1]
	task := submitTraced(t, via.HTTP, `{"type": "flaky", "input": {"fail_attempts": 1}, "max_attempts": 3}`)
	if task.TraceID != e2eTrace {
		t.Fatalf("trace_id = %q, want %s", task.TraceID, e2eTrace)
	}
	waitTasks(t, "succeeded", 60*time.Second, []string{task.ID}, via)
	var c api.Cluster
	if err := via.getJSON("/v1/cluster", &c); err != nil || c.TraceURLTemplate != e2eTraceLink {
		t.Errorf("GET /v1/cluster trace_url_template = %q (%v), want %s", c.TraceURLTemplate, err, e2eTraceLink)
	}
	var outcomes []string
	poll(t, "both attempts' spans exported", 60*time.Second, func() bool {
		outcomes = outcomes[:0]
		for _, s := range spans() {
			if s.name == "task.attempt" && s.attrs["taskworker.task.id"] == task.ID {
				outcomes = append(outcomes, s.attrs["taskworker.outcome"])
			}
		}
		return len(outcomes) == 2
	})
	names := map[string]bool{}
	for _, s := range spans() {
		names[s.name] = true
		if s.trace != e2eTrace || s.node == "" {
			t.Errorf("span %s from node %q in trace %s, want %s", s.name, s.node, s.trace, e2eTrace)
		}
	}
	for _, want := range []string{"POST /v1/tasks", "raft.apply", "task.placement", "task.attempt"} {
		if !names[want] {
			t.Errorf("no %s span exported (got %v)", want, names)
		}
	}
	if !strings.Contains(strings.Join(outcomes, " "), "failed") || !strings.Contains(strings.Join(outcomes, " "), "succeeded") {
		t.Errorf("attempt outcomes = %v, want one failed and one succeeded", outcomes)
	}
}

// An agent refuses to start with a trace link that is not an http or https URL.
func TestAgentRefusesATraceLinkThatIsNotAnHTTPURL(t *testing.T) {
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "agent", "--dev", "--http-addr", "127.0.0.1:0", "--trace-url-template", "javascript:alert(1)//{trace_id}")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || ctx.Err() != nil {
		t.Fatalf("an agent with a javascript: trace link: %v, want a non-zero exit\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "--trace-url-template") {
		t.Fatalf("the refusal does not name --trace-url-template:\n%s", stderr.String())
	}
}

// The console's task page links a traced task to the trace viewer the agent names.
func TestConsoleLinksATaskToItsTrace(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 1, "--trace-url-template", e2eTraceLink)
	b := newBrowser(t)
	via := pc.procs[0]
	task := submitTraced(t, via.HTTP, `{"type": "echo", "input": 1}`)
	b.run("open the task", chromedp.Navigate("http://"+via.HTTP+"/ui/#/task/"+task.ID))
	want := strings.ReplaceAll(e2eTraceLink, "{trace_id}", e2eTrace)
	b.until("a link to its trace", `document.querySelector('#trace-link')?.href === '`+want+`'`)
	if rel := eval[string](b, `document.querySelector('#trace-link').rel`); !strings.Contains(rel, "noopener") {
		t.Errorf("the trace link's rel = %q, want noopener", rel)
	}
	b.noErrors("the trace link")
}
