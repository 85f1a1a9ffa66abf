package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinValidate(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		typ   string
		input string
		ok    bool
	}{
		{"echo", `{"a": [1, 2]}`, true},
		{"echo", `null`, true},
		{"echo", ``, true},
		{"echo", `{`, false},
		{"echo", `1 2`, false},

		{"calc-square", `7`, true},
		{"calc-square", `-3`, true},
		{"calc-square", `3037000499`, true},
		{"calc-square", `-3037000499`, true},
		{"calc-square", `3037000500`, false},
		{"calc-square", `"abc"`, false},
		{"calc-square", `1.5`, false},
		{"calc-square", `{}`, false},
		{"calc-square", `null`, false},
		{"calc-square", `99999999999999999999`, false},

		{"sleep", `{"ms": 0}`, true},
		{"sleep", `{"ms": 250}`, true},
		{"sleep", `{}`, false},
		{"sleep", `{"ms": null}`, false},
		{"sleep", `{"ms": -1}`, false},
		{"sleep", `{"ms": "10"}`, false},
		{"sleep", `{"ms": 10, "extra": 1}`, false},
		{"sleep", `10`, false},
		{"sleep", `null`, false},

		{"fail", `"boom"`, true},
		{"fail", `5`, false},
		{"fail", `null`, false},

		{"flaky", `{"fail_attempts": 2}`, true},
		{"flaky", `{}`, true},
		{"flaky", `{"fail_attempts": -1}`, false},
		{"flaky", `{"fail_attempts": 1.5}`, false},
		{"flaky", `null`, false},

		{"print", `"hello"`, true},
		{"print", `["hello"]`, false},
		{"print", `null`, false},

		{"list-directory", `"."`, true},
		{"list-directory", `""`, true},
		{"list-directory", `"sub/dir"`, true},
		{"list-directory", `"a/../b"`, true},
		{"list-directory", `"../"`, false},
		{"list-directory", `".."`, false},
		{"list-directory", `"a/../../etc"`, false},
		{"list-directory", `"/etc"`, false},
		{"list-directory", `5`, false},

		{"count", `{"to": 3, "step_ms": 10}`, true},
		{"count", `{"to": 0}`, true},
		{"count", `{}`, false},
		{"count", `{"to": -1}`, false},
		{"count", `{"to": 3, "step_ms": -1}`, false},
		{"count", `{"to": 3, "by": 1}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.input, func(t *testing.T) {
			h, err := r.Lookup(tt.typ)
			if err != nil {
				t.Fatal(err)
			}
			err = h.Validate(json.RawMessage(tt.input))
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%s) = %v, want ok=%v", tt.input, err, tt.ok)
			}
		})
	}
}

func TestBuiltinExampleInputsAreValid(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range r.Definitions() {
		h, _ := r.Lookup(d.Name)
		if err := h.Validate(d.ExampleInput); err != nil {
			t.Errorf("%s example %s: %v", d.Name, d.ExampleInput, err)
		}
	}
}

func TestBuiltinRun(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		typ     string
		input   string
		attempt int
		want    string // result JSON, when wantErr is empty
		wantErr string
	}{
		{"echo returns its input", "echo", `{"a": [1, 2]}`, 1, `{"a":[1,2]}`, ""},
		{"echo returns null for absent input", "echo", ``, 1, `null`, ""},
		{"calc-square squares", "calc-square", `7`, 1, `49`, ""},
		{"calc-square squares negatives", "calc-square", `-3`, 1, `9`, ""},
		{"calc-square largest operand", "calc-square", `3037000499`, 1, `9223372030926249001`, ""},
		{"sleep reports its duration", "sleep", `{"ms": 1}`, 1, `{"slept_ms":1}`, ""},
		{"fail fails with the message", "fail", `"boom"`, 1, "", "boom"},
		{"fail returns input containing ignore", "fail", `"please ignore"`, 1, `"please ignore"`, ""},
		{"flaky fails while attempt <= K", "flaky", `{"fail_attempts": 2}`, 2, "", "attempt 2 fails on purpose"},
		{"flaky succeeds after K", "flaky", `{"fail_attempts": 2}`, 3, `{"attempt":3}`, ""},
		{"print returns null", "print", `"hi"`, 1, `null`, ""},
		{"count counts fresh", "count", `{"to": 3}`, 1, `{"counted":3,"resumed_from":0}`, ""},
		{"count to zero", "count", `{"to": 0}`, 1, `{"counted":0,"resumed_from":0}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := r.Lookup(tt.typ)
			if err != nil {
				t.Fatal(err)
			}
			tc, _ := newTestContext(t, context.Background(), tt.attempt)
			got, err := h.Run(tc, json.RawMessage(tt.input))
			checkResult(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestBuiltinOutput(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		typ, input string
		want       LogLine
	}{
		{"calc-square", `12`, LogLine{Stream: "log", Level: "info", Line: "Calculating square of 12"}},
		{"print", `"hello world"`, LogLine{Stream: "stdout", Line: "hello world"}},
	}
	for _, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			h, _ := r.Lookup(tt.typ)
			tc, lines := newTestContext(t, context.Background(), 1)
			if _, err := h.Run(tc, json.RawMessage(tt.input)); err != nil {
				t.Fatal(err)
			}
			got := lines()
			if len(got) != 1 || got[0].Stream != tt.want.Stream || got[0].Level != tt.want.Level || got[0].Line != tt.want.Line {
				t.Fatalf("lines = %+v, want one %+v", got, tt.want)
			}
		})
	}
}

