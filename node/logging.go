package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogWriter turns hclog's JSON lines (raft's logger) into slog records.
type hclogWriter struct{ log *slog.Logger }

func (w hclogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			w.log.Info(string(line))
			continue
		}
		msg, _ := rec["@message"].(string)
		lvl, _ := rec["@level"].(string)
		attrs := make([]any, 0, 2*len(rec))
		for k, v := range rec {
			if k[0] != '@' {
				attrs = append(attrs, k, v)
			}
		}
		w.log.Log(context.Background(), slogLevel(lvl), msg, attrs...)
	}
	return len(p), nil
}

func slogLevel(l string) slog.Level {
	switch l {
	case "trace", "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newHCLogger routes a hashicorp library's logger into slog at the given minimum level.
func newHCLogger(log *slog.Logger, name string, min slog.Level) hclog.Logger {
	level := hclog.Info
	switch {
	case min <= slog.LevelDebug:
		level = hclog.Debug
	case min >= slog.LevelError:
		level = hclog.Error
	case min >= slog.LevelWarn:
		level = hclog.Warn
	}
	var out io.Writer = hclogWriter{log: log.With("component", name)}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, JSONFormat: true, Output: out})
}
