package membership

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// memberlistLogger is the *log.Logger memberlist writes to, feeding l. It marks memberlist's own
// lines with lib=memberlist rather than a second "component": the caller's logger usually has a
// component already (the node's says gossip), and a record with the key twice is ambiguous to
// every log processor that reads it as a map.
func memberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{l.With("lib", "memberlist")}, "", 0)
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines (it only takes a *log.Logger) into slog
// records.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
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
