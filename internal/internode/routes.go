package internode

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/membership"
)

// The channel's own routes. They are served on the internode listener only, never on the public
// API; in secure mode they need a cluster node's certificate (auth).
const (
	// RemovePattern is the leader's route that removes the named node from raft, asked by that
	// node as it leaves.
	RemovePattern = "POST /v1/internode/remove/{name}"
	// LogsPattern is where a node serves the log lines it holds for a task (a mounted route).
	LogsPattern = "GET /v1/internode/logs/{id}"
	// headerLeader names the leader in a not-leader reply, so a node that is not yet a raft
	// member (a joiner registering) finds the leader without raft. The forward route's replies
	// carry it too.
	headerLeader = forward.HeaderLeader
)

// raftChangeTimeout bounds one raft configuration change (a leaving node's removal).
const raftChangeTimeout = 5 * time.Second

// nodePaths is the leader's route for each command a node sends about itself (ProposeNode).
var nodePaths = map[fsm.CommandType]string{
	fsm.CmdReport:   "/v1/internode/report",
	fsm.CmdRegister: "/v1/internode/register",
	fsm.CmdDrain:    "/v1/internode/drain",
	fsm.CmdSubmit:   "/v1/internode/child",
	fsm.CmdWorker:   "/v1/internode/worker",
}

// CommandPath is the leader's route for a command of type t that a node sends about itself;
// "" for a type no node sends.
func CommandPath(t fsm.CommandType) string { return nodePaths[t] }

func (c *Channel) routes(mounted []Route) http.Handler {
	mux := http.NewServeMux()
	for _, r := range mounted {
		mux.Handle(r.Pattern, r.Handler)
	}
	mux.HandleFunc("POST "+nodePaths[fsm.CmdReport], c.nodeRoute(fsm.CmdReport, c.checkReports))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdWorker], c.nodeRoute(fsm.CmdWorker, c.checkWorker))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdRegister], c.nodeRoute(fsm.CmdRegister, c.checkRegister))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdDrain], c.nodeRoute(fsm.CmdDrain, checkNodeIdentity))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdSubmit], c.nodeRoute(fsm.CmdSubmit, c.checkChildren))
	mux.HandleFunc(RemovePattern, c.handleRemove)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "not_found", "no such endpoint: "+api.Truncate(r.Method+" "+r.URL.Path))
	})
	return c.hold.wrap(mux)
}

// nodeRoute is the leader's side of ProposeNode for one command type: check says whether the
// calling node may send the command (an *api.Error when not), and the leader applies it.
func (c *Channel) nodeRoute(t fsm.CommandType, check func(*fsm.Command, Caller) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<20))
		if err != nil {
			WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "command too large")
			return
		}
		cmd, err := decodeNodeCommand(t, body)
		if err != nil {
			WriteError(w, http.StatusBadRequest, "bad_command", err.Error())
			return
		}
		if !c.isLeader() {
			w.Header().Set(headerLeader, c.cfg.Leader())
			WriteError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
			return
		}
		if err := check(cmd, CallerOf(r.Context())); err != nil {
			c.log.Warn("refused a node's command", "remote", r.RemoteAddr, "command", cmd.Type().String(), "reason", err)
			httpapi.WriteError(w, err)
			return
		}
		res, err := c.Apply(r.Context(), cmd)
		if res == nil {
			if Retryable(err) {
				WriteError(w, http.StatusServiceUnavailable, "not_leader", err.Error())
				return
			}
			WriteError(w, http.StatusInternalServerError, "apply_failed", err.Error())
			return
		}
		out, err := msgpack.Marshal(toWire(res))
		if err != nil {
			WriteError(w, http.StatusInternalServerError, "encode", err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/msgpack")
		_, _ = w.Write(out)
	}
}

// decodeNodeCommand reads the body of a node's command: one command of type t. What it returns is
// all the leader acts on, so it is fuzzed (FuzzInternodeEnvelope).
func decodeNodeCommand(t fsm.CommandType, body []byte) (*fsm.Command, error) {
	c, err := fsm.Decode(body)
	if err != nil {
		return nil, fmt.Errorf("not a %s command: %v", t, api.Truncate(err.Error()))
	}
	if c.Type() != t {
		return nil, fmt.Errorf("not a %s command: %s", t, c.Type())
	}
	return c, nil
}

// checkNodeIdentity checks that a command about a node comes from that node: only a node
// registers, drains or reports for itself.
func checkNodeIdentity(c *fsm.Command, caller Caller) error {
	var names []string
	switch b := c.Body.(type) {
	case *fsm.Register:
		names = []string{b.Node.Name}
	case *fsm.Drain:
		names = []string{b.Name}
	case *fsm.ReportBatch:
		for _, r := range b.Items {
			names = append(names, r.Node)
		}
	}
	for _, name := range names {
		if !caller.May(name) {
			return api.Errorf(api.CodeForbidden, "node %q may not send a %s command for node %q", api.Truncate(caller.Name), c.Type(), api.Truncate(name))
		}
	}
	return nil
}

