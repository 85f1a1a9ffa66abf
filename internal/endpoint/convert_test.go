package endpoint

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// Moved from fsm's JSON tests: the contract's task JSON now comes from toAPITask.
func TestTaskJSON(t *testing.T) {
	tests := []struct {
		name string
		task fsm.Task
		want map[string]string // field -> raw JSON
	}{
		{name: "absent input and result are null, empty history is []",
			task: fsm.Task{ID: "a", Timeout: fsm.Duration(30 * time.Second), BootID: "b1"},
			want: map[string]string{"input": "null", "result": "null", "history": "[]", "timeout": `"30s"`,
				"error": "null", "started_at": "null", "finished_at": "null"}},
		{name: "present values are kept",
			task: fsm.Task{ID: "a", Input: json.RawMessage(`{"x":1}`), Result: json.RawMessage(`[2]`), Timeout: fsm.Duration(90 * time.Second),
				Error:   &fsm.TaskError{Type: "task", Message: "boom"},
				History: []fsm.HistoryEntry{{Attempt: 1, Event: fsm.EventAssigned, At: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}}},
			want: map[string]string{"input": `{"x":1}`, "result": "[2]", "timeout": `"1m30s"`, "error": `{"type":"task","message":"boom"}`,
				"history": `[{"attempt":1,"node":"","event":"assigned","at":"2024-01-02T03:04:05Z"}]`}},
		{name: "zero timeout is empty text", task: fsm.Task{ID: "a"}, want: map[string]string{"timeout": `""`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(toAPITask(&tc.task))
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if string(got[k]) != v {
					t.Errorf("%s = %s, want %s", k, got[k], v)
				}
			}
			for _, hidden := range []string{"BootID", "boot_id"} {
				if _, ok := got[hidden]; ok {
					t.Errorf("boot id is exposed as %q", hidden)
				}
			}
		})
	}
}

// Moved from fsm's Duration JSON test: a submit's timeout text.
func TestParseTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		code api.Code
	}{
		{in: "30s", want: 30 * time.Second},
		{in: "1m30s", want: 90 * time.Second},
		{in: "", want: defaultTimeout},
		{in: "0s", want: defaultTimeout},
		{in: "0", want: defaultTimeout},
		{in: "168h", want: maxTimeout},
		{in: "168h1s", code: api.CodeInvalidTimeout},
		{in: "-1s", code: api.CodeInvalidTimeout},
		{in: "abc", code: api.CodeInvalidTimeout},
		{in: "30", code: api.CodeInvalidTimeout},
	}
	for _, tc := range tests {
		got, err := parseTimeout(tc.in)
		if tc.code != "" {
			if !errors.Is(err, &api.Error{Code: tc.code}) {
				t.Errorf("parseTimeout(%q) = %v, %v; want code %s", tc.in, got, err, tc.code)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseTimeout(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}
