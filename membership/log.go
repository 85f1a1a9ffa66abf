package membership

import (
	"context"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
)

// memberlistLogger is the *log.Logger memberlist writes to, feeding l. It marks memberlist's own
// lines with lib=memberlist rather than a second "component": the caller's logger usually has a
// component already (the node's says gossip), and a record with the key twice is ambiguous to
// every log processor that reads it as a map.
// Once stopping is set, a write on a closed socket is logged at DEBUG.
func memberlistLogger(l *slog.Logger, stopping *atomic.Bool) *log.Logger {
	return log.New(logWriter{log: l.With("lib", "memberlist"), stopping: stopping}, "", 0)
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines (it only takes a *log.Logger) into slog
// records.
type logWriter struct {
	log      *slog.Logger
	stopping *atomic.Bool // nil: never
}

func (w logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
	// memberlist's gossip and probe loops race with its own Shutdown closing the sockets, and say
	// so at ERROR ("Failed to send gossip to ...: use of closed network connection"): on a clean
	// stop that is expected, not something for an operator to act on.
	if level > slog.LevelDebug && w.stopping != nil && w.stopping.Load() && strings.Contains(msg, net.ErrClosed.Error()) {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	level := slog.LevelInfo
	if tag, rest, ok := strings.Cut(line, "]"); ok && strings.HasPrefix(tag, "[") {
		switch tag[1:] {
		case "DEBUG", "TRACE":
			level = slog.LevelDebug
		case "WARN":
			level = slog.LevelWarn
		case "ERR", "ERROR":
			level = slog.LevelError
		}
		line = strings.TrimSpace(rest)
	}
	return level, strings.TrimPrefix(line, "memberlist: ")
}
