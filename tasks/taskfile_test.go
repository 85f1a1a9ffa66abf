package tasks

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeTaskFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tasks.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadTaskFile(t *testing.T) {
	path := writeTaskFile(t, `
tasks:
  - name: resize
    version: 2
    description: |
      Resizes an image.
    command: bin/resize
    args: [--fast, 80]
    env: {MODE: quick}
    inherit_env: [HTTPS_PROXY, NO_PROXY]
    user: resizer
    group: media
    dir: work
    timeout: 90s
    grace_period: 1s
    example_input: {path: a.png, when: 2024-01-01, sizes: [1, 2.5], ok: yes, none: ~}
  - name: plain
    version: "1"
    command: sh
`)
	dir := filepath.Dir(path)
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	specs, err := LoadTaskFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := CommandSpec{
		Name: "resize", Version: "2", Description: "Resizes an image.",
		Command: filepath.Join(dir, "bin/resize"), Args: []string{"--fast", "80"},
		Env: map[string]string{"MODE": "quick"}, Dir: filepath.Join(dir, "work"),
		Timeout: 90 * time.Second, GracePeriod: time.Second,
		ExampleInput: json.RawMessage(`{"path":"a.png","when":"2024-01-01","sizes":[1,2.5],"ok":"yes","none":null}`),
	}
	if len(specs) != 2 {
		t.Fatalf("got %d specs, want 2", len(specs))
	}
	got := specs[0]
	if got.Name != want.Name || got.Version != want.Version || got.Description != want.Description ||
		got.Command != want.Command || !slices.Equal(got.Args, want.Args) || got.Env["MODE"] != "quick" ||
		got.Dir != want.Dir || got.Timeout != want.Timeout || got.GracePeriod != want.GracePeriod ||
		!slices.Equal(got.InheritEnv, []string{"HTTPS_PROXY", "NO_PROXY"}) || got.User != "resizer" || got.Group != "media" ||
		string(got.ExampleInput) != string(want.ExampleInput) {
		t.Fatalf("spec =\n%+v\nwant\n%+v", got, want)
	}
	if p := specs[1]; p.Command != "sh" || p.Timeout != 0 || p.ExampleInput != nil {
		t.Fatalf("second spec = %+v, want a bare command and no timeout or example", p)
	}
}

