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
}

// ledger is every acknowledged submit and every submit given up on.
type ledger struct {
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
// then pausing. Submits under way when ctx ends are finished, not abandoned: stop waits for them.
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
				a, ok := submitOnce(e, l, key, typ, input)
				if ok {
					l.add(a)
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
	return wg.Wait
}

// submitPatience is how long one submit is retried before it is given up.
const submitPatience = 90 * time.Second

func submitOnce(e *env, l *ledger, key, typ string, input json.RawMessage) (ack, bool) {
	deadline := time.Now().Add(submitPatience)
	req := client.SubmitRequest{Type: typ, Input: input, IdempotencyKey: key, MaxAttempts: 3, Timeout: "60s"}
	for time.Now().Before(deadline) {
		m := pickUsable(e)
		if m == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t, _, err := m.API.Submit(ctx, req)
		cancel()
		if err == nil {
			if t.IdempotencyKey != key || t.Type != typ {
				l.mu.Lock()
				l.conflict = append(l.conflict, fmt.Sprintf("submit with key %s answered with task %s of key %q, type %s", key, t.ID, t.IdempotencyKey, t.Type))
				l.mu.Unlock()
			}
			return ack{Key: key, ID: t.ID, Type: typ, Input: input, At: time.Now(), Via: m.Name}, true
		}
		atomic.AddInt64(&l.retries, 1)
		time.Sleep(100 * time.Millisecond)
	}
	return ack{}, false
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
