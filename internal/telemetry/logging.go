package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// NewLogger is the process's logger: text lines to w, or JSON lines with json, from level up.
func NewLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// hclogSink hands a hashicorp library's log calls (raft's) to slog with their values as given:
// a time.Duration stays a duration ("251.5ms"), where a trip through hclog's JSON output would
// make it a bare count of nanoseconds.
type hclogSink struct {
	log *slog.Logger
	min hclog.Level
}

func (s hclogSink) Accept(_ string, level hclog.Level, msg string, args ...any) {
	if level < s.min || level == hclog.Off {
		return
	}
	attrs := make([]any, 0, len(args)+1)
	for i := 0; i < len(args); i += 2 {
		key, ok := args[i].(string)
		if !ok {
			key = fmt.Sprint(args[i])
		}
		if i+1 == len(args) {
			attrs = append(attrs, "EXTRA_VALUE_AT_END", key)
			break
		}
		if key == "node" || key == "component" {
			// The node's logger carries both already; raft's own "node" (its state) would make a
			// line with the key twice, which log processors read as a map.
			key = "raft_" + key
		}
		attrs = append(attrs, key, hclogValue(args[i+1]))
	}
	s.log.Log(context.Background(), slogFromHCLevel(level), msg, attrs...)
}

// hclogValue renders the value types hclog formats itself; the rest go to slog unchanged.
func hclogValue(v any) any {
	switch v := v.(type) {
	case time.Duration:
		return v.String() // as text in JSON logs too, where slog would write nanoseconds
	case hclog.Format:
		if len(v) > 0 {
			if f, ok := v[0].(string); ok {
				return fmt.Sprintf(f, v[1:]...)
			}
		}
		return fmt.Sprint([]any(v)...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(v))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(v))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(v))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(v))
	case error:
		return v.Error()
	case fmt.Stringer:
		return v.String()
	}
	return v
}

func slogFromHCLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// NewHCLogger routes a hashicorp library's logger (raft's) into slog at the given minimum level.
func NewHCLogger(log *slog.Logger, name string, min slog.Level) hclog.Logger {
	level := hclog.Info
	switch {
	case min <= slog.LevelDebug:
		level = hclog.Debug
	case min >= slog.LevelError:
		level = hclog.Error
	case min >= slog.LevelWarn:
		level = hclog.Warn
	}
	// The logger's own output is discarded: every line reaches slog through the sink, which sees
	// the arguments before hclog formats them.
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Level: level, Output: io.Discard})
	l.RegisterSink(hclogSink{log: log.With("component", name), min: level})
	return l
}

// LogRepeatWindow is how long the raft and gossip loggers fold repeats of one warning into a count.
const LogRepeatWindow = 10 * time.Second

// peerKeys are the attributes that name the peer a raft line is about; the rate limit keys on
// them and the message, not on the error text or backoff, which vary from line to line.
var peerKeys = map[string]bool{"peer": true, "server-id": true, "id": true, "address": true, "node": true, "target": true}

// localPart drops "local-addr->" from memberlist's messages ("read tcp 127.0.0.1:54806->
// 127.0.0.1:7947: i/o timeout"): the ephemeral local port differs on every line about one peer.
var localPart = regexp.MustCompile(`\S+->`)

// repeatLimiter is the shared state of a RateLimitHandler and the handlers derived from it (With).
// A dead peer makes raft log every heartbeat and append that fails (50 lines in 3 s after one
// SIGKILL); each distinct warning or error about one peer is logged the first time, then its
// repeats are counted and summed up once per window ("... (and 49 more in the last 10s)").
type repeatLimiter struct {
	every      time.Duration
	now        func() time.Time
	after      func(time.Duration, func()) // time.AfterFunc; tests fire it by hand
	onSuppress func()                      // counts folded lines (metrics); may be nil

	mu      sync.Mutex
	windows map[string]*repeatWindow
}

type repeatWindow struct {
	start     time.Time
	repeats   int
	last      slog.Record  // the latest folded repeat, whose attributes the summary carries
	h         slog.Handler // the handler that saw it
	scheduled bool
}

// maxWindows bounds the limiter's memory; quiet windows are dropped beyond it.
const maxWindows = 256

// RateLimitHandler is a slog.Handler that folds repeated warnings and errors (repeatLimiter).
type RateLimitHandler struct {
	inner slog.Handler
	lim   *repeatLimiter
	scope string // the attributes added by With, part of each key
}

// NewRateLimitHandler folds inner's repeated warnings and errors for every (LogRepeatWindow for
// raft and gossip), calling onSuppress, if not nil, for each line it folds.
func NewRateLimitHandler(inner slog.Handler, every time.Duration, onSuppress func()) *RateLimitHandler {
	return &RateLimitHandler{inner: inner, lim: &repeatLimiter{
		every: every, now: time.Now, onSuppress: onSuppress, windows: map[string]*repeatWindow{},
		after: func(d time.Duration, f func()) { time.AfterFunc(d, f) },
	}}
}

func (h *RateLimitHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *RateLimitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	scope := h.scope
	for _, a := range as {
		scope += a.String() + " "
	}
	return &RateLimitHandler{inner: h.inner.WithAttrs(as), lim: h.lim, scope: scope}
}

func (h *RateLimitHandler) WithGroup(name string) slog.Handler {
	return &RateLimitHandler{inner: h.inner.WithGroup(name), lim: h.lim, scope: h.scope + name + "."}
}

