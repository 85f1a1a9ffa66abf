package httpapi

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// A task the caller may not read answers every route that takes an ID exactly as a missing one:
// same status, same code, same message but for the ID, and never its type.
func TestUnreadableTaskAnswersAsMissing(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	b.put(api.Task{ID: "e2", Type: "echo", State: api.StateFailed, History: []api.HistoryEntry{}})
	h := New(b, Options{ACL: a})
	routes := []struct{ method, path string }{
		{"GET", "/v1/tasks/%s"},
		{"GET", "/v1/tasks/%s?wait=1s&index=1"},
		{"GET", "/v1/tasks/%s/logs"},
		{"POST", "/v1/tasks/%s/cancel"},
		{"POST", "/v1/tasks/%s/retry"},
	}
	for _, token := range []string{"echo-only", "reports", "ops"} {
		for _, rt := range routes {
			auth := []string{"Authorization", "Bearer " + secrets[token]}
			missing := call(h, rt.method, strings.Replace(rt.path, "%s", "e9", 1), "application/json", "", auth...)
			hidden := call(h, rt.method, strings.Replace(rt.path, "%s", "e2", 1), "application/json", "", auth...)
			wantError(t, missing, 404, api.CodeNotFound)
			wantError(t, hidden, 404, api.CodeNotFound)
			if got, want := strings.ReplaceAll(hidden.Body.String(), "e2", "e9"), missing.Body.String(); got != want {
				t.Errorf("%s %s %s: unreadable %q, missing %q", token, rt.method, rt.path, got, want)
			}
			if strings.Contains(hidden.Body.String(), "echo") {
				t.Errorf("%s %s %s: the answer names the type: %s", token, rt.method, rt.path, hidden.Body)
			}
		}
	}
	// A caller that may read the task but not act on it is told what it lacks.
	wantError(t, call(h, "POST", "/v1/tasks/e2/cancel", "", "", "Authorization", "Bearer "+secrets["read-all-no-payroll"]), 403, api.CodeForbidden)
}

// A blocking list does not answer when only tasks the caller may not read change: it goes back to
// waiting, and answers when a task it may read changes. Its index is a hash of its page, never
// the raft index, which moves with every change.
func TestBlockingListWakesOnlyForReadableChanges(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	b.waitingIndex = make(chan uint64)
	h := New(b, Options{ACL: a})
	auth := []string{"Authorization", "Bearer " + secrets["reports"]}
	first := call(h, "GET", "/v1/tasks", "", "", auth...)
	pageIdx := first.Header().Get(api.HeaderIndex)
	if first.Code != 200 || pageIdx == "" || pageIdx == strconv.FormatUint(b.Index(), 10) {
		t.Fatalf("first list: %d, index %q (raft index %d)", first.Code, pageIdx, b.Index())
	}
	index := b.Index()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- call(h, "GET", "/v1/tasks?wait=1m&index="+pageIdx, "", "", auth...) }()
	waiting := func(after uint64) {
		t.Helper()
		select {
		case got := <-b.waitingIndex:
			if got != after {
				t.Fatalf("waiting after index %d, want %d", got, after)
			}
		case rec := <-done:
			t.Fatalf("the list answered on a change the caller may not see: %d %s", rec.Code, rec.Body)
		case <-time.After(30 * time.Second):
			t.Fatal("the list is not waiting")
		}
	}
	waiting(index)
	b.put(api.Task{ID: "e7", Type: "echo", State: api.StatePending, History: []api.HistoryEntry{}}) // not the caller's to see
	waiting(index + 1)
	b.put(api.Task{ID: "r7", Type: "report-daily", State: api.StatePending, History: []api.HistoryEntry{}})
	var rec *httptest.ResponseRecorder
	select {
	case rec = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the list did not answer when a readable task changed")
	}
	var got []api.Task
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	ids := []string{}
	for _, tk := range got {
		ids = append(ids, tk.ID)
	}
	if strings.Join(ids, " ") != "r7 r1 p1" {
		t.Errorf("listed %v, want r7 r1 p1", ids)
	}
	// Its index is its page's, which a change it may not see leaves as it is.
	if got := rec.Header().Get(api.HeaderIndex); got == pageIdx || got == strconv.FormatUint(b.Index(), 10) {
		t.Errorf("index %s after a readable change: the same as before (%s), or the raft index", got, pageIdx)
	}
	b.put(api.Task{ID: "e8", Type: "echo", State: api.StatePending, History: []api.HistoryEntry{}})
	again := call(h, "GET", "/v1/tasks", "", "", auth...)
	if again.Header().Get(api.HeaderIndex) != rec.Header().Get(api.HeaderIndex) {
		t.Errorf("a change the caller may not see moved its list's index: %s, then %s", rec.Header().Get(api.HeaderIndex), again.Header().Get(api.HeaderIndex))
	}
}

