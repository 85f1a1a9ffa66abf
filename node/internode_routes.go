package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/raftnode"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// The node-to-node routes: the API's writes forwarded to the leader (internal/forward), the
// commands a node sends about itself, log reads, a leaving node's removal, the join exchange and
// the secrets. They are served on the internode listener (the gossip port, internode.go), never on
// the public API. In secure mode every route but join needs a cluster node's certificate.
const (
	internodeLogsPath   = "/v1/internode/logs/{id}"
	internodeRemovePath = "/v1/internode/remove/{name}"
	internodeJoinPath   = trust.JoinPath
	// leaderHeader names the leader in a not-leader reply, so a node that is not yet a raft
	// member (a joiner registering) finds the leader without raft.
	leaderHeader = forward.HeaderLeader
)

// nodePaths is the leader's route for each command a node sends about itself (proposeNode).
var nodePaths = map[fsm.CommandType]string{
	fsm.CmdReport:   "/v1/internode/report",
	fsm.CmdRegister: "/v1/internode/register",
	fsm.CmdDrain:    "/v1/internode/drain",
	fsm.CmdSubmit:   "/v1/internode/child",
}

// internodeHold holds every internode request while set, as a frozen process would (SIGSTOP):
// the in-process tests' way to freeze a leader's side of forwarding. Nothing sets it outside tests.
type internodeHold struct {
	release atomic.Pointer[chan struct{}] // held until this is closed; nil: serve
	held    atomic.Int64                  // requests that have been held
}

func (h *internodeHold) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := h.release.Load(); ch != nil {
			h.held.Add(1)
			select {
			case <-*ch:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (n *Node) internodeRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+forward.Path, n.fwd.Serve(http.HandlerFunc(n.servedAPI)))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdReport], n.nodeRoute(fsm.CmdReport, checkNodeIdentity))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdRegister], n.nodeRoute(fsm.CmdRegister, n.checkRegister))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdDrain], n.nodeRoute(fsm.CmdDrain, checkNodeIdentity))
	mux.HandleFunc("POST "+nodePaths[fsm.CmdSubmit], n.nodeRoute(fsm.CmdSubmit, n.checkChildren))
	mux.HandleFunc("GET "+internodeLogsPath, n.handleLocalLogs)
	mux.HandleFunc("POST "+internodeRemovePath, n.handleInternodeRemove)
	mux.HandleFunc("POST "+internodeJoinPath, n.trust.HandleJoin)
	mux.HandleFunc("GET "+trust.SecretPath, n.trust.HandleSecret)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+api.Truncate(r.Method+" "+r.URL.Path))
	})
	return n.hold.wrap(mux)
}

// writeError writes an error body with the API's shape; the internode routes have codes of their own.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteJSON(w, status, api.Error{Message: msg, Code: api.Code(code)})
}

