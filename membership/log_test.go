package membership

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
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
	memberlistLogger(l, nil).Printf("[WARN] memberlist: Refuting a suspect message (from: a)")
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

// TestClosedSocketAtShutdownIsNotAnError: memberlist's loops write to sockets its Shutdown is
// closing and log it at ERROR; once this node stops, that is DEBUG. Before, it stays an error.
func TestClosedSocketAtShutdownIsNotAnError(t *testing.T) {
	var buf bytes.Buffer
	var stopping atomic.Bool
	l := memberlistLogger(slog.New(slog.NewTextHandler(&buf, nil)), &stopping)
	const line = "[ERR] memberlist: Failed to send gossip to 127.0.0.1:7956: write udp 127.0.0.1:7946->127.0.0.1:7956: use of closed network connection"
	l.Print(line)
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Fatalf("while running, a closed socket is an error: %q", buf.String())
	}
	buf.Reset()
	stopping.Store(true)
	l.Print(line)
	l.Print("[ERR] memberlist: Failed to send ping: connection refused")
	if strings.Contains(buf.String(), "use of closed") {
		t.Errorf("a closed socket while stopping was logged at INFO or above: %q", buf.String())
	}
	if !strings.Contains(buf.String(), "level=ERROR msg=\"Failed to send ping: connection refused\"") {
		t.Errorf("other errors while stopping must stay errors: %q", buf.String())
	}
}

// TestEncryptionMismatchIsNamedOnOneLine: memberlist's multierror about a seed that encrypts
// gossip differently becomes one sentence naming the seed and what to change; other join
// failures are not a mismatch and print on one line.
func TestEncryptionMismatchIsNamedOnOneLine(t *testing.T) {
	enc := errors.New("1 error occurred:\n\t* failed to join 127.0.0.1:7946: remote state is encrypted and encryption is not configured\n\n")
	got := encryptionMismatch(enc)
	if got != "the member at 127.0.0.1:7946 encrypts its gossip and this node has no gossip key (it runs --insecure; a secure cluster is joined with its join token)" {
		t.Errorf("insecure joiner: %q", got)
	}
	plain := errors.New("1 error occurred:\n\t* failed to join 127.0.0.1:7946: encryption is configured but remote state is not encrypted\n\n")
	if got := encryptionMismatch(plain); !strings.Contains(got, "127.0.0.1:7946 gossips in plain text") {
		t.Errorf("secure joiner of an insecure cluster: %q", got)
	}
	down := errors.New("2 errors occurred:\n\t* failed to join 127.0.0.1:7946: dial tcp 127.0.0.1:7946: connect: connection refused\n\t* failed to join 127.0.0.1:7956: i/o timeout\n\n")
	if got := encryptionMismatch(down); got != "" {
		t.Errorf("a seed that is down is not a mismatch: %q", got)
	}
	if got := oneLine(down); got != "failed to join 127.0.0.1:7946: dial tcp 127.0.0.1:7946: connect: connection refused; failed to join 127.0.0.1:7956: i/o timeout" {
		t.Errorf("oneLine: %q", got)
	}
}
