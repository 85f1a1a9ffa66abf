package membership

import (
	"log/slog"
	"testing"
)

func TestParseLogLineMapsMemberlistLevels(t *testing.T) {
	for _, tc := range []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n", slog.LevelDebug, "Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Suspect b has failed, no acks received\n", slog.LevelInfo, "Suspect b has failed, no acks received"},
		{"[WARN] memberlist: Refuting a suspect message (from: a)\n", slog.LevelWarn, "Refuting a suspect message (from: a)"},
		{"[ERR] memberlist: Failed to send ping: boom\n", slog.LevelError, "Failed to send ping: boom"},
		{"[ERR] Failed to shutdown transport: boom\n", slog.LevelError, "Failed to shutdown transport: boom"},
		{"no level at all\n", slog.LevelInfo, "no level at all"},
	} {
		level, msg := parseLogLine(tc.line)
		if level != tc.level || msg != tc.msg {
			t.Errorf("parseLogLine(%q) = %v, %q; want %v, %q", tc.line, level, msg, tc.level, tc.msg)
		}
	}
}
