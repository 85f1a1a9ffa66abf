package endpoint

import (
	"context"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
)

// A submit's parent_id and execution_id put the new task into another task's execution: it shows
// in that execution's list, beside the tasks of whoever started it. With ACLs on, only two callers
// may do that: the parent's own running attempt (a child its executor submits, through its node,
// with no API caller), or a caller that may read every task it names. Anyone else could slip
// tasks into another principal's execution.

// identityKey carries the API caller's identity (with ACLs on) from the API backend to the
// submit's validation; a submit the node makes itself has none.
type identityKey struct{}

func withIdentity(ctx context.Context, id *acl.Identity) context.Context {
	if id == nil {
		return ctx
	}
	return context.WithValue(ctx, identityKey{}, id)
}

func identityOf(ctx context.Context) *acl.Identity {
	id, _ := ctx.Value(identityKey{}).(*acl.Identity)
	return id
}

// errLineage is the refusal, the same whether the named task is missing or unreadable, so that
// it tells the caller nothing about a task it may not see.
func errLineage() error {
	return api.Errorf(api.CodeForbidden, "parent_id and execution_id may only name tasks this caller may read")
}

// checkLineage checks the execution a submit joins, for id, the API caller (nil for a submit this
// node makes itself: a running task's child). Without ACLs every caller may read every task.
func (srv *Server) checkLineage(s *fsm.Submit, id *acl.Identity) error {
	if !srv.cfg.ACL || s.ParentID == "" && (s.ExecutionID == "" || s.ExecutionID == s.ID) {
		return nil
	}
	if id == nil {
		return srv.checkChild(s)
	}
	for i, ref := range []string{s.ParentID, s.ExecutionID} {
		if ref == "" || ref == s.ID || i == 1 && ref == s.ParentID { // a root's child: its parent, read once
			continue
		}
		t, ok := srv.cfg.FSM.Task(ref)
		if !ok || !id.CanRead(t.Type) {
			return errLineage()
		}
	}
	return nil
}

// checkChild accepts a submit made without an API caller only as a child of a running task: it
// names that task as its parent, joins the parent's execution, and records the parent's
// submitter. The leader makes the same check of a child submit another node sends
// (TaskEndpoint.CheckChild).
func (srv *Server) checkChild(s *fsm.Submit) error {
	p, ok := srv.cfg.FSM.Task(s.ParentID)
	if s.ParentID == "" || !ok || !p.State.Active() || p.ExecutionID != s.ExecutionID || p.SubmittedBy != s.SubmittedBy {
		return api.Errorf(api.CodeForbidden, "parent_id and execution_id without a caller are accepted only from the parent's running attempt")
	}
	return nil
}