func TestBuiltinsHonourCancellation(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct{ typ, input string }{
		{"sleep", `{"ms": 3600000}`},
		{"count", `{"to": 10, "step_ms": 3600000}`},
	} {
		h, _ := r.Lookup(c.typ)
		tc, _ := newTestContext(t, ctx, 1)
		if _, err := h.Run(tc, json.RawMessage(c.input)); !errors.Is(err, context.Canceled) {
			t.Errorf("%s on a cancelled context = %v, want context.Canceled", c.typ, err)
		}
	}
}

func TestCountResumesFromLastCheckpoint(t *testing.T) {
	h := Func(def("count", "", `{}`), count)
	tc, _ := newTestContext(t, context.Background(), 2)
	tc.last = json.RawMessage(`{"n": 3}`)
	var seen []string
	tc.checkpoint = func(data json.RawMessage) error {
		seen = append(seen, string(data))
		return nil
	}
	got, err := h.Run(tc, json.RawMessage(`{"to": 5}`))
	if err != nil || string(got) != `{"counted":5,"resumed_from":3}` {
		t.Fatalf("Run = %s, %v", got, err)
	}
	if strings.Join(seen, " ") != `{"n":4} {"n":5}` {
		t.Fatalf("checkpoints = %v, want n=4 and n=5", seen)
	}
}

func TestListDirectoryStaysInsideFilesDir(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "files")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "b.txt"), filepath.Join(root, "a.txt"), filepath.Join(root, "sub", "x"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{"escape": outside, "up": "..", "abs": "/", "inside": "sub"}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewBuiltinRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := r.Lookup("list-directory")
	tests := []struct {
		path string
		want string // JSON result, or "" for a run-time error
	}{
		{`"."`, `["a.txt","abs","b.txt","escape","inside","sub","up"]`},
		{`""`, `["a.txt","abs","b.txt","escape","inside","sub","up"]`},
		{`"sub"`, `["x"]`},
		{`"sub/../sub"`, `["x"]`},
		{`"inside"`, `["x"]`},
		{`"escape"`, ""},
		{`"up"`, ""},
		{`"abs"`, ""},
		{`"missing"`, ""},
		{`"a.txt"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			tc, _ := newTestContext(t, context.Background(), 1)
			got, err := h.Run(tc, json.RawMessage(tt.path))
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Run(%s) = %s, want error", tt.path, got)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("Run(%s) = %s, %v; want %s", tt.path, got, err, tt.want)
			}
		})
	}
}
