package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/taskworker/taskworker/client"
)

// A fake node stands in for a cluster here; point New at any node's HTTP address.
func ExampleClient_Exec() {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"id":"01J","type":"calc-square","state":"pending","modify_index":1}`)
	})
	mux.HandleFunc("GET /v1/tasks/01J/logs", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"stream":"log","level":"info","line":"Calculating square of 3"}`)
	})
	mux.HandleFunc("GET /v1/tasks/01J", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"id":"01J","type":"calc-square","state":"succeeded","result":9,"modify_index":4}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	c := client.New(srv.URL)
	task, err := c.Exec(context.Background(),
		client.SubmitRequest{Type: "calc-square", Input: json.RawMessage(`3`)},
		func(l client.LogLine) { fmt.Println(l.Level+":", l.Line) })
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(task.State, string(task.Result))
	// Output:
	// info: Calculating square of 3
	// succeeded 9
}

// Workers lists the processes outside the agents that run task types, with their load.
func ExampleClient_Workers() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/workers", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `[{"name":"py1","node":"n2","state":"up","capacity":4,"running":1,
			"labels":{"zone":"a"},"task_types":[{"type":"py-upper","version":"1"}],"registered_at":"2026-01-02T03:04:05Z"}]`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	c := client.New(srv.URL)
	workers, err := c.Workers(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, w := range workers {
		fmt.Printf("%s on %s: %s, %d/%d running, %s@%s\n", w.Name, w.Node, w.State, w.Running, w.Capacity,
			w.TaskTypes[0].Type, w.TaskTypes[0].Version)
	}
	// Output:
	// py1 on n2: up, 1/4 running, py-upper@1
}
