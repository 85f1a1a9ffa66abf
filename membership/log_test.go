package membership

import (
	"bytes"
	"log/slog"
	"strings"
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

func TestMemberlistLinesCarryEachKeyOnce(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&buf, nil)).With("component", "gossip")
	memberlistLogger(l).Printf("[WARN] memberlist: Refuting a suspect message (from: a)")
	line := buf.String()
	if n := strings.Count(line, `"component":`); n != 1 {
		t.Fatalf("component appears %d times in %s", n, line)
	}
	for _, want := range []string{`"component":"gossip"`, `"lib":"memberlist"`, `"level":"WARN"`, `"msg":"Refuting a suspect message (from: a)"`} {
		if !strings.Contains(line, want) {
			t.Errorf("line %s lacks %s", line, want)
		}
	}
}
