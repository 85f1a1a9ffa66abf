package telemetry

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// limiterUnderTest is a RateLimitHandler on a fake clock whose summaries fire only when the test
// says so; lines() returns what reached the text handler.
type limiterUnderTest struct {
	log     *slog.Logger
	buf     *bytes.Buffer
	now     time.Time
	pending []func()
	folded  int
}

func newLimiterUnderTest() *limiterUnderTest {
	lt := &limiterUnderTest{buf: &bytes.Buffer{}, now: time.Unix(1_700_000_000, 0)}
	h := NewRateLimitHandler(slog.NewTextHandler(lt.buf, nil), 10*time.Second, func() { lt.folded++ })
	h.lim.now = func() time.Time { return lt.now }
	h.lim.after = func(_ time.Duration, f func()) { lt.pending = append(lt.pending, f) }
	lt.log = slog.New(h)
	return lt
}

// advance moves the clock and fires the summaries that were scheduled.
func (lt *limiterUnderTest) advance(d time.Duration) {
	lt.now = lt.now.Add(d)
	fire := lt.pending
	lt.pending = nil
	for _, f := range fire {
		f()
	}
}

func (lt *limiterUnderTest) lines() []string {
	out := strings.Split(strings.TrimSpace(lt.buf.String()), "\n")
	lt.buf.Reset()
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

func TestRepeatedPeerErrorsAreFoldedIntoACount(t *testing.T) {
	lt := newLimiterUnderTest()
	raftLog := lt.log.With("component", "raft")
	for i := 0; i < 50; i++ {
		raftLog.Error("failed to heartbeat to", "peer", "n2", "backoff time", time.Duration(i)*time.Millisecond, "error", "dial tcp: connection refused")
		raftLog.Error("failed to heartbeat to", "peer", "n3", "error", "dial tcp: connection refused")
	}
	raftLog.Info("entering follower state", "peer", "n2")
	raftLog.Info("entering follower state", "peer", "n2")

	got := lt.lines()
	if len(got) != 4 || !strings.Contains(got[0], "peer=n2") || !strings.Contains(got[1], "peer=n3") ||
		!strings.Contains(got[2], "entering follower state") || !strings.Contains(got[3], "entering follower state") {
		t.Fatalf("before the window ends, want the first error per peer and every info line, got:\n%s", strings.Join(got, "\n"))
	}
	if lt.folded != 98 {
		t.Errorf("folded %d lines, want 98", lt.folded)
	}

	lt.advance(10 * time.Second)
	got = lt.lines()
	if len(got) != 2 {
		t.Fatalf("at the window's end, want one summary per peer, got:\n%s", strings.Join(got, "\n"))
	}
	for i, peer := range []string{"n2", "n3"} {
		if !strings.Contains(got[i], `msg="failed to heartbeat to (and 49 more in the last 10s)"`) || !strings.Contains(got[i], "peer="+peer) ||
			!strings.Contains(got[i], "level=ERROR") || !strings.Contains(got[i], "component=raft") {
			t.Errorf("summary %d: %s", i, got[i])
		}
	}

	// The peer stays down: the next window again yields one count, not 20 lines.
	for i := 0; i < 20; i++ {
		raftLog.Error("failed to heartbeat to", "peer", "n2", "error", "dial tcp: connection refused")
	}
	if got := lt.lines(); got != nil {
		t.Fatalf("repeats after a summary are folded into the next window, got:\n%s", strings.Join(got, "\n"))
	}
	lt.advance(10 * time.Second)
	if got := lt.lines(); len(got) != 1 || !strings.Contains(got[0], "(and 20 more in the last 10s)") {
		t.Fatalf("second window: %q", got)
	}

	// A quiet window later, the error is news again and logged in full.
	lt.advance(10 * time.Second)
	raftLog.Error("failed to heartbeat to", "peer", "n2", "error", "dial tcp: connection refused")
	if got := lt.lines(); len(got) != 1 || strings.Contains(got[0], "more in the last") {
		t.Fatalf("after a quiet window: %q", got)
	}
}

func TestRateLimitKeys(t *testing.T) {
	tests := []struct {
		name  string
		log   func(l *slog.Logger)
		lines int
	}{
		{"memberlist lines differing only in the local port are one key", func(l *slog.Logger) {
			l.Error("Failed to fallback ping: read tcp 127.0.0.1:54806->127.0.0.1:7947: i/o timeout")
			l.Error("Failed to fallback ping: read tcp 127.0.0.1:54999->127.0.0.1:7947: i/o timeout")
		}, 1},
		{"memberlist lines about different peers are not", func(l *slog.Logger) {
			l.Error("Failed to fallback ping: read tcp 127.0.0.1:54806->127.0.0.1:7947: i/o timeout")
			l.Error("Failed to fallback ping: read tcp 127.0.0.1:54806->127.0.0.1:7948: i/o timeout")
		}, 2},
		{"different components are not", func(l *slog.Logger) {
			l.With("component", "raft").Warn("failed to contact", "server-id", "n2")
			l.With("component", "raft-net").Warn("failed to contact", "server-id", "n2")
		}, 2},
		{"the level is part of the key", func(l *slog.Logger) {
			l.Warn("failed to contact", "server-id", "n2")
			l.Error("failed to contact", "server-id", "n2")
		}, 2},
		{"info and debug are never folded", func(l *slog.Logger) {
			l.Info("x", "peer", "n2")
			l.Info("x", "peer", "n2")
			l.Info("x", "peer", "n2")
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lt := newLimiterUnderTest()
			tc.log(lt.log)
			if got := lt.lines(); len(got) != tc.lines {
				t.Fatalf("%d lines, want %d:\n%s", len(got), tc.lines, strings.Join(got, "\n"))
			}
		})
	}
}

func TestHCLogLinesGoThroughTheLimiter(t *testing.T) {
	lt := newLimiterUnderTest()
	hl := NewHCLogger(lt.log, "raft", slog.LevelInfo)
	for i := 0; i < 5; i++ {
		hl.Error("failed to appendEntries to", "peer", "{Voter n2 127.0.0.1:9}", "error", "EOF")
	}
	got := lt.lines()
	if len(got) != 1 || !strings.Contains(got[0], "component=raft") || strings.Count(got[0], "component=") != 1 {
		t.Fatalf("want one raft line with one component, got:\n%s", strings.Join(got, "\n"))
	}
	lt.advance(10 * time.Second)
	if got := lt.lines(); len(got) != 1 || !strings.Contains(got[0], "(and 4 more in the last 10s)") {
		t.Fatalf("summary: %q", got)
	}
}

func TestProbeFailuresAreCountedAtAnyLogLevel(t *testing.T) {
	var buf bytes.Buffer
	n := 0
	l := slog.New(probeCountHandler{inner: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}), count: func() { n++ }})
	l = l.With("component", "gossip")
	l.Info("Suspect n2 has failed, no acks received")
	l.Info("Suspect n3 has failed, no acks received")
	l.Warn("Refuting a suspect message (from: n2)")
	if n != 2 || buf.Len() != 0 {
		t.Fatalf("counted %d probe failures (want 2), logged %q (want nothing below ERROR)", n, buf.String())
	}
}

