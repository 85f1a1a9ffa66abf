package pki

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable time for RenewIfDue.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time)     { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *fakeClock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

func TestRenewIfDue(t *testing.T) {
	ca, err := CreateCA("global", testNow)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: testNow}
	spec := NodeSpec{Name: "n1", Validity: 30 * 24 * time.Hour}
	first, err := ca.IssueIdentity(spec, testNow)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHolder(first)
	var saved []*Identity
	r := &Renewer{
		Holder: h, Spec: spec, Now: clock.Now, Logger: slog.New(slog.DiscardHandler),
		Issuer:  LocalIssuer{CA: ca, Now: clock.Now},
		OnRenew: func(id *Identity) error { saved = append(saved, id); return nil },
	}
	ctx := context.Background()

	clock.Set(testNow.Add(19 * 24 * time.Hour))
	if renewed, err := r.RenewIfDue(ctx); err != nil || renewed {
		t.Fatalf("day 19: renewed=%v err=%v", renewed, err)
	}
	clock.Set(testNow.Add(20*24*time.Hour + time.Minute))
	if renewed, err := r.RenewIfDue(ctx); err != nil || !renewed {
		t.Fatalf("day 20: renewed=%v err=%v", renewed, err)
	}
	second := h.Identity()
	if second == first || len(saved) != 1 || saved[0] != second {
		t.Fatal("the renewed identity was not stored and saved")
	}
	if second.Leaf().PublicKey.(*ecdsa.PublicKey).Equal(first.Leaf().PublicKey) {
		t.Error("renewal kept the old key")
	}
	if name, _ := NodeName(second.Leaf(), "global"); name != "n1" {
		t.Errorf("renewed certificate names %q", name)
	}
	if renewed, _ := r.RenewIfDue(ctx); renewed {
		t.Fatal("renewed a fresh certificate again")
	}

	// A failing issuer leaves the current identity in place.
	r.Issuer = issuerFunc(func(context.Context, NodeSpec) (*Identity, error) { return nil, errors.New("CA unreachable") })
	clock.Add(29 * 24 * time.Hour)
	if _, err := r.RenewIfDue(ctx); err == nil {
		t.Fatal("no error from a failing issuer")
	}
	if h.Identity() != second {
		t.Fatal("a failed renewal changed the identity")
	}
}

type issuerFunc func(context.Context, NodeSpec) (*Identity, error)

func (f issuerFunc) IssueIdentity(ctx context.Context, s NodeSpec) (*Identity, error) {
	return f(ctx, s)
}

// Run, with real time and short certificates, keeps renewing before expiry and retries after a
// failure.
func TestRenewerRunRenewsBeforeExpiry(t *testing.T) {
	ca := newTestCA(t, "global")
	spec := NodeSpec{Name: "n1", Validity: 900 * time.Millisecond}
	h := NewHolder(nil) // no identity yet: the first round issues one
	var fail atomic.Bool
	fail.Store(true)
	var issued atomic.Int64
	r := &Renewer{
		Holder: h, Spec: spec, RetryAfter: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		Issuer: issuerFunc(func(ctx context.Context, s NodeSpec) (*Identity, error) {
			if fail.CompareAndSwap(true, false) {
				return nil, errors.New("first try fails")
			}
			issued.Add(1)
			return LocalIssuer{CA: ca}.IssueIdentity(ctx, s)
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	deadline := time.Now().Add(30 * time.Second)
	seen := map[string]bool{}
	for len(seen) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("saw %d certificates before the deadline", len(seen))
		}
		if id := h.Identity(); id != nil {
			seen[Fingerprint(id.Leaf())] = true
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for a condition
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if issued.Load() < 3 {
		t.Fatalf("issued %d", issued.Load())
	}
}
