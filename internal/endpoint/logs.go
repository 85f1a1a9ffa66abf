package endpoint

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

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

// Logs hands emit a task's output from every node that ran one of its attempts, in time order.
// With follow it streams new lines, across moves to other nodes, until the task ends.
func (e *TaskEndpoint) Logs(ctx context.Context, id string, follow bool, emit func(api.LogLine)) error {
	srv := e.srv
	t, ok := srv.cfg.FSM.Task(id)
	if !ok {
		return taskNotFound(id)
	}
	if follow {
		// A leaving node ends the stream cleanly; the client follows on from another node.
		ctx, stop := srv.untilReleased(ctx)
		defer stop()
		srv.followLogs(ctx, id, func(l tasks.LogLine) { emit(toAPILogLine(l)) })
		return nil
	}
	var all []tasks.LogLine
	read := map[string]bool{}
	for _, name := range attemptNodes(&t) {
		if name = srv.runsOn(name); read[name] { // workers of one host share its log
			continue
		}
		read[name] = true
		lines, err := srv.nodeLogs(ctx, name, id)
		if err != nil {
			srv.log.Warn("read task logs", "task", id, "from", name, "err", err)
		}
		all = append(all, lines...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].TS.Before(all[j].TS) })
	for _, l := range all {
		emit(toAPILogLine(l))
	}
	return nil
}

// followLogs streams each attempt's lines from the node that runs it, one source after another
// as the task moves, until the task has ended and every source has drained.
func (srv *Server) followLogs(ctx context.Context, id string, emit func(tasks.LogLine)) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan tasks.LogLine, 256)
	ended := make(chan struct{}, 16)
	started := map[int]bool{}
	active := 0
	for {
		t, ok, changed := srv.cfg.FSM.TaskWatch(id)
		if !ok {
			return
		}
		for _, h := range t.History {
			if h.Event != fsm.EventAssigned || started[h.Attempt] {
				continue
			}
			started[h.Attempt] = true
			active++
			go func(name string, attempt int) {
				err := srv.followAttempt(ctx, name, id, attempt, func(l tasks.LogLine) {
					select {
					case lines <- l:
					case <-ctx.Done():
					}
				})
				if err != nil && ctx.Err() == nil {
					srv.log.Debug("follow task logs", "task", id, "from", name, "err", err)
				}
				// The reader may have gone (the client dropped the follow): never block on it.
				select {
				case ended <- struct{}{}:
				case <-ctx.Done():
				}
			}(h.Node, h.Attempt)
		}
		if t.State.Terminal() && active == 0 {
			drainQueued(lines, emit)
			return
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

// drainQueued hands emit every value already queued on ch, without waiting for more.
func drainQueued[T any](ch <-chan T, emit func(T)) {
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				return
			}
			emit(v)
		default:
			return
		}
	}
}

// internodeLogPath is the path of a task's logs on another node's internode routes.
func internodeLogPath(id string) string { return "/v1/internode/logs/" + url.PathEscape(id) }

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

// nodeLogs reads the lines one node holds for a task: this node directly, others over HTTP.
func (srv *Server) nodeLogs(ctx context.Context, name, id string) ([]tasks.LogLine, error) {
	name = srv.runsOn(name) // a worker's lines are on its host
	if name == srv.cfg.Name {
		return srv.cfg.Logs.Read(id)
	}
	var out []tasks.LogLine
	err := srv.remoteLogs(ctx, false, name, internodeLogPath(id), func(l tasks.LogLine) { out = append(out, l) })
	return out, err
}

// followAttempt streams one attempt's lines from the node that runs it until that attempt is over.
func (srv *Server) followAttempt(ctx context.Context, name, id string, attempt int, fn func(tasks.LogLine)) error {
	name = srv.runsOn(name)
	if name == srv.cfg.Name {
		srv.followLocal(ctx, id, attempt, fn)
		return nil
	}
	path := fmt.Sprintf("%s?follow=true&attempt=%d", internodeLogPath(id), attempt)
	return srv.remoteLogs(ctx, true, name, path, fn) // no timeout: it lasts as long as the attempt
}

// remoteLogs reads JSON log lines from another node's internode logs route; stream for a follow.
func (srv *Server) remoteLogs(ctx context.Context, stream bool, name, path string, fn func(tasks.LogLine)) error {
	resp, err := srv.cfg.GetFrom(ctx, name, path, stream)
	if err != nil {
		return fmt.Errorf("logs from %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("logs from %s: %s", name, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l tasks.LogLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			fn(l)
		}
	}
	return sc.Err()
}

// followCatchUp bounds how long a follow waits for this node's FSM to learn a task it was asked about.
const followCatchUp = 10 * time.Second

// FollowLocal streams this node's lines of one attempt of task id until the attempt is over here:
// the internode logs route serves another node's follow with it. It waits while this node's FSM
// has not yet caught up with the attempt's assignment.
func (e *TaskEndpoint) FollowLocal(ctx context.Context, id string, attempt int, fn func(tasks.LogLine)) {
	e.srv.followLocal(ctx, id, attempt, fn)
}

func (srv *Server) followLocal(ctx context.Context, id string, attempt int, fn func(tasks.LogLine)) {
	old, ch, cancel := srv.cfg.Logs.Subscribe(id)
	defer cancel()
	emit := func(l tasks.LogLine) {
		if l.Attempt == attempt {
			fn(l)
		}
	}
	for _, l := range old {
		emit(l)
	}
	// The node that asks saw the attempt assigned here; this node's FSM can lag behind it, even
	// so far as not to know the task yet. Unknown, it is given a while to catch up (a task removed
	// by retention never shows up, and the asker waits for this follow to end).
	catchUp := time.NewTimer(followCatchUp)
	defer catchUp.Stop()
	caughtUp := false
	for {
		t, ok, changed := srv.cfg.FSM.TaskWatch(id)
		if !ok && !caughtUp {
			select {
			case <-ctx.Done():
				return
			case <-catchUp.C:
				caughtUp = true
			case l, open := <-ch:
				if !open {
					return
				}
				emit(l)
			case <-changed:
			}
			continue
		}
		over := !ok || t.State.Terminal() || t.Attempt > attempt ||
			(t.Attempt == attempt && !(t.State.Active() && srv.runsHere(t.Node)))
		if over {
			// Lines are written before the outcome is reported: what is queued now is all there is.
			drainQueued(ch, emit)
			return
		}
		select {
		case <-ctx.Done():
			return
		case l, ok := <-ch:
			if !ok {
				return
			}
			emit(l)
		case <-changed:
		}
	}
}