// Pending counts of /v1/types are shown only for readable types; the queues' counts, which span
// types, only to a caller that may read every type.
func TestTypeAndQueueCountsFollowReadRights(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	b.types = []api.TypeInfo{{Type: "echo", Version: "1", Pending: 3}, {Type: "report-daily", Version: "1", Pending: 2}}
	h := New(b, Options{ACL: a})
	for _, tc := range []struct {
		token              string
		echo, daily, queue int
	}{
		{"reports", 0, 2, 0},
		{"echo-only", 0, 0, 0},
		{"read-all-no-payroll", 3, 2, 0}, // a deny rule: some type is not readable
		{"management", 3, 2, 2},
	} {
		auth := []string{"Authorization", "Bearer " + secrets[tc.token]}
		var types []api.TypeInfo
		if rec := call(h, "GET", "/v1/types", "", "", auth...); rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &types) != nil {
			t.Fatalf("%s types: %d %s", tc.token, rec.Code, rec.Body)
		}
		if types[0].Pending != tc.echo || types[1].Pending != tc.daily {
			t.Errorf("%s: pending echo %d, report-daily %d; want %d, %d", tc.token, types[0].Pending, types[1].Pending, tc.echo, tc.daily)
		}
		var ql api.QueueList
		if rec := call(h, "GET", api.PathQueues, "", "", auth...); rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &ql) != nil {
			t.Fatalf("%s queues: %d %s", tc.token, rec.Code, rec.Body)
		}
		if ql.Queues[0].Pending != tc.queue {
			t.Errorf("%s: queue pending %d, want %d", tc.token, ql.Queues[0].Pending, tc.queue)
		}
	}
}

// The throughput series count every type's tasks: a caller that may not read every type gets them
// as zeros, of the same length.
func TestThroughputIsZeroForARestrictedCaller(t *testing.T) {
	b, a, secrets := newACLFixture(t, false)
	wait := 12.5
	b.throughput = api.Throughput{Interval: "1s", Started: []int{3, 4}, Succeeded: []int{1, 2}, Failed: []int{0, 1}, QueueWaitMS: []*float64{&wait, nil}}
	h := New(b, Options{ACL: a})
	for _, tc := range []struct {
		token   string
		started int
	}{{"reports", 0}, {"read-all-no-payroll", 0}, {"management", 7}} {
		var got api.Throughput
		rec := call(h, "GET", api.PathThroughput, "", "", "Authorization", "Bearer "+secrets[tc.token])
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &got) != nil {
			t.Fatalf("%s: %d %s", tc.token, rec.Code, rec.Body)
		}
		sum := 0
		for i := range got.Started {
			sum += got.Started[i] + got.Succeeded[i] + got.Failed[i]
		}
		if tc.started == 0 && (sum != 0 || len(got.Started) != 2 || got.QueueWaitMS[0] != nil) {
			t.Errorf("%s sees %+v, want zeros", tc.token, got)
		}
		if tc.started != 0 && got.Started[0]+got.Started[1] != tc.started {
			t.Errorf("%s sees %+v, want the series", tc.token, got)
		}
	}
}
