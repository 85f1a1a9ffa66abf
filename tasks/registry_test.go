package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestRegistryRejectsDuplicatesAndEmptyNames(t *testing.T) {
	r := NewRegistry()
	echo := Func(Definition{Name: "echo", Version: "1"}, func(_ *Context, in json.RawMessage) (json.RawMessage, error) { return in, nil })
	if err := r.Register(echo); err != nil {
		t.Fatalf("first register: %v", err)
	}
	if err := r.Register(echo); !errors.Is(err, ErrDuplicateType) {
		t.Fatalf("second register = %v, want ErrDuplicateType", err)
	}
	for _, d := range []Definition{{Name: "", Version: "1"}, {Name: "x", Version: ""}} {
		h := Func(d, func(_ *Context, in any) (any, error) { return in, nil })
		if err := r.Register(h); err == nil {
			t.Errorf("register %+v succeeded, want error", d)
		}
	}
}

func TestRegistryLookupUnknownNamesTheType(t *testing.T) {
	r := NewRegistry()
	_, err := r.Lookup("nope")
	if !errors.Is(err, ErrUnknownType) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Lookup = %v, want ErrUnknownType naming nope", err)
	}
}

func TestRegistryDefinitionsSortedByName(t *testing.T) {
	r, err := NewBuiltinRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range r.Definitions() {
		names = append(names, d.Name)
		if d.Version != "1" || d.Description == "" || !json.Valid(d.ExampleInput) {
			t.Errorf("definition %+v incomplete", d)
		}
	}
	want := "calc-square count echo fail flaky list-directory print sleep"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("Definitions = %s, want %s", got, want)
	}
}

func TestFuncDecodingIsStrict(t *testing.T) {
	type point struct{ X, Y int }
	structH := Func(Definition{Name: "s", Version: "1"}, func(_ *Context, p point) (point, error) { return p, nil })
	ptrH := Func(Definition{Name: "p", Version: "1"}, func(_ *Context, p *point) (*point, error) { return p, nil })
	anyH := Func(Definition{Name: "a", Version: "1"}, func(_ *Context, v any) (any, error) { return v, nil })
	intH := Func(Definition{Name: "i", Version: "1"}, func(_ *Context, n int) (int, error) { return n, nil })
	tests := []struct {
		name  string
		h     Handler
		input string
		ok    bool
	}{
		{"struct accepts known fields", structH, `{"X": 1, "Y": 2}`, true},
		{"struct rejects unknown field", structH, `{"X": 1, "Z": 2}`, false},
		{"struct rejects null", structH, `null`, false},
		{"struct rejects absent input", structH, ``, false},
		{"struct rejects trailing data", structH, `{"X": 1} {}`, false},
		{"pointer accepts null", ptrH, `null`, true},
		{"pointer accepts absent input", ptrH, ``, true},
		{"any accepts null", anyH, `null`, true},
		{"int rejects string", intH, `"1"`, false},
		{"int rejects fraction", intH, `1.5`, false},
		{"int accepts integer", intH, ` 42 `, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate(json.RawMessage(tt.input))
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%s) = %v, want ok=%v", tt.input, err, tt.ok)
			}
		})
	}
}

func TestFuncDecodeErrorsSpeakJSON(t *testing.T) {
	h := Func(Definition{Name: "sleep", Version: "1"}, func(_ *Context, in struct {
		MS int `json:"ms"`
	}) (int, error) {
		return in.MS, nil
	})
	err := h.Validate(json.RawMessage(`{"ms": "soon"}`))
	want := `sleep input: field "ms" must be an integer, got string`
	if err == nil || err.Error() != want {
		t.Fatalf("Validate = %v, want %q", err, want)
	}
}
