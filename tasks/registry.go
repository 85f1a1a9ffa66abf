package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
)

// Errors callers branch on.
var (
	ErrUnknownType   = errors.New("unknown task type")
	ErrDuplicateType = errors.New("task type already registered")
)

// Definition describes a registered task type.
type Definition struct {
	Name         string          `json:"type"`
	Version      string          `json:"version"`
	Description  string          `json:"description"`
	ExampleInput json.RawMessage `json:"example_input"`
}

// Handler is one registered task type (any implementation: typed Go func, command-backed, ...).
type Handler interface {
	Definition() Definition
	// Validate decodes input into the type's input shape; a non-nil error means invalid input.
	Validate(input json.RawMessage) error
	// Run executes one attempt. The returned JSON is the result.
	Run(ctx *Context, input json.RawMessage) (json.RawMessage, error)
}

// Validator is implemented by input types of Func that check more than their JSON shape.
type Validator interface {
	Validate() error
}

// Func adapts a typed function into a Handler.
//
// Input decoding is strict: unknown object fields and type mismatches are
// errors, and a JSON null (or absent input) is accepted only when In is a
// pointer, an interface or json.RawMessage. If In or *In implements
// Validator, its Validate runs after decoding.
func Func[In, Out any](def Definition, fn func(ctx *Context, in In) (Out, error)) Handler {
	return &funcHandler[In, Out]{def: def, fn: fn}
}

type funcHandler[In, Out any] struct {
	def Definition
	fn  func(*Context, In) (Out, error)
}

func (h *funcHandler[In, Out]) Definition() Definition { return h.def }

func (h *funcHandler[In, Out]) Validate(input json.RawMessage) error {
	_, err := h.decode(input)
	return err
}

func (h *funcHandler[In, Out]) Run(ctx *Context, input json.RawMessage) (json.RawMessage, error) {
	in, err := h.decode(input)
	if err != nil {
		return nil, err
	}
	out, err := h.fn(ctx, in)
	if err != nil {
		return nil, err
	}
	res, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("%s: encode result: %w", h.def.Name, err)
	}
	return res, nil
}

func (h *funcHandler[In, Out]) decode(input json.RawMessage) (In, error) {
	var in In
	input = bytes.TrimSpace(input)
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	if bytes.Equal(input, []byte("null")) && !nullable(reflect.TypeFor[In]()) {
		return in, fmt.Errorf("%s input: required, got null", h.def.Name)
	}
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return in, fmt.Errorf("%s input: %s", h.def.Name, describeDecodeError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return in, fmt.Errorf("%s input: unexpected data after the JSON value", h.def.Name)
	}
	if v, ok := any(in).(Validator); ok {
		if err := v.Validate(); err != nil {
			return in, fmt.Errorf("%s input: %w", h.def.Name, err)
		}
	} else if v, ok := any(&in).(Validator); ok {
		if err := v.Validate(); err != nil {
			return in, fmt.Errorf("%s input: %w", h.def.Name, err)
		}
	}
	return in, nil
}

func nullable(t reflect.Type) bool {
	return t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface || t == reflect.TypeFor[json.RawMessage]()
}

// describeDecodeError turns encoding/json errors, which name Go types, into
// sentences about JSON that a user submitting a task can act on.
func describeDecodeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		where := "value"
		if te.Field != "" {
			where = fmt.Sprintf("field %q", te.Field)
		}
		return fmt.Sprintf("%s must be %s, got %s", where, jsonKind(te.Type), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return t.String()
}

// Registry holds the task types this node can run, one version per name.
type Registry struct {
	mu       sync.RWMutex
	handlers map[string]Handler
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{handlers: make(map[string]Handler)}
}

// Register adds h. Its name and version must be set and the name not yet taken.
func (r *Registry) Register(h Handler) error {
	if h == nil {
		return errors.New("register task type: nil handler")
	}
	def := h.Definition()
	if def.Name == "" || def.Version == "" {
		return fmt.Errorf("register task type %q version %q: name and version are required", def.Name, def.Version)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.handlers[def.Name]; ok {
		return fmt.Errorf("register task type %q: %w", def.Name, ErrDuplicateType)
	}
	r.handlers[def.Name] = h
	return nil
}

// Lookup returns the handler registered under name.
func (r *Registry) Lookup(name string) (Handler, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	h, ok := r.handlers[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownType, name)
	}
	return h, nil
}

// Definitions lists the registered types sorted by name.
func (r *Registry) Definitions() []Definition {
	r.mu.RLock()
	defs := make([]Definition, 0, len(r.handlers))
	for _, h := range r.handlers {
		defs = append(defs, h.Definition())
	}
	r.mu.RUnlock()
	slices.SortFunc(defs, func(a, b Definition) int { return strings.Compare(a.Name, b.Name) })
	return defs
}
