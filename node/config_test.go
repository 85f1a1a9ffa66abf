package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/tasks"
)

// validConfig is a config Validate accepts, as the agent builds it from its default flags.
func validConfig() Config {
	c := Config{
		Name: "n1", DataDir: "/tmp/x", GossipAddr: "127.0.0.1:7946", RaftAddr: "127.0.0.1:7947",
		HTTPAddr: "127.0.0.1:7948", Registry: tasks.NewRegistry(),
	}
	c.setDefaults()
	return c
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		modify func(c *Config)
		want   []string // substrings, one per expected problem; nil: valid
	}{
		{"defaults", func(c *Config) {}, nil},
		{"in-memory twin without data dir", func(c *Config) { c.DataDir = ""; c.InmemRaft = true }, nil},
		{"dev alone", func(c *Config) { c.DataDir = ""; c.Dev = true }, nil},
		{"join list", func(c *Config) { c.Join = []string{"127.0.0.1:7946", "[::1]:7946", "seed.example:7946"} }, nil},
		{"port 0 picks one", func(c *Config) { c.HTTPAddr = "127.0.0.1:0" }, nil},
		{"negative capacity", func(c *Config) { c.Capacity = -1 }, []string{"--capacity must be at least 1, got -1"}},
		{"zero voters", func(c *Config) { c.Voters = 0 }, []string{"--voters must be at least 1, got 0"}},
		{"negative drain timeout", func(c *Config) { c.DrainTimeout = -5 * time.Second }, []string{"--drain-timeout must be positive, got -5s"}},
		{"zero retention", func(c *Config) { c.Retention = 0 }, []string{"--retention must be positive"}},
		{"zero max input", func(c *Config) { c.MaxInputBytes = 0 }, []string{"--max-input-bytes must be positive"}},
		{"negative probe interval", func(c *Config) { c.ProbeInterval = -time.Second }, []string{"probe interval must not be negative"}},
		{"min free disk in IEC units", func(c *Config) { c.MinFreeDisk = "1GiB" }, nil},
		{"min free disk off", func(c *Config) { c.MinFreeDisk = "0" }, nil},
		{"min free disk not a size", func(c *Config) { c.MinFreeDisk = "lots" }, []string{`--min-free-disk: want a size such as 256MiB or 1GB, got "lots"`}},
		{"min free disk negative", func(c *Config) { c.MinFreeDisk = "-5MB" }, []string{"--min-free-disk: want a size"}},
		{"trace link template", func(c *Config) { c.TraceURLTemplate = "http://jaeger:16686/trace/{trace_id}" }, nil},
		{"trace link template that runs script", func(c *Config) { c.TraceURLTemplate = "javascript:alert(1)//{trace_id}" },
			[]string{"--trace-url-template: trace URL template \"javascript:alert(1)//{trace_id}\": want an http:// or https:// URL"}},
		{"trace link template without the trace ID", func(c *Config) { c.TraceURLTemplate = "http://jaeger/" },
			[]string{"--trace-url-template: trace URL template \"http://jaeger/\": it must contain {trace_id}"}},
		{"no name", func(c *Config) { c.Name = "" }, []string{"--name is required"}},
		{"no data dir", func(c *Config) { c.DataDir = "" }, []string{"--data-dir is required"}},
		{"no registry", func(c *Config) { c.Registry = nil }, []string{"task registry is required"}},
		{"dev with data dir and join", func(c *Config) { c.Dev = true; c.Join = []string{"127.0.0.1:7946"} },
			[]string{"--dev does not go with --data-dir", "--dev does not go with --join"}},
		{"dev with join token", func(c *Config) { c.DataDir = ""; c.Dev = true; c.JoinToken = "x" }, []string{"--dev runs without node-to-node security"}},
		{"insecure with join token", func(c *Config) { c.Insecure = true; c.JoinToken = "x" }, []string{"--insecure does not go with --join-token"}},
		{"half the TLS files", func(c *Config) { c.TLSCertFile = "c.pem" }, []string{"--tls-cert, --tls-key and --tls-ca go together"}},
		{"verify incoming without https", func(c *Config) { c.TLSVerifyIncoming = true }, []string{"--tls-verify-incoming needs --http-tls"}},
		{"gossip addr without port", func(c *Config) { c.GossipAddr = "127.0.0.1" }, []string{`--gossip-addr "127.0.0.1": want host:port`}},
		{"raft port out of range", func(c *Config) { c.RaftAddr = "127.0.0.1:70000" }, []string{`--raft-addr "127.0.0.1:70000": port "70000"`}},
		{"http port not a number", func(c *Config) { c.HTTPAddr = "127.0.0.1:http" }, []string{`--http-addr "127.0.0.1:http": port "http"`}},
		{"bad join address", func(c *Config) { c.Join = []string{"127.0.0.1:7946", "seed"} }, []string{`--join "seed": want host:port`}},
		{"advertise with a port", func(c *Config) { c.Advertise = "127.0.0.1:7946" }, []string{"--advertise \"127.0.0.1:7946\": want a host"}},
		{"twin transports skip their addresses", func(c *Config) { c.RaftAddr = ""; _, c.RaftTransport = raft.NewInmemTransport("") }, nil},
		{"every problem at once", func(c *Config) { c.Capacity = -1; c.Voters = 0; c.DrainTimeout = -time.Second },
			[]string{"--capacity", "--voters", "--drain-timeout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.modify(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate: %v does not wrap ErrInvalidConfig", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("Validate: %d problems %q, want %d (%q)", len(lines), lines, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("problem %d: %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestStartRefusesInvalidConfig: Start runs Validate too, so an embedder gets the same refusal.
func TestStartRefusesInvalidConfig(t *testing.T) {
	c := validConfig()
	c.Capacity = -1
	c.DataDir = t.TempDir()
	if _, err := Start(c); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--capacity") {
		t.Fatalf("Start: %v, want the --capacity problem", err)
	}
}

// TestAgentRefusesNonsenseFlagsWithExit2 runs `taskworker agent` with bad flags: it exits 2 with
// one line per problem, before opening anything.
func TestAgentRefusesNonsenseFlagsWithExit2(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"numbers", []string{"--data-dir", dir, "--capacity", "-1", "--voters", "0", "--drain-timeout", "-5s", "--retention", "0s"},
			[]string{"--capacity must be at least 1, got -1", "--voters must be at least 1, got 0", "--drain-timeout must be positive, got -5s", "--retention must be positive, got 0s"}},
		{"dev conflicts", []string{"--dev", "--data-dir", dir, "--join", "127.0.0.1:7946"},
			[]string{"--dev does not go with --data-dir", "--dev does not go with --join"}},
		{"addresses", []string{"--data-dir", dir, "--http-addr", "localhost", "--join", "seed"},
			[]string{`--http-addr "localhost": want host:port`, `--join "seed": want host:port`}},
		{"insecure with join token", []string{"--data-dir", dir, "--insecure", "--join-token", "abc"},
			[]string{"--insecure does not go with --join-token"}},
		{"rate limit", []string{"--data-dir", dir, "--http-rate-limit", "-3"},
			[]string{"--http-rate-limit must be 0 (off) or positive, got -3"}},
		{"pprof on a public address", []string{"--data-dir", dir, "--pprof=0.0.0.0:6060"},
			[]string{`--pprof "0.0.0.0:6060": the profiler listens on loopback only`}},
		// A bare --pprof (no value) is the API listener, which --acl refuses.
		{"bare pprof with acl", []string{"--data-dir", dir, "--acl", "--pprof"},
			[]string{"--pprof on the API listener does not go with --acl"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var code = -1
			app := &cli.App{
				Name: "taskworker", Commands: []*cli.Command{AgentCommand(AgentOptions{})},
				Writer: io.Discard, ErrWriter: io.Discard,
				// Keep the process: record the exit code the app would exit with.
				ExitErrHandler: func(_ *cli.Context, err error) {
					if ec, ok := err.(cli.ExitCoder); ok {
						code = ec.ExitCode()
					}
				},
			}
			args := append([]string{"taskworker", "agent", "--name", "n1", "--gossip-addr", "127.0.0.1:0",
				"--raft-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "error"}, tc.args...)
			err := app.Run(args)
			if code != 2 || err == nil {
				t.Fatalf("agent %q: exit %d, err %v; want exit 2", tc.args, code, err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("agent %q: %d lines %q, want %d", tc.args, len(lines), lines, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d: %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

// syncBuffer is a log sink the node's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// deadAddr is a loopback host:port nobody listens on (freeAddr: not one the node's own :0
// listeners can be given).
func deadAddr(t *testing.T) string {
	t.Helper()
	return freeAddr(t)
}

// TestJoiningADeadSeedWarnsAndStopsAtOnce: the failed joins are WARN lines saying when the next
// try is, and a node that never joined stops at once on leave (what Ctrl-C does), without the
// drain that no leader would record or a "leave refused" line.
func TestJoiningADeadSeedWarnsAndStopsAtOnce(t *testing.T) {
	logs := &syncBuffer{}
	c := clusterOpts{}.config(t, 1, []string{deadAddr(t)})
	c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	n, err := Start(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	waitFor(t, "a WARN join failure", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `level=WARN msg="join failed, retrying in `)
	})
	if err := n.Leave(context.Background(), true); err != nil {
		t.Fatalf("leave: %v", err)
	}
	// A guard against a hang only: "at once" is judged below by what the node did, not by a clock
	// on a shared machine.
	select {
	case <-n.Done():
	case <-time.After(time.Minute):
		t.Fatal("a node that never joined still runs a minute after leave")
	}
	// At once: straight from the leave to the shutdown, with none of a graceful leave's steps (a
	// drain, a wait for its tasks, a leave of raft or gossip) in between.
	out := logs.String()
	if !strings.Contains(out, "stopping at once: this node never joined") {
		t.Fatalf("no line says why the node stops at once:\n%s", out)
	}
	for _, step := range []string{"leave refused", "draining", "phase=leave"} {
		if strings.Contains(out, step) {
			t.Errorf("a node that never joined went through %q on its way out:\n%s", step, out)
		}
	}
}

// slogTo is an INFO-level text logger writing to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