func (h *RateLimitHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.inner.Handle(ctx, r)
	}
	var key strings.Builder
	key.WriteString(h.scope)
	key.WriteString(r.Level.String())
	key.WriteString("|")
	key.WriteString(localPart.ReplaceAllString(r.Message, ""))
	r.Attrs(func(a slog.Attr) bool {
		if peerKeys[a.Key] {
			key.WriteString("|" + a.String())
		}
		return true
	})
	if !h.lim.fold(key.String(), h.inner, r) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

// fold reports whether r, under key, is a repeat inside its window and so was counted instead of
// logged; the first repeat of a window schedules the summary at the window's end.
func (l *repeatLimiter) fold(key string, h slog.Handler, r slog.Record) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	w := l.windows[key]
	if w == nil || (w.repeats == 0 && now.Sub(w.start) >= l.every) {
		if len(l.windows) >= maxWindows {
			l.dropQuiet(now)
		}
		l.windows[key] = &repeatWindow{start: now}
		return false
	}
	w.repeats++
	w.last, w.h = r.Clone(), h
	if !w.scheduled {
		w.scheduled = true
		l.after(w.start.Add(l.every).Sub(now), func() { l.flush(key) })
	}
	if l.onSuppress != nil {
		l.onSuppress()
	}
	return true
}

// flush logs the count of a window's repeats and opens the next window, so a peer that stays
// down yields one summary line per window.
func (l *repeatLimiter) flush(key string) {
	l.mu.Lock()
	w := l.windows[key]
	if w == nil || w.repeats == 0 {
		l.mu.Unlock()
		return
	}
	last, h, n := w.last, w.h, w.repeats
	w.start, w.repeats, w.last, w.h, w.scheduled = l.now(), 0, slog.Record{}, nil, false
	l.mu.Unlock()

	sum := slog.NewRecord(l.now(), last.Level, fmt.Sprintf("%s (and %d more in the last %s)", last.Message, n, l.every), 0)
	last.Attrs(func(a slog.Attr) bool { sum.AddAttrs(a); return true })
	_ = h.Handle(context.Background(), sum)
}

// dropQuiet forgets windows that have ended without repeats. l.mu is held.
func (l *repeatLimiter) dropQuiet(now time.Time) {
	for k, w := range l.windows {
		if w.repeats == 0 && now.Sub(w.start) >= l.every {
			delete(l.windows, k)
		}
	}
}

// probeFailureSuffix is how memberlist reports a probe that got no ack, direct or indirect: it has no
// metric of its own for it (only in its go-metrics "degraded" counters, which mean something
// else), so the gossip logger counts this line, which memberlist (v0.7.0, state.go probeNode)
// prints at INFO as "Suspect <name> has failed, no acks received".
const probeFailureSuffix = "has failed, no acks received"

// CountProbeFailures calls count for each of memberlist's probe failures logged through the
// handler it returns, on their way to inner.
func CountProbeFailures(inner slog.Handler, count func()) slog.Handler {
	return probeCountHandler{inner: inner, count: count}
}

// probeCountHandler counts memberlist's probe failures on their way to inner. It sees INFO lines
// even when inner does not log them, so the count does not depend on the log level.
type probeCountHandler struct {
	inner slog.Handler
	count func()
}

func (h probeCountHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.inner.Enabled(ctx, l)
}

func (h probeCountHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "Suspect ") && strings.HasSuffix(r.Message, probeFailureSuffix) {
		h.count()
	}
	if !h.inner.Enabled(ctx, r.Level) {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

func (h probeCountHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return probeCountHandler{inner: h.inner.WithAttrs(as), count: h.count}
}

func (h probeCountHandler) WithGroup(name string) slog.Handler {
	return probeCountHandler{inner: h.inner.WithGroup(name), count: h.count}
}

// PerAddrLimiter lets one log line through per remote address per window, and counts what it
// holds back, so that the next line let through can say how many were suppressed. A refused join
// is worth a warning, but 2,000 wrong tokens from one address must not be 2,000 lines.
type PerAddrLimiter struct {
	every time.Duration
	mu    sync.Mutex
	addrs map[string]*addrWindow
}

type addrWindow struct {
	start      time.Time
	suppressed int
}

// maxLimitedAddrs bounds the limiter's memory: past it, addresses whose window has ended are
// forgotten, and while none has, every new address shares one window ("*").
const maxLimitedAddrs = 4096

// NewPerAddrLimiter lets one line per address through each every.
func NewPerAddrLimiter(every time.Duration) *PerAddrLimiter {
	return &PerAddrLimiter{every: every, addrs: map[string]*addrWindow{}}
}

// Allow reports whether a line about addr may be logged now, and how many lines about it were
// held back since the last one logged.
func (l *PerAddrLimiter) Allow(addr string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.addrs[addr]
	if w == nil && len(l.addrs) >= maxLimitedAddrs {
		for a, x := range l.addrs {
			if now.Sub(x.start) >= l.every && x.suppressed == 0 {
				delete(l.addrs, a)
			}
		}
		if len(l.addrs) >= maxLimitedAddrs {
			addr = "*"
			w = l.addrs[addr]
		}
	}
	if w != nil && now.Sub(w.start) < l.every {
		w.suppressed++
		return false, 0
	}
	if w == nil {
		w = &addrWindow{}
		l.addrs[addr] = w
	}
	suppressed, w.start, w.suppressed = w.suppressed, now, 0
	return true, suppressed
}