func TestLoadTaskFileErrorsNameFileAndLine(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"unknown field", "tasks:\n  - name: a\n    version: 1\n    comand: sh\n", `:4: unknown field "comand"`},
		{"missing command", "tasks:\n  - name: a\n    version: 1\n", `:2: task type "a": command is required`},
		{"missing name", "tasks:\n  - version: 1\n    command: sh\n", `:2: task type: name is required`},
		{"duplicate name", "tasks:\n  - {name: a, version: 1, command: sh}\n  - name: a\n    version: 2\n    command: sh\n",
			`:3: task type "a": declared twice (first on line 2)`},
		{"bad duration", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    timeout: soon\n",
			`:5: task type "a": timeout "soon" is not a duration such as "30s" or "5m"`},
		{"duration without unit", "tasks:\n  - {name: a, version: 1, command: sh, grace_period: 30}\n", `grace_period "30" is not a duration`},
		{"wrong shape", "tasks:\n  - name: a\n    args: sh\n", `:3: cannot unmarshal !!str`},
		{"not a list of tasks", "tasks: {name: a}\n", `:1: cannot unmarshal !!map into a list of tasks`},
		{"syntax", "tasks:\n  - name: a\n\tversion: 1\n", `tasks.yaml:2: found a tab character that violates indentation`},
		{"empty", "# nothing\n", `no tasks declared`},
		{"two documents", "tasks: [{name: a, version: 1, command: sh}]\n---\ntasks: []\n", `one YAML document`},
		{"inherit_env names an agent setting", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    inherit_env:\n      - HTTPS_PROXY\n      - TASKWORKER_TOKEN\n",
			`:7: task type "a": inherit_env: TASKWORKER_TOKEN is the agent's own setting and never passed to a task`},
		{"inherit_env and env name the same", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    env: {X: 1}\n    inherit_env: [X]\n",
			`:2: task type "a": X is both in env and in inherit_env`},
		{"example not JSON-able", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    example_input: {x: .inf}\n",
			`:5: task type "a": example_input: line 5: .inf cannot be written as JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTaskFile(t, tt.text)
			_, err := LoadTaskFile(path)
			if err == nil || !strings.HasPrefix(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadTaskFile = %v, want an error starting with the path and containing %q", err, tt.want)
			}
		})
	}
}

func TestRegisterTaskFile(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := RegisterTaskFile(r, "testdata/example-tasks.yaml"); err != nil {
		t.Fatal(err)
	}
	h, err := r.Lookup("countdown")
	if err != nil {
		t.Fatal(err)
	}
	if d := h.Definition(); d.Version != "1" || string(d.ExampleInput) != "5" || !strings.HasPrefix(d.Description, "Counts down") {
		t.Fatalf("definition = %+v", d)
	}

	for _, tt := range []struct{ name, text, want string }{
		{"unresolvable command", "tasks:\n  - {name: a, version: 1, command: sh}\n  - {name: b, version: 1, command: ./missing.sh}\n",
			`:3: task type "b": command: exec: `},
		{"name taken by a built-in", "tasks:\n  - {name: echo, version: 1, command: sh}\n", `:2: register task type "echo": task type already registered`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTaskFile(t, tt.text)
			if err := RegisterTaskFile(r, path); err == nil || !strings.Contains(err.Error(), path+tt.want) {
				t.Fatalf("RegisterTaskFile = %v, want an error containing %q", err, path+tt.want)
			}
		})
	}
}

// TestExampleTaskFileRuns runs the documented example: resuming from an
// earlier attempt's checkpoint, checkpointing each step, and failing on bad input.
func TestExampleTaskFileRuns(t *testing.T) {
	specs, err := LoadTaskFile("testdata/example-tasks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec CommandSpec
	for _, s := range specs {
		if s.Name == "countdown" {
			spec = s
		}
	}
	spec.Env = map[string]string{"COUNTDOWN_STEP": "0"}
	e, rep, store := executorFor(t, mustCommand(t, spec))

	e.Start(Assignment{TaskID: "t1", Type: "countdown", Attempt: 1, Input: json.RawMessage(`3`), Checkpoint: json.RawMessage(`{"left":2}`)})
	waitIdle(t, e)
	var kinds, checkpoints []string
	for _, c := range rep.snapshot() {
		kinds = append(kinds, c.kind)
		if c.kind == "checkpoint" {
			checkpoints = append(checkpoints, c.data)
		}
	}
	calls := rep.snapshot()
	if fin := calls[len(calls)-1]; fin.outcome != OutcomeSucceeded || fin.result != `{"counted_from":3}` {
		t.Fatalf("finished = %+v", fin)
	}
	if !slices.Equal(checkpoints, []string{`{"left":1}`, `{"left":0}`}) {
		t.Fatalf("checkpoints = %q (reports %q)", checkpoints, kinds)
	}
	lines, err := store.Read("t1")
	if err != nil {
		t.Fatal(err)
	}
	if got := streamLines(lines, "stdout"); !slices.Equal(got, []string{"resuming with 2 left", "2...", "1..."}) {
		t.Fatalf("stdout = %q", got)
	}

	e.Start(Assignment{TaskID: "t2", Type: "countdown", Attempt: 1, Input: json.RawMessage(`"three"`)})
	waitIdle(t, e)
	calls = rep.snapshot()
	fin := calls[len(calls)-1]
	if fin.outcome != OutcomeFailed || fin.terr == nil || fin.terr.Message != `exit status 2: input must be a non-negative integer, got: "three"` {
		t.Fatalf("finished = %+v, %+v", fin, fin.terr)
	}
}
