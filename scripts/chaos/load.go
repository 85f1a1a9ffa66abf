package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskworker/taskworker/client"
)

// ack is the outside record of one acknowledged submit: what was asked and what the cluster
// answered, kept by this program and never read back from the cluster.
type ack struct {
	Key   string          // idempotency key: a retried submit is not a second task
	ID    string          // the task ID the cluster acknowledged
	Type  string          // sleep or count
	Input json.RawMessage // the result is derived from it, so a result can be checked
	At    time.Time       // when the acknowledgement arrived
	Via   string          // the node that answered
	// Cancel: the load cancels this task, so it may end cancelled (or succeeded, when the
	// cancel came too late).
	Cancel bool
}

// ledger is every acknowledged submit and every submit given up on, and the history of every
// client operation for the linearizability check.
type ledger struct {
	hist     *history
	mu       sync.Mutex
	acks     []ack
	gaveUp   int   // submits never acknowledged (each may or may not exist; not a violation)
	retries  int64 // submit requests that failed and were sent again
	conflict []string
}

func (l *ledger) add(a ack) {
	l.mu.Lock()
	l.acks = append(l.acks, a)
	l.mu.Unlock()
}

func (l *ledger) snapshot() []ack {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ack(nil), l.acks...)
}

// taskFor returns the type and input of the seq-th task: short sleeps and short counts
// (checkpointed, so a moved run resumes), each result a function of its input.
func taskFor(seq int) (string, json.RawMessage) {
	if seq%2 == 0 {
		return "sleep", json.RawMessage(fmt.Sprintf(`{"ms":%d}`, 100+seq%400))
	}
	return "count", json.RawMessage(fmt.Sprintf(`{"to":%d,"step_ms":100}`, 2+seq%5))
}

// runLoad runs clients submitters until ctx ends, each submitting one task, waiting for the
// acknowledgement (retrying the same idempotency key on other nodes for up to submitPatience),
// then pausing; after about one acknowledgement in three a client reads a task it or another
// client submitted (GET ?consistent on a random node), after one in six it waits until its own is
// terminal. One more client submits a 2 s sleep, cancels it after up to 500 ms and waits for it
// to end. Operations under way when ctx ends are finished, not abandoned: stop waits for them.
// Every operation goes into l.hist.
func runLoad(ctx context.Context, e *env, l *ledger, runID string) (stop func()) {
	var seq atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < e.cfg.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n := int(seq.Add(1))
				typ, input := taskFor(n)
				key := fmt.Sprintf("chaos-%s-%d", runID, n)
				a, ok := submitOnce(e, l, c, key, typ, input)
				if ok {
					l.add(a)
					switch r := rand.IntN(6); {
					case r < 2:
						readOne(e, l, c, l.randomAck(a))
					case r == 2:
						waitOne(e, l, c, a)
					}
				} else {
					l.mu.Lock()
					l.gaveUp++
					l.mu.Unlock()
				}
				select {
				case <-ctx.Done():
				case <-time.After(e.cfg.Pause):
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := e.cfg.Clients
		for ctx.Err() == nil {
			n := int(seq.Add(1))
			key := fmt.Sprintf("chaos-%s-%d", runID, n)
			input := json.RawMessage(`{"ms":2000}`)
			a, ok := submitOnce(e, l, c, key, "sleep", input)
			if !ok {
				l.mu.Lock()
				l.gaveUp++
				l.mu.Unlock()
				continue
			}
			a.Cancel = true
			l.add(a)
			sleep(ctx, time.Duration(rand.IntN(500))*time.Millisecond)
			cancelOne(e, l, c, a)
			waitOne(e, l, c, a)
			sleep(ctx, 4*e.cfg.Pause)
		}
	}()
	return wg.Wait
}

// randomAck returns a, or once in two an acknowledged task chosen at random.
func (l *ledger) randomAck(a ack) ack {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.acks) == 0 || rand.IntN(2) == 0 {
		return a
	}
	return l.acks[rand.IntN(len(l.acks))]
}

// submitPatience is how long one submit is retried before it is given up.
const submitPatience = 90 * time.Second

