package fsm

import (
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// legacyCommand is the log entry of the release before protocol numbers: one union struct whose
// shared fields meant different things per type, encoded as a msgpack map. Existing data dirs hold
// such entries, and nodes of that release read only this form, so Emit writes it while one is up.
// It is frozen: command types added later have no legacy form (their Since keeps them away from
// those nodes).
type legacyCommand struct {
	Type     CommandType `msgpack:"t"`
	Now      time.Time   `msgpack:"now"`
	Submits  []Submit    `msgpack:"submits,omitempty"`
	Assigns  []Assign    `msgpack:"assigns,omitempty"`
	Reports  []Report    `msgpack:"reports,omitempty"`
	Node     *Node       `msgpack:"node,omitempty"`
	NodeName string      `msgpack:"node_name,omitempty"`
	Left     bool        `msgpack:"left,omitempty"`
	Draining bool        `msgpack:"draining,omitempty"`
	TaskIDs  []string    `msgpack:"task_ids,omitempty"`
	Reason   string      `msgpack:"reason,omitempty"`
}

// EncodeLegacy writes c as the previous release did.
func EncodeLegacy(c *Command) ([]byte, error) {
	l := legacyCommand{Now: c.Now}
	switch p := c.Body.(type) {
	case *SubmitBatch:
		l.Type, l.Submits = CmdSubmit, p.Items
	case *AssignBatch:
		l.Type, l.Assigns = CmdAssign, p.Items
	case *ReportBatch:
		l.Type, l.Reports = CmdReport, p.Items
	case *Register:
		l.Type, l.Node = CmdRegister, &p.Node
	case *Down:
		l.Type, l.NodeName, l.Left, l.Reason = CmdNodeDown, p.Name, p.Left, p.Reason
	case *Drain:
		l.Type, l.NodeName, l.Draining = CmdDrain, p.Name, p.Draining
	case *Cancel:
		l.Type, l.TaskIDs = CmdCancel, p.IDs
	case *Remove:
		l.Type, l.TaskIDs = CmdRemove, p.IDs
	default:
		return nil, fmt.Errorf("encode %s command: %w: it has no legacy form", c.Type(), ErrBadCommand)
	}
	b, err := msgpack.Marshal(&l)
	if err != nil {
		return nil, fmt.Errorf("encode %s command (legacy): %w", l.Type, err)
	}
	return b, nil
}

// decodeLegacy reads an entry of the previous release. It decodes leniently, as that release did:
// those entries were written by known code, and no newer build writes fields into this form.
func decodeLegacy(b []byte) (*Command, error) {
	var l legacyCommand
	if err := msgpack.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("decode legacy command: %w: %v", ErrBadCommand, err)
	}
	c := &Command{Now: l.Now}
	switch l.Type {
	case CmdSubmit:
		c.Body = &SubmitBatch{Items: l.Submits}
	case CmdAssign:
		c.Body = &AssignBatch{Items: l.Assigns}
	case CmdReport:
		c.Body = &ReportBatch{Items: l.Reports}
	case CmdRegister:
		r := &Register{}
		if l.Node != nil { // without one, Apply answers ErrBadCommand, as the previous release did
			r.Node = *l.Node
		}
		c.Body = r
	case CmdNodeDown:
		c.Body = &Down{Name: l.NodeName, Left: l.Left, Reason: l.Reason}
	case CmdDrain:
		c.Body = &Drain{Name: l.NodeName, Draining: l.Draining}
	case CmdCancel:
		c.Body = &Cancel{IDs: l.TaskIDs}
	case CmdRemove:
		c.Body = &Remove{IDs: l.TaskIDs}
	default:
		return nil, fmt.Errorf("decode legacy command: %w", &unknownTypeError{typ: int(l.Type)})
	}
	return c, nil
}
