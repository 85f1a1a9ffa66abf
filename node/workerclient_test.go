package node

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

// protoWorker plays a worker over the worker protocol's HTTP routes (docs/workers.md): it is the
// protocol's own test client. Serve runs a poll loop that hands each assignment to a handler;
// Kill stops it at once, as a kill -9 or a freeze would, without another call.
type protoWorker struct {
	t     *testing.T
	base  string
	token string
	sess  api.WorkerSession

	mu       sync.Mutex
	handled  map[string]int // task ID -> assignments received
	draining bool
	stop     chan struct{}
	stopped  chan struct{}
	lastPoll time.Time // when the last poll returned
}

// workerCall sends one protocol call and decodes the reply into out; it returns the status and
// the error body, if any.
func workerCall(t *testing.T, base, token, method, path string, body any, out any) (int, api.Error) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, api.Error{Message: err.Error()}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode >= 300 {
		_ = json.Unmarshal(data, &e)
		return resp.StatusCode, e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Errorf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode, e
}

// registerProtoWorker registers a worker of the given types (version "1") with n.
func registerProtoWorker(t *testing.T, n *Node, token, name string, capacity int, types ...string) (*protoWorker, int, api.Error) {
	t.Helper()
	req := api.WorkerRegistration{Name: name, Capacity: capacity, Labels: map[string]string{"test": "yes"}}
	for _, typ := range types {
		req.Types = append(req.Types, api.WorkerType{Type: typ, Version: "1", Description: "a test type", ExampleInput: json.RawMessage(`"hi"`)})
	}
	w := &protoWorker{t: t, base: "http://" + n.HTTPAddr(), token: token, handled: map[string]int{}}
	code, e := workerCall(t, w.base, token, "POST", api.PathWorkers, req, &w.sess)
	return w, code, e
}

func mustRegisterProtoWorker(t *testing.T, n *Node, token, name string, capacity int, types ...string) *protoWorker {
	t.Helper()
	w, code, e := registerProtoWorker(t, n, token, name, capacity, types...)
	if code != http.StatusCreated || w.sess.ID == "" {
		t.Fatalf("register worker %s on %s: %d %+v", name, n.Name(), code, e)
	}
	return w
}

func (w *protoWorker) path(suffix string) string { return api.PathWorkers + "/" + w.sess.ID + suffix }

func (w *protoWorker) poll(wait string) (api.WorkerPoll, int, api.Error) {
	var p api.WorkerPoll
	code, e := workerCall(w.t, w.base, w.token, "POST", w.path("/poll"), api.WorkerPollRequest{Wait: wait}, &p)
	return p, code, e
}

func (w *protoWorker) events(evs ...api.WorkerEvent) (api.WorkerEventResults, int, api.Error) {
	var r api.WorkerEventResults
	code, e := workerCall(w.t, w.base, w.token, "POST", w.path("/events"), api.WorkerEvents{Events: evs}, &r)
	return r, code, e
}

func (w *protoWorker) drain() (int, api.Error) {
	return workerCall(w.t, w.base, w.token, "POST", w.path("/drain"), struct{}{}, nil)
}

func (w *protoWorker) leave() (int, api.Error) {
	return workerCall(w.t, w.base, w.token, "DELETE", w.path(""), nil, nil)
}

// assignHandler runs one assignment and returns the events to report, the outcome last.
type assignHandler func(a api.WorkerAssignment) []api.WorkerEvent

// upperHandler logs a line and returns its string input upper-cased.
func upperHandler(a api.WorkerAssignment) []api.WorkerEvent {
	var in string
	_ = json.Unmarshal(a.Input, &in)
	out, _ := json.Marshal(string(bytes.ToUpper([]byte(in))))
	return []api.WorkerEvent{
		{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventLog, Stream: "log", Level: "info", Line: "upper-casing " + in},
		{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventSucceeded, Result: out},
	}
}

// serve polls until Kill or the session ends, running each assignment in its own goroutine
// through h (nil events: the handler holds the attempt and reports nothing).
func (w *protoWorker) serve(h assignHandler) {
	w.stop, w.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.stopped)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			p, code, _ := w.poll("")
			w.mu.Lock()
			w.lastPoll = time.Now()
			w.draining = w.draining || p.Draining
			w.mu.Unlock()
			if code != http.StatusOK {
				return
			}
			for _, a := range p.Assignments {
				w.mu.Lock()
				w.handled[a.TaskID]++
				w.mu.Unlock()
				go func() {
					evs := h(a)
					select {
					case <-w.stop:
						return // killed: nothing more leaves this worker
					default:
					}
					if len(evs) > 0 {
						w.events(evs...)
					}
				}()
			}
		}
	}()
}

// kill stops the worker without another call (runs still held stay silent); it returns when its
// poll loop has ended, with the time its last poll returned.
func (w *protoWorker) kill() time.Time {
	close(w.stop)
	<-w.stopped
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastPoll
}

func (w *protoWorker) got(taskID string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.handled[taskID]
}

// holdHandler holds each attempt until release is closed, then succeeds with "held".
func holdHandler(release <-chan struct{}) assignHandler {
	return func(a api.WorkerAssignment) []api.WorkerEvent {
		<-release
		return []api.WorkerEvent{{TaskID: a.TaskID, Attempt: a.Attempt, Kind: api.WorkerEventSucceeded, Result: json.RawMessage(`"held"`)}}
	}
}

// workerTaskOn waits until task id is assigned or running on the named worker and returns it.
func workerTaskOn(t *testing.T, n *Node, id, worker string) api.Task {
	t.Helper()
	var task api.Task
	waitFor(t, "task "+id+" on "+worker, 30*time.Second, func() bool {
		httpCall(t, n, "GET", "/v1/tasks/"+id, nil, &task)
		return task.Node == worker && (task.State == "assigned" || task.State == "running")
	})
	return task
}
