package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// workersJSON is GET /v1/workers as docs/workers.md shows it.
const workersJSON = `[{"name":"py1","node":"n2","state":"up","draining":false,"capacity":4,"running":1,
	"labels":{"zone":"a"},"task_types":[{"type":"py-upper","version":"1","description":"upper-cases text","example_input":"hi"}],
	"registered_at":"2026-01-02T03:04:05.123456789Z"},
	{"name":"py2","node":"n1","state":"down","draining":true,"capacity":2,"running":0,"labels":{},"task_types":[],
	"registered_at":"2026-01-02T03:04:06Z"}]`

func TestWorkersDecodesTheDocumentedShape(t *testing.T) {
	var auth string
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathWorkers, func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		fmt.Fprint(w, workersJSON)
	})
	c := serve(t, mux, client.WithToken("tok"))
	ws, err := c.Workers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer tok" {
		t.Errorf("Authorization %q, want the token", auth)
	}
	want := client.Worker{Name: "py1", Node: "n2", State: client.WorkerUp, Capacity: 4, Running: 1,
		Labels:       map[string]string{"zone": "a"},
		TaskTypes:    []client.WorkerType{{Type: "py-upper", Version: "1", Description: "upper-cases text", ExampleInput: json.RawMessage(`"hi"`)}},
		RegisteredAt: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)}
	if len(ws) != 2 || !reflect.DeepEqual(ws[0], want) {
		t.Errorf("Workers = %+v\nwant first %+v", ws, want)
	}
	if ws[1].State != client.WorkerDown || !ws[1].Draining || len(ws[1].TaskTypes) != 0 {
		t.Errorf("second worker = %+v", ws[1])
	}
}

func TestWorkersEmptyAndRefused(t *testing.T) {
	var refuse atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathWorkers, func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			writeJSON(w, 403, map[string]string{"error": "no read on the cluster", "code": "permission_denied"})
			return
		}
		fmt.Fprint(w, `[]`)
	})
	c := serve(t, mux)
	ws, err := c.Workers(context.Background())
	if err != nil || ws == nil || len(ws) != 0 {
		t.Errorf("Workers with none = %#v, %v; want an empty list", ws, err)
	}
	refuse.Store(true)
	var apiErr *client.APIError
	if ws, err := c.Workers(context.Background()); ws != nil || !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Errorf("Workers refused = %v, %v; want a 403 APIError", ws, err)
	}
}

func TestClusterCarriesWorkersAndTaskCarriesPendingReason(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"leader":"n1","nodes":[],"tasks":{},"workers":%s}`, workersJSON)
	})
	mux.HandleFunc("GET /v1/tasks/01J", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"id":"01J","type":"py-upper","version":"2","state":"pending",
			"pending_reason":"no node or worker offers \"py-upper\" version \"2\""}`)
	})
	c := serve(t, mux)
	cl, err := c.Cluster(context.Background())
	if err != nil || len(cl.Workers) != 2 || cl.Workers[0].Name != "py1" || cl.Workers[0].TaskTypes[0].Type != "py-upper" {
		t.Errorf("Cluster = %+v, %v", cl, err)
	}
	task, err := c.Get(context.Background(), "01J")
	if err != nil || task.PendingReason != `no node or worker offers "py-upper" version "2"` {
		t.Errorf("Get = %+v, %v", task, err)
	}
}
