package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// The log route answers JSON lines; the document describes them as an array of LogLine.
func init() {
	openapi3filter.RegisterBodyDecoder("application/x-ndjson",
		func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
			dec := json.NewDecoder(body)
			lines := []any{}
			for {
				var v any
				if err := dec.Decode(&v); errors.Is(err, io.EOF) {
					return lines, nil
				} else if err != nil {
					return nil, fmt.Errorf("line %d: %w", len(lines)+1, err)
				}
				lines = append(lines, v)
			}
		})
}

// specChecker sends requests to a real node and validates each request and response against
// docs/openapi.yaml.
type specChecker struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	base   string
	token  string
	seen   map[string]bool // "METHOD /path/template" of every operation called
}

func loadSpec(t *testing.T, base string) *specChecker {
	t.Helper()
	ctx := context.Background()
	doc, err := openapi3.NewLoader().LoadFromFile("../docs/openapi.yaml")
	if err != nil {
		t.Fatalf("load docs/openapi.yaml: %v", err)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("docs/openapi.yaml is not valid OpenAPI 3: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: base}} // the node under test, on its free port
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &specChecker{t: t, doc: doc, router: router, base: base, seen: map[string]bool{}}
}

// call is one request of the test.
type call struct {
	method, path string
	body         string // JSON unless contentType says otherwise
	contentType  string // default application/json when there is a body
	token        string // "-": none; "": the checker's token
	status       int    // the status the server must answer
	code         string // the error code, for an error status
	specRejects  bool   // the document itself already rejects the request
}

// do sends c, checks its status, and validates the request (or that the document rejects it)
// and the response against the document. It returns the response body.
func (s *specChecker) do(c call) []byte {
	s.t.Helper()
	newReq := func() *http.Request {
		var body io.Reader
		if c.body != "" {
			body = strings.NewReader(c.body)
		}
		req, err := http.NewRequest(c.method, s.base+c.path, body)
		if err != nil {
			s.t.Fatal(err)
		}
		if c.body != "" {
			ct := c.contentType
			if ct == "" {
				ct = "application/json"
			}
			req.Header.Set("Content-Type", ct)
		}
		switch tok := c.token; {
		case tok == "-":
		case tok != "":
			req.Header.Set("Authorization", "Bearer "+tok)
		case s.token != "":
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		return req
	}
	what := c.method + " " + c.path

	vreq := newReq()
	route, params, err := s.router.FindRoute(vreq)
	if err != nil {
		s.t.Fatalf("%s: no route in docs/openapi.yaml: %v", what, err)
	}
	s.seen[c.method+" "+route.Path] = true
	in := &openapi3filter.RequestValidationInput{
		Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	err = openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case c.specRejects && err == nil:
		s.t.Errorf("%s: docs/openapi.yaml accepts a request the server rejects with %d %s", what, c.status, c.code)
	case !c.specRejects && err != nil:
		s.t.Errorf("%s: request does not match docs/openapi.yaml: %v", what, err)
	}

	resp, err := http.DefaultClient.Do(newReq())
	if err != nil {
		s.t.Fatalf("%s: %v", what, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		s.t.Fatalf("%s: read body: %v", what, err)
	}
	if resp.StatusCode != c.status {
		s.t.Fatalf("%s: status %d, want %d; body %s", what, resp.StatusCode, c.status, body)
	}
	if c.code != "" {
		var e struct {
			Code string `json:"code"`
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Code != c.code {
			s.t.Errorf("%s: body %s, want code %s", what, body, c.code)
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		s.t.Errorf("%s: %d response does not match docs/openapi.yaml: %v\nbody: %.2000s", what, resp.StatusCode, err, body)
	}
	return body
}

// uncalled lists the document's operations no call reached.
func (s *specChecker) uncalled() []string {
	var out []string
	for path, item := range s.doc.Paths.Map() {
		for method := range item.Operations() {
			if !s.seen[method+" "+path] {
				out = append(out, method+" "+path)
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIDocumentMatchesRealResponses runs a real node (with a token, so access errors are
// covered too) and calls every route of docs/openapi.yaml: the successes and the error answers
// each documents. Every request and response must match the document, and a request the server
// rejects for its shape must be one the document rejects as well.
func TestOpenAPIDocumentMatchesRealResponses(t *testing.T) {
	pc := newProcCluster(t)
	n := pc.add("--token", "s3cret")
	s := loadSpec(t, "http://"+n.HTTP)
	s.token = "s3cret"
	poll(t, n.Name+" healthy", 60*time.Second, func() bool {
		resp, err := http.Get("http://" + n.HTTP + "/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	operator := managementCredential(t, n) // the operator routes' credential, from the node's data dir
	s.do(call{method: "GET", path: "/v1/health", token: "-", status: 200})
	s.do(call{method: "GET", path: "/metrics", token: "-", status: 200})
	s.do(call{method: "GET", path: "/v1/cluster", status: 200})
	s.do(call{method: "GET", path: "/v1/types", status: 200})
	s.do(call{method: "GET", path: "/v1/stats/throughput", status: 200})
	s.do(call{method: "GET", path: "/v1/cluster?index=1&wait=10ms", status: 200})

	// The worker protocol: a session's life, and its refusals.
	var sess struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(s.do(call{method: "POST", path: "/v1/workers", status: 201,
		body: `{"name": "spec-worker", "capacity": 2, "lease": "5s", "labels": {"zone": "a"}, "types": [{"type": "py-spec", "description": "d", "example_input": "hi"}]}`}), &sess); err != nil {
		t.Fatal(err)
	}
	s.do(call{method: "POST", path: "/v1/workers", status: 400, code: "invalid_worker", specRejects: true, body: `{"name": "bad name", "capacity": 1, "types": [{"type": "x"}]}`})
	s.do(call{method: "POST", path: "/v1/workers", status: 409, code: "worker_exists", body: `{"name": "spec-worker", "capacity": 1, "types": [{"type": "x"}]}`})
	s.do(call{method: "GET", path: "/v1/workers", status: 200})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/poll", body: `{"wait": "10ms"}`, status: 200})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/events", status: 200,
		body: `{"events": [{"task_id": "nope", "attempt": 1, "kind": "failed", "error": {"type": "ValueError", "message": "bad", "final": false}}]}`})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/drain", status: 200})
	s.do(call{method: "DELETE", path: "/v1/workers/" + sess.ID, status: 200})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/poll", body: `{}`, status: 404, code: "unknown_worker"})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/events", body: `{"events": []}`, status: 404, code: "unknown_worker"})
	s.do(call{method: "POST", path: "/v1/workers/" + sess.ID + "/drain", status: 404, code: "unknown_worker"})
	// A DELETE tried again (its reply lost) answers as the one that ended the session; a session
	// the node never had answers 404.
	s.do(call{method: "DELETE", path: "/v1/workers/" + sess.ID, status: 200})
	s.do(call{method: "DELETE", path: "/v1/workers/0123456789abcdef0123456789abcdef", status: 404, code: "unknown_worker"})
	s.do(call{method: "GET", path: "/v1/tasks?index=1&wait=10ms", status: 200})

	var task struct {
		ID          string `json:"id"`
		ModifyIndex uint64 `json:"modify_index"`
		State       string `json:"state"`
	}
	decode := func(b []byte, v any) {
		t.Helper()
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
	}
	decode(s.do(call{method: "POST", path: "/v1/tasks?wait=20s", body: `{"type": "calc-square", "input": 12}`, status: 201}), &task)
	if task.State != "succeeded" {
		t.Fatalf("calc-square ended %s", task.State)
	}
	done := task
	idem := `{"type": "echo", "input": {"a": [1, null]}, "idempotency_key": "k1", "max_attempts": 2, "timeout": "5s"}`
	s.do(call{method: "POST", path: "/v1/tasks", body: idem, status: 201})
	s.do(call{method: "POST", path: "/v1/tasks", body: idem, status: 200})
	batch := s.do(call{method: "POST", path: "/v1/tasks/batch", status: 200,
		body: `{"tasks": [{"type": "echo", "input": 1}, {"type": "no-such-type"}, {"type": "echo", "idempotency_key": "k1"}]}`})
	if !strings.Contains(string(batch), `"status":201`) || !strings.Contains(string(batch), `"code":"unknown_task_type"`) || !strings.Contains(string(batch), `"status":200`) {
		t.Errorf("batch submit: %s", batch)
	}

	s.do(call{method: "GET", path: "/v1/tasks/" + done.ID, status: 200})
	s.do(call{method: "GET", path: fmt.Sprintf("/v1/tasks/%s?wait=200ms&index=%d", done.ID, done.ModifyIndex), status: 200})
	s.do(call{method: "GET", path: "/v1/tasks?state=succeeded&type=calc-square&limit=10", status: 200})
	s.do(call{method: "GET", path: "/v1/tasks?after=" + done.ID + "&execution=" + done.ID + "&node=n1", status: 200})
	logs := s.do(call{method: "GET", path: "/v1/tasks/" + done.ID + "/logs", status: 200})
	if !strings.Contains(string(logs), "Calculating square of 12") {
		t.Errorf("logs of calc-square: %s", logs)
	}
	s.do(call{method: "GET", path: "/v1/tasks/" + done.ID + "/logs?follow=true", status: 200})

	var sleeper struct {
		ID string `json:"id"`
	}
	decode(s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "sleep", "input": {"ms": 60000}}`, status: 201}), &sleeper)
	s.do(call{method: "POST", path: "/v1/tasks/" + sleeper.ID + "/cancel", status: 202})

	// Delays, priorities and queues.
	var later struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	decode(s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "delay": "1h", "priority": 5, "queue": "mail"}`, status: 201}), &later)
	if later.State != "scheduled" {
		t.Errorf("delayed task: state %s, want scheduled", later.State)
	}
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "run_at": "` + time.Now().Add(24*time.Hour).UTC().Format(time.RFC3339) + `", "priority": -3}`, status: 201})
	s.do(call{method: "GET", path: "/v1/tasks?state=scheduled&queue=mail", status: 200})
	s.do(call{method: "POST", path: "/v1/queues/mail", body: `{"limit": 3, "paused": true}`, status: 200})
	s.do(call{method: "POST", path: "/v1/queues/mail", body: `{"paused": false}`, status: 200})
	s.do(call{method: "GET", path: "/v1/queues", status: 200})
	s.do(call{method: "POST", path: "/v1/type-limits/echo", body: `{"limit": 2}`, status: 200})
	s.do(call{method: "GET", path: "/v1/type-limits", status: 200})
	s.do(call{method: "POST", path: "/v1/tasks/" + later.ID + "/cancel", status: 202})
	// Cancel is idempotent: the cancelled task answers a second cancel as the first.
	s.do(call{method: "POST", path: "/v1/tasks/" + later.ID + "/cancel", status: 202})
	s.do(call{method: "POST", path: "/v1/tasks/" + done.ID + "/cancel", status: 409, code: "already_finished"})

	// Rate limits and debounce.
	s.do(call{method: "POST", path: "/v1/rate-limits/api", body: `{"rate": "100/s", "burst": 200}`, status: 200})
	s.do(call{method: "POST", path: "/v1/rate-limits/api", body: `{"rate": "abc", "burst": 1}`, status: 400, code: "invalid_rate_limit", specRejects: true})
	s.do(call{method: "POST", path: "/v1/rate-limits/api", body: `{"rate": "10/s", "burst": 0}`, status: 400, code: "invalid_rate_limit", specRejects: true})
	s.do(call{method: "GET", path: "/v1/rate-limits", status: 200})
	s.do(call{method: "GET", path: "/v1/rate-limits/api?key=t1", status: 200})
	s.do(call{method: "GET", path: "/v1/rate-limits/nope", status: 404, code: "not_found"})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "rate_limit": "api", "rate_limit_key": "t1"}`, status: 201})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "rate_limit": "nope"}`, status: 400, code: "unknown_rate_limit"})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "input": 1, "debounce_key": "d", "debounce": "1h"}`, status: 201})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "input": 2, "debounce_key": "d", "debounce": "1h"}`, status: 200})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "debounce_key": "d", "debounce": "-1s"}`, status: 400, code: "invalid_debounce"})
	s.do(call{method: "DELETE", path: "/v1/rate-limits/api", status: 204})
	s.do(call{method: "DELETE", path: "/v1/rate-limits/api", status: 404, code: "not_found"})

	// Schedules.
	s.do(call{method: "PUT", path: "/v1/schedules/sq", body: `{"cron": "@every 1h", "type": "calc-square", "input": 3, "overlap": "buffer_one"}`, status: 201})
	s.do(call{method: "PUT", path: "/v1/schedules/sq", body: `{"cron": "0 9 * * *", "time_zone": "Europe/Paris", "type": "calc-square", "input": 3}`, status: 200})
	s.do(call{method: "GET", path: "/v1/schedules", status: 200})
	s.do(call{method: "GET", path: "/v1/schedules/sq", status: 200})
	s.do(call{method: "POST", path: "/v1/schedules/sq/pause", status: 200})
	s.do(call{method: "POST", path: "/v1/schedules/sq/resume", status: 200})
	s.do(call{method: "POST", path: "/v1/schedules/sq/trigger", status: 201})
	s.do(call{method: "DELETE", path: "/v1/schedules/sq", status: 204})
	s.do(call{method: "PUT", path: "/v1/schedules/sq", body: `{"cron": "every day", "type": "calc-square", "input": 3}`, status: 400, code: "invalid_schedule"})
	s.do(call{method: "GET", path: "/v1/schedules/sq", status: 404, code: "not_found"})
	// Workflows.
	var wf struct {
		ID string `json:"id"`
	}
	body := s.do(call{method: "POST", path: "/v1/workflows", body: `{"name": "sq", "steps": [{"name": "a", "type": "calc-square", "input": 3},
		{"name": "b", "type": "calc-square", "depends_on": ["a"], "input_from": "a"}, {"name": "s", "type": "sleep", "input": {"ms": 60000}}]}`, status: 201})
	if err := json.Unmarshal(body, &wf); err != nil || wf.ID == "" {
		t.Fatalf("workflow reply %s: %v", body, err)
	}
	s.do(call{method: "GET", path: "/v1/workflows", status: 200})
	s.do(call{method: "GET", path: "/v1/workflows?limit=0", status: 400, code: "invalid_limit"})
	s.do(call{method: "GET", path: "/v1/workflows/" + wf.ID, status: 200})
	s.do(call{method: "GET", path: "/v1/workflows/nope", status: 404, code: "not_found"})
	s.do(call{method: "POST", path: "/v1/workflows", body: `{"steps": [{"name": "a", "type": "echo", "depends_on": ["b"]}, {"name": "b", "type": "echo", "depends_on": ["a"]}]}`, status: 400, code: "invalid_workflow"})
	s.do(call{method: "POST", path: "/v1/workflows/" + wf.ID + "/cancel", status: 202})
	// Cancel is idempotent, as a task's: the cancelled workflow answers a second cancel as the
	// first; one that finished otherwise answers 409 already_finished.
	s.do(call{method: "POST", path: "/v1/workflows/" + wf.ID + "/cancel", status: 202})
	var quick struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	decode(s.do(call{method: "POST", path: "/v1/workflows", body: `{"steps": [{"name": "a", "type": "calc-square", "input": 2}]}`, status: 201}), &quick)
	poll(t, "workflow "+quick.ID+" succeeded", 20*time.Second, func() bool {
		decode(s.do(call{method: "GET", path: "/v1/workflows/" + quick.ID, status: 200}), &quick)
		return quick.State == "succeeded"
	})
	s.do(call{method: "POST", path: "/v1/workflows/" + quick.ID + "/cancel", status: 409, code: "already_finished"})
	// Unique keys, retry and purge.
	unique := `{"type": "echo", "input": 1, "unique_key": "u1", "unique_for": "1h"}`
	s.do(call{method: "POST", path: "/v1/tasks", body: unique, status: 201})
	s.do(call{method: "POST", path: "/v1/tasks", body: unique, status: 409, code: "duplicate_unique_key"})
	var failed struct {
		ID string `json:"id"`
	}
	decode(s.do(call{method: "POST", path: "/v1/tasks?wait=20s", body: `{"type": "fail", "input": "no", "max_attempts": 1}`, status: 201}), &failed)
	s.do(call{method: "POST", path: "/v1/tasks/" + failed.ID + "/retry", status: 202})
	s.do(call{method: "POST", path: "/v1/tasks/" + done.ID + "/retry", status: 409, code: "not_retryable"})
	s.do(call{method: "POST", path: "/v1/tasks/no-such-task/retry", status: 404, code: "not_found"})
	s.do(call{method: "POST", path: "/v1/tasks/purge", body: `{"state": "succeeded", "type": "calc-square", "finished_before": "2000-01-01T00:00:00Z", "limit": 5}`, status: 200})
	s.do(call{method: "POST", path: "/v1/tasks/purge", body: `{"state": "pending"}`, status: 400, code: "invalid_purge", specRejects: true})
	s.do(call{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "unique_key": "u2"}`, status: 400, code: "invalid_unique"})

	// Error answers.
	for _, c := range []call{
		{method: "GET", path: "/v1/tasks/no-such-task", status: 404, code: "not_found"},
		{method: "POST", path: "/v1/tasks/batch", body: `{"tasks": []}`, status: 400, code: "empty_batch", specRejects: true},
		{method: "GET", path: "/v1/tasks/no-such-task/logs", status: 404, code: "not_found"},
		{method: "POST", path: "/v1/tasks/no-such-task/cancel", status: 404, code: "not_found"},
		{method: "POST", path: "/v1/tasks", body: `{"input": 1}`, status: 400, code: "missing_type", specRejects: true},
		{method: "POST", path: "/v1/tasks", body: `{"type": "nope"}`, status: 400, code: "unknown_task_type"},
		{method: "POST", path: "/v1/tasks", body: `{"type": "calc-square", "input": "twelve"}`, status: 400, code: "invalid_input"},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "colour": "red"}`, status: 400, code: "invalid_request", specRejects: true},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "max_attempts": -1}`, status: 400, code: "invalid_max_attempts", specRejects: true},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "timeout": "soon"}`, status: 400, code: "invalid_timeout"},
		{method: "POST", path: "/v1/tasks?wait=later", body: `{"type": "echo"}`, status: 400, code: "invalid_wait"},
		{method: "POST", path: "/v1/tasks", body: `type=echo`, contentType: "text/plain", status: 415, code: "unsupported_media_type", specRejects: true},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "input": "` + strings.Repeat("x", 2<<20) + `"}`, status: 413, code: "body_too_large"},
		{method: "GET", path: "/v1/tasks?state=bogus", status: 400, code: "invalid_state", specRejects: true},
		{method: "GET", path: "/v1/tasks?limit=0", status: 400, code: "invalid_limit", specRejects: true},
		{method: "GET", path: "/v1/tasks/" + done.ID + "?index=-1", status: 400, code: "invalid_index", specRejects: true},
		{method: "GET", path: "/v1/tasks/" + done.ID + "?wait=later", status: 400, code: "invalid_wait"},
		{method: "GET", path: "/v1/cluster", token: "-", status: 401, code: "unauthorized"},
		{method: "GET", path: "/v1/cluster?index=x&wait=1s", status: 400, code: "invalid_index", specRejects: true},
		{method: "GET", path: "/v1/types", token: "wrong", status: 403, code: "forbidden"},
		{method: "POST", path: "/v1/agent/leave", status: 409, code: "leave_refused"},
		{method: "GET", path: "/v1/acl/policies", status: 400, code: "acl_disabled"},
		{token: operator, method: "GET", path: "/v1/operator/join-token", status: 200},
		{token: operator, method: "POST", path: "/v1/operator/join-token/rotate", status: 200},
		{token: operator, method: "GET", path: "/v1/operator/keyring", status: 200},
		{token: operator, method: "GET", path: "/v1/operator/digest", status: 200},
		{token: operator, method: "POST", path: "/v1/operator/keyring", body: `{"op": "install", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`, status: 200},
		{token: operator, method: "POST", path: "/v1/operator/keyring", body: `{"op": "use", "key": "AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`, status: 400, code: "invalid_request"},
		{token: operator, method: "POST", path: "/v1/operator/keyring", body: `{"op": "rotate", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`, status: 400, code: "invalid_request", specRejects: true},
		{method: "GET", path: "/v1/operator/keyring", token: "-", status: 401, code: "unauthorized"},
		{method: "GET", path: "/v1/operator/join-token", status: 403, code: "forbidden"}, // the shared token is no management credential
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "delay": "2s", "run_at": "2030-01-01T00:00:00Z"}`, status: 400, code: "invalid_schedule"},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "priority": 5000}`, status: 400, code: "invalid_priority", specRejects: true},
		{method: "POST", path: "/v1/tasks", body: `{"type": "echo", "queue": "no/slash"}`, status: 400, code: "invalid_queue", specRejects: true},
		{method: "POST", path: "/v1/queues/mail", body: `{"limit": -1}`, status: 400, code: "invalid_queue", specRejects: true},
	} {
		s.do(c)
	}

	// Last: the node leaves (forced, as the only node) and exits 0.
	s.do(call{method: "POST", path: "/v1/agent/leave?force=true", status: 202})
	pc.exitsCleanly(n, 60*time.Second)

	// A node that cannot reach its cluster has no leader: health is 503.
	lonely := newProcCluster(t)
	ports, err := localcluster.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	m := lonely.add("--insecure", "--join", fmt.Sprintf("127.0.0.1:%d", ports[0]))
	s2 := loadSpec(t, "http://"+m.HTTP)
	poll(t, m.Name+" serving HTTP", 60*time.Second, func() bool {
		resp, err := http.Get("http://" + m.HTTP + "/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	s2.do(call{method: "GET", path: "/v1/health", status: 503})

	// ACLs: a node run with --acl, through every ACL route and the refusals they add.
	aclNode := newProcCluster(t).add("--acl")
	s3 := loadSpec(t, "http://"+aclNode.HTTP)
	poll(t, aclNode.Name+" healthy", 60*time.Second, func() bool {
		resp, err := http.Get("http://" + aclNode.HTTP + "/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	s3.do(call{method: "GET", path: "/v1/cluster", token: "-", status: 401, code: "unauthorized"})
	var mgmt, team struct {
		AccessorID string `json:"accessor_id"`
		SecretID   string `json:"secret_id"`
	}
	decode(s3.do(call{method: "POST", path: "/v1/acl/bootstrap", token: "-", status: 200}), &mgmt)
	s3.token = mgmt.SecretID
	s3.do(call{method: "POST", path: "/v1/acl/bootstrap", status: 409, code: "acl_bootstrapped"})
	s3.do(call{method: "PUT", path: "/v1/acl/policy/team", status: 200,
		body: `{"description": "echo only", "rules": [{"task_type": "echo", "capabilities": ["submit", "read"]}]}`})
	s3.do(call{method: "PUT", path: "/v1/acl/policy/ops", body: `{"name": "ops", "cluster": ["operator"]}`, status: 200})
	s3.do(call{method: "PUT", path: "/v1/acl/policy/bad", body: `{"rules": [{"task_type": "echo", "capabilities": ["fly"]}]}`,
		status: 400, code: "invalid_policy", specRejects: true})
	s3.do(call{method: "GET", path: "/v1/acl/policies", status: 200})
	decode(s3.do(call{method: "POST", path: "/v1/acl/tokens", body: `{"policies": ["team"], "description": "team", "ttl": "1h"}`, status: 201}), &team)
	s3.do(call{method: "POST", path: "/v1/acl/tokens", body: `{"policies": ["nope"]}`, status: 400, code: "invalid_token_request"})
	s3.do(call{method: "GET", path: "/v1/acl/tokens", status: 200})
	s3.do(call{method: "GET", path: "/v1/acl/token/self", token: team.SecretID, status: 200})
	s3.do(call{method: "GET", path: "/v1/acl/tokens", token: team.SecretID, status: 403, code: "forbidden"})
	s3.do(call{method: "POST", path: "/v1/tasks?wait=20s", token: team.SecretID, body: `{"type": "echo", "input": 1}`, status: 201})
	s3.do(call{method: "POST", path: "/v1/tasks", token: team.SecretID, body: `{"type": "calc-square", "input": 1}`, status: 403, code: "forbidden"})
	s3.do(call{method: "GET", path: "/v1/tasks", token: team.SecretID, status: 200})
	s3.do(call{method: "DELETE", path: "/v1/acl/token/" + team.AccessorID, status: 204})
	s3.do(call{method: "DELETE", path: "/v1/acl/token/" + team.AccessorID, status: 404, code: "not_found"})
	s3.do(call{method: "GET", path: "/v1/acl/token/self", token: team.SecretID, status: 401, code: "unauthorized"})
	s3.do(call{method: "DELETE", path: "/v1/acl/policy/ops", status: 204})
	s3.do(call{method: "DELETE", path: "/v1/acl/policy/ops", status: 404, code: "not_found"})
	for k := range s3.seen {
		s.seen[k] = true
	}

	if missed := s.uncalled(); len(missed) > 0 {
		t.Errorf("operations of docs/openapi.yaml this test never called: %v", missed)
	}
}
