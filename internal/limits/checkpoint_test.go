package limits

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestCoalescerKeepsOnlyTheNewestAndSendsItWhenAllowed(t *testing.T) {
	clock := newFakeClock()
	c := NewCoalescer(2, 2, clock.Now) // 2 a second, burst 2

	type step struct {
		advance time.Duration
		offer   string // "" = call Next instead
		want    string // what must be sent now ("" = nothing)
	}
	steps := []step{
		{offer: "1", want: "1"},                // burst
		{offer: "2", want: "2"},                // burst
		{offer: "3"},                           // over: waits
		{offer: "4"},                           // replaces 3
		{},                                     // Next: not yet
		{advance: 499 * time.Millisecond},      // still not
		{advance: time.Millisecond, want: "4"}, // one token after 500 ms: the newest
		{},                                     // nothing waiting
		{advance: 500 * time.Millisecond, offer: "5", want: "5"}, // a token: sent at once
		{offer: "6"},
		{advance: time.Second, offer: "7", want: "7"}, // 7 supersedes 6 and goes at once
		{},
	}
	var sent []string
	for i, s := range steps {
		clock.Advance(s.advance)
		var got []byte
		var ok bool
		if s.offer != "" {
			got, ok = c.Offer([]byte(s.offer))
		} else {
			got, ok, _ = c.Next()
		}
		if (s.want != "") != ok || string(got) != s.want {
			t.Fatalf("step %d %+v: sent %q (%v), want %q", i, s, got, ok, s.want)
		}
		if ok {
			sent = append(sent, string(got))
		}
	}
	if want := []string{"1", "2", "4", "5", "7"}; !slices.Equal(sent, want) {
		t.Fatalf("sent %v, want %v", sent, want)
	}
	if got := c.Coalesced(); got != 2 { // 3 by 4, 6 by 7
		t.Fatalf("coalesced %d, want 2", got)
	}
}

func TestCoalescerNextSaysHowLongToWait(t *testing.T) {
	clock := newFakeClock()
	c := NewCoalescer(4, 1, clock.Now)
	if _, _, wait := c.Next(); wait != 0 {
		t.Fatalf("nothing waiting, yet wait %v", wait)
	}
	c.Offer([]byte("a"))
	c.Offer([]byte("b"))
	if _, ok, wait := c.Next(); ok || wait != 250*time.Millisecond {
		t.Fatalf("Next: ok %v wait %v, want a 250 ms wait", ok, wait)
	}
	clock.Advance(100 * time.Millisecond)
	if _, ok, wait := c.Next(); ok || wait != 150*time.Millisecond {
		t.Fatalf("Next after 100 ms: ok %v wait %v, want 150 ms", ok, wait)
	}
	clock.Advance(150 * time.Millisecond)
	if got, ok, _ := c.Next(); !ok || string(got) != "b" {
		t.Fatalf("Next when due: %q %v, want b", got, ok)
	}
}

func TestCoalescerFlushNeverLosesTheLast(t *testing.T) {
	clock := newFakeClock()
	c := NewCoalescer(1, 1, clock.Now)
	c.Offer([]byte("first"))
	for i := range 1000 {
		c.Offer([]byte(strconv.Itoa(i)))
	}
	got, ok := c.Flush() // budget spent, clock never moved: Flush ignores the budget
	if !ok || string(got) != "999" {
		t.Fatalf("Flush: %q %v, want 999", got, ok)
	}
	if _, ok := c.Flush(); ok {
		t.Fatal("second Flush returned something: it was already sent")
	}
	if c.Coalesced() != 999 {
		t.Fatalf("coalesced %d, want 999", c.Coalesced())
	}
}

func TestCoalescerRestoreYieldsToNewer(t *testing.T) {
	c := NewCoalescer(1, 1, newFakeClock().Now)
	c.Restore([]byte("failed"))
	if got, _ := c.Flush(); string(got) != "failed" {
		t.Fatalf("restored %q, want failed", got)
	}
	c.Offer([]byte("a")) // sent (burst)
	c.Offer([]byte("newer"))
	c.Restore([]byte("a"))
	if got, _ := c.Flush(); string(got) != "newer" {
		t.Fatalf("after restoring an older one: %q, want newer", got)
	}
}

// recorder is a SendFunc that records what it was given, optionally failing.
type recorder struct {
	mu   sync.Mutex
	sent []string
	fail error
}

func (r *recorder) send(_ context.Context, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.sent = append(r.sent, string(data))
	return nil
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sent)
}

