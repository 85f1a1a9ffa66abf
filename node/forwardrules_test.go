package node

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

// forwardableTypes walks the command table: every type byte that decodes to a command a follower
// may forward. A zero payload of each type is enough to learn its type and forwardability.
func forwardableTypes(t *testing.T) []*fsm.Command {
	t.Helper()
	var out []*fsm.Command
	for b := 1; b < 0x80; b++ {
		var buf bytes.Buffer
		buf.WriteByte(byte(b))
		if err := msgpack.NewEncoder(&buf).Encode(map[string]any{"now": time.Time{}, "body": nil}); err != nil {
			t.Fatal(err)
		}
		c, err := fsm.Decode(buf.Bytes())
		if errors.Is(err, fsm.ErrUnknownCommand) {
			continue
		}
		if err != nil {
			t.Fatalf("command type %d: %v", b, err)
		}
		if c.Forwardable() {
			out = append(out, c)
		}
	}
	return out
}

func TestEveryForwardableCommandHasARule(t *testing.T) {
	cs := forwardableTypes(t)
	if len(cs) < 10 {
		t.Fatalf("found %d forwardable command types: the walk of the command table is broken", len(cs))
	}
	for _, c := range cs {
		if forwardRules[c.Type()] == nil {
			t.Errorf("forwardable command %s (%d) has no rule in forwardRules: the leader refuses it; give it one", c.Type(), c.Type())
		}
	}
}

func TestALeaderRefusesAForwardedTypeWithoutARule(t *testing.T) {
	c := &fsm.Command{Body: &fsm.Down{Name: "n2"}} // node_down is never forwarded: no rule
	err := (&Node{}).authorizeForward(c, forwardCaller{credential: "x", node: internodeCaller{anyNode: true}})
	if !errors.Is(err, &api.Error{Code: api.CodeForbidden}) {
		t.Fatalf("authorizeForward(node_down) = %v, want forbidden", err)
	}
}
