package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

type taskFileDoc struct {
	Tasks []taskFileEntry `yaml:"tasks"`
}

type taskFileEntry struct {
	Name         string            `yaml:"name"`
	Version      string            `yaml:"version"`
	Description  string            `yaml:"description"`
	Command      string            `yaml:"command"`
	Args         []string          `yaml:"args"`
	Env          map[string]string `yaml:"env"`
	InheritEnv   []string          `yaml:"inherit_env"`
	User         string            `yaml:"user"`
	Group        string            `yaml:"group"`
	Dir          string            `yaml:"dir"`
	Timeout      string            `yaml:"timeout"`
	GracePeriod  string            `yaml:"grace_period"`
	ExampleInput yaml.Node         `yaml:"example_input"`
}

// RegisterTaskFile loads the task file at path and registers a command-backed
// type for each of its entries, stopping at the first error.
func RegisterTaskFile(r *Registry, path string) error {
	specs, lines, err := loadTaskFile(path)
	if err != nil {
		return err
	}
	for i, spec := range specs {
		h, err := NewCommand(spec)
		line := lines[i].item
		if errors.Is(err, ErrRunAs) && lines[i].user != 0 {
			line = lines[i].user
		}
		if err == nil {
			err = r.Register(h)
		}
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
	}
	return nil
}

// specLines are where a spec and the fields its errors may be about were declared.
type specLines struct {
	item, user int
}

// LoadTaskFile parses the task file at path. A task file declares
// command-backed task types in YAML (JSON, being YAML, works too);
// testdata/example-tasks.yaml is the documented example:
//
//	tasks:
//	  - name: thumbnail            # required, unique
//	    version: "1"               # required
//	    description: Makes a thumbnail of an image.
//	    command: ./bin/thumbnail   # required; a relative path is relative to this file, a bare name is looked up in PATH
//	    args: [--quality, "80"]
//	    env: {THUMB_CACHE: /var/cache/thumbs}   # the task's environment is otherwise clean
//	    inherit_env: [HTTPS_PROXY] # passed from the agent's environment when set there; never TASKWORKER_*
//	    user: thumbs               # run as this unprivileged user (name or uid); needs a root agent
//	    group: media               # optional; default the user's primary group
//	    dir: .                     # relative to this file; default the agent's working directory (with user: the run's temp dir)
//	    timeout: 2m                # per attempt; default none
//	    grace_period: 10s          # SIGTERM to SIGKILL; default 5s
//	    example_input: {path: photo.jpg, width: 320}   # any YAML, shown as JSON
//
// Unknown fields, duplicate names and bad durations are errors; errors name
// the file and, where known, the line. Commands and users are resolved later, by NewCommand.
func LoadTaskFile(path string) ([]CommandSpec, error) {
	specs, _, err := loadTaskFile(path)
	return specs, err
}