// submitOnce submits until a node acknowledges, each try an operation of client c in the
// history: answered with the task's ID, or pending (it may have taken effect) when it failed.
func submitOnce(e *env, l *ledger, c int, key, typ string, input json.RawMessage) (ack, bool) {
	deadline := time.Now().Add(submitPatience)
	req := client.SubmitRequest{Type: typ, Input: input, IdempotencyKey: key, MaxAttempts: 3, Timeout: "60s"}
	for time.Now().Before(deadline) {
		m := pickUsable(e)
		if m == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		op := l.hist.invoke(c, linInput{Kind: opSubmit, Key: key, Node: m.Name})
		t, _, err := m.API.Submit(ctx, req)
		cancel()
		if err == nil {
			op.done(linOutput{ID: t.ID, Found: true, State: t.State})
			if t.IdempotencyKey != key || t.Type != typ {
				l.mu.Lock()
				l.conflict = append(l.conflict, fmt.Sprintf("submit with key %s answered with task %s of key %q, type %s", key, t.ID, t.IdempotencyKey, t.Type))
				l.mu.Unlock()
			}
			return ack{Key: key, ID: t.ID, Type: typ, Input: input, At: time.Now(), Via: m.Name}, true
		}
		op.ambiguous()
		atomic.AddInt64(&l.retries, 1)
		time.Sleep(100 * time.Millisecond)
	}
	return ack{}, false
}

// readNode is a random node a recorded read or cancel may go to: a usable one, and in an upgrade
// run one on the new binary (the old one does not know ?consistent); nil when there is none.
func readNode(e *env) *member {
	var ok []*member
	for _, m := range e.members {
		if m.usable() && m.consistentReads() {
			ok = append(ok, m)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	return ok[rand.IntN(len(ok))]
}

// readOne reads a's task with GET ?consistent on a random node and records the answer; a read
// that failed changed nothing and is left out of the history.
func readOne(e *env, l *ledger, c int, a ack) {
	m := readNode(e)
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	op := l.hist.invoke(c, linInput{Kind: opGet, Key: a.Key, ID: a.ID, Node: m.Name})
	get := m.API.GetConsistent
	if e.cfg.PlainGets {
		get = m.API.Get
	}
	t, err := get(ctx, a.ID)
	switch {
	case err == nil:
		op.done(linOutput{Found: true, State: t.State, CancelR: t.CancelRequested})
	case client.IsNotFound(err) && errCode(err) == "not_found":
		op.done(linOutput{})
	}
}

// waitOne waits on one node until a's task is terminal (blocking GETs, retried through
// elections) and records the terminal state; a wait that failed is left out.
func waitOne(e *env, l *ledger, c int, a ack) {
	m := pickUsable(e)
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op := l.hist.invoke(c, linInput{Kind: opWait, Key: a.Key, ID: a.ID, Node: m.Name})
	t, err := m.API.WaitDone(ctx, a.ID)
	if err == nil && client.IsTerminal(t.State) {
		op.done(linOutput{Found: true, State: t.State, CancelR: t.CancelRequested})
	}
}

// cancelOne cancels a's task, on other nodes again while the answer is unknown (each try
// recorded, pending when unanswered), for up to submitPatience.
func cancelOne(e *env, l *ledger, c int, a ack) {
	deadline := time.Now().Add(submitPatience)
	for time.Now().Before(deadline) {
		m := readNode(e)
		if m == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		op := l.hist.invoke(c, linInput{Kind: opCancel, Key: a.Key, ID: a.ID, Node: m.Name})
		t, err := m.API.CancelTask(ctx, a.ID)
		cancel()
		switch code := errCode(err); {
		case err == nil:
			op.done(linOutput{Found: true, State: t.State, CancelR: t.CancelRequested})
			return
		case code == "already_finished" || code == "not_found":
			op.done(linOutput{Code: code})
			return
		default:
			op.ambiguous()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pickUsable returns a random node that is running and not frozen, or nil.
func pickUsable(e *env) *member {
	var ok []*member
	for _, m := range e.members {
		if m.usable() {
			ok = append(ok, m)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	return ok[rand.IntN(len(ok))]
}

// probe measures how long the cluster takes to accept a submit again after a fault injected at
// t0: it submits a tiny echo task to usable nodes in turn, every 100 ms, until one is
// acknowledged, and returns the time from t0. It gives up (returning ok false) when ctx ends.
func probe(ctx context.Context, e *env, t0 time.Time) (time.Duration, bool) {
	i := 0
	for ctx.Err() == nil {
		var us []*member
		for _, m := range e.members {
			if m.usable() && !isFaulted(m) {
				us = append(us, m)
			}
		}
		if len(us) == 0 { // every node is under a fault: any running one will do
			for _, m := range e.members {
				if m.usable() {
					us = append(us, m)
				}
			}
		}
		if len(us) > 0 {
			m := us[i%len(us)]
			i++
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, _, err := m.API.Submit(rctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`"probe"`)})
			cancel()
			if err == nil {
				return time.Since(t0), true
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, false
}

func isFaulted(m *member) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.faulted
}