// TestHCLogDurationsPrintAsDurations: raft logs how long things took as time.Duration values;
// they must read as durations in the text and JSON logs, not as bare nanoseconds
// (time=2.5151568e+08), and each line keeps its level and one component.
func TestHCLogDurationsPrintAsDurations(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			var h slog.Handler = slog.NewTextHandler(&buf, nil)
			if format == "json" {
				h = slog.NewJSONHandler(&buf, nil)
			}
			hl := NewHCLogger(slog.New(h), "raft", slog.LevelInfo)
			hl.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "", "time", 251515680*time.Nanosecond)
			hl.Debug("not logged below the level", "time", time.Second)
			line := strings.TrimSpace(buf.String())
			want := "time=251.51568ms"
			if format == "json" {
				want = `"time":"251.51568ms"`
			}
			if strings.Count(line, "\n") != 0 || !strings.Contains(line, want) || strings.Contains(line, "e+08") || strings.Contains(line, "251515680") {
				t.Fatalf("raft's duration: got %q, want one line with %s", line, want)
			}
			if !strings.Contains(line, "WARN") || strings.Count(line, "component") != 1 || !strings.Contains(line, "raft") {
				t.Errorf("level or component lost: %q", line)
			}
			buf.Reset()
			hl.Info("entering candidate state", "node", "Node at 127.0.0.1:7947 [Candidate]", "term", 2)
			if line := buf.String(); strings.Count(line, "node") != 1 || !strings.Contains(line, "raft_node") {
				t.Errorf("raft's own node attribute must not repeat the key: %q", line)
			}
		})
	}
}

func TestRefusedJoinsAreLoggedOncePerAddressPerWindowWithACount(t *testing.T) {
	l := NewPerAddrLimiter(time.Minute)
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow("10.0.0.1", t0); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := 1; i <= 1999; i++ {
		if ok, _ := l.Allow("10.0.0.1", t0.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatalf("attempt %d within the minute was let through", i)
		}
	}
	if ok, _ := l.Allow("10.0.0.2", t0.Add(time.Second)); !ok {
		t.Error("another address is limited on its own")
	}
	if ok, n := l.Allow("10.0.0.1", t0.Add(time.Minute)); !ok || n != 1999 {
		t.Errorf("after the window: %v, suppressed %d, want true 1999", ok, n)
	}

	// Many addresses share one window past the bound, so memory stays bounded.
	for i := 0; i < maxLimitedAddrs+100; i++ {
		l.Allow(strings.Repeat("a", i%7)+time.Duration(i).String(), t0.Add(2*time.Minute))
	}
	if len(l.addrs) > maxLimitedAddrs+1 {
		t.Errorf("%d addresses remembered, want at most %d", len(l.addrs), maxLimitedAddrs+1)
	}
}