// A checkpoint flood (step_ms: 0) is throttled: sends stay within the budget, stay in order, and the
// newest checkpoint gets through without a Flush, sent by Run when the budget allows.
func TestThrottleFloodIsThrottledOrderedAndComplete(t *testing.T) {
	const perSecond, burst, n = 50, 5, 5000
	rec := &recorder{}
	th := NewThrottle(NewCoalescer(perSecond, burst, nil), rec.send)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); th.Run(ctx) }()

	start := time.Now()
	for i := range n {
		if err := th.Checkpoint(ctx, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	last := strconv.Itoa(n - 1)
	waitFor(t, "the newest checkpoint sent by Run", func() bool {
		s := rec.snapshot()
		return len(s) > 0 && s[len(s)-1] == last
	})
	elapsed := time.Since(start)
	sent := rec.snapshot()
	// The budget bounds the sends by the time that passed, whatever the machine's speed.
	if most := burst + int(elapsed.Seconds()*perSecond) + 1; len(sent) > most {
		t.Fatalf("%d checkpoints sent in %v, budget allows at most %d", len(sent), elapsed, most)
	}
	if len(sent) >= n {
		t.Fatalf("all %d checkpoints sent: nothing was throttled", len(sent))
	}
	for i := 1; i < len(sent); i++ {
		a, _ := strconv.Atoi(sent[i-1])
		b, _ := strconv.Atoi(sent[i])
		if b <= a {
			t.Fatalf("sent out of order: %v", sent)
		}
	}
	if err := th.Flush(ctx); err != nil || len(rec.snapshot()) != len(sent) {
		t.Fatalf("Flush after everything was sent: %v, sent %d more", err, len(rec.snapshot())-len(sent))
	}
	cancel()
	<-done
}

func TestThrottleFlushSendsTheWaitingOne(t *testing.T) {
	rec := &recorder{}
	th := NewThrottle(NewCoalescer(1, 1, newFakeClock().Now), rec.send) // no Run, frozen clock
	ctx := context.Background()
	for _, s := range []string{"a", "b", "c"} {
		if err := th.Checkpoint(ctx, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got := rec.snapshot(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("before Flush: %v, want [a]", got)
	}
	if err := th.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.snapshot(); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("after Flush: %v, want [a c]", got)
	}
}

func TestThrottleReportsAndRetriesFailedSends(t *testing.T) {
	boom := errors.New("no leader")
	clock := newFakeClock()
	rec := &recorder{fail: boom}
	th := NewThrottle(NewCoalescer(1, 1, clock.Now), rec.send)
	ctx := context.Background()

	if err := th.Checkpoint(ctx, []byte("a")); !errors.Is(err, boom) {
		t.Fatalf("synchronous send failure: %v, want %v", err, boom)
	}
	// The failed checkpoint is kept, and Flush tries it again.
	if err := th.Flush(ctx); !errors.Is(err, boom) {
		t.Fatalf("Flush while failing: %v", err)
	}
	rec.mu.Lock()
	rec.fail = nil
	rec.mu.Unlock()
	if err := th.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.snapshot(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("sent %v, want [a] after the retry", got)
	}

	// A background send that fails is reported by the next Checkpoint, and nothing is lost.
	rec.mu.Lock()
	rec.fail = boom
	rec.mu.Unlock()
	_ = th.Checkpoint(ctx, []byte("b")) // budget spent: waits
	clock.Advance(time.Second)
	if wait := th.sendDue(ctx); wait != 0 {
		t.Fatalf("sendDue waited %v with a token available", wait)
	}
	if err := th.Checkpoint(ctx, []byte("c")); !errors.Is(err, boom) {
		t.Fatalf("Checkpoint after a failed background send: %v, want %v", err, boom)
	}
	rec.mu.Lock()
	rec.fail = nil
	rec.mu.Unlock()
	if err := th.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.snapshot(); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("sent %v, want [a c]: c supersedes the failed b", got)
	}
}

func ExampleThrottle() {
	send := func(_ context.Context, data []byte) error { fmt.Println("sent", string(data)); return nil }
	frozen := time.Unix(0, 0) // a real run passes nil (time.Now); frozen, the output is certain
	th := NewThrottle(NewCoalescer(1, 2, func() time.Time { return frozen }), send)
	ctx := context.Background()
	for _, cp := range []string{"1", "2", "3", "4"} {
		_ = th.Checkpoint(ctx, []byte(cp)) // 1 and 2 within the burst; 3 waits, 4 replaces it
	}
	_ = th.Flush(ctx) // end of the run
	// Output:
	// sent 1
	// sent 2
	// sent 4
}
