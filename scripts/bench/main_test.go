package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// TestQuickRunPrintsEveryFigure builds taskworker and this program, runs `bench -quick` on real
// processes and checks the report: every row of the table, each with a measurement, the machine
// line, the cost curve's table and its PNG. It asserts no timing: CI proves the benchmark still
// runs end to end, not how fast anything is.
func TestQuickRunPrintsEveryFigure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several clusters of real processes")
	}
	dir := t.TempDir()
	tw, err := localcluster.Build(localcluster.Module, filepath.Join(dir, "taskworker"))
	if err != nil {
		t.Fatal(err)
	}
	bench, err := localcluster.Build(".", filepath.Join(dir, "bench"))
	if err != nil {
		t.Fatal(err)
	}
	png := filepath.Join(dir, "cost.png")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bench, "-quick", "-bin", tw, "-plot", png)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench -quick: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()

	for _, want := range []string{"Machine: ", " cores, Linux ", "| figure | measured | target |", "| tasks in the state |"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the report:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	for _, spec := range rowSpecs {
		var row string
		for _, l := range lines {
			if strings.HasPrefix(l, "| "+spec.figure) {
				row = l
				break
			}
		}
		if row == "" {
			t.Errorf("no row %q in the report:\n%s", spec.figure, out)
			continue
		}
		cells := strings.Split(strings.Trim(row, "|"), " | ")
		if len(cells) != 3 {
			t.Errorf("row %q: %d cells, want 3", row, len(cells))
			continue
		}
		if m := strings.TrimSpace(cells[1]); m == "" || strings.HasPrefix(m, "not measured") {
			t.Errorf("row %q: nothing measured", row)
		}
		if strings.TrimSpace(cells[2]) != spec.target {
			t.Errorf("row %q: target %q, want %q", row, cells[2], spec.target)
		}
	}

	// The cost curve: one table row per point of the quick scale.
	curveRows := 0
	inCurve := false
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "| tasks in the state |"):
			inCurve = true
		case inCurve && strings.HasPrefix(l, "|---"):
		case inCurve && strings.HasPrefix(l, "| "):
			curveRows++
		case inCurve:
			inCurve = false
		}
	}
	if want := len(scales["quick"].curve); curveRows != want {
		t.Errorf("cost curve: %d rows, want %d:\n%s", curveRows, want, out)
	}
	// The cost table: one row per mode and load, each with tasks/s and CPU measured.
	costRows := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "| secure | ") || strings.HasPrefix(l, "| insecure | ") {
			costRows++
			cells := strings.Split(strings.Trim(l, "|"), " | ")
			if len(cells) != 8 || !strings.HasSuffix(strings.TrimSpace(cells[3]), "/s") || !strings.HasSuffix(strings.TrimSpace(cells[4]), "µs") {
				t.Errorf("cost row %q: want 8 cells with a rate and a CPU per task", l)
			}
		}
	}
	if want := 2 * len(costLoads); costRows != want {
		t.Errorf("cost table: %d rows, want %d:\n%s", costRows, want, out)
	}
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatalf("cost curve plot: %v", err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("cost curve plot: not a PNG (%d bytes)", len(b))
	}
}

// TestNum pins the thousands separators the table uses.
func TestNum(t *testing.T) {
	for _, tt := range []struct {
		in   float64
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {14736.4, "14,736"}, {1e6, "1,000,000"}, {-2500, "-2,500"}} {
		if got := num(tt.in); got != tt.want {
			t.Errorf("num(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestCPUTimeReadsThisProcess: /proc/self's CPU time parses and grows with work.
func TestCPUTimeReadsThisProcess(t *testing.T) {
	pid := os.Getpid()
	before, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	var readErr error
	x := 0
	err = localcluster.Until(60*time.Second, time.Millisecond, func() bool {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		var after time.Duration
		after, readErr = cpuTime(pid)
		return readErr != nil || after > before
	})
	if err != nil || readErr != nil {
		t.Fatalf("CPU time stayed at %v: %v, %v", before, err, readErr)
	}
	_ = x
}

// TestPostBatchCountsAcceptedItems pins how the bench reads POST /v1/tasks/batch, which another
// branch adds: 404 means no endpoint, and an item whose result carries an error is not accepted.
func TestPostBatchCountsAcceptedItems(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		want    int
		wantErr error // nil: no error; errAny: some error
	}{
		{"all accepted", http.StatusOK, `{"results":[{"task":{"id":"a"}},{"task":{"id":"b"},"error":null}]}`, 2, nil},
		{"one bad item", http.StatusOK, `{"results":[{"task":{"id":"a"}},{"error":{"code":"bad_request"}}]}`, 1, errAny},
		{"no endpoint", http.StatusNotFound, `{"error":"not_found"}`, 0, errNoBatch},
		{"server error", http.StatusInternalServerError, `{}`, 0, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var req struct {
					Tasks []json.RawMessage `json:"tasks"`
				}
				if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil || len(req.Tasks) != 2 {
					http.Error(w, "bad request", http.StatusBadRequest)
					return
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			b := &bench{hc: srv.Client()}
			got, err := b.postBatch(srv.URL, make([]api.SubmitRequest, 2))
			switch {
			case tt.wantErr == nil && err != nil, tt.wantErr != nil && err == nil:
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			case tt.wantErr == errNoBatch && !errors.Is(err, errNoBatch):
				t.Fatalf("err %v, want errNoBatch", err)
			}
			if got != tt.want {
				t.Fatalf("accepted %d, want %d", got, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")
