package limits

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of a checkpoint budget: every checkpoint is a raft write on the leader, so a task that
// checkpoints in a tight loop competes with every caller's submits. Ten a second per run keeps a
// resumed attempt at most a tenth of a second of progress behind.
const (
	DefaultCheckpointsPerSecond = 10
	DefaultCheckpointBurst      = 5
)

// Coalescer is the checkpoint budget of one task run: a token bucket of perSecond checkpoints with
// a burst, and a slot for the newest checkpoint the budget did not allow yet. A checkpoint replaces
// the progress before it, so an excess checkpoint is never queued: it replaces the one waiting, and
// only the newest is sent once the budget allows. Nothing is dropped at the end: Flush returns the
// waiting checkpoint whatever the budget.
//
// It is synchronous and takes its clock as a parameter, so it is deterministic; Throttle adds the
// goroutine that sends a waiting checkpoint when the budget allows. The protocol:
//
//	send, ok := c.Offer(data) // on every Checkpoint call: ok means send `send` now
//	send, ok, wait := c.Next() // later: ok means send `send` now; else retry after wait (if >0)
//	send, ok := c.Flush()      // at the end of the run: ok means send `send` before the result
//
// Sends must happen in the order these calls return data (hold one lock across the call and the
// send), so that an older checkpoint never arrives after a newer one.
type Coalescer struct {
	now func() time.Time

	mu        sync.Mutex
	lim       *rate.Limiter
	pending   []byte
	has       bool
	coalesced uint64
}

// NewCoalescer makes a budget of perSecond checkpoints a second with the given burst (defaults
// when 0 or less). now is the clock; nil means time.Now.
func NewCoalescer(perSecond float64, burst int, now func() time.Time) *Coalescer {
	if perSecond <= 0 {
		perSecond = DefaultCheckpointsPerSecond
	}
	if burst <= 0 {
		burst = DefaultCheckpointBurst
	}
	if now == nil {
		now = time.Now
	}
	return &Coalescer{now: now, lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// Offer records data as the run's newest checkpoint. When the budget allows, it returns data to be
// sent now (and forgets any older waiting checkpoint, which data supersedes); otherwise data waits,
// replacing any checkpoint waiting before it, and Offer returns false.
func (c *Coalescer) Offer(data []byte) (send []byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.has {
		c.coalesced++ // the waiting checkpoint is superseded either way
	}
	if c.lim.AllowN(c.now(), 1) {
		c.pending, c.has = nil, false
		return data, true
	}
	c.pending, c.has = data, true
	return nil, false
}

// Next returns the waiting checkpoint when the budget allows it now. Otherwise ok is false and wait
// is how long until it will be allowed, or 0 when nothing is waiting.
func (c *Coalescer) Next() (send []byte, ok bool, wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.has {
		return nil, false, 0
	}
	now := c.now()
	if c.lim.AllowN(now, 1) {
		send = c.pending
		c.pending, c.has = nil, false
		return send, true, 0
	}
	tokens := c.lim.TokensAt(now)
	wait = time.Duration((1 - tokens) / float64(c.lim.Limit()) * float64(time.Second))
	return nil, false, max(wait, time.Millisecond)
}

// Flush returns the waiting checkpoint, if any, regardless of the budget: the end of the run must
// not lose the newest progress.
func (c *Coalescer) Flush() (send []byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	send, ok = c.pending, c.has
	c.pending, c.has = nil, false
	return send, ok
}

// Restore puts back a checkpoint whose send failed, unless a newer one is already waiting.
func (c *Coalescer) Restore(data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.has {
		c.pending, c.has = data, true
	}
}

// replace makes data the waiting checkpoint without spending budget.
func (c *Coalescer) replace(data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.has {
		c.coalesced++
	}
	c.pending, c.has = data, true
}

// Coalesced is the number of checkpoints superseded before they were sent.
func (c *Coalescer) Coalesced() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.coalesced
}

// SendFunc reports one checkpoint (to the leader, through raft).
type SendFunc func(ctx context.Context, data []byte) error

// Throttle puts a Coalescer in front of a SendFunc for one task run. Its Checkpoint fits the
// executor's checkpoint callback: it sends at once when the budget allows and returns the send's
// error; otherwise it returns nil at once and the checkpoint waits, to be sent by Run when the
// budget allows or by Flush at the end. Wiring for one run:
//
//	t := limits.NewThrottle(limits.NewCoalescer(n, burst, nil), send)
//	go t.Run(runCtx)                   // ends with runCtx
//	... executor calls t.Checkpoint(ctx, data) ...
//	err := t.Flush(ctx)                // after the handler returns, before the result is reported
type Throttle struct {
	c    *Coalescer
	send SendFunc
	wake chan struct{}

	sendMu  sync.Mutex // held across choosing data and sending it: sends stay in order
	lastErr error      // a background send's failure, returned by the next Checkpoint or Flush
}

// NewThrottle makes a Throttle that sends through send within c's budget.
func NewThrottle(c *Coalescer, send SendFunc) *Throttle {
	return &Throttle{c: c, send: send, wake: make(chan struct{}, 1)}
}

// Checkpoint sends data now if the budget allows, or leaves it waiting (replacing an older waiting
// checkpoint) and returns at once. It also returns the error of a background send that failed
// since the last call, so a task learns that its progress is not being recorded.
func (t *Throttle) Checkpoint(ctx context.Context, data []byte) error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	if err := t.lastErr; err != nil {
		t.lastErr = nil
		t.c.replace(data) // keep it: Run or Flush will try again
		t.poke()
		return err
	}
	send, ok := t.c.Offer(data)
	if !ok {
		t.poke()
		return nil
	}
	if err := t.send(ctx, send); err != nil {
		t.c.Restore(send)
		return err
	}
	return nil
}

func (t *Throttle) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Run sends waiting checkpoints as the budget allows until ctx ends. Start one per task run.
func (t *Throttle) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-timer.C:
		}
		if wait := t.sendDue(ctx); wait > 0 {
			timer.Reset(wait)
		}
	}
}

// sendDue sends the waiting checkpoint if the budget allows; otherwise it says how long to wait.
func (t *Throttle) sendDue(ctx context.Context) time.Duration {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	send, ok, wait := t.c.Next()
	if !ok {
		return wait
	}
	if err := t.send(ctx, send); err != nil {
		t.c.Restore(send)
		t.lastErr = err
		return 0 // the next Checkpoint reports it, and Flush retries
	}
	return 0
}

// Flush sends the waiting checkpoint, if any, whatever the budget, and returns the error of that
// send or of an earlier background send that nobody has seen. Call it when the handler has
// returned and before the run's result is reported.
func (t *Throttle) Flush(ctx context.Context) error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	earlier := t.lastErr
	t.lastErr = nil
	send, ok := t.c.Flush()
	if !ok {
		return earlier
	}
	if err := t.send(ctx, send); err != nil {
		t.c.Restore(send)
		return err
	}
	return nil
}
