package node

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/tracing/otlpreceiver"
	"github.com/taskworker/taskworker/tasks"
)

// BenchmarkSubmitPathTracing measures one node's submit path through HTTP (POST /v1/tasks:
// the API's middleware, validation, one raft entry, the reply) with in-memory raft and no task
// running, and reports the process's CPU time per task: tracing off with no traceparent, off
// with one (recorded with the task), and on, exporting to an in-process OTLP receiver.
// go test -bench SubmitPathTracing -run '^$' ./node
func BenchmarkSubmitPathTracing(b *testing.B) {
	b.Run("off", func(b *testing.B) { benchSubmitPath(b, nil, "") })
	b.Run("off-traceparent", func(b *testing.B) { benchSubmitPath(b, nil, traceparent) })
	b.Run("on", func(b *testing.B) {
		recv := otlpreceiver.New()
		defer recv.Close()
		benchSubmitPath(b, otelEnv(recv, nil), traceparent)
	})
}

func benchSubmitPath(b *testing.B, getenv func(string) string, tp string) {
	reg := tasks.NewRegistry()
	if err := tasks.RegisterBuiltins(reg, b.TempDir()); err != nil {
		b.Fatal(err)
	}
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	n, err := Start(Config{Name: "n1", GossipAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Capacity: 1, Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Insecure: true, InmemRaft: true,
		Getenv: getenv})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) { // polling interval
		if _, ok := n.fsm.Node("n1"); ok && n.IsLeader() {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the node never registered")
		}
	}
	// Drained: no task runs, so the figure is the submit path alone.
	if _, err := n.internode.Propose(context.Background(), &fsm.Command{Body: &fsm.Drain{Name: "n1", Draining: true}}); err != nil {
		b.Fatal(err)
	}
	url := "http://" + n.HTTPAddr() + "/v1/tasks"
	const body = `{"type": "echo", "input": {"payload": "0123456789abcdef"}}`
	c := &http.Client{}
	submit := func() {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tp != "" {
			req.Header.Set("Traceparent", tp)
		}
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("submit: status %d", resp.StatusCode)
		}
	}
	submit()
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		submit()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/task")
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
