package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/tracing/otlpreceiver"
)

const (
	e2eTrace       = "4bf92f3577b34da6a3ce929d0e0e4736"
	e2eTraceparent = "00-" + e2eTrace + "-00f067aa0ba902b7-01"
	e2eTraceLink   = "http://127.0.0.1:16686/trace/{trace_id}"
)

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
	recv := otlpreceiver.New()
	defer recv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
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
		for _, s := range recv.Spans() {
			if a := s.Attrs(); s.GetName() == "task.attempt" && a["taskworker.task.id"] == task.ID {
				outcomes = append(outcomes, a["taskworker.outcome"])
			}
		}
		return len(outcomes) == 2
	})
	names := map[string]bool{}
	for _, s := range recv.Spans() {
		names[s.GetName()] = true
		if s.Trace() != e2eTrace || s.Resource["taskworker.node"] == "" || s.Resource["service.name"] != "tw-e2e" {
			t.Errorf("span %s from %v in trace %s, want %s from a node of service tw-e2e", s.GetName(), s.Resource, s.Trace(), e2eTrace)
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