// nodeRoute is the leader's side of proposeNode for one command type: check says whether the
// calling node may send the command (an *api.Error when not), and the leader applies it.
func (n *Node) nodeRoute(t fsm.CommandType, check func(*fsm.Command, internodeCaller) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<20))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "command too large")
			return
		}
		c, err := decodeNodeCommand(t, body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_command", err.Error())
			return
		}
		if n.rn.Raft().State() != raft.Leader {
			w.Header().Set(leaderHeader, n.Leader())
			writeError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
			return
		}
		if err := check(c, callerOf(r.Context())); err != nil {
			n.log.Warn("refused a node's command", "remote", r.RemoteAddr, "command", c.Type().String(), "reason", err)
			httpapi.WriteError(w, err)
			return
		}
		res, err := n.applyLocal(r.Context(), c)
		if res == nil {
			if retryable(err) {
				writeError(w, http.StatusServiceUnavailable, "not_leader", err.Error())
				return
			}
			writeError(w, http.StatusInternalServerError, "apply_failed", err.Error())
			return
		}
		out, err := msgpack.Marshal(toWire(res))
		if err != nil {
			writeError(w, http.StatusInternalServerError, "encode", err.Error())
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

// checkRegister lets a node register itself only, and not take over the name of a live node.
func (n *Node) checkRegister(c *fsm.Command, caller internodeCaller) error {
	if err := checkNodeIdentity(c, caller); err != nil {
		return err
	}
	if err := n.checkRegistration(c.Body.(*fsm.Register).Node); err != nil {
		return api.Errorf(api.CodeNameInUse, "%v", err)
	}
	return nil
}

// checkChildren accepts a submit from a node only as children of tasks running on that node,
// valid as the API's submits are (checkSubmit, checkChild).
func (n *Node) checkChildren(c *fsm.Command, caller internodeCaller) error {
	items := c.Body.(*fsm.SubmitBatch).Items
	if len(items) == 0 {
		return api.Errorf(api.CodeInvalidRequest, "no children")
	}
	for i := range items {
		s := &items[i]
		if err := n.checkSubmit(s); err != nil {
			return err
		}
		if err := n.checkChild(s); err != nil {
			return err
		}
		if p, _ := n.fsm.Task(s.ParentID); !caller.may(p.Node) {
			return api.Errorf(api.CodeForbidden, "node %q does not run the parent %s", api.Truncate(caller.name), s.ParentID)
		}
	}
	return nil
}

// handleLocalLogs serves the lines this node holds for a task as JSON lines; with follow=true and
// attempt=N it streams that attempt's lines until the attempt is over here.
func (n *Node) handleLocalLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	if r.URL.Query().Get("follow") != "true" {
		lines, err := n.logs.Read(id)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		for _, l := range lines {
			_ = enc.Encode(l)
		}
		return
	}
	attempt, err := strconv.Atoi(r.URL.Query().Get("attempt"))
	if err != nil || attempt < 1 {
		writeError(w, http.StatusBadRequest, "invalid_attempt", "follow needs attempt=N")
		return
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	n.followLocal(r.Context(), id, attempt, func(l tasks.LogLine) {
		_ = enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	})
}

// handleInternodeRemove is the leader's side of a graceful leave: remove the server from raft.
func (n *Node) handleInternodeRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if caller := callerOf(r.Context()); !caller.may(name) {
		n.log.Warn("refused a raft removal asked by another node", "remote", r.RemoteAddr, "caller", caller.name, "server", name)
		writeError(w, http.StatusForbidden, "forbidden", "a node may only remove itself")
		return
	}
	if !n.IsLeader() {
		writeError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
		return
	}
	if name == n.cfg.Name {
		writeError(w, http.StatusConflict, "is_leader", "the leader cannot remove itself")
		return
	}
	cf := n.rn.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
		return
	}
	// The servers are raft IDs: every one that belongs to the node goes (none left is success).
	for _, id := range n.rn.ServerIDs(cf.Configuration().Servers, name) {
		if err := n.rn.Raft().RemoveServer(id, 0, raftChangeTimeout).Error(); err != nil {
			writeError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
			return
		}
		n.log.Info("removed leaving node from raft", "server", id, "member", name)
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"removed": name})
}

// checkRegistration refuses a registration that would take over the name of a live node: another
// boot of that name, at another gossip address, while gossip says the holder is alive. A node
// restarted (a new boot ID) at its old address, or once its old self is dead, registers as before.
func (n *Node) checkRegistration(rec fsm.Node) error {
	for _, m := range n.members.Members() {
		if m.Name != rec.Name || m.State != membership.StateAlive {
			continue
		}
		if m.Meta.BootID != rec.BootID && m.GossipAddr != rec.GossipAddr {
			return fmt.Errorf("node name %q is in use by a live node at %s (raft ID %s); give each node a unique --name",
				api.Truncate(rec.Name), m.GossipAddr, raftnode.MemberID(m))
		}
	}
	return nil
}
