package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

func TestSubmitUniqueRefusalNamesTheExistingTask(t *testing.T) {
	mux := http.NewServeMux()
	var got api.SubmitRequest
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set(api.HeaderExistingTask, "T0")
		writeJSON(w, 409, map[string]string{"error": "held", "code": "duplicate_unique_key"})
	})
	c := serve(t, mux)
	_, _, err := c.Submit(context.Background(), client.SubmitRequest{Type: "echo", UniqueKey: "k", UniqueFor: "1h"})
	if id, ok := client.ExistingTask(err); !ok || id != "T0" {
		t.Fatalf("ExistingTask(%v) = %q %v, want T0 (from the header)", err, id, ok)
	}
	if got.UniqueKey != "k" || got.UniqueFor != "1h" {
		t.Errorf("server got %+v", got)
	}
	if _, ok := client.ExistingTask(&client.APIError{Code: api.CodeNotFound}); ok {
		t.Error("ExistingTask matched another code")
	}
}

func TestRetryAndPurge(t *testing.T) {
	mux := http.NewServeMux()
	var purge api.PurgeRequest
	mux.HandleFunc("POST /v1/tasks/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "busy" {
			writeJSON(w, 409, map[string]string{"error": "running", "code": "not_retryable"})
			return
		}
		writeJSON(w, 202, client.Task{ID: r.PathValue("id"), State: client.StatePending})
	})
	mux.HandleFunc("POST /v1/tasks/purge", func(w http.ResponseWriter, r *http.Request) {
		if err := json.NewDecoder(r.Body).Decode(&purge); err != nil {
			t.Error(err)
		}
		writeJSON(w, 200, api.PurgeReply{Purged: 7})
	})
	c := serve(t, mux)
	ctx := context.Background()
	task, err := c.Retry(ctx, "a1")
	if err != nil || task.ID != "a1" || task.State != client.StatePending {
		t.Fatalf("Retry = %+v, %v", task, err)
	}
	if _, err := c.Retry(ctx, "busy"); !errors.Is(err, &client.APIError{Code: api.CodeNotRetryable}) {
		t.Errorf("Retry of a running task: %v", err)
	}
	before := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n, err := c.Purge(ctx, client.PurgeRequest{State: "failed", Type: "echo", FinishedBefore: &before})
	if err != nil || n != 7 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if purge.State != "failed" || purge.Type != "echo" || purge.FinishedBefore == nil || !purge.FinishedBefore.Equal(before) {
		t.Errorf("server got %+v", purge)
	}
}
