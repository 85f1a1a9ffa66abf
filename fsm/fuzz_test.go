package fsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// FuzzApply feeds arbitrary log entries to an FSM holding a node and tasks in every state: Apply
// must never panic, whatever a peer or a forwarded request put in the log.
func FuzzApply(f *testing.F) {
	now := time.Unix(1700000000, 0).UTC()
	seeds := []*Command{
		{Type: CmdSubmit, Now: now, Submits: []Submit{{ID: "x", Type: "echo"}}},
		{Type: CmdAssign, Now: now, Assigns: []Assign{{TaskID: "p", Node: "n1", BootID: "b1"}}},
		{Type: CmdReport, Now: now, Reports: []Report{{TaskID: "r", Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportFailed}}},
		{Type: CmdRegister, Now: now, Node: &Node{Name: "n2", BootID: "b2"}},
		{Type: CmdNodeDown, Now: now, NodeName: "n1"},
		{Type: CmdCancel, Now: now, TaskIDs: []string{"r", "p", "nope"}},
		{Type: CmdRemove, Now: now, TaskIDs: []string{"r"}},
	}
	for _, c := range seeds {
		b, err := Encode(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := New()
		m.ApplyCommand(1, &Command{Type: CmdRegister, Now: now, Node: &Node{Name: "n1", BootID: "b1", Capacity: 2}})
		m.ApplyCommand(2, &Command{Type: CmdSubmit, Now: now, Submits: []Submit{{ID: "p", Type: "echo"}, {ID: "r", Type: "echo"}}})
		m.ApplyCommand(3, &Command{Type: CmdAssign, Now: now, Assigns: []Assign{{TaskID: "r", Node: "n1", BootID: "b1"}}})
		m.Apply(&raft.Log{Type: raft.LogCommand, Index: 4, Data: data})
		m.Counts()
		m.SchedulerView()
	})
}