// loadTaskFile also returns the lines each spec was declared on.
func loadTaskFile(path string) ([]CommandSpec, []specLines, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("task file: %w", err)
	}
	// Decoded twice: strictly into structs, and as a node tree for the lines of our own errors.
	var doc taskFileDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, nil, yamlError(path, err)
	}
	if err := dec.Decode(new(yaml.Node)); err != io.EOF {
		return nil, nil, fmt.Errorf("%s: a task file holds one YAML document", path)
	}
	if len(doc.Tasks) == 0 {
		return nil, nil, fmt.Errorf("%s: no tasks declared (expected a top-level \"tasks\" list)", path)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, yamlError(path, err)
	}
	items := mappingValue(root.Content[0], "tasks").Content

	base := filepath.Dir(path)
	specs := make([]CommandSpec, len(doc.Tasks))
	lines := make([]specLines, len(doc.Tasks))
	firstLine := make(map[string]int)
	for i, e := range doc.Tasks {
		item := items[i]
		lines[i] = specLines{item: item.Line}
		for _, key := range []string{"group", "user"} { // errors about either name the user line first
			if v := mappingValue(item, key); v != nil {
				lines[i].user = v.Line
			}
		}
		fail := func(key, format string, args ...any) error {
			line := item.Line
			if v := mappingValue(item, key); v != nil {
				line = v.Line
			}
			return fmt.Errorf("%s:%d: task type %q: %s", path, line, e.Name, fmt.Sprintf(format, args...))
		}
		if prev, ok := firstLine[e.Name]; ok && e.Name != "" {
			return nil, nil, fail("name", "declared twice (first on line %d)", prev)
		}
		firstLine[e.Name] = item.Line

		spec := CommandSpec{
			Name: e.Name, Version: e.Version, Description: strings.TrimSpace(e.Description),
			Command: e.Command, Args: e.Args, Env: e.Env, Dir: e.Dir,
			InheritEnv: e.InheritEnv, User: e.User, Group: e.Group,
		}
		if names := mappingValue(item, "inherit_env"); names != nil {
			for j, k := range e.InheritEnv {
				if err := checkInheritEnv([]string{k}); err != nil {
					return nil, nil, fmt.Errorf("%s:%d: task type %q: inherit_env: %w", path, names.Content[j].Line, e.Name, err)
				}
			}
		}
		if strings.ContainsRune(spec.Command, '/') && !filepath.IsAbs(spec.Command) {
			spec.Command = filepath.Join(base, spec.Command)
		}
		if spec.Dir != "" && !filepath.IsAbs(spec.Dir) {
			spec.Dir = filepath.Join(base, spec.Dir)
		}
		for _, d := range []struct {
			key string
			raw string
			to  *time.Duration
		}{{"timeout", e.Timeout, &spec.Timeout}, {"grace_period", e.GracePeriod, &spec.GracePeriod}} {
			if d.raw == "" {
				continue
			}
			v, err := time.ParseDuration(d.raw)
			if err != nil || v < 0 {
				return nil, nil, fail(d.key, "%s %q is not a duration such as \"30s\" or \"5m\"", d.key, d.raw)
			}
			*d.to = v
		}
		if e.ExampleInput.Kind != 0 {
			b, err := appendJSON(nil, &e.ExampleInput)
			if err != nil {
				return nil, nil, fail("example_input", "example_input: %v", err)
			}
			spec.ExampleInput = b
		}
		if err := spec.check(); err != nil {
			// check names the type itself.
			return nil, nil, fmt.Errorf("%s:%d: %w", path, item.Line, err)
		}
		specs[i] = spec
	}
	return specs, lines, nil
}

// mappingValue returns the value under key in a YAML mapping node, or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// appendJSON writes a YAML value as JSON, keeping the order of mapping keys
// and the text of strings YAML would read as something else (2024-01-01
// stays a string rather than becoming a timestamp).
func appendJSON(b []byte, n *yaml.Node) ([]byte, error) {
	var err error
	switch n.Kind {
	case yaml.DocumentNode:
		return appendJSON(b, n.Content[0])
	case yaml.AliasNode:
		return appendJSON(b, n.Alias)
	case yaml.SequenceNode:
		b = append(b, '[')
		for i, c := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendJSON(b, c); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case yaml.MappingNode:
		b = append(b, '{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: JSON object keys must be strings", k.Line)
			}
			if i > 0 {
				b = append(b, ',')
			}
			key, _ := json.Marshal(k.Value)
			b = append(append(b, key...), ':')
			if b, err = appendJSON(b, n.Content[i+1]); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	}
	var v any = n.Value
	switch n.ShortTag() {
	case "!!null":
		return append(b, "null"...), nil
	case "!!bool", "!!int", "!!float":
		if err := n.Decode(&v); err != nil {
			return nil, err
		}
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("line %d: %s cannot be written as JSON", n.Line, n.Value)
	}
	return append(b, j...), nil
}

var (
	yamlLine         = regexp.MustCompile(`^line (\d+): `)
	yamlUnknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)
	yamlGoTypes      = strings.NewReplacer(
		"[]tasks.taskFileEntry", "a list of tasks",
		"tasks.taskFileEntry", "a task (a mapping)",
		"tasks.taskFileDoc", `a mapping with a "tasks" list`,
	)
)

// yamlError rewrites the YAML library's errors as "file:line: message"
// sentences that do not mention Go types.
func yamlError(path string, err error) error {
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for i, m := range msgs {
		m = yamlUnknownField.ReplaceAllString(m, `unknown field "$1"`)
		m = yamlGoTypes.Replace(m)
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			msgs[i] = path + ":" + sub[1] + ": " + m[len(sub[0]):]
		} else {
			msgs[i] = path + ": " + m
		}
	}
	return errors.New(strings.Join(msgs, "\n"))
}