// mayActFor reports whether the caller may send reports for name: it is that node, or the host
// of the worker of that name (as this node's FSM knows it).
func (c *Channel) mayActFor(caller Caller, name string) bool {
	if caller.May(name) {
		return true
	}
	w, ok := c.cfg.FSM.Worker(name)
	return ok && caller.May(w.Host)
}

// checkReports lets a node report for itself and for the workers it hosts.
func (c *Channel) checkReports(cmd *fsm.Command, caller Caller) error {
	for _, r := range cmd.Body.(*fsm.ReportBatch).Items {
		if !c.mayActFor(caller, r.Node) {
			return api.Errorf(api.CodeForbidden, "node %q may not report for %q", api.Truncate(caller.Name), api.Truncate(r.Node))
		}
	}
	return nil
}

// checkWorker lets a node register workers it hosts only, and take down or drain only those.
func (c *Channel) checkWorker(cmd *fsm.Command, caller Caller) error {
	b := cmd.Body.(*fsm.WorkerChange)
	if b.Op == fsm.WorkerUp {
		if b.Worker == nil || !caller.May(b.Worker.Host) {
			return api.Errorf(api.CodeForbidden, "node %q may only register workers it hosts", api.Truncate(caller.Name))
		}
		return nil
	}
	if w, ok := c.cfg.FSM.Worker(b.Name); ok && !caller.May(w.Host) {
		return api.Errorf(api.CodeForbidden, "node %q does not host worker %q", api.Truncate(caller.Name), api.Truncate(b.Name))
	}
	return nil
}

// checkRegister lets a node register itself only, and not take over the name of a live node.
func (c *Channel) checkRegister(cmd *fsm.Command, caller Caller) error {
	if err := checkNodeIdentity(cmd, caller); err != nil {
		return err
	}
	if err := checkRegistration(c.members(), cmd.Body.(*fsm.Register).Node, c.cfg.MemberID); err != nil {
		return api.Errorf(api.CodeNameInUse, "%v", err)
	}
	return nil
}

// checkRegistration refuses a registration that would take over the name of a live node: another
// boot of that name, at another gossip address, while gossip says the holder is alive. A node
// restarted (a new boot ID) at its old address, or once its old self is dead, registers as before.
func checkRegistration(members []membership.Member, rec fsm.Node, memberID func(membership.Member) raft.ServerID) error {
	for _, m := range members {
		if m.Name != rec.Name || m.State != membership.StateAlive {
			continue
		}
		if m.Meta.BootID != rec.BootID && m.GossipAddr != rec.GossipAddr {
			return fmt.Errorf("node name %q is in use by a live node at %s (raft ID %s); give each node a unique --name",
				api.Truncate(rec.Name), m.GossipAddr, memberID(m))
		}
	}
	return nil
}

// checkChildren accepts a submit from a node only as children of tasks running on that node,
// valid as the API's submits are (Config.CheckChild).
func (c *Channel) checkChildren(cmd *fsm.Command, caller Caller) error {
	sb := cmd.Body.(*fsm.SubmitBatch)
	if len(sb.Place) > 0 {
		return api.Errorf(api.CodeInvalidRequest, "a node's submit carries no assignments: the leader places tasks")
	}
	items := sb.Items
	if len(items) == 0 {
		return api.Errorf(api.CodeInvalidRequest, "no children")
	}
	for i := range items {
		s := &items[i]
		if err := c.cfg.CheckChild(s); err != nil {
			return err
		}
		if p, _ := c.cfg.FSM.Task(s.ParentID); !caller.May(p.Node) {
			return api.Errorf(api.CodeForbidden, "node %q does not run the parent %s", api.Truncate(caller.Name), s.ParentID)
		}
	}
	return nil
}

// handleRemove is the leader's side of a graceful leave: remove the server from raft.
func (c *Channel) handleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if caller := CallerOf(r.Context()); !caller.May(name) {
		c.log.Warn("refused a raft removal asked by another node", "remote", r.RemoteAddr, "caller", caller.Name, "server", name)
		WriteError(w, http.StatusForbidden, "forbidden", "a node may only remove itself")
		return
	}
	if !c.isLeader() {
		WriteError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
		return
	}
	if name == c.cfg.Name {
		WriteError(w, http.StatusConflict, "is_leader", "the leader cannot remove itself")
		return
	}
	cf := c.cfg.Raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		WriteError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
		return
	}
	// The servers are raft IDs: every one that belongs to the node goes (none left is success).
	for _, id := range c.cfg.ServerIDs(cf.Configuration().Servers, name) {
		if err := c.cfg.Raft.RemoveServer(id, 0, raftChangeTimeout).Error(); err != nil {
			WriteError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
			return
		}
		c.log.Info("removed leaving node from raft", "server", id, "member", name)
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"removed": name})
}
