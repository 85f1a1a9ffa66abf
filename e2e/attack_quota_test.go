package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

// Attacks of one submitter on the whole cluster: each floods the cluster on real processes, and
// checks that the caps refuse what is past them with the documented code and that the cluster
// stores nothing of it.

// quotaCall sends a JSON request to p's API and returns the status, the Retry-After header and the
// body.
func quotaCall(t *testing.T, p *proc, method, path string, body any) (int, string, []byte) {
	t.Helper()
	return quotaCallAs(t, p, "", method, path, body)
}

// quotaCallAs is quotaCall with a bearer token ("" for none).
func quotaCallAs(t *testing.T, p *proc, token, method, path string, body any) (int, string, []byte) {
	t.Helper()
	r := p.call(context.Background(), t, token, method, path, body, nil)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, path, r.err)
	}
	return r.status, r.header.Get("Retry-After"), r.body
}

// errCode is the code of an API error body.
func errCode(b []byte) string {
	var e struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Code
}

// waiting is how many tasks p counts pending or scheduled.
func waiting(p *proc) (int, bool) {
	c := p.view()
	if c == nil {
		return 0, false
	}
	return c.Tasks["pending"] + c.Tasks["scheduled"], true
}

// A submit flood through every node of a 3-node cluster started with --max-pending 40: batches
// of delayed tasks (they wait without running, as a backlog does) sent concurrently to the leader
// and both followers. Exactly 40 are stored, every other item is 429 queue_full, and a single
// submit past the cap gets 429 queue_full with a Retry-After header and stores nothing.
func TestAttackSubmitFloodPastMaxPendingGetsQueueFull(t *testing.T) {
	const maxPending = 40
	pc := startProcCluster(t, 3, "--max-pending", fmt.Sprint(maxPending), "--http-rate-limit", "0")
	later := time.Now().Add(time.Hour).UTC()
	var mu sync.Mutex
	codes := map[string]int{}
	created := 0
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pc.procs[w%3]
			for b := range 3 {
				var tasks []map[string]any
				for i := range 10 {
					tasks = append(tasks, map[string]any{"type": "echo", "input": fmt.Sprintf("flood-%d-%d-%d", w, b, i), "run_at": later})
				}
				status, retryAfter, body := quotaCall(t, p, "POST", "/v1/tasks/batch", map[string]any{"tasks": tasks})
				if status != http.StatusOK {
					t.Errorf("batch through %s: %d %s", p.Name, status, body)
					return
				}
				var reply struct {
					Results []struct {
						Status int `json:"status"`
						Error  *struct {
							Code string `json:"code"`
						} `json:"error"`
					} `json:"results"`
				}
				if err := json.Unmarshal(body, &reply); err != nil {
					t.Errorf("batch reply: %v", err)
					return
				}
				mu.Lock()
				if refused := strings.Contains(string(body), `"queue_full"`); refused != (retryAfter != "") {
					t.Errorf("batch reply with items refused %v has Retry-After %q", refused, retryAfter)
				}
				for _, r := range reply.Results {
					switch {
					case r.Status == http.StatusCreated:
						created++
					case r.Error != nil:
						codes[fmt.Sprintf("%d %s", r.Status, r.Error.Code)]++
					default:
						codes[fmt.Sprint(r.Status)]++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if created != maxPending || len(codes) != 1 || codes["429 queue_full"] != 180-maxPending {
		t.Fatalf("180 flood items: %d created, refusals %v; want %d created and the rest 429 queue_full", created, codes, maxPending)
	}

	status, retryAfter, body := quotaCall(t, pc.procs[1], "POST", "/v1/tasks", map[string]any{"type": "calc-square", "input": 3})
	if status != http.StatusTooManyRequests || errCode(body) != "queue_full" || retryAfter == "" {
		t.Fatalf("a submit past the cap: %d, Retry-After %q, %s; want 429 queue_full with Retry-After", status, retryAfter, body)
	}
	for _, p := range pc.procs {
		poll(t, p.Name+" holding exactly the admitted tasks", 20*time.Second, func() bool {
			n, ok := waiting(p)
			return ok && n == maxPending
		})
	}
}

// Idempotency and unique keys of 256 bytes, as the flood used, are refused with 400, alone and in
// a batch; 128 bytes is the most accepted.
func TestAttackLongKeysAreRefused(t *testing.T) {
	pc := startProcCluster(t, 1)
	p := pc.procs[0]
	long, most := strings.Repeat("k", 256), strings.Repeat("k", 128)
	for _, tc := range []struct {
		name string
		req  map[string]any
		code string
	}{
		{"idempotency key", map[string]any{"type": "echo", "idempotency_key": long}, "invalid_idempotency_key"},
		{"unique key", map[string]any{"type": "echo", "unique_key": long, "unique_for": "1m"}, "invalid_unique"},
	} {
		status, _, body := quotaCall(t, p, "POST", "/v1/tasks", tc.req)
		if status != http.StatusBadRequest || errCode(body) != tc.code {
			t.Errorf("%s of 256 bytes: %d %s; want 400 %s", tc.name, status, body, tc.code)
		}
		status, _, body = quotaCall(t, p, "POST", "/v1/tasks/batch", map[string]any{"tasks": []any{tc.req}})
		if status != http.StatusOK || !strings.Contains(string(body), `"status":400`) || !strings.Contains(string(body), tc.code) {
			t.Errorf("%s of 256 bytes in a batch: %d %s; want the item 400 %s", tc.name, status, body, tc.code)
		}
	}
	status, _, body := quotaCall(t, p, "POST", "/v1/tasks", map[string]any{"type": "echo", "idempotency_key": most, "unique_key": most, "unique_for": "1m"})
	if status != http.StatusCreated {
		t.Errorf("keys of 128 bytes: %d %s; want 201", status, body)
	}
	poll(t, "one task stored", 10*time.Second, func() bool {
		c := p.view()
		total := 0
		if c != nil {
			for _, n := range c.Tasks {
				total += n
			}
		}
		return total == 1
	})
}

// dirSize is the bytes of the files under dir.
func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The schedule flood of the finding: 21 schedules firing every second with 250 KiB inputs. They
// are refused for their input (413 input_too_large) and for their interval (400
// schedule_too_frequent); schedules within the caps are admitted up to the principal's count (429
// quota_exceeded past it); and while the admitted ones fire, the raft dir stays small.
func TestAttackScheduleFloodIsRefusedAndTheRaftDirStaysSmall(t *testing.T) {
	pc := startProcCluster(t, 1, "--quota-schedules", "5", "--quota-schedule-interval", "2s", "--http-rate-limit", "0")
	p := pc.procs[0]
	raftDir := filepath.Join(p.DataDir, "raft")
	before := dirSize(t, raftDir)
	big := json.RawMessage(`"` + strings.Repeat("x", 250<<10) + `"`)
	refusals := map[string]int{}
	for i := range 21 {
		status, _, body := quotaCall(t, p, "PUT", fmt.Sprintf("/v1/schedules/flood-%d", i), map[string]any{"cron": "@every 1s", "type": "echo", "input": big, "overlap": "allow_all"})
		refusals[fmt.Sprintf("%d %s", status, errCode(body))]++
	}
	if refusals["413 input_too_large"] != 21 {
		t.Fatalf("21 schedules with 250 KiB inputs: %v; want all 413 input_too_large", refusals)
	}
	refusals = map[string]int{}
	for i := range 21 {
		status, _, body := quotaCall(t, p, "PUT", fmt.Sprintf("/v1/schedules/fast-%d", i), map[string]any{"cron": "@every 1s", "type": "echo", "input": "x"})
		refusals[fmt.Sprintf("%d %s", status, errCode(body))]++
	}
	if refusals["400 schedule_too_frequent"] != 21 {
		t.Fatalf("21 schedules every second under a 2 s minimum: %v; want all 400 schedule_too_frequent", refusals)
	}
	refusals = map[string]int{}
	small := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`)
	for i := range 21 {
		status, _, body := quotaCall(t, p, "PUT", fmt.Sprintf("/v1/schedules/ok-%d", i), map[string]any{"cron": "@every 2s", "type": "echo", "input": small, "overlap": "allow_all"})
		refusals[fmt.Sprintf("%d %s", status, errCode(body))]++
	}
	if refusals["201 "] != 5 || refusals["429 quota_exceeded"] != 16 {
		t.Fatalf("21 schedules within the caps: %v; want 5 created and 16 429 quota_exceeded", refusals)
	}
	var list []json.RawMessage
	if err := p.getJSON("/v1/schedules", &list); err != nil || len(list) != 5 {
		t.Fatalf("schedules: %d, %v; want 5", len(list), err)
	}
	// The five fire: their tasks run, and the raft dir grows by their small inputs only (the
	// flood would have written 21 × 250 KiB a second, 5 MB a second).
	poll(t, "the admitted schedules firing", 30*time.Second, func() bool {
		c := p.view()
		return c != nil && c.Tasks["succeeded"] >= 15
	})
	if grew := dirSize(t, raftDir) - before; grew > 8<<20 {
		t.Errorf("the raft dir grew by %d bytes; want less than 8 MiB", grew)
	}
}

// A priority-10 task submitted behind a backlog of another type that ages at once (its run_at a
// day back, as a submitter may set it) is placed before the backlog: with ageing unbounded and
// counted from run_at, the backlog outranked it and it waited for all of it.
func TestAttackHighPriorityTaskIsPlacedPromptlyBehindABacklog(t *testing.T) {
	pc := startProcCluster(t, 1, "--capacity", "1", "--http-rate-limit", "0")
	p := pc.procs[0]
	backdated := time.Now().Add(-24 * time.Hour).UTC()
	var tasks []map[string]any
	for range 60 {
		tasks = append(tasks, map[string]any{"type": "sleep", "input": map[string]int{"ms": 1000}, "run_at": backdated})
	}
	if status, _, body := quotaCall(t, p, "POST", "/v1/tasks/batch", map[string]any{"tasks": tasks}); status != http.StatusOK {
		t.Fatalf("backlog: %d %s", status, body)
	}
	poll(t, "the backlog running", 10*time.Second, func() bool {
		c := p.view()
		return c != nil && c.Tasks["running"] == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	task, _, err := p.client().Submit(ctx, client.SubmitRequest{Type: "calc-square", Input: json.RawMessage("7"), Priority: 10})
	if err != nil {
		t.Fatal(err)
	}
	// One backlog task runs when it arrives (a second at most), then it is next.
	recs := waitTasks(t, "succeeded", 10*time.Second, []string{task.ID}, p)
	if got := string(recs[task.ID].Result); got != "49" {
		t.Errorf("result %s, want 49", got)
	}
}

// The retained cap: a principal's finished tasks past --quota-retained are removed oldest
// finished first, before retention would remove them.
func TestAttackFinishedTasksPastTheRetainedCapAreTrimmed(t *testing.T) {
	pc := startProcCluster(t, 1, "--quota-retained", "10", "--retention", "1h", "--http-rate-limit", "0")
	p := pc.procs[0]
	var ids []string
	for i := range 30 {
		task, _, err := p.client().Submit(context.Background(), client.SubmitRequest{Type: "calc-square", Input: json.RawMessage(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.ID)
		waitTasks(t, "succeeded", 10*time.Second, []string{task.ID}, p) // one at a time: finish order is submit order
	}
	poll(t, "finished tasks trimmed to the cap", 90*time.Second, func() bool {
		c := p.view()
		return c != nil && c.Tasks["succeeded"] == 10
	})
	kept, ok := p.tasks(ids[20:])
	if !ok || len(kept) != 10 {
		t.Fatalf("the 10 newest: %v, %v", kept, ok)
	}
}

// With ACLs, a token whose policy sets quota.pending 5 floods delayed tasks through a follower:
// its sixth and later get 429 quota_exceeded with Retry-After, while another team's token, whose
// policy sets no quota, still submits.
func TestAttackPrincipalPastItsPolicyQuotaGetsQuotaExceeded(t *testing.T) {
	pc := newProcCluster(t)
	for range 3 {
		pc.add("--acl", "--http-rate-limit", "0")
	}
	for _, p := range pc.procs {
		poll(t, p.Name+" healthy", 60*time.Second, func() bool {
			status, _, _ := quotaCall(t, p, "GET", "/v1/health", nil)
			return status == http.StatusOK
		})
	}
	leader, follower := pc.procs[0], pc.procs[2] // n1 bootstrapped the cluster: it leads while nothing fails
	var mgmt struct {
		SecretID string `json:"secret_id"`
	}
	status, _, body := quotaCallAs(t, leader, "", "POST", "/v1/acl/bootstrap", nil)
	if status != http.StatusOK || json.Unmarshal(body, &mgmt) != nil || mgmt.SecretID == "" {
		t.Fatalf("bootstrap: %d %s", status, body)
	}
	token := func(policy string, quota map[string]any) string {
		doc := map[string]any{"rules": []any{map[string]any{"task_type": "*", "capabilities": []string{"submit", "read"}}}}
		if quota != nil {
			doc["quota"] = quota
		}
		if status, _, body := quotaCallAs(t, leader, mgmt.SecretID, "PUT", "/v1/acl/policy/"+policy, doc); status != http.StatusOK {
			t.Fatalf("policy %s: %d %s", policy, status, body)
		}
		var tok struct {
			SecretID string `json:"secret_id"`
		}
		status, _, body := quotaCallAs(t, leader, mgmt.SecretID, "POST", "/v1/acl/tokens", map[string]any{"policies": []string{policy}})
		if status != http.StatusCreated || json.Unmarshal(body, &tok) != nil || tok.SecretID == "" {
			t.Fatalf("token of %s: %d %s", policy, status, body)
		}
		return tok.SecretID
	}
	pc.token = mgmt.SecretID // the harness compares the replicas with it
	flooder, other := token("flooder", map[string]any{"pending": 5}), token("other", nil)
	later := time.Now().Add(time.Hour).UTC()
	delayed := map[string]any{"type": "echo", "input": "x", "run_at": later}
	var got []string
	for range 8 {
		poll(t, "the follower knowing the flooder's token", 10*time.Second, func() bool {
			status, _, _ := quotaCallAs(t, follower, flooder, "GET", "/v1/types", nil)
			return status == http.StatusOK
		})
		status, retryAfter, body := quotaCallAs(t, follower, flooder, "POST", "/v1/tasks", delayed)
		if status == http.StatusTooManyRequests && retryAfter == "" {
			t.Errorf("429 without Retry-After: %s", body)
		}
		got = append(got, fmt.Sprintf("%d %s", status, errCode(body)))
	}
	want := []string{"201 ", "201 ", "201 ", "201 ", "201 ", "429 quota_exceeded", "429 quota_exceeded", "429 quota_exceeded"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("eight submits of a principal with quota.pending 5: %v, want %v", got, want)
	}
	if status, _, body := quotaCallAs(t, follower, other, "POST", "/v1/tasks", delayed); status != http.StatusCreated {
		t.Fatalf("another principal's submit: %d %s; want 201", status, body)
	}
	for _, p := range pc.procs {
		poll(t, p.Name+" holding the six admitted tasks", 20*time.Second, func() bool {
			status, _, body := quotaCallAs(t, p, mgmt.SecretID, "GET", "/v1/cluster", nil)
			var c struct {
				Tasks map[string]int `json:"tasks"`
			}
			return status == http.StatusOK && json.Unmarshal(body, &c) == nil && c.Tasks["scheduled"] == 6
		})
	}
}
