package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// handleLogs serves a task's output from every node that ran one of its attempts. With
// follow=true it streams new lines, across moves to other nodes, until the task ends.
func (n *Node) handleLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, ok := n.fsm.Task(id)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "task "+id+" not found")
		return
	}
	follow := r.URL.Query().Get("follow") == "true"
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	if !follow {
		var all []tasks.LogLine
		for _, name := range attemptNodes(&t) {
			lines, err := n.nodeLogs(r.Context(), name, id, false, nil)
			if err != nil {
				n.log.Warn("read task logs", "task", id, "from", name, "err", err)
			}
			all = append(all, lines...)
		}
		sort.SliceStable(all, func(i, j int) bool { return all[i].TS.Before(all[j].TS) })
		for _, l := range all {
			_ = enc.Encode(l)
		}
		return
	}
	n.followLogs(r.Context(), id, func(l tasks.LogLine) {
		_ = enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	})
}

// followLogs streams lines from each node that runs an attempt, one source after another as the
// task moves, until the task has ended and every source has drained.
func (n *Node) followLogs(ctx context.Context, id string, emit func(tasks.LogLine)) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan tasks.LogLine, 256)
	ended := make(chan struct{}, 16)
	started := map[string]bool{}
	active := 0
	for {
		t, ok, changed := n.fsm.TaskWatch(id)
		if !ok {
			return
		}
		for _, name := range attemptNodes(&t) {
			if started[name] {
				continue
			}
			started[name] = true
			active++
			go func(name string) {
				_, err := n.nodeLogs(ctx, name, id, true, func(l tasks.LogLine) {
					select {
					case lines <- l:
					case <-ctx.Done():
					}
				})
				if err != nil && ctx.Err() == nil {
					n.log.Debug("follow task logs", "task", id, "from", name, "err", err)
				}
				ended <- struct{}{}
			}(name)
		}
		if t.State.Terminal() && active == 0 {
			for {
				select {
				case l := <-lines:
					emit(l)
				default:
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case l := <-lines:
			emit(l)
		case <-ended:
			active--
		case <-changed:
		}
	}
}

// attemptNodes lists the nodes that ran (or run) the task's attempts, in order.
func attemptNodes(t *fsm.Task) []string {
	var names []string
	for _, h := range t.History {
		if h.Node != "" && !slices.Contains(names, h.Node) {
			names = append(names, h.Node)
		}
	}
	return names
}

// nodeLogs reads a task's lines held by one node: this one directly, others over HTTP. With
// follow, fn receives lines until that node's part of the task is over.
func (n *Node) nodeLogs(ctx context.Context, name, id string, follow bool, fn func(tasks.LogLine)) ([]tasks.LogLine, error) {
	if name == n.cfg.Name {
		if !follow {
			return n.logs.Read(id)
		}
		n.followLocal(ctx, id, fn)
		return nil, nil
	}
	nd, ok := n.fsm.Node(name)
	if !ok || nd.HTTPAddr == "" {
		return nil, fmt.Errorf("node %s unknown", name)
	}
	u := "http://" + nd.HTTPAddr + "/v1/internal/logs/" + url.PathEscape(id)
	if follow {
		u += "?follow=true"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	client := n.client
	if follow {
		client = &http.Client{} // a follow lasts as long as the task
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("logs from %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("logs from %s: %s", name, resp.Status)
	}
	var out []tasks.LogLine
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l tasks.LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue
		}
		if fn != nil {
			fn(l)
		} else {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// followLocal streams this node's lines of a task until the task is no longer running here.
func (n *Node) followLocal(ctx context.Context, id string, fn func(tasks.LogLine)) {
	old, ch, cancel := n.logs.Subscribe(id)
	defer cancel()
	for _, l := range old {
		fn(l)
	}
	for {
		t, ok, changed := n.fsm.TaskWatch(id)
		if !ok || !(t.State.Active() && t.Node == n.cfg.Name) {
			// Lines are written before the outcome is reported: what is queued now is all there is.
			for {
				select {
				case l, ok := <-ch:
					if !ok {
						return
					}
					fn(l)
				default:
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case l, ok := <-ch:
			if !ok {
				return
			}
			fn(l)
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

// handleLocalLogs serves the lines this node holds for a task as JSON lines; follow=true streams
// until the task no longer runs here.
func (n *Node) handleLocalLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	if r.URL.Query().Get("follow") != "true" {
		lines, err := n.logs.Read(id)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		for _, l := range lines {
			_ = enc.Encode(l)
		}
		return
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	n.followLocal(r.Context(), id, func(l tasks.LogLine) {
		_ = enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	})
}
