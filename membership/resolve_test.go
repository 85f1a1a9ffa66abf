package membership_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/membership"
)

// testResolver answers lookups of one name from a list the test changes, and counts them.
type testResolver struct {
	name string

	mu      sync.Mutex
	answers []string
	err     error
	calls   int
	asked   []string
}

func (r *testResolver) set(err error, answers ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err, r.answers = err, answers
}

func (r *testResolver) lookup(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.asked = append(r.asked, host)
	if host != r.name {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return append([]string(nil), r.answers...), r.err
}

func (r *testResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// A seed given by name is resolved again in every round, and every address it resolves to is
// tried: a down member listed first does not hide a live one, this node's own address is no
// seed, and an answer that changes between rounds is followed.
func TestJoinResolvesNameToEveryAddressEachRound(t *testing.T) {
	c := newCluster(t, nil)
	a := c.start("a")
	// b is a member that went down: its address stays in DNS.
	b, err := membership.New(c.config("b"))
	if err != nil {
		t.Fatal(err)
	}
	down := b.GossipAddr()
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}

	res := &testResolver{name: "taskworker-headless"}
	res.set(&net.DNSError{Err: "server misbehaving", Name: res.name, IsTemporary: true})
	logs := &logBuffer{}
	cfg := c.config("joiner")
	cfg.Resolve = res.lookup
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	j := c.startWith(cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	joined := make(chan error, 1)
	go func() { joined <- j.Join(ctx, []string{"taskworker-headless:7946"}) }()

	waitFor(t, "a failed lookup is retried", func() bool { return res.count() >= 2 && logs.Contains("server misbehaving") })
	// Now the name holds the down member and the joiner itself: still no cluster to join.
	res.set(nil, down, j.GossipAddr())
	seen := res.count()
	waitFor(t, "two more rounds, each resolving again", func() bool { return res.count() >= seen+2 })
	select {
	case err := <-joined:
		t.Fatalf("join returned (%v) with only a down member and itself to contact", err)
	default:
	}
	if _, ok := j.member("a"); ok {
		t.Fatal("the joiner sees a, which the name did not hold")
	}

	// The answer changes: the down member first, then a live one.
	res.set(nil, down, a.GossipAddr())
	if err := <-joined; err != nil {
		t.Fatalf("join once the name holds a live member: %v", err)
	}
	a.waitEvent(t, membership.EventJoin, "joiner")
	res.mu.Lock()
	defer res.mu.Unlock()
	for _, h := range res.asked {
		if h != "taskworker-headless" {
			t.Fatalf("looked up %q, want only the seed's host (the port is not part of the name)", h)
		}
	}
}

// An IP seed is never looked up, and a name that cannot be resolved does not stop the other
// seeds from being tried in the same round.
func TestJoinTriesOtherSeedsWhenANameDoesNotResolve(t *testing.T) {
	c := newCluster(t, nil)
	a := c.start("a")
	res := &testResolver{name: "never-asked"}
	cfg := c.config("joiner")
	cfg.Resolve = res.lookup
	j := c.startWith(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := j.Join(ctx, []string{"missing.invalid:7946", a.GossipAddr()}); err != nil {
		t.Fatalf("join: %v", err)
	}
	a.waitEvent(t, membership.EventJoin, "joiner")
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(res.asked) != 1 || res.asked[0] != "missing.invalid" {
		t.Fatalf("lookups %q, want only missing.invalid (an IP seed is not looked up)", res.asked)
	}
}

// A resolver answering junk is an error for that seed, not a panic and not a join.
func TestJoinRejectsAnswersThatAreNotAddresses(t *testing.T) {
	c := newCluster(t, nil)
	res := &testResolver{name: "junk"}
	res.set(nil, "not an address", "")
	cfg := c.config("joiner")
	cfg.Resolve = res.lookup
	j := c.startWith(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := j.Join(ctx, []string{"junk:7946"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join with junk answers: %v, want the deadline", err)
	}
	if got := len(j.Members()); got != 1 {
		t.Fatalf("%d members, want only the joiner", got)
	}
}
