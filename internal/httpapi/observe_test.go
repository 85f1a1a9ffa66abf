package httpapi

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

func TestObserveReportsRoutePatternAndStatus(t *testing.T) {
	var mu sync.Mutex
	var got []string
	rec := func(route string, code int, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if d < 0 {
			t.Errorf("negative duration %v", d)
		}
		got = append(got, fmt.Sprintf("%s %d", route, code))
	}
	f := newFake()
	f.put(api.Task{ID: "t1", State: api.StateRunning, ModifyIndex: 1})
	h := New(f, Options{Token: "s3cret", Observe: rec})
	auth := []string{"Authorization", "Bearer s3cret"}
	call(h, "GET", "/v1/tasks/t1", "", "", auth...)
	call(h, "GET", "/v1/tasks/unknown-id", "", "", auth...)
	call(h, "GET", "/v1/tasks/t1", "", "")                 // refused by the token check
	call(h, "GET", "/no/such/path/12345", "", "", auth...) // the catch-all, not the raw path
	call(h, "GET", "/v1/health", "", "")
	want := []string{
		"GET /v1/tasks/{id} 200",
		"GET /v1/tasks/{id} 404",
		"GET /v1/tasks/{id} 401",
		"/ 404",
		"GET /v1/health 200",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("observed:\n got %q\nwant %q", got, want)
	}
}
